"""The prepared GPU check: copy bandwidth, fused norm kernels and model training throughput in one run.

``bench_gpu(out)`` (``scripts/gpu_check.py``) measures, on one GPU and in under 8 minutes:

1. the device-to-device copy bandwidth, the ceiling for any memory-bound kernel;
2. forward+backward of torch's fused LayerNorm and RMSNorm and of multihead SeeDNorm (eager
   chain, torch.compile, the Triton kernels) at ViT-B, ViT-L and DiT-XL token shapes, plus DiT's
   norm + adaLN modulate, as time and as a fraction of the copy bandwidth;
3. ViT-B/16 and DiT-XL/2 training steps per second with LayerNorm and with multihead SeeDNorm
   under bf16 autocast;
4. corruption-suite throughput (``vision.corruptions.corrupt(images, name, 3, seed=0)`` for every
   name in ``CORRUPTIONS``) and FID-feature throughput (the Inception network of
   ``vision.metrics.features`` on uint8 299 px images).

It prints one table per part, checks the issue's targets, and writes everything to
``<out>/gpu_check.json``. ``dry_run=True`` runs the same code at tiny sizes, on the CPU by
default, so the script is exercised by the test suite and cannot rot. Kernel times on CUDA come
from CUDA-graph replays (no Python launch overhead in the numbers); model steps are wall-clock.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vision.bench import machine_description, time_side_by_side, write_json
from vision.corruptions import CORRUPTIONS, corrupt
from vision.metrics.features import fid_feature_extractor
from vision.models.dit import create_dit
from vision.nn import SeeDNorm, norm_layer
from vision.nn import functional as VF

SEEDNORM_HEADS = 16  # the registry's mhseednorm default
# name -> (batch, tokens, width): 224 px / patch 16 (196 + class token) and 256 px latents / patch 2.
NORM_SHAPES = {"ViT-B/16": (256, 197, 768), "ViT-L/16": (256, 197, 1024), "DiT-XL/2": (256, 256, 1152)}
DRY_NORM_SHAPES = {"ViT-B/16": (2, 5, 48), "ViT-L/16": (2, 5, 64), "DiT-XL/2": (2, 4, 96)}
# Targets of issue 7.
TARGET_COPY_FRACTION = 0.80
TARGET_VS_RMSNORM = 1.10
TARGET_MODEL_RATIO = 0.98
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class GPUUnavailableError(RuntimeError):
    """Raised when a CUDA device is requested and torch sees none."""


@dataclass
class NormTiming:
    shape: str
    candidate: str
    ms: float
    gb_per_s: float
    copy_fraction: float
    vs_rmsnorm: float
    timing: str


@dataclass
class ModelTiming:
    model: str
    norm: str
    batch: int
    steps_per_s: float
    images_per_s: float
    vs_layernorm: float


@dataclass
class Report:
    machine: str
    device: str
    dry_run: bool
    dtype: str
    copy_gb_per_s: float = 0.0
    norms: list[NormTiming] = field(default_factory=list)
    models: list[ModelTiming] = field(default_factory=list)
    extras: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_device(device: str) -> torch.device:
    """The torch device for ``device``; a CUDA request without a visible GPU is a clear error."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise GPUUnavailableError(
            f"device {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); run on a GPU machine or pass dry_run"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GPUUnavailableError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"bench_gpu runs on 'cuda' or 'cpu', got device {device!r}")
    return dev


# ----------------------------------------------------------------------------- timing


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _graphed(step: Callable[[], None], reps: int, dev: torch.device) -> tuple[Callable[[], None], str]:
    """``reps`` calls of ``step`` captured in one CUDA graph, or plain calls when capture fails."""
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA-graph capture requires
        for _ in range(3):
            step()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(reps):
                step()
    except Exception as exc:  # some op refused capture: time the launches instead (noted per row)
        torch.cuda.synchronize(dev)
        note = f"launch-timed ({type(exc).__name__})"

        def launched() -> None:
            for _ in range(reps):
                step()

        return launched, note
    return graph.replay, "cuda-graph"


def time_cuda(steps: dict[str, Callable[[], None]], dev: torch.device, reps: int, rounds: int) -> dict[str, tuple[float, str]]:
    """Median seconds per call of each step: CUDA graphs of ``reps`` calls, timed by CUDA events
    in interleaved rounds (the first replay of each round is untimed)."""
    runners = {k: _graphed(step, reps, dev) for k, step in steps.items()}
    samples: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            run, _ = runners[key]
            run()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples[key].append(start.elapsed_time(end) / 1e3 / reps)
    return {k: (statistics.median(v), runners[k][1]) for k, v in samples.items()}


def copy_bandwidth(dev: torch.device, nbytes: int, reps: int, rounds: int) -> float:
    """Device-to-device copy bandwidth in GB/s, counting the bytes read plus the bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    step = lambda: dst.copy_(src)  # noqa: E731
    if dev.type == "cuda":
        seconds, _ = time_cuda({"copy": step}, dev, reps, rounds)["copy"]
    else:
        seconds = time_side_by_side({"copy": step}, rounds, reps, dev)["copy"]
    return 2 * src.numel() * 4 / seconds / 1e9


# ----------------------------------------------------------------------------- norm kernels


def _dynamic(module: nn.Module) -> nn.Module:
    # A trained SeeDNorm has nonzero beta: time the layer as it runs once training has started.
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("beta"):
                param.normal_(0.0, 0.02)
    return module


class _ModulatedNorm(nn.Module):
    """DiT's norm followed by adaLN ``modulate``: torch LayerNorm, or SeeDNorm fused or not."""

    def __init__(self, dim: int, kind: str, impl: str = "auto", num_heads: int = SEEDNORM_HEADS, device=None) -> None:
        super().__init__()
        self.kind, self.impl, self.num_heads = kind, impl, num_heads
        if kind == "seednorm":
            self.alpha = nn.Parameter(torch.ones(dim, device=device))
            self.beta = nn.Parameter(torch.zeros(dim, device=device))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            y = F.layer_norm(x, x.shape[-1:], eps=1e-6)
            return y * (1 + scale[:, None, :]) + shift[:, None, :]
        return VF.seednorm_modulate(x, self.alpha, self.beta, shift, scale, num_heads=self.num_heads, impl=self.impl)


def _norm_candidates(dim: int, dtype: torch.dtype, dev: torch.device, triton_ok: bool, modulate: bool):
    """(name, module, takes_modulation) for one width; SeeDNorm parameters stay float32 as in AMP."""
    same = {"device": dev, "dtype": dtype}
    out: list[tuple[str, Callable, bool]] = [
        ("torch LayerNorm", nn.LayerNorm(dim, eps=1e-6, **same), False),
        ("torch RMSNorm", nn.RMSNorm(dim, eps=1e-6, **same), False),
        ("SeeDNorm eager (unfused)", _dynamic(SeeDNorm(dim, num_heads=SEEDNORM_HEADS, impl="eager", device=dev)), False),
        # impl="compiled" inside torch.compile traces the plain kernels, so inductor fuses the layer.
        ("SeeDNorm torch.compile", torch.compile(_dynamic(SeeDNorm(dim, num_heads=SEEDNORM_HEADS, impl="compiled",
                                                                   device=dev))), False),
    ]
    if triton_ok:
        out.append(("SeeDNorm Triton", _dynamic(SeeDNorm(dim, num_heads=SEEDNORM_HEADS, impl="triton", device=dev)), False))
        out.append(("SeeDNorm Triton, 1 head", _dynamic(SeeDNorm(dim, impl="triton", device=dev)), False))
    if modulate:
        out.append(("LayerNorm + modulate (torch)", _ModulatedNorm(dim, "layernorm"), True))
        out.append(("SeeDNorm + modulate torch.compile",
                    torch.compile(_dynamic(_ModulatedNorm(dim, "seednorm", impl="compiled", device=dev))), True))
        if triton_ok:
            out.append(("SeeDNorm + modulate Triton (fused)",
                        _dynamic(_ModulatedNorm(dim, "seednorm", impl="triton", device=dev)), True))
    return out


def bench_norm_kernels(shapes: dict[str, tuple[int, int, int]], dtype: torch.dtype, dev: torch.device, copy_gbps: float,
                       reps: int, rounds: int, report: Report) -> None:
    """Forward+backward of every candidate at every shape, appended to ``report.norms``."""
    probe = torch.empty(0, device=dev, dtype=dtype)
    triton_ok = _triton_runs(probe)
    if not triton_ok:
        report.notes.append(f"Triton SeeDNorm rows skipped: the kernels need CUDA (or TRITON_INTERPRET=1), not {dev}")
    for shape_name, (batch, tokens, dim) in shapes.items():
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(batch, tokens, dim, device=dev, dtype=dtype, generator=gen).requires_grad_()
        grad = torch.randn(batch, tokens, dim, device=dev, dtype=dtype, generator=gen)
        shift = (0.1 * torch.randn(batch, dim, device=dev, dtype=dtype, generator=gen)).requires_grad_()
        scale = (0.1 * torch.randn(batch, dim, device=dev, dtype=dtype, generator=gen)).requires_grad_()
        steps = {}
        for name, module, modulated in _norm_candidates(dim, dtype, dev, triton_ok, shape_name.startswith("DiT")):
            steps[name] = _fwd_bwd(module, x, grad, (shift, scale) if modulated else ())
            steps[name]()  # compile / JIT outside the timed region
        _sync(dev)
        if dev.type == "cuda":
            times = time_cuda(steps, dev, reps, rounds)
        else:
            times = {k: (v, "wall") for k, v in time_side_by_side(steps, rounds, reps, dev).items()}
        # Ideal traffic: forward reads x and writes y; backward reads x and grad and writes dx.
        nbytes = 5 * x.numel() * x.element_size()
        base = times["torch RMSNorm"][0]
        for name, (sec, how) in times.items():
            gbps = nbytes / sec / 1e9
            report.norms.append(NormTiming(shape_name, name, sec * 1e3, gbps, gbps / copy_gbps, sec / base, how))
        del steps, x, grad, shift, scale
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _fwd_bwd(module: Callable, x: torch.Tensor, grad: torch.Tensor, extra: tuple) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        module(x, *extra).backward(grad)

    return step


def _triton_runs(x: torch.Tensor) -> bool:
    try:
        from vision.nn import triton_kernels
    except Exception:  # triton_kernels itself never raises on a missing triton; anything else is a bug report
        return False
    return triton_kernels.runs_triton(x)


# ----------------------------------------------------------------------------- models


def build_vit(norm: str, dry_run: bool, dev: torch.device) -> tuple[nn.Module, tuple[int, ...], int]:
    """ViT-B/16 (timm) with the named norm, as trained here (drop path 0.1 = SeeDNorm's dyn_dropout)."""
    from timm.models.vision_transformer import VisionTransformer

    extra = {"num_heads": SEEDNORM_HEADS, "dyn_dropout": 0.1} if norm == "mhseednorm" else {}
    if dry_run:
        args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    else:
        args = dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, num_classes=1000)
    with torch.device(dev):  # initialise on the device: CPU init of large models takes seconds
        model = VisionTransformer(**args, drop_path_rate=0.1, norm_layer=norm_layer(norm, **extra))
    return _dynamic(model), (3, args["img_size"], args["img_size"]), args["num_classes"]


def build_dit(norm: str, dry_run: bool, dev: torch.device) -> tuple[nn.Module, int, int]:
    """DiT-XL/2 (DiT-Mi/2 in a dry run) with LayerNorm or multihead SeeDNorm adaLN norms."""
    with torch.device(dev):  # initialise on the device: CPU init of 675M parameters takes seconds
        if dry_run:
            model = create_dit("DiT-Mi/2", norm=norm, input_size=8, num_classes=10)
        else:
            model = create_dit("DiT-XL/2", norm=norm)
    return _dynamic(model), model.input_size, model.num_classes


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, make_loss: Callable[[], torch.Tensor], dev: torch.device):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = make_loss()
        loss.backward()
        opt.step()

    return step


def _steps_per_second(step: Callable[[], None], warmup: int, steps: int, dev: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(dev)
    return steps / (time.perf_counter() - start)


def _training_rate(model_name: str, norm: str, dev: torch.device, dry_run: bool, batch: int, warmup: int,
                   steps: int) -> float:
    """Steps per second of one model; everything it builds is freed when it returns."""
    gen = torch.Generator(device=dev).manual_seed(0)
    if model_name == "ViT-B/16":
        model, image, classes = build_vit(norm, dry_run, dev)
        images = torch.randn(batch, *image, device=dev, generator=gen)
        labels = torch.randint(0, classes, (batch,), device=dev, generator=gen)

        def make_loss() -> torch.Tensor:
            return F.cross_entropy(model(images), labels)
    else:
        model, latent, classes = build_dit(norm, dry_run, dev)
        z = torch.randn(batch, 4, latent, latent, device=dev, generator=gen)
        t = torch.randint(0, 1000, (batch,), device=dev, generator=gen)
        y = torch.randint(0, classes, (batch,), device=dev, generator=gen)
        with torch.no_grad():  # a target of the output's shape (noise and variance, per patch or pixel)
            target = torch.randn_like(model(z, t, y).float())

        def make_loss() -> torch.Tensor:
            return F.mse_loss(model(z, t, y).float(), target)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    return _steps_per_second(_train_step(model, opt, make_loss, dev), warmup, steps, dev)


def bench_models(dev: torch.device, dry_run: bool, vit_batch: int, dit_batch: int, warmup: int, steps: int,
                 report: Report) -> None:
    """Training steps per second of ViT-B/16 and DiT-XL/2 with LayerNorm and multihead SeeDNorm."""
    if dry_run:
        report.notes.append("dry run: the DiT-XL/2 rows time DiT-Mi/2, the ViT-B/16 rows a 2-block ViT")
    for model_name, batch in (("ViT-B/16", vit_batch), ("DiT-XL/2", dit_batch)):
        rates = {}
        for norm in ("layernorm", "mhseednorm"):
            rates[norm] = _training_rate(model_name, norm, dev, dry_run, batch, warmup, steps)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for norm, rate in rates.items():
            report.models.append(ModelTiming(model_name, norm, batch, rate, rate * batch, rate / rates["layernorm"]))


# ----------------------------------------------------------------------------- extras


def bench_extras(dev: torch.device, dry_run: bool, deadline: float, report: Report) -> None:
    """Corruption-suite and FID-feature throughput.

    Stops starting new measurements at ``deadline`` (a ``time.perf_counter()`` value).
    """
    batch, size, steps = (2, 32, 2) if dry_run else (64, 224, 3)
    images = torch.rand(batch, 3, size, size, device=dev)
    for name in list(CORRUPTIONS)[:2] if dry_run else CORRUPTIONS:  # a dry run only checks the plumbing
        if time.perf_counter() > deadline:
            report.notes.append(f"corruptions from {name!r} on skipped: time budget used")
            break
        rate = _steps_per_second(lambda n=name: corrupt(images, n, 3, seed=0), 1, steps, dev)
        report.extras.append({"what": f"corruption {name} (severity 3)", "images_per_s": rate * batch})
    if time.perf_counter() > deadline:
        report.notes.append("FID-feature throughput skipped: time budget used")
        return
    # The real weights when a file is configured (VISION_INCEPTION_WEIGHTS); throughput does not
    # depend on them, so an untrained network of the same architecture serves otherwise.
    weights = os.environ.get("VISION_INCEPTION_WEIGHTS") or "random"
    net = fid_feature_extractor(weights=weights, device=dev)
    uint8 = torch.randint(0, 256, (1 if dry_run else batch, 3, 299, 299), dtype=torch.uint8, device=dev)
    with torch.no_grad():
        rate = _steps_per_second(lambda: net(uint8), 1, steps, dev)
    report.extras.append({"what": f"FID Inception features ({'real' if weights != 'random' else 'untrained'} weights)",
                          "images_per_s": rate * len(uint8)})


# ----------------------------------------------------------------------------- report


def check_targets(report: Report) -> None:
    """Compare the measurements with issue 7's targets (informative only in a dry run)."""
    for row in report.norms:
        if row.candidate in ("SeeDNorm Triton", "SeeDNorm + modulate Triton (fused)"):
            report.targets.append({
                "target": f"{row.candidate} at {row.shape}: >= {TARGET_COPY_FRACTION:.0%} of copy bandwidth",
                "value": row.copy_fraction, "met": row.copy_fraction >= TARGET_COPY_FRACTION})
        if row.candidate == "SeeDNorm Triton":
            report.targets.append({
                "target": f"SeeDNorm Triton at {row.shape}: <= {TARGET_VS_RMSNORM}x torch RMSNorm",
                "value": row.vs_rmsnorm, "met": row.vs_rmsnorm <= TARGET_VS_RMSNORM})
    for row in report.models:
        if row.norm != "layernorm":
            report.targets.append({
                "target": f"{row.model} with {row.norm}: >= {TARGET_MODEL_RATIO}x LayerNorm steps/s",
                "value": row.vs_layernorm, "met": row.vs_layernorm >= TARGET_MODEL_RATIO})


def format_report(report: Report) -> str:
    """The printed tables."""
    lines = [
        f"GPU check on {report.machine}" + (" (DRY RUN: tiny sizes, numbers mean nothing)" if report.dry_run else ""),
        f"device-to-device copy: {report.copy_gb_per_s:.1f} GB/s (read + write)",
        "",
        f"forward+backward, {report.dtype} activations, {SEEDNORM_HEADS}-head SeeDNorm unless noted; "
        "GB/s counts 5 tensor passes (x, y, x, dy, dx)",
        "",
        "| shape | candidate | ms | GB/s | of copy | vs RMSNorm | timing |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.norms:
        lines.append(f"| {r.shape} | {r.candidate} | {r.ms:.4f} | {r.gb_per_s:.1f} | {r.copy_fraction:.0%} | "
                     f"{r.vs_rmsnorm:.2f}x | {r.timing} |")
    if report.models:
        lines += ["", "training steps, bf16 autocast, AdamW", "",
                  "| model | norm | batch | steps/s | images/s | vs LayerNorm |", "|---|---|---|---|---|---|"]
        for m in report.models:
            lines.append(f"| {m.model} | {m.norm} | {m.batch} | {m.steps_per_s:.2f} | {m.images_per_s:.1f} | "
                         f"{m.vs_layernorm:.3f}x |")
    if report.extras:
        lines += ["", "| other | images/s |", "|---|---|"]
        lines += [f"| {e['what']} | {e['images_per_s']:.1f} |" for e in report.extras]
    if report.targets:
        lines += ["", "targets (issue 7):"]
        for t in report.targets:
            lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.3f}")
    if report.notes:
        lines += ["", "notes:"] + [f"  - {n}" for n in report.notes]
    lines.append(f"\ntotal {report.seconds:.0f} s")
    return "\n".join(lines)


def bench_gpu(
    out: str,
    device: str | None = None,
    dry_run: bool = False,
    dtype: str = "bfloat16",
    vit_batch: int = 128,
    dit_batch: int = 32,
    budget_s: float = 420.0,
) -> Report:
    """Run the prepared GPU check, print its tables and write ``<out>/gpu_check.json``.

    Args:
        out: folder for ``gpu_check.json`` (created if missing).
        device: "cuda" (default), "cuda:N", or "cpu"; defaults to "cpu" in a dry run.
        dry_run: tiny shapes and models, a few repetitions: checks the script end to end in seconds.
        dtype: activation dtype of the norm-kernel part: bfloat16, float16 or float32.
        vit_batch: images per ViT-B/16 training step (128 per GPU in the ImageNet config).
        dit_batch: latents per DiT-XL/2 training step (DiT's 256 over 8 GPUs).
        budget_s: parts that would start after this many seconds are skipped with a note, so the
            whole check stays under 8 minutes even on a slow GPU.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    dev = check_device(device or ("cpu" if dry_run else "cuda"))
    started = time.perf_counter()
    torch.manual_seed(0)
    report = Report(machine_description(dev), str(dev), dry_run, dtype)
    if dry_run:
        shapes, reps, rounds, copy_bytes = DRY_NORM_SHAPES, 2, 2, 1 << 20
        vit_batch, dit_batch, warmup, steps = 2, 2, 1, 2
    else:
        shapes, reps, rounds, copy_bytes = NORM_SHAPES, 20, 15, 1 << 30
        warmup, steps = 3, 15

    report.copy_gb_per_s = copy_bandwidth(dev, copy_bytes, reps, rounds)
    parts = [
        ("norm kernels", lambda: bench_norm_kernels(shapes, DTYPES[dtype], dev, report.copy_gb_per_s, reps, rounds,
                                                    report)),
        ("model throughput", lambda: bench_models(dev, dry_run, vit_batch, dit_batch, warmup, steps, report)),
        ("corruption / FID throughput", lambda: bench_extras(dev, dry_run, started + budget_s, report)),
    ]
    for name, run in parts:
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            report.notes.append(f"{name} skipped: {elapsed:.0f} s used of the {budget_s:.0f} s budget")
            continue
        run()
    check_targets(report)
    report.seconds = time.perf_counter() - started
    print(format_report(report))
    write_json(os.path.join(out, "gpu_check.json"), asdict(report))
    return report

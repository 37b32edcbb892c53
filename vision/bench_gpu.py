"""The prepared GPU check: copy bandwidth, fused norm kernels and model training throughput in one run.

``bench_gpu(out)`` (``scripts/gpu_check.py``) measures, on one GPU and in under 8 minutes:

1. the device-to-device copy bandwidth, the ceiling for any memory-bound kernel;
2. forward+backward of torch's fused LayerNorm and RMSNorm and of multihead SeeDNorm (eager
   chain, torch.compile, the Triton kernels) at ViT-B, ViT-L and DiT-XL token shapes, plus DiT's
   norm + adaLN modulate, as time and as a fraction of the copy bandwidth;
3. ViT-B/16 and DiT-XL/2 training steps per second with LayerNorm and with multihead SeeDNorm
   under bf16 autocast;
4. corruption-suite throughput (``vision.corruptions.corrupt(images, name, 3, seed=0)`` for every
   name in ``CORRUPTIONS``) and FID-feature throughput (``vision.metrics.fid_feature_extractor(
   device=...)`` applied to uint8 299 px images), each skipped with a note when absent.

It prints one table per part, checks the issue's targets, and writes everything to
``<out>/gpu_check.json``. ``dry_run=True`` runs the same code at tiny sizes, on the CPU by
default, so the script is exercised by the test suite and cannot rot. Kernel times on CUDA come
from CUDA-graph replays (no Python launch overhead in the numbers); model steps are wall-clock.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
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


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, D))


class _DiTBlock(nn.Module):
    """An adaLN-Zero transformer block: both norms are modulated by the condition."""

    def __init__(self, dim: int, heads: int, norm: str, dev: torch.device) -> None:
        super().__init__()
        kind = "layernorm" if norm == "layernorm" else "seednorm"
        self.norm1 = _ModulatedNorm(dim, kind, device=dev)
        self.norm2 = _ModulatedNorm(dim, kind, device=dev)
        self.attn = _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        x = x + gate1[:, None, :] * self.attn(self.norm1(x, shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(self.norm2(x, shift2, scale2))


class DiTStandIn(nn.Module):
    """DiT-XL/2's shapes and adaLN-Zero blocks (latent 4x32x32, patch 2, 28 x 1152, 16 heads).

    For timing only, used when ``vision.models.dit`` does not exist: patch embedding, timestep and
    class conditioning, the blocks and a modulated final layer, every norm LayerNorm + modulate or
    the fused ``seednorm_modulate``.
    """

    def __init__(self, norm: str, depth: int = 28, dim: int = 1152, heads: int = 16, latent: int = 32,
                 patch: int = 2, channels: int = 4, classes: int = 1000, device=None) -> None:
        super().__init__()
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.patch, self.channels = patch, channels
        self.embed = nn.Conv2d(channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (latent // patch) ** 2, dim))
        self.time = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(classes + 1, dim)  # + 1: the null class of classifier-free guidance
        self.blocks = nn.ModuleList(_DiTBlock(dim, heads, norm, dev) for _ in range(depth))
        self.final_norm = _ModulatedNorm(dim, "layernorm" if norm == "layernorm" else "seednorm", device=dev)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch * patch * 2 * channels)  # mean and variance, as DiT learns sigma

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        half = 128
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
        angles = t[:, None].float() * freqs[None]
        c = self.time(torch.cat([angles.cos(), angles.sin()], dim=-1)) + self.label(y)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        return self.out(self.final_norm(h, shift, scale))


def _project_dit():
    """``vision.models.dit`` when it exists and offers ``create_dit``, else None."""
    if importlib.util.find_spec("vision.models.dit") is None:
        return None
    module = importlib.import_module("vision.models.dit")
    return module if hasattr(module, "create_dit") else None


def build_dit(norm: str, dry_run: bool, dev: torch.device) -> tuple[nn.Module, int, int, str]:
    """DiT-XL/2 (tiny in a dry run) with LayerNorm or multihead SeeDNorm adaLN norms.

    Returns the model, its latent side, its class count and which implementation it is: the
    project's ``vision.models.dit.create_dit`` when present, else ``DiTStandIn``.
    """
    dit = _project_dit()
    with torch.device(dev):  # initialise on the device: CPU init of 675M parameters takes seconds
        if dit is not None:
            if dry_run:
                model = dit.create_dit("DiT-Mi/2", norm=norm, input_size=8, num_classes=10)
            else:
                model = dit.create_dit("DiT-XL/2", norm=norm)
            return _dynamic(model), model.input_size, model.num_classes, "vision.models.dit"
        size = dict(depth=2, dim=64, heads=4, latent=8, classes=10) if dry_run else {}
        model = DiTStandIn(norm, **size, device=dev)
        return _dynamic(model), 8 if dry_run else 32, 10 if dry_run else 1000, "stand-in"


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
        model, latent, classes, _ = build_dit(norm, dry_run, dev)
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
    if _project_dit() is None:
        report.notes.append("DiT-XL/2 is timed as bench_gpu.DiTStandIn: vision.models.dit.create_dit does not exist")
    else:
        name = "DiT-Mi/2" if dry_run else "DiT-XL/2"
        report.notes.append(f"DiT-XL/2 rows: vision.models.dit.create_dit({name!r}, norm=...)")
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
    """Corruption-suite and FID-feature throughput where those modules provide them; else a note.

    Stops starting new measurements at ``deadline`` (a ``time.perf_counter()`` value).
    """
    batch, size, steps = (2, 32, 2) if dry_run else (64, 224, 3)
    if importlib.util.find_spec("vision.corruptions") is None:
        report.notes.append("corruption-suite throughput skipped: vision.corruptions does not exist yet")
    else:
        corruptions = importlib.import_module("vision.corruptions")
        corrupt, names = getattr(corruptions, "corrupt", None), getattr(corruptions, "CORRUPTIONS", None)
        if corrupt is None or names is None:
            report.notes.append("corruption-suite throughput skipped: vision.corruptions has no corrupt()/CORRUPTIONS")
        else:
            images = torch.rand(batch, 3, size, size, device=dev)
            for name in names:
                if time.perf_counter() > deadline:
                    report.notes.append(f"corruptions from {name!r} on skipped: time budget used")
                    break
                rate = _steps_per_second(lambda n=name: corrupt(images, n, 3, seed=0), 1, steps, dev)
                report.extras.append({"what": f"corruption {name} (severity 3)", "images_per_s": rate * batch})
    if importlib.util.find_spec("vision.metrics") is None:
        report.notes.append("FID-feature throughput skipped: vision.metrics does not exist yet")
    else:
        metrics = importlib.import_module("vision.metrics")
        extractor = getattr(metrics, "fid_feature_extractor", None)
        if extractor is None:
            report.notes.append("FID-feature throughput skipped: vision.metrics has no fid_feature_extractor()")
        elif time.perf_counter() > deadline:
            report.notes.append("FID-feature throughput skipped: time budget used")
        else:
            net = extractor(device=dev)
            images = torch.randint(0, 256, (batch, 3, 299, 299), dtype=torch.uint8, device=dev)
            with torch.no_grad():
                rate = _steps_per_second(lambda: net(images), 1, steps, dev)
            report.extras.append({"what": "FID Inception features", "images_per_s": rate * batch})


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

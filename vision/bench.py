"""Benchmarks that report speed as ratios measured side by side in one run.

``vision bench norms`` times forward+backward of every norm at ViT token shapes, eager and
compiled, and prints each as a ratio to ``torch.nn.LayerNorm`` (eager, same dtype and width).
Candidates are timed in interleaved rounds and summarised by their median, so a slow moment of a
shared machine hits all of them alike.
"""

from __future__ import annotations

import gc
import json
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vision.files import atomic_write
from vision.nn import build_norm, param_groups

BASELINE = "torch.nn.LayerNorm"
NORM_NAMES = ("layernorm", "rmsnorm", "dyt", "seednorm", "mhseednorm")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Timing:
    norm: str
    mode: str
    width: int
    dtype: str
    ms: float
    ratio: float


def _init_dynamic(module: nn.Module) -> nn.Module:
    # A trained SeeDNorm has nonzero beta; time the layer as it runs after training starts.
    if hasattr(module, "beta"):
        with torch.no_grad():
            module.beta.normal_(0.0, 0.02)
    return module


def _candidates(width: int, dtype: torch.dtype, device: torch.device, modes: tuple[str, ...], norms: tuple[str, ...]):
    factory = {"device": device, "dtype": dtype}
    torch_norms: dict[str, Callable[[], nn.Module]] = {
        "torch.nn.LayerNorm": lambda: nn.LayerNorm(width, eps=1e-6, **factory),
        "torch.nn.RMSNorm": lambda: nn.RMSNorm(width, eps=1e-6, **factory),
    }
    for name in norms:
        torch_norms[name] = lambda name=name: _init_dynamic(build_norm(name, width, **factory))
    out = [] if "eager" in modes else [(BASELINE, "eager", torch_norms[BASELINE]())]  # the ratios' base
    for name, make in torch_norms.items():
        for mode in modes:
            module = make()
            out.append((name, mode, torch.compile(module) if mode == "compiled" else module))
        if name in ("seednorm", "mhseednorm") and "eager" in modes:
            # The same layer run as a chain of unfused eager kernels, to show what fusion saves.
            out.append((name, "unfused", _init_dynamic(build_norm(name, width, impl="eager", **factory))))
    return out


def _step(module: Callable, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        module(x).backward(grad)

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(steps: dict[str, Callable[[], None]], rounds: int, iters: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each step, timed in interleaved rounds (garbage collector off)."""
    samples: dict[str, list[float]] = {k: [] for k in steps}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection would land on whichever candidate runs then
    try:
        _timed_rounds(steps, samples, rounds, iters, device)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {k: statistics.median(v) for k, v in samples.items()}


def _timed_rounds(steps, samples, rounds: int, iters: int, device: torch.device) -> None:
    # Each round runs the candidates in a new random order and gives each one untimed call first,
    # so no candidate always follows the same neighbour or starts with a cold cache.
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for key in order:
            step = steps[key]
            step()
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                step()
            _sync(device)
            samples[key].append((time.perf_counter() - start) / iters)


def bench_norms(
    widths: tuple[int, ...] = (384, 768),
    batch: int = 8,
    tokens: int = 197,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    modes: tuple[str, ...] = ("eager", "compiled"),
    norms: tuple[str, ...] = NORM_NAMES,
    rounds: int = 30,
    iters: int = 5,
    device: str = "cpu",
    out: str | None = None,
) -> list[Timing]:
    """Time forward+backward of every norm; print a table of ms and ratio to torch's LayerNorm.

    Args:
        widths: token widths (384 = ViT-S, 768 = ViT-B).
        batch: images per batch.
        tokens: tokens per image (197 = 14 x 14 patches + class token).
        dtypes: input dtypes to time.
        modes: "eager" (the module as built; SeeDNorm then uses its fused compiled kernels) and/or
            "compiled" (``torch.compile(module)``). SeeDNorm also gets an "unfused" row.
        norms: registry names to time besides torch's LayerNorm and RMSNorm.
        rounds: interleaved timing rounds (the median is reported).
        iters: calls per round.
        device: "cpu" or "cuda".
        out: optional JSON file for the results.
    """
    for name in norms:
        if name not in NORM_NAMES:
            raise ValueError(f"unknown norm {name!r}; expected some of {', '.join(NORM_NAMES)}")
    for mode in modes:
        if mode not in ("eager", "compiled"):
            raise ValueError(f"unknown mode {mode!r}; expected eager and/or compiled")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    dev = torch.device(device)
    results: list[Timing] = []
    torch.manual_seed(0)
    for width in widths:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            x = torch.randn(batch, tokens, width, device=dev, dtype=dtype, requires_grad=True)
            grad = torch.randn_like(x)
            steps = {}
            for name, mode, module in _candidates(width, dtype, dev, tuple(modes), tuple(norms)):
                steps[(name, mode)] = _step(module, x, grad)
                for _ in range(3):  # compile and warm up outside the timed rounds
                    steps[(name, mode)]()
            times = time_side_by_side(steps, rounds, iters, dev)
            base = times[(BASELINE, "eager")]
            for (name, mode), sec in times.items():
                results.append(Timing(name, mode, width, dtype_name, sec * 1e3, sec / base))
    print(format_table(results, batch, tokens, dev))
    if out:
        write_json(out, {"machine": machine_description(dev), "batch": batch, "tokens": tokens,
                         "results": [asdict(r) for r in results]})
    return results


def format_table(results: list[Timing], batch: int, tokens: int, device: torch.device) -> str:
    """A markdown table: one row per norm and mode, one column per width and dtype."""
    columns = sorted({(r.width, r.dtype) for r in results}, key=lambda c: (c[0], c[1] != "float32"))
    rows: dict[tuple[str, str], dict] = {}
    for r in results:
        rows.setdefault((r.norm, r.mode), {})[(r.width, r.dtype)] = r
    header = "| norm | mode | " + " | ".join(f"{w} {d}" for w, d in columns) + " |"
    lines = [
        f"forward+backward, batch {batch} x {tokens} tokens, {machine_description(device)}",
        f"ratio = time / {BASELINE} (eager) in the same run and column",
        "",
        header,
        "|" + "---|" * (len(columns) + 2),
    ]
    for (norm, mode), cells in rows.items():
        text = [f"{cells[c].ms:.3f} ms ({cells[c].ratio:.2f}x)" if c in cells else "-" for c in columns]
        lines.append(f"| {norm} | {mode} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + " CPU"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def write_json(path: str, payload: dict) -> None:
    """Write JSON atomically (a temporary file in the same folder, then a rename)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))


def _training_throughput(title: str, builders: dict, batch: int, rounds: int, iters: int, dev: torch.device,
                         out: str | None, unit: str, extra: dict) -> dict[str, float]:
    """Time one training step per norm side by side; print and return items/s and the ratio to LayerNorm."""
    steps = {}
    for norm, build in builders.items():
        model, loss_fn = build()
        optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)

        def step(model=model, optimizer=optimizer, loss_fn=loss_fn) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model).backward()
            optimizer.step()

        step()
        steps[norm] = step
    times = time_side_by_side(steps, rounds, iters, dev)
    results = {norm: batch / sec for norm, sec in times.items()}
    lines = [f"{title}, {machine_description(dev)}", "", f"| norm | {unit} | ratio to layernorm |", "|---|---|---|"]
    lines += [f"| {n} | {v:.2f} | {v / results['layernorm']:.3f}x |" for n, v in results.items()]
    print("\n".join(lines))
    if out:
        write_json(out, {"machine": machine_description(dev), **extra, unit: results})
    return results


def _autocast(dev: torch.device, precision: str):
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"unknown precision {precision!r}; expected float32 or bfloat16")
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def bench_train(
    arch: str = "vit_small_patch16_224",
    norms: tuple[str, ...] = NORM_NAMES,
    batch: int = 8,
    img_size: int = 224,
    precision: str = "float32",
    rounds: int = 5,
    iters: int = 2,
    device: str = "cpu",
    out: str | None = None,
) -> dict[str, float]:
    """Training throughput (images/s) of a ViT with each norm, as a ratio to LayerNorm in one run.

    Each step is forward, cross-entropy, backward and an AdamW step with ``vision.nn.param_groups``;
    the models take turns in interleaved rounds.

    Args:
        arch: ViT architecture from ``vision.models.VIT_ARCHS``.
        norms: norms to compare (layernorm is always included as the base).
        batch: images per step.
        img_size: input resolution.
        precision: "float32" or "bfloat16" (autocast).
        rounds: interleaved timing rounds (median reported).
        iters: steps per round.
        device: "cpu" or "cuda".
        out: optional JSON file for the results.
    """
    from vision.models import create_model

    dev = torch.device(device)
    autocast = _autocast(dev, precision)
    torch.manual_seed(0)

    def builder(norm: str):
        def build():
            model = create_model(arch, norm=norm, img_size=img_size).to(dev).train()
            images = torch.randn(batch, model.patch_embed.proj.in_channels, img_size, img_size, device=dev)
            labels = torch.randint(0, model.num_classes, (batch,), device=dev)

            def loss(model):
                with autocast:
                    return nn.functional.cross_entropy(model(images), labels)

            return model, loss

        return build

    names = ("layernorm",) + tuple(n for n in norms if n != "layernorm")
    title = f"training {arch}, batch {batch} x {img_size}px, {precision}"
    return _training_throughput(title, {n: builder(n) for n in names}, batch, rounds, iters, dev, out, "images/s",
                                {"arch": arch, "batch": batch, "img_size": img_size, "precision": precision})


def bench_dit(
    model: str = "DiT-B/4",
    norms: tuple[str, ...] = ("layernorm", "mhseednorm"),
    batch: int = 8,
    input_size: int = 32,
    in_channels: int = 4,
    precision: str = "float32",
    rounds: int = 5,
    iters: int = 2,
    device: str = "cpu",
    out: str | None = None,
) -> dict[str, float]:
    """DiT training steps/s with each norm, as a ratio to LayerNorm measured in the same run.

    A step is the diffusion loss on latents (ImageNet-256 latents are 32 x 32 x 4), backward and
    an AdamW step, with DiT's learned sigma and hybrid loss.

    Args:
        model: a name from ``vision.models.dit.DiT_models``.
        norms: norms to compare (layernorm is always included as the base).
        batch: latents per step.
        input_size: latent side.
        in_channels: latent channels.
        precision: "float32" or "bfloat16" (autocast).
        rounds: interleaved timing rounds (median reported).
        iters: steps per round.
        device: "cpu" or "cuda".
        out: optional JSON file for the results.
    """
    from vision.diffusion import diffusion_loss, train_scheduler
    from vision.models.dit import create_dit

    dev = torch.device(device)
    autocast = _autocast(dev, precision)
    scheduler = train_scheduler(learn_sigma=True)
    torch.manual_seed(0)
    x0 = torch.randn(batch, in_channels, input_size, input_size, device=dev)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    x_t = scheduler.add_noise(x0, noise, t)

    def builder(norm: str):
        def build():
            dit = create_dit(model, input_size=input_size, in_channels=in_channels, norm=norm).to(dev).train()

            def loss(dit):
                with autocast:
                    out = dit(x_t, t, y)
                return diffusion_loss(scheduler, out, x0, x_t, noise, t, learn_sigma=True)["loss"]

            return dit, loss

        return build

    names = ("layernorm",) + tuple(n for n in norms if n != "layernorm")
    per_step = {n: builder(n) for n in names}
    title = f"training {model}, batch {batch} x {input_size}x{input_size}x{in_channels} latents, {precision}"
    results = _training_throughput(title, per_step, 1, rounds, iters, dev, out, "steps/s",
                                   {"model": model, "batch": batch, "input_size": input_size, "precision": precision})
    return results

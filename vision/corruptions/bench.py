"""Throughput of the batched corruptions against the per-image NumPy reference, in one run.

``bench_corruptions`` times every corruption of the suite at every severity on the same real
photos (scikit-image's sample images), batched through ``vision.corruptions.corrupt`` and one
image at a time through the NumPy/SciPy/PIL reference the tests use (``tests/corruption_reference.py``,
which is not part of the installed package: pass ``reference=`` elsewhere). Rounds interleave the
two, so a busy moment of a shared machine hits both alike; the reported rate of each side is its
images over its summed time, per corruption and for the whole suite.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from vision.bench import machine_description, write_json
from vision.corruptions.params import COMMON, PARAMS
from vision.corruptions.registry import corrupt, get_corruption, resolve_scale

SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def sample_photos(size: int, count: int) -> np.ndarray:
    """``count`` real RGB photos from scikit-image's data module, centre-cropped and resized to ``size``.

    Returns uint8 (count, size, size, 3); the available photos repeat if ``count`` is larger.
    """
    from PIL import Image
    from skimage import data

    photos = []
    for name in SAMPLE_IMAGES:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        photos.append(np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)))
    return np.stack([photos[i % len(photos)] for i in range(count)])


def load_reference(path: str | Path | None = None) -> ModuleType:
    """Import the NumPy reference module (default: ``tests/corruption_reference.py`` of this checkout)."""
    path = Path(path) if path is not None else Path(__file__).resolve().parents[2] / "tests" / "corruption_reference.py"
    if not path.is_file():
        raise FileNotFoundError(f"reference implementation not found at {path}; run from a source checkout "
                                "or pass reference= (a module with corrupt(x, name, c, scale, rng))")
    spec = importlib.util.spec_from_file_location("corruption_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_corruptions(batch: int = 32, size: int = 224, device: str = "cpu", rounds: int = 2,
                      reference_images: int = 2, names: Sequence[str] = COMMON,
                      severities: Sequence[int] = (1, 2, 3, 4, 5), threads: int | None = None,
                      reference: ModuleType | None = None, out: str | None = None,
                      verbose: bool = True) -> dict[str, Any]:
    """Corrupted images per second, batched (``batch`` images per call) and one by one (the reference).

    Every round runs each corruption at each severity once on the batch and on
    ``reference_images`` single images. ``threads`` sets torch's CPU threads for the run (the
    reference is single-threaded NumPy). Prints a table (``verbose``), writes JSON to ``out`` if
    given, and returns the numbers, including the whole-suite ratio.
    """
    for name in names:
        get_corruption(name)
    dev = torch.device(device)
    ref = reference if reference is not None else load_reference()
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        photos = sample_photos(size, batch)
        x = torch.from_numpy(photos).permute(0, 3, 1, 2).float().div(255).to(dev)
        singles = photos[:reference_images].astype(np.float64) / 255
        scale = resolve_scale("auto", x)
        rng = np.random.default_rng(0)
        ours = {n: 0.0 for n in names}
        theirs = {n: 0.0 for n in names}
        for name in names:  # untimed warm-up: lazy caches (textures, filter matrices)
            corrupt(x[:2], name, 1, seed=0)
        for r in range(rounds):
            for name in names:
                for s in severities:
                    c = PARAMS[name][scale][s - 1]
                    _sync(dev)
                    start = time.perf_counter()
                    corrupt(x, name, s, seed=r * 10 + s)
                    _sync(dev)
                    ours[name] += time.perf_counter() - start
                    start = time.perf_counter()
                    for img in singles:
                        ref.corrupt(img, name, c, scale, rng)
                    theirs[name] += time.perf_counter() - start
        runs = rounds * len(severities)
        rows = []
        for name in names:
            ips_ours = batch * runs / ours[name]
            ips_ref = len(singles) * runs / theirs[name]
            rows.append({"corruption": name, "batched_img_per_s": ips_ours, "reference_img_per_s": ips_ref,
                         "ratio": ips_ours / ips_ref})
        # The whole suite: corrupted images (one corruption at one severity each) over total time.
        suite_ours = batch * runs * len(names) / sum(ours.values())
        suite_ref = len(singles) * runs * len(names) / sum(theirs.values())
        result = {
            "machine": machine_description(dev), "torch_threads": torch.get_num_threads(), "size": size,
            "scale": scale, "batch": batch, "reference_images": len(singles), "rounds": rounds,
            "severities": list(severities), "rows": rows,
            "suite": {"batched_img_per_s": suite_ours, "reference_img_per_s": suite_ref,
                      "ratio": suite_ours / suite_ref},
        }
    finally:
        torch.set_num_threads(old_threads)
    if verbose:
        print(format_table(result))
    if out is not None:
        write_json(out, result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of a ``bench_corruptions`` result."""
    lines = [(f"corruptions at {result['size']} px ({result['scale']} table), severities {result['severities']}, "
             f"batch {result['batch']} vs {result['reference_images']} single images, {result['rounds']} rounds; "
             f"{result['machine']}"),
             "| corruption | batched img/s | reference img/s | ratio |", "|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['corruption']} | {row['batched_img_per_s']:.1f} | {row['reference_img_per_s']:.1f} "
                     f"| {row['ratio']:.1f}x |")
    suite = result["suite"]
    lines.append(f"| **whole suite** | {suite['batched_img_per_s']:.2f} | {suite['reference_img_per_s']:.2f} "
                 f"| **{suite['ratio']:.1f}x** |")
    return "\n".join(lines)

"""Corruption with random draws seeded per image, for evaluation that any batching reproduces.

``corrupt(images, ..., seed=s)`` draws for the whole batch from one generator, so an image's
corruption depends on which images share its batch. Evaluation splits a dataset into different
batches on every device count and batch size; seeding each image's draws by (seed, corruption,
severity, image index) makes its corrupted version the same in every split. Each image's output
equals ``corrupt(image[None], name, severity, seed=image_seed(...))``; only the draws are per
image, the deterministic part of the corruption still runs on the whole batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vision.corruptions.registry import (
    MIN_SIZE,
    check_images,
    check_severity,
    get_corruption,
    make_generator,
    resolve_scale,
    to_uint8,
)

# The dimension that indexes images in a draw, where it is not the first one.
_DRAW_BATCH_DIM = {("glass_blur", "offsets"): 1}


def image_seed(seed: int, name: str, severity: int, index: int) -> int:
    """A 63-bit seed for one image's draws, stable across processes and Python versions."""
    key = f"{int(seed)}/{name}/{int(severity)}/{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def corrupt_indexed(images: Tensor, name: str, severity: int, indices: Sequence[int] | Tensor, *, seed: int = 0,
                    scale: str = "auto") -> Tensor:
    """Corrupt a float (N, C, H, W) batch in [0, 1], drawing each image's randomness from its index.

    Args:
        images: the batch, on the device that evaluates it (the corruption runs there).
        name: corruption name (``vision.corruptions.CORRUPTIONS``).
        severity: 1-5.
        indices: one dataset index per image; the draws depend only on (seed, name, severity, index).
        seed: the evaluation seed.
        scale: "auto", "imagenet" or "cifar" parameter table.
    """
    entry = get_corruption(name)
    check_severity(severity)
    check_images(images, name)
    indices = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
    if len(indices) != images.shape[0]:
        raise ValueError(f"need one index per image; got {len(indices)} indices for {images.shape[0]} images")
    scale = resolve_scale(scale, images)
    c = entry.parameters(severity, scale)
    with torch.no_grad():
        # The entry's own grey <-> RGB handling, so colour corruptions treat 1-channel images as corrupt() does.
        x, restore = entry._prepare(images)
        draws = {}
        if entry.random:
            generators = [make_generator(x.device, image_seed(seed, name, severity, k), None) for k in indices]
            parts = [entry.draw(x[i:i + 1], c, scale, g) for i, g in enumerate(generators)]
            draws = {key: torch.cat([p[key] for p in parts], dim=_DRAW_BATCH_DIM.get((name, key), 0))
                     for key in parts[0]}
        return restore(entry.apply(x, c, scale, draws).clamp_(0, 1))


def corrupt_for_evaluation(images: Tensor, name: str, severity: int, indices: Sequence[int] | Tensor, *,
                           seed: int = 0, scale: str = "auto") -> Tensor:
    """``corrupt_indexed``, then stored as 8 bits the way the released CIFAR-C / ImageNet-C files are.

    Images smaller than the tables' smallest size (32 px, e.g. the 8 x 8 digits) are enlarged by
    an integer factor with nearest-neighbour copies, corrupted there, and averaged back over the
    same blocks; so an image the corruption leaves unchanged comes back exactly. (The digits were
    made that way: 4 x 4 block counts of 32 x 32 bitmaps, so this corrupts them at their drawing
    resolution.) The output keeps the input's shape; values are truncated to k/255 before
    averaging, as ``np.uint8(255 x)`` stores them (ImageNet-C's further JPEG-85 step is not applied).
    """
    side = min(images.shape[-2:])
    factor = max(1, math.ceil(MIN_SIZE / side)) if side > 0 else 1
    x = F.interpolate(images, scale_factor=factor, mode="nearest") if factor > 1 else images
    x = to_uint8(corrupt_indexed(x, name, severity, indices, seed=seed, scale=scale)).to(images.dtype) / 255
    return F.avg_pool2d(x, factor) if factor > 1 else x

"""Image tensors <-> uint8 arrays and PNG grids, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from vision.files import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded and clamped (not truncated)."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write one uint8 HWC image (C = 1 or 3) as PNG, atomically."""
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def save_grid(images: torch.Tensor, nrow: int, path: str | Path, upscale: int = 1) -> None:
    """A grid of images (N, C, H, W) in [-1, 1], ``nrow`` per row, optionally upscaled (nearest)."""
    if upscale > 1:
        images = torch.nn.functional.interpolate(images.float(), scale_factor=upscale, mode="nearest")
    grid = make_grid(images.float().clamp(-1, 1), nrow=nrow, padding=2, pad_value=1.0)
    save_png(to_uint8(grid[None])[0], path)

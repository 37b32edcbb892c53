"""Blur corruptions: defocus, glass, motion, zoom and gaussian blur (``draw_*`` / ``apply_*`` pairs)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from vision.corruptions._ops import (
    clipped_zoom,
    exact_dtype,
    filter2d_reflect101,
    gaussian_filter,
    gaussian_filter_scipy_order,
    imagemagick_to_8bit,
    motion_blur,
)

Draws = dict[str, Tensor]


def _no_draws(x: Tensor, c, scale: str, g: torch.Generator | None) -> Draws:
    return {}


# ---- defocus blur ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's anti-aliased disk: a normalised binary disk, smoothed by OpenCV ``GaussianBlur``.

    The grid has half-width max(8, radius); the smoothing kernel is 3x3 (radius <= 8) or 5x5 with
    sigma ``alias_blur`` and OpenCV's default BORDER_REFLECT_101. All-zero outer rows and columns
    are trimmed (they change nothing), so small disks cost a small convolution.
    """
    if radius <= 8:
        grid, ksize = np.arange(-8, 8 + 1), 3
    else:
        grid, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float32)
    disk /= disk.sum()
    # cv2.getGaussianKernel(ksize, sigma) for sigma > 0, computed in double and stored as float32
    t = np.arange(ksize) - (ksize - 1) * 0.5
    g = np.exp(-0.5 * t * t / (alias_blur * alias_blur))
    g = (g / g.sum()).astype(np.float32).astype(np.float64)
    pad = ksize // 2
    padded = np.pad(disk.astype(np.float64), pad, mode="reflect")  # NumPy 'reflect' is REFLECT_101
    rows = sum(g[k] * padded[:, k:k + disk.shape[1]] for k in range(ksize))
    kernel = sum(g[k] * rows[k:k + disk.shape[0], :] for k in range(ksize)).astype(np.float32)
    nonzero = np.nonzero(np.abs(kernel).sum(0))[0]
    trim = min(nonzero[0], kernel.shape[0] - 1 - nonzero[-1])
    return kernel[trim:kernel.shape[0] - trim, trim:kernel.shape[1] - trim]


def apply_defocus_blur(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """Convolve every channel with ``disk_kernel(radius, alias_blur)`` (OpenCV ``filter2D``, REFLECT_101)."""
    return filter2d_reflect101(x, torch.from_numpy(disk_kernel(*c)))


# ---- glass blur -------------------------------------------------------------------------------------

def draw_glass_blur(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """One (dy, dx) per visited pixel and iteration, uniform in ``[-delta, delta - 1]`` like NumPy's randint.

    ``offsets[k, n, :, i, j]`` belongs to row ``delta + 1 + i`` and column ``delta + 1 + j`` of
    image ``n`` in iteration ``k``.
    """
    _, delta, iterations = c
    n, _, h, w = x.shape
    return {"offsets": torch.randint(-delta, delta, (iterations, n, 2, h - 2 * delta, w - 2 * delta),
                                     generator=g, device=x.device, dtype=torch.int8)}


def glass_sources(offsets: Tensor, h: int, w: int, delta: int) -> Tensor:
    """Flat source index of every output pixel after ImageNet-C's pixel "swaps", shape (N, h*w).

    The reference visits rows ``h - delta .. delta + 1`` and, in each, columns ``w - delta .. delta + 1``
    (descending) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on an (H, W, 3) array. Both
    sides are NumPy views, so the second assignment writes back what the first just copied: the
    statement is really ``x[h, w] = x[h', w']``. A visited pixel thus takes the current value of its
    source, which is final if the source was visited earlier (a larger raster index) and original
    otherwise. Following "visited earlier" links to their ends gives every pixel's original source;
    the links point strictly forward in raster order, so pointer jumping resolves them in
    O(log chain length) parallel steps, and the result equals the sequential loop exactly.
    """
    iterations, n = offsets.shape[:2]
    device = offsets.device
    hv, wv = h - 2 * delta, w - 2 * delta
    i = torch.arange(hv, device=device, dtype=torch.int32)[:, None]
    j = torch.arange(wv, device=device, dtype=torch.int32)[None, :]
    own = (i * wv + j).long().reshape(1, -1)  # a visited pixel's index among the visited ones
    flat = ((i + delta + 1) * w + (j + delta + 1)).long().reshape(1, -1)  # ... and in the image
    total = torch.arange(h * w, device=device).expand(n, h * w)
    for k in range(iterations):
        dy, dx = offsets[k, :, 0].int(), offsets[k, :, 1].int()
        forward = (dy > 0) | ((dy == 0) & (dx > 0))  # the source comes later in raster order
        earlier = forward & (i + dy < hv) & (j + dx < wv) & (j + dx >= 0)  # ... and was visited
        step_v = (dy * wv + dx).reshape(n, -1).long()
        pointer = own + torch.where(earlier.reshape(n, -1), step_v, 0)
        while True:
            jumped = pointer.gather(1, pointer)
            if torch.equal(jumped, pointer):
                break
            pointer = jumped
        source = flat + (dy * w + dx).reshape(n, -1).long()
        step = torch.arange(h * w, device=device).repeat(n, 1)
        step.view(n, h, w)[:, delta + 1:h - delta + 1, delta + 1:w - delta + 1] = (
            source.gather(1, pointer).view(n, hv, wv))
        total = total.gather(1, step)  # iteration k reads the previous iteration's output
    return total


def apply_glass_blur(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """Gaussian blur, truncate to 8 bits, ImageNet-C's sequential pixel shuffle, Gaussian blur again.

    The input is taken as 8-bit (``round(x * 255)``), as the reference's PIL image is.
    """
    sigma, delta, _ = c
    n, ch, h, w = x.shape
    # The reference blurs k / 255 in float64 and truncates (np.uint8): same inputs, same sums.
    exact = torch.round(x.to(exact_dtype(x.device)) * 255) / 255
    blurred = torch.floor(gaussian_filter_scipy_order(exact, sigma) * 255)
    source = glass_sources(d["offsets"], h, w, delta)
    shuffled = blurred.reshape(n, ch, h * w).gather(2, source[:, None].expand(n, ch, -1)).reshape(n, ch, h, w)
    return gaussian_filter(shuffled.to(x.dtype) / 255, sigma)


# ---- motion blur ------------------------------------------------------------------------------------

def draw_motion_blur(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """One uniform per image for the angle, U(-45, 45) degrees."""
    return {"u_angle": torch.rand(x.shape[0], generator=g, device=x.device, dtype=torch.float64)}


def apply_motion_blur(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """ImageMagick ``MotionBlurImage(radius, sigma, angle)`` on the 8-bit image, 8-bit result."""
    angle = -45 + 90 * d["u_angle"]
    out = motion_blur(torch.round(x.to(exact_dtype(x.device)) * 255), c[0], c[1], angle)
    return (imagemagick_to_8bit(out) / 255).to(x.dtype)


# ---- zoom blur --------------------------------------------------------------------------------------

def zoom_factors(c: tuple) -> np.ndarray:
    """``np.arange(start, stop, step)`` exactly as the reference builds it (float steps included)."""
    return np.arange(*c)


def apply_zoom_blur(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """Average of the image and its ``clipped_zoom`` at every factor."""
    factors = zoom_factors(c)
    out = x.clone()
    for z in factors:
        out += clipped_zoom(x, float(z))
    return out / (len(factors) + 1)


# ---- gaussian blur (hold-out) -----------------------------------------------------------------------

def apply_gaussian_blur(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """scikit-image ``gaussian(sigma=c)`` per channel (truncate 4, boundary 'nearest')."""
    return gaussian_filter(x, c)

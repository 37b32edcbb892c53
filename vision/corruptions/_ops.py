"""Batched building blocks with the boundary and rounding rules of the libraries ImageNet-C used.

Linear filters along one axis (SciPy's ``gaussian_filter1d``, PIL's BOX resampling) are applied as
small dense matrices: any kernel length and any boundary rule is then one exact matmul, including
the elastic transform's 1,025-tap Gaussian on a 224-pixel axis, where padding-based convolution
would need repeated reflection.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def exact_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it: for steps the reference does in float64 before rounding."""
    return torch.float32 if device.type == "mps" else torch.float64


def extend_index(j: Tensor, n: int, mode: str) -> Tensor:
    """Map integer positions, possibly outside ``[0, n)``, into range under a boundary rule.

    ``nearest`` repeats the edge (SciPy 'nearest', OpenCV BORDER_REPLICATE); ``reflect`` is
    SciPy's half-sample symmetric rule (d c b a | a b c d | d c b a); ``mirror`` is SciPy's
    'mirror', OpenCV's default BORDER_REFLECT_101 and torch's 'reflect' (d c b | a b c d | c b a).
    """
    if mode == "nearest":
        return j.clamp(0, n - 1)
    if mode == "reflect":
        m = j.remainder(2 * n)
        return torch.where(m >= n, 2 * n - 1 - m, m)
    if mode == "mirror":
        if n == 1:
            return torch.zeros_like(j)
        m = j.remainder(2 * n - 2)
        return torch.where(m >= n, 2 * n - 2 - m, m)
    raise ValueError(f"unknown boundary mode {mode!r}; expected 'nearest', 'reflect' or 'mirror'")


def scipy_gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    """SciPy's ``gaussian_filter1d`` weights: radius ``int(truncate * sigma + 0.5)``, normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)  # SciPy's expression, operation for operation
    return phi / phi.sum()


@functools.lru_cache(maxsize=256)
def _filter_matrix(n: int, weights: tuple[float, ...], mode: str) -> Tensor:
    r = len(weights) // 2
    rows = torch.arange(n).repeat_interleave(len(weights))
    taps = torch.arange(-r, r + 1).repeat(n)
    cols = extend_index(rows + taps, n, mode)
    out = torch.zeros(n, n, dtype=torch.float64)
    out.index_put_((rows, cols), torch.tensor(weights, dtype=torch.float64).repeat(n), accumulate=True)
    return out


@functools.lru_cache(maxsize=256)
def gaussian_matrix(n: int, sigma: float, truncate: float, mode: str, device: torch.device,
                    dtype: torch.dtype) -> Tensor:
    """(n, n) matrix ``G`` with ``G @ v`` equal to SciPy's ``gaussian_filter1d(v, sigma, truncate, mode)``."""
    if sigma <= 1e-15:  # SciPy skips axes whose sigma is zero
        return torch.eye(n, dtype=dtype, device=device)
    weights = tuple(scipy_gaussian_kernel(sigma, truncate).tolist())
    return _filter_matrix(n, weights, mode).to(device=device, dtype=dtype)


def gaussian_filter(x: Tensor, sigma: float, *, truncate: float = 4.0, mode: str = "nearest") -> Tensor:
    """Gaussian blur over the last two axes, equal to scikit-image ``filters.gaussian`` per channel.

    scikit-image's defaults are SciPy's: truncate 4 sigma, boundary 'nearest'.
    """
    h, w = x.shape[-2:]
    gh = gaussian_matrix(h, float(sigma), float(truncate), mode, x.device, x.dtype)
    gw = gaussian_matrix(w, float(sigma), float(truncate), mode, x.device, x.dtype)
    return torch.matmul(gh, torch.matmul(x, gw.T))


def gaussian_filter_scipy_order(x: Tensor, sigma: float, *, truncate: float = 4.0) -> Tensor:
    """``gaussian_filter`` ('nearest') summed in SciPy's order, for float64 bit-for-bit agreement.

    SciPy filters rows first, then columns, and for a symmetric kernel computes
    ``x[i] * w[0]`` plus ``(x[i - k] + x[i + k]) * w[k]`` from the outermost k inwards; each step
    here is one rounding, as in SciPy's C loop. Used where the result is truncated to 8 bits,
    so that the truncation lands on the same side as the reference.
    """
    weights = scipy_gaussian_kernel(sigma, truncate)
    r = len(weights) // 2
    out = torch.empty_like(x)
    for i in range(x.shape[0]):  # one image at a time keeps the many elementwise passes in cache
        y = x[i]
        for dim in (-2, -1):
            n = y.shape[dim]
            padded = y.index_select(dim, extend_index(torch.arange(-r, n + r, device=x.device), n, "nearest"))
            acc = y * float(weights[r])
            for k in range(r, 0, -1):
                pair = padded.narrow(dim, r - k, n) + padded.narrow(dim, r + k, n)
                pair *= float(weights[r + k])
                acc += pair
            y = acc
        out[i] = y
    return out


def filter2d_reflect101(x: Tensor, kernel: Tensor) -> Tensor:
    """OpenCV ``filter2D`` (correlation, anchor at the centre, BORDER_REFLECT_101) on every channel.

    Computed as a product of spectra of the reflect-padded image: on a CPU this is several times
    faster than torch's single-channel ``conv2d`` even for 3x3 kernels. The padded image is larger
    than the kernel, so the circular wrap never reaches the kept window; agrees with the direct
    sum to ~1e-6.
    """
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    kernel = kernel.to(x)
    padded = F.pad(x.reshape(n * c, 1, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode="reflect")
    size = (next_power_of_2(padded.shape[-2]), next_power_of_2(padded.shape[-1]))
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(torch.flip(kernel, (0, 1)), s=size)
    out = torch.fft.irfft2(spectrum, s=size)[..., kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]
    return out.reshape(n, c, h, w)


def correlate3x3(padded: Tensor, kernel: tuple[tuple[float, ...], ...]) -> Tensor:
    """Correlation of an already padded (..., H + 2, W + 2) tensor with a 3x3 kernel, by shifted sums.

    Exact for integer-valued data and kernels (no FFT rounding), and fast for 3x3.
    """
    h, w = padded.shape[-2] - 2, padded.shape[-1] - 2
    out = torch.zeros_like(padded[..., 1:-1, 1:-1])
    for i in range(3):
        for j in range(3):
            if kernel[i][j]:
                out += kernel[i][j] * padded[..., i:i + h, j:j + w]
    return out


def grid_sample_pixels(x: Tensor, ys: Tensor, xs: Tensor, mode: str) -> Tensor:
    """Bilinear samples of every image at pixel coordinates (N, H', W'), out-of-range per ``mode``.

    ``mirror`` (OpenCV REFLECT_101) is grid_sample's reflection about the edge pixel centres
    (align_corners=True); ``reflect`` (SciPy's half-sample symmetric rule, as in
    ``map_coordinates(order=1, mode='reflect')``) is reflection about the image border
    (align_corners=False). Both then interpolate exactly as the reference libraries do.
    """
    h, w = x.shape[-2:]
    dt = x.dtype
    if mode == "mirror":
        gx, gy = xs.to(dt) * (2 / max(w - 1, 1)) - 1, ys.to(dt) * (2 / max(h - 1, 1)) - 1
        align = True
    elif mode == "reflect":
        gx, gy = (xs.to(dt) * 2 + 1) / w - 1, (ys.to(dt) * 2 + 1) / h - 1
        align = False
    else:
        raise ValueError(f"unknown boundary mode {mode!r}; expected 'mirror' or 'reflect'")
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align)


def clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """ImageNet-C's ``clipped_zoom``: centre crop of ``ceil(size / zoom)``, SciPy ``zoom(order=1)``, trim.

    SciPy's order-1 zoom maps output pixel ``o`` to input ``o * (in - 1) / (out - 1)`` with
    ``out = round(in * zoom)``: bilinear resampling with aligned corners.
    """
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    oh, ow = round(ch * zoom), round(cw * zoom)
    if (oh, ow) != (ch, cw):
        crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return crop[..., th:th + h, tw:tw + w]


def motion_kernel(radius: float, sigma: float, angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ImageMagick's ``MotionBlurImage`` taps: weights and per-image integer offsets (dy, dx).

    From ImageMagick 6 ``effect.c``: width ``2 * ceil(radius) + 1``, one-sided Gaussian weights
    ``exp(-i^2 / (2 sigma^2))`` normalised, offsets ``ceil(i * cos|sin(angle) - 0.5)``; pixels outside
    the image repeat the edge (its default virtual-pixel method). Computed in float64 on the CPU.
    """
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64)
    sig = max(abs(sigma), 1e-12)
    weights = torch.exp(-(i * i) / (2.0 * sig * sig)) / (math.sqrt(2 * math.pi) * sig)
    weights = weights / weights.sum()
    rad = angles.detach().to("cpu", torch.float64)[:, None] * (math.pi / 180.0)
    px, py = width * torch.sin(rad), width * torch.cos(rad)
    hyp = torch.hypot(px, py)
    dx = torch.ceil(i * py / hyp - 0.5).long()
    dy = torch.ceil(i * px / hyp - 0.5).long()
    return weights, dy, dx


def motion_blur(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """ImageMagick-style motion blur with one angle (degrees) per image; edges replicate.

    Every image has its own taps, so this loops over images and taps; each step adds a shifted
    view of the edge-padded image (no copies), which beats one batched gather per tap.
    """
    weights, dy, dx = motion_kernel(radius, sigma, angles)
    n, _, h, w = x.shape
    pad = int(max(dy.abs().max(), dx.abs().max()))
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x
    out = torch.zeros_like(x)
    for i in range(n):
        acc = out[i]
        for weight, oy, ox in zip(weights.tolist(), (dy[i] + pad).tolist(), (dx[i] + pad).tolist()):
            # one fused multiply-add per tap; differs from ImageMagick's separate ones by an ulp
            acc.add_(padded[i, :, oy:oy + h, ox:ox + w], alpha=weight)
    return out


def imagemagick_to_8bit(s: Tensor) -> Tensor:
    """The 8-bit values ImageMagick (Q16) writes for a filtered 0-255 result ``s``.

    ClampToQuantum rounds ``257 s`` to a 16-bit quantum; writing the 8-bit PNG then truncates
    ``q / 257``. Checked bit-for-bit against ImageMagick 6.9.11-60 Q16 through Wand.
    """
    q = torch.floor(s.clamp(0, 255) * 257 + 0.5)
    return torch.floor(q / 257)


def plasma_uniforms(batch: int, mapsize: int, generator: torch.Generator | None, device: torch.device,
                    dtype: torch.dtype) -> list[Tensor]:
    """The uniform [0, 1) draws the diamond-square fractal consumes, in the reference's order."""
    out = []
    step = mapsize
    while step >= 2:
        k = mapsize // step
        for _ in range(3):  # squares, then the two diamond sets
            out.append(torch.rand(batch, k, k, generator=generator, device=device, dtype=dtype))
        step //= 2
    return out


def plasma_fractal(uniforms: list[Tensor], mapsize: int, wibbledecay: float) -> Tensor:
    """ImageNet-C's diamond-square height map in [0, 1], one per image, from the given uniform draws.

    Every step of ``plasma_fractal`` in make_imagenet_c.py is vectorised over the batch; draws are
    consumed as NumPy's ``uniform(-wibble, wibble)`` does: ``low + (high - low) * u``.
    """
    batch = uniforms[0].shape[0]
    m = torch.zeros(batch, mapsize, mapsize, dtype=uniforms[0].dtype, device=uniforms[0].device)
    step, wibble, k = mapsize, 100.0, 0

    def wibbled_mean(total: Tensor, u: Tensor) -> Tensor:
        return total / 4 + wibble * (-wibble + 2 * wibble * u)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, dims=1)
        squares = squares + torch.roll(squares, -1, dims=2)
        m[:, half::step, half::step] = wibbled_mean(squares, uniforms[k])
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        m[:, 0::step, half::step] = wibbled_mean(left, uniforms[k + 1])
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        m[:, half::step, 0::step] = wibbled_mean(top, uniforms[k + 2])
        step, wibble, k = half, wibble / wibbledecay, k + 3
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@functools.lru_cache(maxsize=64)
def pil_box_matrix(in_size: int, out_size: int) -> Tensor:
    """(out, in) matrix of PIL's BOX resampling weights (``Image.resize(..., Image.BOX)``).

    PIL averages, with equal weights, the input pixels whose centres fall inside an output pixel's
    footprint ``(o * s, (o + 1) * s]`` (``s = in / out``) when shrinking, and copies the pixel under
    the output centre when enlarging. The membership tests are done in integers, so no rounding.
    """
    o = torch.arange(out_size)[:, None]
    j = torch.arange(in_size)[None, :]
    centre2 = (2 * j + 1) * out_size  # 2 * out * (j + 1/2)
    if in_size > out_size:
        member = (2 * in_size * o < centre2) & (centre2 <= 2 * in_size * (o + 1))
    else:  # the one pixel with centre in (c - 1/2, c + 1/2], c = (2o + 1) * in / (2 out)
        member = ((2 * o + 1) * in_size - out_size < centre2) & (centre2 <= (2 * o + 1) * in_size + out_size)
    weights = member.double()
    return weights / weights.sum(dim=1, keepdim=True)


def round_half_up(x: Tensor) -> Tensor:
    """``floor(x + 0.5)``: how PIL's fixed-point resampler rounds to 8 bits."""
    return torch.floor(x + 0.5)

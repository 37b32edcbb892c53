"""Weather corruptions: snow, frost, fog and the hold-out spatter (``draw_*`` / ``apply_*`` pairs)."""

from __future__ import annotations

import functools
import importlib.resources
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vision.corruptions._ops import (
    clipped_zoom,
    correlate3x3,
    exact_dtype,
    gaussian_filter,
    imagemagick_to_8bit,
    motion_blur,
    next_power_of_2,
    plasma_fractal,
    plasma_uniforms,
)

Draws = dict[str, Tensor]

# cv2.COLOR_RGB2GRAY weights for float images
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


# ---- snow -------------------------------------------------------------------------------------------

def draw_snow(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """A standard normal per pixel (the snow layer) and one uniform per image (the streak angle)."""
    n, _, h, w = x.shape
    return {"z": torch.randn(n, 1, h, w, generator=g, device=x.device, dtype=exact_dtype(x.device)),
            "u_angle": torch.rand(n, generator=g, device=x.device, dtype=torch.float64)}


def apply_snow(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """ImageNet-C snow: zoomed thresholded noise, ImageMagick motion streaks, a whitened image, two layers.

    The snow layer goes through ImageMagick as an 8-bit PNG (truncated on the way in, ImageMagick's
    8-bit rounding on the way out); the streak angle is U(-135, -45) degrees.
    """
    loc, spread, zoom, threshold, radius, sigma, weight = c
    layer = clipped_zoom(loc + spread * d["z"], zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255)
    layer = imagemagick_to_8bit(motion_blur(layer, radius, sigma, -135 + 90 * d["u_angle"])).to(x.dtype) / 255
    gray = sum(wt * x[:, i:i + 1] for i, wt in enumerate(GRAY_WEIGHTS))
    x = weight * x + (1 - weight) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


# ---- frost ------------------------------------------------------------------------------------------

# Texture index -> file. frost3.png has the same pixels as frost2.png, so index 2 reuses it
# (frost/NOTICE); frost6.jpg is never drawn (randint(5)).
FROST_FILES = ("frost1.png", "frost2.png", "frost2.png", "frost4.jpg", "frost5.jpg")
# make_cifar_c.py shrinks the textures with cv2.resize(fx=fy=0.2, INTER_LINEAR): output pixel i
# reads source coordinate (i + 0.5) * 5 - 0.5 = 5i + 2 exactly, i.e. it samples every fifth pixel.
CIFAR_FROST_STEP, CIFAR_FROST_PHASE = 5, 2


@functools.lru_cache(maxsize=2)
def frost_arrays(scale: str) -> tuple[np.ndarray, ...]:
    """The five frost textures as uint8 (H, W, 3) RGB arrays, shrunk for the CIFAR scale."""
    root = importlib.resources.files("vision.corruptions") / "frost"
    out = []
    for name in FROST_FILES:
        with (root / name).open("rb") as fh:
            tex = np.array(Image.open(fh).convert("RGB"))  # RGBA -> RGB drops alpha, as cv2.imread does
        if scale == "cifar":
            h, w = tex.shape[:2]
            tex = tex[CIFAR_FROST_PHASE::CIFAR_FROST_STEP, CIFAR_FROST_PHASE::CIFAR_FROST_STEP]
            tex = tex[:round(h / CIFAR_FROST_STEP), :round(w / CIFAR_FROST_STEP)]
        out.append(np.ascontiguousarray(tex))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def frost_textures(scale: str, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Stacked textures (5, Hmax, Wmax, 3) uint8 on ``device`` and their sizes (5, 2).

    A texture smaller than the image (only for images larger than the scale's native size) is
    enlarged with PIL bicubic just enough to cover it; the reference has no such case.
    """
    textures = []
    for tex in frost_arrays(scale):
        th, tw = tex.shape[:2]
        if th < h or tw < w:
            f = max(h / th, w / tw)
            size = (math.ceil(tw * f), math.ceil(th * f))
            tex = np.array(Image.fromarray(tex).resize(size, Image.BICUBIC))
        textures.append(torch.from_numpy(np.array(tex)))
    sizes = torch.tensor([t.shape[:2] for t in textures])
    stack = torch.zeros(len(textures), int(sizes[:, 0].max()), int(sizes[:, 1].max()), 3, dtype=torch.uint8)
    for i, t in enumerate(textures):
        stack[i, :t.shape[0], :t.shape[1]] = t
    return stack.to(device), sizes.to(device)


def draw_frost(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """Per image: a texture index in 0..4 and the top-left corner of a uniformly random crop."""
    n, _, h, w = x.shape
    _, sizes = frost_textures(scale, h, w, x.device)
    u = torch.rand(n, 3, generator=g, device=x.device, dtype=torch.float64)
    index = (u[:, 0] * len(FROST_FILES)).long().clamp(max=len(FROST_FILES) - 1)
    top = (u[:, 1] * (sizes[index, 0] - h)).long()
    left = (u[:, 2] * (sizes[index, 1] - w)).long()
    return {"index": index, "top": top, "left": left}


def frost_crops(x: Tensor, scale: str, d: Draws) -> Tensor:
    """The drawn texture crops as float (N, 3, H, W) in [0, 1]."""
    h, w = x.shape[-2:]
    stack, _ = frost_textures(scale, h, w, x.device)
    rows = d["top"][:, None, None] + torch.arange(h, device=x.device)[None, :, None]
    cols = d["left"][:, None, None] + torch.arange(w, device=x.device)[None, None, :]
    crops = stack[d["index"][:, None, None], rows, cols]  # (n, h, w, 3)
    return crops.permute(0, 3, 1, 2).to(x.dtype) / 255


def apply_frost(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """``a * image + b * frost crop``."""
    return c[0] * x + c[1] * frost_crops(x, scale, d)


# ---- fog --------------------------------------------------------------------------------------------

FOG_MAPSIZE = {"imagenet": 256, "cifar": 32}  # plasma map sizes of the two reference scripts


def draw_fog(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """The plasma fractal height map of every image (computed from the uniform draws it consumes)."""
    n, _, h, w = x.shape
    mapsize = next_power_of_2(max(h, w, FOG_MAPSIZE[scale]))
    uniforms = plasma_uniforms(n, mapsize, g, x.device, exact_dtype(x.device))
    return {"plasma": plasma_fractal(uniforms, mapsize, c[1])}


def apply_fog(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """Add ``strength * plasma`` and rescale by ``max / (max + strength)`` (max over the clean image)."""
    h, w = x.shape[-2:]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fogged = x + c[0] * d["plasma"][:, None, :h, :w].to(x.dtype)
    return fogged * peak / (peak + c[0])


# ---- spatter (hold-out) -----------------------------------------------------------------------------

WATER_RGB = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD_RGB = (63 / 255, 42 / 255, 20 / 255)


def draw_spatter(x: Tensor, c: tuple, scale: str, g: torch.Generator | None) -> Draws:
    """A standard normal per pixel (the liquid layer)."""
    n, _, h, w = x.shape
    return {"z": torch.randn(n, 1, h, w, generator=g, device=x.device, dtype=exact_dtype(x.device))}


def apply_spatter(x: Tensor, c: tuple, scale: str, d: Draws) -> Tensor:
    """ImageNet-C spatter: "water" (severities 1-3) or "mud" (4-5) from a blurred, thresholded noise layer.

    Mud is exact. Water re-implements the OpenCV chain of the reference (``Canny(50, 150)``,
    5x5 chamfer ``distanceTransform``, ``equalizeHist``, an emboss ``filter2D``, box blurs) from
    OpenCV's definitions; see ``opencv_canny`` and ``chamfer_distance``.
    """
    loc, spread, sigma, threshold, intensity, mode = c
    liquid = gaussian_filter(loc + spread * d["z"], sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mode == 1:
        m = gaussian_filter((liquid > threshold).to(x.dtype), intensity)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        color = torch.tensor(MUD_RGB, dtype=x.dtype, device=x.device)[None, :, None, None]
        return x * (1 - m) + color * m
    # astype(np.uint8) truncates, and wraps the (rare) values above 255
    level = torch.remainder(torch.floor(liquid * 255), 256)
    edges = opencv_canny(level, 50, 150)
    dist = chamfer_distance(edges).clamp(max=20.0)
    dist = torch.floor(box3_reflect101(dist.double()).float())  # float blur, then astype(np.uint8)
    dist = equalize_hist(dist)
    dist = correlate3x3(F.pad(dist.double(), (1, 1, 1, 1), mode="reflect"), EMBOSS).clamp(0, 255)
    dist = torch.round(box3_reflect101(dist))  # 8-bit box blur rounds
    m = (level * dist).to(x.dtype)
    peak = m.amax(dim=(2, 3), keepdim=True)
    m = torch.where(peak > 0, m / peak.clamp(min=1e-30), torch.zeros_like(m)) * intensity
    color = torch.tensor(WATER_RGB, dtype=x.dtype, device=x.device)[None, :, None, None]
    return x + m * color


SOBEL_X = ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1))
EMBOSS = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))  # the reference's filter2D kernel (a correlation)


def box3_reflect101(x: Tensor) -> Tensor:
    """OpenCV ``blur(ksize=(3, 3))``: the 3x3 mean with BORDER_REFLECT_101."""
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def opencv_canny(image: Tensor, low: float, high: float) -> Tensor:
    """OpenCV ``Canny(image, low, high)`` (aperture 3, L1 gradient) on 8-bit values, (N, 1, H, W) -> bool.

    Sobel with replicated borders; non-maximum suppression in four directions chosen with OpenCV's
    fixed-point tan(22.5 deg) test (one side strict, as OpenCV does); magnitudes outside the image
    count as 0; hysteresis grows 8-connected from pixels above ``high`` through pixels above ``low``.
    """
    padded = F.pad(image.double(), (1, 1, 1, 1), mode="replicate").long()
    dx = correlate3x3(padded, SOBEL_X)
    dy = correlate3x3(padded, tuple(zip(*SOBEL_X)))
    mag = dx.abs() + dy.abs()
    mp = F.pad(mag, (1, 1, 1, 1), value=0)
    nb = {name: mp[..., 1 + oy:mp.shape[-2] - 1 + oy, 1 + ox:mp.shape[-1] - 1 + ox]
          for name, (oy, ox) in {"l": (0, -1), "r": (0, 1), "u": (-1, 0), "d": (1, 0), "ul": (-1, -1),
                                 "ur": (-1, 1), "dl": (1, -1), "dr": (1, 1)}.items()}
    tg22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
    ax, ay = dx.abs(), dy.abs() << 15
    tg22x = ax * tg22
    tg67x = tg22x + (ax << 16)
    keep_h = (mag > nb["l"]) & (mag >= nb["r"])
    keep_v = (mag > nb["u"]) & (mag >= nb["d"])
    same_sign = (dx < 0) == (dy < 0)
    keep_d = torch.where(same_sign, (mag > nb["ul"]) & (mag > nb["dr"]), (mag > nb["ur"]) & (mag > nb["dl"]))
    nms = torch.where(ay < tg22x, keep_h, torch.where(ay > tg67x, keep_v, keep_d))
    candidate = nms & (mag > math.floor(low))
    edges = candidate & (mag > math.floor(high))
    while True:
        grown = candidate & (F.max_pool2d(edges.to(torch.float32), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


# OpenCV distanceTransform(DIST_L2, maskSize=5): chamfer steps 1, 1.4, 2.1969, summed in float32
_CHAMFER = ((1.0, ((0, 1), (0, -1), (1, 0), (-1, 0))),
            (1.4, ((1, 1), (1, -1), (-1, 1), (-1, -1))),
            (2.1969, ((1, 2), (1, -2), (-1, 2), (-1, -2), (2, 1), (2, -1), (-2, 1), (-2, -1))))


def chamfer_distance(sources: Tensor, cap: float = 20.0) -> Tensor:
    """Distance to the nearest ``True`` pixel under OpenCV's 5x5 chamfer metric, exact up to ``cap``.

    OpenCV runs a two-pass raster scan in float32, which yields the cheapest path over the mask's
    16 moves; relaxing all moves in parallel (float32 sums too) reaches the same fixed point, and
    every path no longer than ``cap`` has at most ``cap`` moves (each costs at least 1), so
    ``ceil(cap)`` rounds settle all distances up to ``cap``. Larger ones come back as at least ``cap``.
    """
    dist = torch.where(sources, 0.0, float("inf")).to(torch.float32)
    h, w = dist.shape[-2:]
    for _ in range(math.ceil(cap)):
        padded = F.pad(dist, (2, 2, 2, 2), value=float("inf"))
        best = dist
        for cost, moves in _CHAMFER:
            for oy, ox in moves:
                best = torch.minimum(best, padded[..., 2 + oy:2 + oy + h, 2 + ox:2 + ox + w] + cost)
        if torch.equal(best, dist):
            break
        dist = best
    return dist


def equalize_hist(image: Tensor) -> Tensor:
    """OpenCV ``equalizeHist`` per image on 8-bit values (N, 1, H, W)."""
    n = image.shape[0]
    flat = image.reshape(n, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.long, device=image.device).scatter_add_(1, flat, torch.ones_like(flat))
    first = (hist > 0).long().argmax(dim=1, keepdim=True)
    first_count = hist.gather(1, first)
    scale = (255.0 / (total - first_count).clamp(min=1).float())  # float32, as OpenCV computes it
    after = torch.arange(256, device=image.device)[None] > first
    cumulative = torch.cumsum(torch.where(after, hist, 0), dim=1)
    lut = torch.round(cumulative.float() * scale).clamp(0, 255)
    lut = torch.where(after, lut, torch.zeros_like(lut))
    uniform = (first_count == total)  # a constant image keeps its value
    out = lut.gather(1, flat).reshape(image.shape)
    return torch.where(uniform.reshape(n, 1, 1, 1), image.float(), out)

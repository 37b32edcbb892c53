"""Per-image NumPy references for the ImageNet-C corruptions (written from hendrycks/robustness, not vision/).

Each function takes one image as an (H, W, 3) float64 array in [0, 1] (the reference's
``np.array(pil_image) / 255``), one severity's parameters ``c``, the scale ("imagenet"/"cifar"),
and either a NumPy ``rng`` (the reference's own sampling) or explicit ``draws`` (the same random
numbers the torch implementation used); it returns the corrupted image in [0, 1].

OpenCV and ImageMagick are not dependencies, so their few functions are written here from their
documented definitions: OpenCV ``filter2D``/``GaussianBlur``/``RGB2GRAY``/``resize``,
``getAffineTransform`` (warpAffine's resampling is done with SciPy at exact coordinates, without
OpenCV's 1/32-pixel coordinate rounding) and ImageMagick's ``MotionBlurImage`` (from its source).
Spatter's "water" mode needs Canny and a chamfer distance transform and is not covered.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, signal
from skimage import color as skcolor
from skimage.filters import gaussian
from skimage.util import random_noise

FROST_DIR = Path(__file__).resolve().parents[1] / "vision" / "corruptions" / "frost"
FROST_FILES = ("frost1.png", "frost2.png", "frost2.png", "frost4.jpg", "frost5.jpg")


def _u8(x: np.ndarray) -> np.ndarray:
    """The 8-bit image the reference starts from (our inputs are k/255 floats)."""
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


# ---- noise ------------------------------------------------------------------------------------------

def gaussian_noise(x, c, scale, rng=None, z=None):
    z = rng.standard_normal(x.shape) if z is None else z
    return np.clip(x + c * z, 0, 1)


def shot_noise(x, c, scale, rng=None, counts=None):
    counts = rng.poisson(x * c) if counts is None else counts
    return np.clip(counts / float(c), 0, 1)


def impulse_noise(x, c, scale, rng=None, u_flip=None, u_salt=None):
    if u_flip is None:
        return np.clip(random_noise(x, mode="s&p", amount=c, rng=rng), 0, 1)
    out = x.copy()  # scikit-image's s&p: Bernoulli flip mask, Bernoulli salt mask
    flipped, salted = u_flip < c, u_salt < 0.5
    out[flipped & salted] = 1
    out[flipped & ~salted] = 0
    return out


def speckle_noise(x, c, scale, rng=None, z=None):
    z = rng.standard_normal(x.shape) if z is None else z
    return np.clip(x + x * (c * z), 0, 1)


# ---- blur -------------------------------------------------------------------------------------------

def gaussian_blur(x, c, scale, rng=None):
    return np.clip(gaussian(x, sigma=c, channel_axis=-1), 0, 1)


def _cv2_gaussian_kernel(ksize, sigma):
    t = np.arange(ksize) - (ksize - 1) * 0.5
    g = np.exp(-(t * t) / (2 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def disk(radius, alias_blur):
    """make_imagenet_c.py ``disk`` with cv2.GaussianBlur (BORDER_REFLECT_101 = SciPy 'mirror')."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 8 + 1), 3
    else:
        grid, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    aliased = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.float32)
    aliased /= np.sum(aliased)
    g = _cv2_gaussian_kernel(ksize, alias_blur).astype(np.float64)
    out = ndimage.correlate1d(aliased.astype(np.float64), g, axis=1, mode="mirror")
    return ndimage.correlate1d(out, g, axis=0, mode="mirror").astype(np.float32)


def _filter2d_mirror(channel, kernel):
    """cv2.filter2D: correlation with BORDER_REFLECT_101 (by FFT on the padded plane, as OpenCV does for big kernels)."""
    r = kernel.shape[0] // 2
    padded = np.pad(channel, r, mode="reflect")
    return signal.fftconvolve(padded, kernel[::-1, ::-1].astype(np.float64), mode="valid")


def defocus_blur(x, c, scale, rng=None):
    kernel = disk(*c)
    return np.clip(np.stack([_filter2d_mirror(x[..., d], kernel) for d in range(3)], axis=-1), 0, 1)


def glass_blur(x, c, scale, rng=None, offsets=None):
    """make_imagenet_c.py glass_blur, swap statement included; ``offsets[k, 0|1, i, j]`` = (dy, dx)."""
    sigma, delta, iterations = c
    h, w = x.shape[:2]
    x = np.uint8(gaussian(x, sigma=sigma, channel_axis=-1) * 255)
    for k in range(iterations):
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                if offsets is None:
                    dx, dy = rng.integers(-delta, delta, size=(2,))
                else:
                    dy = int(offsets[k, 0, hh - delta - 1, ww - delta - 1])
                    dx = int(offsets[k, 1, hh - delta - 1, ww - delta - 1])
                hp, wp = hh + dy, ww + dx
                x[hh, ww], x[hp, wp] = x[hp, wp], x[hh, ww]
    return np.clip(gaussian(x / 255., sigma=sigma, channel_axis=-1), 0, 1)


def imagemagick_motion_blur(img, radius, sigma, angle):
    """ImageMagick 6 (Q16) MotionBlurImage on an 8-bit (H, W[, C]) array; returns the 8-bit result (as float).

    Q16 keeps 257 * v; ClampToQuantum rounds the weighted sum, and the 8-bit PNG writer truncates q / 257.
    """
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    kernel = np.exp(-(i * i) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    kernel /= kernel.sum()
    px, py = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(px, py)
    img = img.astype(np.float64)
    pad = width
    spec = ((pad, pad), (pad, pad)) + ((0, 0),) * (img.ndim - 2)
    padded = np.pad(img, spec, mode="edge")  # ImageMagick's default virtual pixels repeat the edge
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for t in range(width):
        ox = math.ceil(t * py / hyp - 0.5)
        oy = math.ceil(t * px / hyp - 0.5)
        out += kernel[t] * padded[pad + oy:pad + oy + h, pad + ox:pad + ox + w]
    quantum = np.floor(np.clip(out, 0, 255) * 257 + 0.5)
    return np.floor(quantum / 257)


def motion_blur(x, c, scale, rng=None, u_angle=None):
    angle = rng.uniform(-45, 45) if u_angle is None else -45 + 90 * u_angle
    return imagemagick_motion_blur(_u8(x), c[0], c[1], angle) / 255


def clipped_zoom(img, zoom_factor):
    """make_imagenet_c.py clipped_zoom (square images)."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top:trim_top + h, trim_top:trim_top + h]


def zoom_blur(x, c, scale, rng=None):
    factors = np.arange(*c)
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for z in factors:
        out += clipped_zoom(x, z)
    return np.clip((x + out) / (len(factors) + 1), 0, 1)


# ---- weather ----------------------------------------------------------------------------------------

def snow(x, c, scale, rng=None, z=None, u_angle=None):
    loc, spread, zoom, threshold, radius, sigma, weight = c
    h, w = x.shape[:2]
    x = x.astype(np.float32)
    layer = rng.normal(size=(h, w), loc=loc, scale=spread) if z is None else loc + spread * z
    layer = clipped_zoom(layer[..., None], zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)  # PIL 'L' image -> PNG
    angle = rng.uniform(-135, -45) if u_angle is None else -135 + 90 * u_angle
    layer = (imagemagick_motion_blur(layer, radius, sigma, angle) / 255.)[..., None]
    gray = (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2])[..., None]  # cv2 RGB2GRAY
    x = weight * x + (1 - weight) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1)


def cv2_resize_linear(img, fx):
    """cv2.resize(img, (0, 0), fx=fx, fy=fx, INTER_LINEAR) on uint8: half-pixel bilinear, edge clamp, rounding."""
    h, w = img.shape[:2]
    oh, ow = round(h * fx), round(w * fx)

    def axis(n_in, n_out):
        src = (np.arange(n_out) + 0.5) / fx - 0.5
        i0 = np.floor(src).astype(int)
        f = src - i0
        return np.clip(i0, 0, n_in - 1), np.clip(i0 + 1, 0, n_in - 1), f

    r0, r1, fr = axis(h, oh)
    c0, c1, fc = axis(w, ow)
    img = img.astype(np.float64)
    rows = img[r0] * (1 - fr)[:, None, None] + img[r1] * fr[:, None, None]
    out = rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]
    return np.round(out).astype(np.uint8)


def frost_texture(index, scale):
    tex = np.array(Image.open(FROST_DIR / FROST_FILES[index]).convert("RGB"))
    return cv2_resize_linear(tex, 0.2) if scale == "cifar" else tex


def frost(x, c, scale, rng=None, index=None, top=None, left=None):
    h, w = x.shape[:2]
    if index is None:
        index = rng.integers(5)
    tex = frost_texture(int(index), scale)
    if top is None:
        top, left = rng.integers(0, tex.shape[0] - h), rng.integers(0, tex.shape[1] - w)
    crop = tex[top:top + h, left:left + w]
    return np.clip(c[0] * x * 255 + c[1] * crop, 0, 255) / 255


def plasma_fractal(mapsize, wibbledecay, rng=None, uniforms=None):
    """make_imagenet_c.py plasma_fractal; ``uniforms`` replaces the U[0, 1) draws of np.random.uniform."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100
    draws = iter(uniforms) if uniforms is not None else None

    def wibbledmean(array):
        u = rng.random(array.shape) if draws is None else next(draws)
        return array / 4 + wibble * (-wibble + 2 * wibble * u)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x, c, scale, rng=None, plasma=None):
    h, w = x.shape[:2]
    if plasma is None:
        plasma = plasma_fractal(256 if scale == "imagenet" else 32, c[1], rng=rng)
    max_val = x.max()
    x = x + c[0] * plasma[:h, :w][..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1)


def brightness(x, c, scale, rng=None):
    hsv = skcolor.rgb2hsv(x)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return np.clip(skcolor.hsv2rgb(hsv), 0, 1)


def spatter(x, c, scale, rng=None, z=None):
    loc, spread, sigma, threshold, intensity, mode = c
    if mode == 0:
        raise ValueError("spatter 'water' (severities 1-3) needs OpenCV Canny and distanceTransform; "
                         "the NumPy reference covers 'mud' (severities 4-5) only")
    x = x.astype(np.float32)
    layer = rng.normal(size=x.shape[:2], loc=loc, scale=spread) if z is None else loc + spread * z
    layer = gaussian(layer, sigma=sigma)
    layer[layer < threshold] = 0
    m = np.where(layer > threshold, 1, 0)
    m = gaussian(m.astype(np.float32), sigma=intensity)
    m[m < 0.8] = 0
    color = np.concatenate((63 / 255. * np.ones_like(x[..., :1]), 42 / 255. * np.ones_like(x[..., :1]),
                            20 / 255. * np.ones_like(x[..., :1])), axis=2)
    color *= m[..., None]
    x *= (1 - m[..., None])
    return np.clip(x + color, 0, 1)


# ---- digital ----------------------------------------------------------------------------------------

def contrast(x, c, scale, rng=None):
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


def saturate(x, c, scale, rng=None):
    hsv = skcolor.rgb2hsv(x)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(skcolor.hsv2rgb(hsv), 0, 1)


def jpeg_compression(x, c, scale, rng=None):
    out = io.BytesIO()
    Image.fromarray(_u8(x)).save(out, "JPEG", quality=c)
    return np.asarray(Image.open(out), dtype=np.float64) / 255


def pixelate(x, c, scale, rng=None):
    h, w = x.shape[:2]
    img = Image.fromarray(_u8(x))
    img = img.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.float64) / 255


def get_affine_transform(src, dst):
    """cv2.getAffineTransform: the 2x3 matrix taking three src points to three dst points."""
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[2 * i, :3] = a[2 * i + 1, 3:] = (src[i, 0], src[i, 1], 1)
        b[2 * i], b[2 * i + 1] = dst[i]
    return np.linalg.solve(a, b).reshape(2, 3)


def warp_affine_mirror(img, m):
    """cv2.warpAffine(img, M, INTER_LINEAR, BORDER_REFLECT_101) at exact coordinates (SciPy 'mirror')."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    return np.stack([ndimage.map_coordinates(img[..., ch], [sy, sx], order=1, mode="mirror")
                     for ch in range(img.shape[2])], axis=-1)


def elastic_transform(x, c, scale, rng=None, u_affine=None, u_field=None):
    """make_imagenet_c.py elastic_transform with cv2 replaced as described in the module docstring."""
    image = x.astype(np.float32)
    shape = image.shape
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])
    if u_affine is None:
        jitter = rng.uniform(-c[2], c[2], size=pts1.shape)
        fx, fy = rng.uniform(-1, 1, size=shape[:2]), rng.uniform(-1, 1, size=shape[:2])
    else:
        jitter = -c[2] + 2 * c[2] * u_affine
        fx, fy = -1 + 2 * u_field[0], -1 + 2 * u_field[1]
    pts2 = pts1 + jitter.astype(np.float32)
    m = get_affine_transform(pts1.astype(np.float64), pts2.astype(np.float64))
    image = warp_affine_mirror(image, m).astype(np.float32)
    dx = (gaussian(fx, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(fy, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., None], dy[..., None]
    xg, yg, zg = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(yg + dy, (-1, 1)), np.reshape(xg + dx, (-1, 1)), np.reshape(zg, (-1, 1))
    return np.clip(ndimage.map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1)


REFERENCE = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "spatter": spatter, "saturate": saturate,
}


def corrupt(x: np.ndarray, name: str, c, scale: str, rng: np.random.Generator) -> np.ndarray:
    """Apply reference corruption ``name`` with parameters ``c`` to one (H, W, 3) image, drawing from ``rng``."""
    return REFERENCE[name](x, c, scale, rng=rng)

"""Corruption name -> ``Corruption`` entry, with parameters, exactness flag and note, and ``corrupt``."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vision.corruptions import blur, digital, noise, weather
from vision.corruptions.params import ALL, AUTO_SCALE_THRESHOLD, GROUPS, HOLDOUT, HOLDOUT_FAMILY, PARAMS, SCALES

Draws = dict[str, Tensor]
DrawFn = Callable[[Tensor, Any, str, "torch.Generator | None"], Draws]
ApplyFn = Callable[[Tensor, Any, str, Draws], Tensor]

MIN_SIZE = 32  # the smallest side the reference tables make sense for (CIFAR)
LUMA = (0.299, 0.587, 0.114)  # grey <-> RGB for the colour corruptions on 1-channel images


def _no_draws(x: Tensor, c: Any, scale: str, g: torch.Generator | None) -> Draws:
    return {}


@dataclass(frozen=True)
class Corruption:
    """One ImageNet-C corruption: its parameters per scale and severity, and how to apply it.

    ``exact`` says that, given the same random draws, the batched op reproduces the reference
    pipeline (hendrycks/robustness with its libraries: NumPy, SciPy, scikit-image, PIL, OpenCV,
    ImageMagick), including its 8-bit steps, up to float32 rounding at the native sizes (224 and
    32 px); ``note`` says how, and which library versions it was checked against. The draws come
    from torch, so regenerated images still never equal the released files (the reference's NumPy
    RNG was unseeded). ``draw`` samples the random inputs; ``apply`` is deterministic given them.
    """

    name: str
    family: str
    holdout: bool
    exact: bool
    note: str
    apply: ApplyFn
    draw: DrawFn = _no_draws
    rgb: bool = False  # defined on colour images; 1-channel input goes through RGB and back
    params: dict[str, tuple] = field(default=None, repr=False)  # scale -> 5 severities; PARAMS[name] if None

    def __post_init__(self) -> None:
        if self.params is None:
            object.__setattr__(self, "params", PARAMS[self.name])

    @property
    def random(self) -> bool:
        """Whether the corruption draws random numbers."""
        return self.draw is not _no_draws

    def parameters(self, severity: int, scale: str) -> Any:
        """The parameter entry of ``severity`` (1-5) for ``scale`` ("imagenet" or "cifar")."""
        check_severity(severity)
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
        return self.params[scale][int(severity) - 1]

    def __call__(self, images: Tensor, severity: int, *, scale: str = "auto", seed: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Corrupt a float (N, C, H, W) batch in [0, 1]; same shape and dtype, clamped to [0, 1].

        ``scale`` picks the parameter table ("imagenet" 224 px, "cifar" 32 px, or "auto" by image
        size); ``seed`` or ``generator`` (on the images' device) makes the draws reproducible,
        otherwise torch's global generator is used. Not differentiable (runs under no_grad).
        """
        check_severity(severity)
        check_images(images, self.name)
        scale = resolve_scale(scale, images)
        c = self.parameters(severity, scale)
        g = make_generator(images.device, seed, generator)
        with torch.no_grad():
            x, restore = self._prepare(images)
            draws = self.draw(x, c, scale, g)
            out = self.apply(x, c, scale, draws).clamp_(0, 1)
            return restore(out)

    def _prepare(self, images: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        dtype = images.dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        x = images.to(compute)
        channels = x.shape[1]
        if self.rgb and channels == 1:
            luma = torch.tensor(LUMA, dtype=compute, device=x.device)[None, :, None, None]
            return x.expand(-1, 3, -1, -1).contiguous(), lambda y: (y * luma).sum(1, keepdim=True).to(dtype)
        if self.rgb and channels != 3:
            raise ValueError(f"{self.name} needs 1 or 3 channels (RGB); got {channels}")
        return x, lambda y: y.to(dtype)


def check_severity(severity: Any) -> None:
    """Raise unless ``severity`` is an integer 1-5."""
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5; got {severity!r}")


def check_images(images: Any, name: str = "corruption") -> None:
    """Raise unless ``images`` is a float (N, C, H, W) tensor with sides of at least MIN_SIZE."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of images; got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} expects a float (N, C, H, W) batch in [0, 1]; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} expects a float tensor in [0, 1]; got {images.dtype} (convert with ToDtype/ToTensor first)")
    if min(images.shape[-2:]) < MIN_SIZE:
        raise ValueError(f"{name} needs images of at least {MIN_SIZE}x{MIN_SIZE}; got {tuple(images.shape[-2:])}")


def resolve_scale(scale: str, images: Tensor) -> str:
    """"imagenet" or "cifar"; "auto" picks "cifar" when the shorter side is below 85 px."""
    if scale == "auto":
        return "cifar" if min(images.shape[-2:]) < AUTO_SCALE_THRESHOLD else "imagenet"
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected 'auto', 'imagenet' or 'cifar'")
    return scale


def make_generator(device: torch.device, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``, the given ``generator``, or None (global RNG)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if generator is not None:
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the images are on {device}")
        return generator
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


_ENTRIES = [
    Corruption("gaussian_noise", "noise", False, True, "x + N(0, c^2), one normal per value",
               noise.apply_gaussian_noise, noise.draw_gaussian_noise),
    Corruption("shot_noise", "noise", False, True, "Pois(c x) / c via torch.poisson",
               noise.apply_shot_noise, noise.draw_shot_noise),
    Corruption("impulse_noise", "noise", False, True,
               "scikit-image s&p: every value flips with probability c, to 1 or 0 with equal odds",
               noise.apply_impulse_noise, noise.draw_impulse_noise),
    Corruption("defocus_blur", "blur", False, True,
               "the reference's anti-aliased disk (OpenCV GaussianBlur, REFLECT_101) applied like filter2D, via FFT",
               blur.apply_defocus_blur),
    Corruption("glass_blur", "blur", False, True,
               "the sequential pixel 'swaps' are NumPy-view copies x[h,w] = x[h',w'], resolved exactly in "
               "parallel by pointer jumping; first blur summed in SciPy's float64 order so the 8-bit "
               "truncation lands alike",
               blur.apply_glass_blur, blur.draw_glass_blur),
    Corruption("motion_blur", "blur", False, True,
               "ImageMagick 6 MotionBlurImage re-implemented from its source, with Q16 rounding and 8-bit "
               "output; bit-identical to ImageMagick 6.9.11 Q16 (optional test with Wand); HDRI/Q8 builds "
               "may differ by one grey level",
               blur.apply_motion_blur, blur.draw_motion_blur),
    Corruption("zoom_blur", "blur", False, True,
               "clipped_zoom with SciPy order-1 zoom = aligned-corner bilinear interpolate; same np.arange factors",
               blur.apply_zoom_blur),
    Corruption("snow", "weather", False, True,
               "zoomed thresholded noise, 8-bit layer, streaks by the motion_blur re-implementation of "
               "ImageMagick, whitened blend",
               weather.apply_snow, weather.draw_snow, rgb=True),
    Corruption("frost", "weather", False, True,
               "published textures shipped in the package (frost/NOTICE), random crop per image; CIFAR "
               "textures = cv2 0.2x INTER_LINEAR, which samples every fifth pixel exactly",
               weather.apply_frost, weather.draw_frost, rgb=True),
    Corruption("fog", "weather", False, True,
               "diamond-square plasma fractal vectorised over the batch, same draws -> same map",
               weather.apply_fog, weather.draw_fog),
    Corruption("brightness", "weather", False, True,
               "scikit-image HSV round trip with V + c, in closed form (RGB scaled by V'/V)",
               digital.apply_brightness, rgb=True),
    Corruption("contrast", "digital", False, True, "(x - mean) c + mean per image and channel",
               digital.apply_contrast),
    Corruption("elastic_transform", "digital", False, True,
               "OpenCV getAffineTransform + the fixed-point warpAffine of OpenCV <= 4.10 (1/32-pixel "
               "coordinates; 2e-5 from 4.10 in an optional test; 4.11+ samples exact coordinates, up to "
               "0.012 away), then SciPy gaussian + map_coordinates(order=1, 'reflect'); 244-based constants",
               digital.apply_elastic_transform, digital.draw_elastic_transform),
    Corruption("pixelate", "digital", False, True,
               "PIL BOX down and up: PIL's box membership in integers and 8-bit rounding after each pass",
               digital.apply_pixelate),
    Corruption("jpeg_compression", "digital", False, True,
               "torchvision's CPU libjpeg-turbo writes the same bytes as Pillow (tested); CUDA batches "
               "make a CPU round trip for this step rather than use nvJPEG",
               digital.apply_jpeg_compression, rgb=True),
    Corruption("speckle_noise", "noise", True, True, "x + x N(0, c^2)",
               noise.apply_speckle_noise, noise.draw_speckle_noise),
    Corruption("gaussian_blur", "blur", True, True, "scikit-image gaussian (truncate 4, 'nearest') per channel",
               blur.apply_gaussian_blur),
    Corruption("spatter", "weather", True, True,
               "'mud' (severities 4-5) as the reference; 'water' (1-3) re-implements OpenCV Canny, 5x5 "
               "distanceTransform, equalizeHist, filter2D and blur, bit-identical to OpenCV 4.10 (optional test)",
               weather.apply_spatter, weather.draw_spatter, rgb=True),
    Corruption("saturate", "digital", True, True,
               "scikit-image HSV round trip with S * a + b, in closed form (grey pixels have hue 0)",
               digital.apply_saturate, rgb=True),
]

CORRUPTIONS: dict[str, Corruption] = {entry.name: entry for entry in _ENTRIES}
assert tuple(CORRUPTIONS) == ALL and all(CORRUPTIONS[n].holdout for n in HOLDOUT)
assert all(CORRUPTIONS[n].family == f for n, f in HOLDOUT_FAMILY.items())
assert all(CORRUPTIONS[n].family == g for g, names in GROUPS.items() if g != "hold-out" for n in names)


def get_corruption(name: str) -> Corruption:
    """The registry entry of ``name``; unknown names raise ValueError listing the known ones."""
    try:
        return CORRUPTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown corruption {name!r}; known corruptions: {', '.join(CORRUPTIONS)}") from None


def corrupt(images: Tensor, name: str, severity: int, *, scale: str = "auto", seed: int | None = None,
            generator: torch.Generator | None = None) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a float (N, C, H, W) batch in [0, 1].

    The output has the input's shape, dtype and device and is clamped to [0, 1]. See
    ``Corruption.__call__`` for ``scale``, ``seed`` and ``generator``.
    """
    return get_corruption(name)(images, severity, scale=scale, seed=seed, generator=generator)


def corruption_table() -> list[dict[str, Any]]:
    """One row per corruption (name, group, hold-out, exact, note), e.g. for a report."""
    return [{"name": c.name, "group": "hold-out" if c.holdout else c.family, "family": c.family,
             "holdout": c.holdout, "exact": c.exact, "note": c.note} for c in CORRUPTIONS.values()]


def to_uint8(images: Tensor) -> Tensor:
    """8-bit images the way the reference stores them: ``np.uint8(x * 255)`` truncates."""
    return torch.floor(images.clamp(0, 1) * 255).to(torch.uint8)

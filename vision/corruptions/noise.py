"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

Each corruption is a ``draw_*`` function that samples its random inputs (standard normals ``z``
or uniforms ``u`` in [0, 1), on the images' device) and an ``apply_*`` function that is a
deterministic function of the images and those draws. Parameters ``c`` are one severity's entry
of ``params.PARAMS``.
"""

from __future__ import annotations

import torch
from torch import Tensor

Draws = dict[str, Tensor]


def _randn(x: Tensor, g: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def draw_gaussian_noise(x: Tensor, c: float, scale: str, g: torch.Generator | None) -> Draws:
    """One standard normal per value."""
    return {"z": _randn(x, g)}


def apply_gaussian_noise(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """``x + N(0, c^2)``."""
    return x + c * d["z"]


def draw_shot_noise(x: Tensor, c: float, scale: str, g: torch.Generator | None) -> Draws:
    """Poisson counts with rate ``c * x`` (the draw depends on the image)."""
    return {"counts": torch.poisson(x.clamp(min=0) * c, generator=g)}


def apply_shot_noise(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """``Pois(c x) / c``."""
    return d["counts"] / c


def draw_impulse_noise(x: Tensor, c: float, scale: str, g: torch.Generator | None) -> Draws:
    """One uniform per value."""
    return {"u": torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)}


def apply_impulse_noise(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """scikit-image ``random_noise(mode='s&p', amount=c)``: each value flips with probability c, to 1 or 0.

    scikit-image draws two Bernoulli masks (flip with p = c, salt with p = 1/2); one uniform
    split at c/2 and c has the same joint distribution: ``u < c/2`` salt, ``c/2 <= u < c`` pepper.
    """
    u = d["u"]
    out = torch.where(u < c / 2, torch.ones_like(x), x)
    return torch.where((u >= c / 2) & (u < c), torch.zeros_like(x), out)


def draw_speckle_noise(x: Tensor, c: float, scale: str, g: torch.Generator | None) -> Draws:
    """One standard normal per value."""
    return {"z": _randn(x, g)}


def apply_speckle_noise(x: Tensor, c: float, scale: str, d: Draws) -> Tensor:
    """``x + x * N(0, c^2)``."""
    return x + x * (c * d["z"])

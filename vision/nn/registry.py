"""Norm names -> layers: ``build_norm`` builds one, ``norm_layer`` makes a timm ``norm_layer=``."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn

from vision.nn.norms import DyT, LayerNorm, RMSNorm, SeeDNorm

MHSEEDNORM_HEADS = 16  # SEEDNORM.md section 2: 16 heads gave the best ViT-B result

# name -> (class, default keyword arguments)
NORMS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "layernorm": (LayerNorm, {}),
    "rmsnorm": (RMSNorm, {}),
    "dyt": (DyT, {}),
    "seednorm": (SeeDNorm, {}),
    "mhseednorm": (SeeDNorm, {"num_heads": MHSEEDNORM_HEADS}),
}


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    key = name.lower() if isinstance(name, str) else name
    if key not in NORMS:
        raise ValueError(f"unknown norm {name!r}; known norms: {', '.join(NORMS)}")
    return NORMS[key]


def norm_layer(name: str, **kwargs: Any) -> functools.partial:
    """A constructor ``f(dim, **more)`` for the named norm, usable as timm's ``norm_layer=``.

    Keyword arguments override the registry defaults (e.g. ``num_heads`` for "mhseednorm") and are
    checked against the layer's signature here, not when the model is built.
    """
    cls, defaults = _lookup(name)
    merged = {**defaults, **kwargs}
    try:
        inspect.signature(cls).bind(0, **merged)
    except TypeError as exc:
        raise TypeError(f"bad arguments for norm {name!r} ({cls.__name__}): {exc}") from None
    return functools.partial(cls, **merged)


def build_norm(name: str, dim: int, **kwargs: Any) -> nn.Module:
    """Build the named norm (one of ``NORMS``) for width ``dim``."""
    return norm_layer(name, **kwargs)(dim)

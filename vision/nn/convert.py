"""Swap the LayerNorms and RMSNorms of any model for another norm, in place."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vision.nn.norms import ChannelsFirst, channels_first
from vision.nn.registry import norm_layer


def _timm_classes(*names: str) -> tuple[type, ...]:
    try:
        import timm.layers.norm as timm_norm
    except ImportError:
        return ()
    return tuple(getattr(timm_norm, n) for n in names if hasattr(timm_norm, n))


def _classify(module: nn.Module) -> tuple[str, bool] | None:
    """("layernorm" | "rmsnorm", channels_first) for a convertible norm, else None."""
    channels_first_types = (ChannelsFirst,) + _timm_classes(
        "LayerNorm2d", "LayerNorm2dFp32", "LayerNormExp2d", "RmsNorm2d", "RmsNorm2dFp32"
    )
    if isinstance(module, nn.LayerNorm):
        kind = "layernorm"
    elif isinstance(module, (nn.RMSNorm,) + _timm_classes("RmsNorm", "RmsNormFp32", "RmsNorm2d", "RmsNorm2dFp32")):
        kind = "rmsnorm"
    else:
        return None
    return kind, isinstance(module, channels_first_types)


def _replacement(module: nn.Module, name: str, kwargs: dict[str, Any]) -> nn.Module:
    shape = tuple(module.normalized_shape)
    if len(shape) != 1:
        raise ValueError(
            f"convert_norms: {type(module).__name__} normalizes over {shape}; only one dimension can be converted"
        )
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    eps = module.eps if module.eps is not None else torch.finfo(torch.float32).eps  # torch's RMSNorm default
    carried = {"eps": eps, "elementwise_affine": weight is not None, "bias": bias is not None}
    reference = weight if weight is not None else next(iter(module.parameters()), None)
    factory = {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
    make = norm_layer(name, **{**carried, **kwargs})
    _, channels_first_input = _classify(module)
    cls = channels_first(make.func) if channels_first_input else make.func
    new = cls(shape[0], **make.keywords, **factory)
    with torch.no_grad():
        for pname, value in (("weight", weight), ("bias", bias)):
            target = getattr(new, pname, None)
            if value is not None and target is not None:
                target.copy_(value)
                target.requires_grad_(value.requires_grad)
    return new.train(module.training)


def convert_norms(model: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    """Replace every LayerNorm / RMSNorm of ``model`` (torch's, timm's, subclasses) by norm ``name``.

    Weight, bias, eps and the affine flag carry over (keyword arguments given here win, e.g.
    ``num_heads`` or ``eps``); channels-first norms such as timm's ``LayerNorm2d`` become the
    channels-first variant of the new norm. An RMSNorm converted to SeeDNorm computes exactly
    the same function until beta moves away from zero.

    Returns:
        ``model``, changed in place (or the new layer when ``model`` itself is a norm).
    """
    norm_layer(name, **kwargs)  # fail on an unknown name or argument before touching the model
    if _classify(model) is not None:
        return _replacement(model, name, kwargs)
    replaced: dict[int, nn.Module] = {}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if _classify(child) is None:
                continue
            if id(child) not in replaced:
                replaced[id(child)] = _replacement(child, name, kwargs)
            setattr(parent, child_name, replaced[id(child)])
    return model

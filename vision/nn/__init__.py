"""Layers only: SeeDNorm and its peer norms, the name registry, norm conversion, param groups."""

from vision.nn.convert import convert_norms
from vision.nn.functional import set_default_impl
from vision.nn.norms import DyT, LayerNorm, RMSNorm, SeeDNorm, channels_first
from vision.nn.param_groups import param_groups
from vision.nn.registry import NORMS, build_norm, norm_layer

__all__ = [
    "NORMS",
    "DyT",
    "LayerNorm",
    "RMSNorm",
    "SeeDNorm",
    "build_norm",
    "channels_first",
    "convert_norms",
    "norm_layer",
    "param_groups",
    "set_default_impl",
]

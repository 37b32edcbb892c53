"""Normalization layers: SeeDNorm (and its multihead form), RMSNorm, LayerNorm, DyT.

Every layer takes ``(dim, *, eps, elementwise_affine, device=None, dtype=None)``, normalizes the
last dimension of any ``(..., dim)`` input, computes its statistics in float32 under bf16/fp16
(and autocast) and returns the input's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from vision.nn import functional as VF


def _check_width(layer: nn.Module, x: torch.Tensor, dim: int) -> None:
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{type(layer).__name__}({dim}) expects input of shape (..., {dim}), got {tuple(x.shape)}"
        )


class SeeDNorm(nn.Module):
    """Self-Rescaled Dynamic Normalization: RMSNorm whose gain depends on the input.

    ``y = (gamma + alpha * tanh(dot(x, beta))) * x / rms(x)``; with ``num_heads > 1`` the channels
    are split into contiguous groups, each with its own dot product (Multihead SeeDNorm). A fresh
    layer (beta = 0) equals RMSNorm.

    Args:
        dim: width of the normalized (last) dimension.
        num_heads: channel groups for the dynamic term; must divide ``dim``.
        eps: added to the mean of squares inside the square root.
        alpha_init: initial value of every alpha.
        elementwise_affine: learn gamma (``weight``); without it the static gain is 1, as in the
            AdaSeeDNorm of DiT blocks.
        bias: learn an additive shift (kept when a LayerNorm is converted).
        dyn_dropout: dropout on the dynamic term during training.
        dot_scale: "none", "sqrt_dim" or "dim": scaling of the dot product by the head width.
        impl: "auto", "native", "compiled" or "eager" kernels (see ``vision.nn.set_default_impl``).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int = 1,
        eps: float = 1e-6,
        alpha_init: float = 1.0,
        elementwise_affine: bool = True,
        bias: bool = False,
        dyn_dropout: float = 0.0,
        dot_scale: str = "none",
        impl: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"SeeDNorm num_heads must be a positive integer, got {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"SeeDNorm width {dim} is not divisible by num_heads={num_heads}")
        if not 0.0 <= dyn_dropout < 1.0:
            raise ValueError(f"SeeDNorm dyn_dropout must be in [0, 1), got {dyn_dropout!r}")
        VF.dot_scale_factor(dot_scale, dim // num_heads)  # validates the name
        self.dim = dim
        self.normalized_shape = (dim,)
        self.num_heads = num_heads
        self.eps = eps
        self.alpha_init = alpha_init
        self.elementwise_affine = elementwise_affine
        self.dyn_dropout = dyn_dropout
        self.dot_scale = dot_scale
        self.impl = VF.check_impl(impl)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(dim, **factory)) if elementwise_affine else None
        self.alpha = nn.Parameter(torch.empty(dim, **factory))
        self.beta = nn.Parameter(torch.empty(dim, **factory))
        self.bias = nn.Parameter(torch.empty(dim, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        nn.init.constant_(self.alpha, self.alpha_init)
        nn.init.zeros_(self.beta)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_width(self, x, self.dim)
        return VF.seednorm(
            x, self.weight, self.alpha, self.beta, self.bias,
            num_heads=self.num_heads, eps=self.eps, dot_scale=self.dot_scale,
            dyn_dropout=self.dyn_dropout, training=self.training, impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, num_heads={self.num_heads}, eps={self.eps}, alpha_init={self.alpha_init}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}, "
            f"dyn_dropout={self.dyn_dropout}, dot_scale={self.dot_scale}"
        )


class RMSNorm(nn.RMSNorm):
    """RMSNorm ``x / sqrt(mean(x^2) + eps) * weight (+ bias)``, float32 statistics.

    A subclass of ``torch.nn.RMSNorm`` with this project's signature and an optional bias.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine, device=device, dtype=dtype)
        self.dim = dim
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype)) if bias else None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "bias", None) is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_width(self, x, self.dim)
        return VF.rms_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}"


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension with float32 statistics and output in the input dtype.

    A subclass of ``torch.nn.LayerNorm`` (parameter names ``weight``/``bias``), so timm
    checkpoints load into it unchanged. Default eps is 1e-6, as in ViT and DiT.
    """

    def __init__(
        self,
        dim: int,
        *,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device, dtype=dtype)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_width(self, x, self.dim)
        return VF.layer_norm(x, self.weight, self.bias, self.eps)


class DyT(nn.Module):
    """Dynamic Tanh, ``weight * tanh(alpha * x) + bias`` with a learnable scalar alpha.

    ``eps`` is accepted so every norm shares one signature; DyT has no epsilon and ignores it.
    """

    def __init__(
        self,
        dim: int,
        *,
        alpha_init: float = 0.5,
        eps: float | None = None,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.normalized_shape = (dim,)
        self.alpha_init = alpha_init
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        factory = {"device": device, "dtype": dtype}
        self.alpha = nn.Parameter(torch.empty((), **factory))
        self.weight = nn.Parameter(torch.empty(dim, **factory)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.empty(dim, **factory)) if elementwise_affine and bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.alpha, self.alpha_init)
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_width(self, x, self.dim)
        return VF.dyt(x, self.alpha, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, alpha_init={self.alpha_init}, elementwise_affine={self.elementwise_affine}, "
            f"bias={self.bias is not None}"
        )


class ChannelsFirst:
    """Mixin that applies a last-dimension norm to dimension 1 of an (N, C, ...) tensor.

    Used by ``convert_norms`` for channels-first norms such as timm's ``LayerNorm2d``; the
    parameter names stay those of the wrapped norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


_channels_first_classes: dict[type, type] = {}


def channels_first(cls: type) -> type:
    """The channels-first variant of a norm class, e.g. ``SeeDNorm`` -> ``SeeDNorm2d``."""
    if cls not in _channels_first_classes:
        _channels_first_classes[cls] = type(f"{cls.__name__}2d", (ChannelsFirst, cls), {"__module__": __name__})
    return _channels_first_classes[cls]

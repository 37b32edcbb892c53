"""Functional forms of the norm layers, and SeeDNorm's fused forward/backward kernels.

SeeDNorm (SEEDNORM.md section 1, multihead form section 2), per token ``x`` of width ``D = H * d``::

    r    = sqrt(mean(x * x) + eps)            # over the full width D
    s_h  = scale * dot(x[h], beta[h])         # one scalar per head, on the raw x
    gain = gamma + alpha * tanh(s_h(i))
    y    = gain * x / r (+ bias)

The kernels below work on ``(N, H, d)`` views so that the per-head scalar broadcasts along the
innermost loop; a flat ``(N, D)`` layout makes torch.compile gather it element by element.
The backward is the hand derivation of SEEDNORM.md section 6 (checked against autograd and
finite differences in the tests). Statistics are computed in float32 (float64 for float64
inputs) and the output has the input's dtype.
"""

from __future__ import annotations

import math
import types
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from vision.nn import native

DOT_SCALES = ("none", "sqrt_dim", "dim")
IMPLS = ("auto", "native", "compiled", "eager", "triton")

_default_impl = "auto"


def set_default_impl(impl: str) -> None:
    """Set how SeeDNorm layers built with ``impl="auto"`` run.

    "native" is the one-pass C kernel for CPU tensors (``vision.nn.native``); "triton" the
    hand-written fused Triton kernels for CUDA tensors (``vision.nn.triton_kernels``); "compiled"
    the torch.compile-fused kernels (Triton on CUDA, C++ on CPU); "eager" the same kernels unfused.
    "auto" takes triton for CUDA tensors when triton imports, native for CPU tensors when it
    builds, else compiled, and falls back to eager (with one warning) when torch.compile does not
    work on this machine. ``set_default_impl("compiled")`` is the switch that turns the hand-written
    Triton kernels off.
    """
    global _default_impl
    _default_impl = check_impl(impl)


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"unknown SeeDNorm impl {impl!r}; expected one of {', '.join(IMPLS)}")
    return impl


def dot_scale_factor(dot_scale: str, head_dim: int) -> float:
    """Multiplier applied to ``dot(x, beta)``: 1, 1/sqrt(head_dim) or 1/head_dim."""
    if dot_scale == "none":
        return 1.0
    if dot_scale == "sqrt_dim":
        return 1.0 / math.sqrt(head_dim)
    if dot_scale == "dim":
        return 1.0 / head_dim
    raise ValueError(f"unknown dot_scale {dot_scale!r}; expected one of {', '.join(DOT_SCALES)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def seednorm_forward_kernel(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    scale: float,
    p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """SeeDNorm forward on ``x`` of shape (N, H, d).

    Returns ``y`` (N, H, d) in x's dtype, and what the backward needs: ``rinv`` = 1/r (N, 1, 1),
    ``t`` = tanh(s) (N, H, 1) and the dropout keep-mask of the dynamic term (or None).
    """
    cdt = _compute_dtype(x.dtype)
    H, d = x.shape[-2], x.shape[-1]
    xf = x.to(cdt)
    # Sum of squares per head first, then over heads: the same loop as the per-head dot product.
    rinv = torch.rsqrt(xf.pow(2).sum(-1, keepdim=True).sum(-2, keepdim=True) / (H * d) + eps)
    t = torch.tanh((xf * beta.to(cdt).view(H, d)).sum(-1, keepdim=True) * scale)
    dyn = alpha.to(cdt).view(H, d) * t
    keep = None
    if p > 0.0:
        keep = torch.rand_like(xf) >= p
        dyn = dyn * keep * (1.0 / (1.0 - p))
    gain = dyn + weight.to(cdt).view(H, d) if weight is not None else dyn + 1.0
    y = gain * xf * rinv
    if bias is not None:
        y = y + bias.to(cdt).view(H, d)
    return y.to(x.dtype), rinv, t, keep


def seednorm_backward_kernel(
    grad: torch.Tensor,
    x: torch.Tensor,
    rinv: torch.Tensor,
    t: torch.Tensor,
    keep: torch.Tensor | None,
    weight: torch.Tensor | None,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    has_bias: bool,
    scale: float,
    p: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of SeeDNorm (SEEDNORM.md section 6) for x, weight, alpha, beta and bias.

    Works on (N, H, d) like the forward; parameter gradients come back flat, (D,), float32.
    """
    cdt = _compute_dtype(x.dtype)
    H, d = x.shape[-2], x.shape[-1]
    xf = x.to(cdt)
    g_out = grad.to(cdt)
    a = alpha.to(cdt).view(H, d)
    if keep is not None:
        a = a * keep * (1.0 / (1.0 - p))  # the dropped-out dynamic term: per element from here on
    gn = g_out * (xf * rinv)  # G * n
    k = (1.0 - t * t) * (gn * a).sum(-1, keepdim=True) * scale  # dL/d(dot(x, beta)) per head
    gain = a * t + weight.to(cdt).view(H, d) if weight is not None else a * t + 1.0
    u = g_out * gain
    dot_ux = (u * xf).sum(-1, keepdim=True).sum(-2, keepdim=True)
    dx = (u - xf * (dot_ux * rinv * rinv / (H * d))) * rinv + k * beta.to(cdt).view(H, d)
    dweight = gn.sum(0).flatten() if weight is not None else None
    dalpha_terms = gn * t if keep is None else gn * t * keep * (1.0 / (1.0 - p))
    dalpha = dalpha_terms.sum(0).flatten()
    dbeta = (k * xf).sum(0).flatten()
    dbias = g_out.sum(0).flatten() if has_bias else None
    return dx.to(x.dtype), dweight, dalpha, dbeta, dbias


_compiled_kernels: dict[tuple, Callable] = {}
_compile_broken = False


def _fresh_copy(fn: Callable) -> Callable:
    # torch.compile caches compiled graphs on the function's code object and stops recompiling
    # after a handful of variants; one code object per kernel variant keeps a model that mixes
    # norm configurations (head counts, dtypes, with/without weight) from hitting that limit.
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _compiled(fn: Callable, key: tuple) -> Callable:
    compiled = _compiled_kernels.get(key)
    if compiled is None:
        compiled = torch.compile(_fresh_copy(fn), dynamic=None, fullgraph=True)
        _compiled_kernels[key] = compiled
    return compiled


def _triton_kernels():
    # Imported on first use so that the package imports (and runs on CPU) without triton.
    from vision.nn import triton_kernels

    return triton_kernels


def select_backend(impl: str, x: torch.Tensor) -> str:
    """Which kernels run SeeDNorm on ``x``: "triton", "native", "compiled" or "eager"."""
    if impl == "auto":
        impl = _default_impl
    if impl == "triton":
        kernels = _triton_kernels()
        if not kernels.available():
            raise RuntimeError(f"SeeDNorm impl='triton' needs triton, which failed to import: {kernels.import_error()}")
        if not kernels.runs_triton(x):
            raise ValueError(
                f"SeeDNorm impl='triton' runs float32/bfloat16/float16 CUDA tensors (or CPU tensors under "
                f"TRITON_INTERPRET=1), got {x.dtype} on {x.device}"
            )
        return "triton"
    if impl == "auto" and x.device.type == "cuda" and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        # Also inside an outer torch.compile: the kernels are a custom op, so the graph stays whole.
        if _triton_kernels().available():
            return "triton"
    if impl == "eager" or torch.compiler.is_compiling():
        # Inside an outer torch.compile the plain kernels are traced and fused with the model.
        return "eager"
    if impl == "native":
        if not native.supports(x):
            raise ValueError(f"SeeDNorm impl='native' runs float32/bfloat16/float16 CPU tensors, got {x.dtype} on {x.device}")
        if not native.available():
            raise RuntimeError(f"SeeDNorm impl='native' could not be built: {native.build_error()}")
        return "native"
    if impl == "auto" and native.supports(x) and native.available():
        return "native"
    if impl == "compiled" or not _compile_broken:
        return "compiled"
    return "eager"


def _call_kernel(fn: Callable, key: tuple, backend: str, impl: str, *args):
    global _compile_broken
    if backend == "eager":
        return fn(*args)
    try:
        return _compiled(fn, key)(*args)
    except Exception as exc:  # a missing C++ compiler or Triton surfaces as a backend failure
        if impl == "compiled" or not _is_backend_failure(exc):
            raise
        _compile_broken = True
        warnings.warn(
            f"torch.compile failed for SeeDNorm ({type(exc).__name__}); using the eager kernels",
            RuntimeWarning,
            stacklevel=3,
        )
        return fn(*args)


def _is_backend_failure(exc: Exception) -> bool:
    names = {type(e).__name__ for e in (exc, exc.__cause__) if e is not None}
    return bool(names & {"BackendCompilerFailed", "InductorError", "InvalidCxxCompiler", "CalledProcessError"})


class _SeeDNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, alpha, beta, bias, num_heads, eps, scale, p, backend, impl):
        shape = x.shape
        dim = shape[-1]
        rows = math.prod(shape[:-1])
        variant = None
        if backend == "native":
            x_saved = x.reshape(rows, dim).contiguous()
            keep = torch.rand(rows, dim) >= p if p > 0.0 else None
            keep_scale = 1.0 / (1.0 - p)
            y, rinv, t = native.forward(x_saved, weight, alpha, beta, bias, keep, keep_scale, num_heads, eps, scale)
        else:
            variant = (x.dtype, x.device.type, num_heads, weight is None, bias is None, p > 0.0)
            x_saved = x.reshape(rows, num_heads, dim // num_heads)
            y, rinv, t, keep = _call_kernel(
                seednorm_forward_kernel, ("fwd",) + variant, backend, impl,
                x_saved, weight, alpha, beta, bias, eps, scale, p,
            )
        ctx.save_for_backward(x_saved, rinv, t, keep, weight, alpha, beta)
        ctx.meta = (shape, scale, p, None if bias is None else bias.dtype, backend, impl, variant)
        return y.view(shape)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            # The kernels' gradients are not themselves differentiable (cheaper than once_differentiable).
            raise RuntimeError("SeeDNorm does not support double backward (create_graph=True)")
        x_saved, rinv, t, keep, weight, alpha, beta = ctx.saved_tensors
        shape, scale, p, bias_dtype, backend, impl, variant = ctx.meta
        if backend == "native":
            dx, stacked = native.backward(
                grad.reshape(x_saved.shape), x_saved, rinv, t, weight, alpha, beta, keep, 1.0 / (1.0 - p),
                scale, bias_dtype is not None,
            )
            dweight, dalpha, dbeta, dbias = stacked.unbind(0)
        else:
            dx, dweight, dalpha, dbeta, dbias = _call_kernel(
                seednorm_backward_kernel, ("bwd",) + variant, backend, impl,
                grad.reshape(x_saved.shape), x_saved, rinv, t, keep, weight, alpha, beta,
                bias_dtype is not None, scale, p,
            )
        needs = ctx.needs_input_grad
        return (
            dx.view(shape) if needs[0] else None,
            _as(dweight, weight.dtype) if needs[1] else None,
            _as(dalpha, alpha.dtype) if needs[2] else None,
            _as(dbeta, beta.dtype) if needs[3] else None,
            _as(dbias, bias_dtype) if needs[4] else None,
            None, None, None, None, None, None,
        )


def _as(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return grad if grad.dtype is dtype else grad.to(dtype)


def seednorm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    num_heads: int = 1,
    eps: float = 1e-6,
    dot_scale: str = "none",
    dyn_dropout: float = 0.0,
    training: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Apply (multihead) SeeDNorm over the last dimension of ``x``.

    Args:
        x: input of shape (..., D).
        weight: gamma, shape (D,), or None for a fixed gain of 1 (AdaSeeDNorm).
        alpha: per-channel strength of the dynamic term, shape (D,).
        beta: direction of the per-head dot product, shape (D,).
        bias: optional shift, shape (D,).
        num_heads: number of contiguous channel groups with their own dynamic scalar.
        eps: added to the mean of squares inside the square root.
        dot_scale: "none", "sqrt_dim" or "dim": divides dot(x, beta) by 1, sqrt(d) or d, where d
            is the per-head width.
        dyn_dropout: dropout probability on the dynamic term ``alpha * tanh(s)`` (training only).
        training: whether dropout is active.
        impl: "auto", "native", "compiled", "eager" or "triton" (see ``set_default_impl``).
    """
    dim = x.shape[-1]
    if dim % num_heads:
        raise ValueError(f"SeeDNorm width {dim} is not divisible by num_heads={num_heads}")
    scale = dot_scale_factor(dot_scale, dim // num_heads)
    p = float(dyn_dropout) if training else 0.0
    backend = select_backend(impl, x)
    if backend == "triton":
        # The Triton kernels draw the dropout mask themselves (Philox, keyed by a seed tensor).
        return _triton_kernels().seednorm(x, weight, alpha, beta, bias, num_heads, float(eps), scale, p)
    return _SeeDNormFunction.apply(x, weight, alpha, beta, bias, num_heads, float(eps), scale, p, backend, impl)


def seednorm_modulate(
    x: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    *,
    num_heads: int = 1,
    eps: float = 1e-6,
    dot_scale: str = "none",
    impl: str = "auto",
) -> torch.Tensor:
    """Affine-free SeeDNorm followed by DiT's adaLN modulate, one fused kernel on CUDA.

    Computes ``seednorm(x, None, alpha, beta) * (1 + scale[:, None, :]) + shift[:, None, :]``
    (SEEDNORM.md section 4) and returns x's dtype. With the "triton" backend (CUDA by default)
    norm and modulate are one kernel that reads x once, computes in float32 and writes the result
    once; otherwise (CPU, and the reference) the norm runs on its usual backend and the modulate in
    plain PyTorch in float32, so bf16/fp16 inputs are rounded once more, after the norm.

    Args:
        x: tokens, shape (B, T, D).
        alpha: per-channel strength of the dynamic term, shape (D,).
        beta: direction of the per-head dot product, shape (D,).
        shift: per-sample shift, shape (B, D).
        scale: per-sample scale (applied as ``1 + scale``), shape (B, D).
        num_heads: channel groups with their own dynamic scalar.
        eps: added to the mean of squares inside the square root.
        dot_scale: "none", "sqrt_dim" or "dim" (see ``seednorm``).
        impl: kernel choice for the norm, as in ``seednorm``.
    """
    if x.dim() != 3:
        raise ValueError(f"seednorm_modulate expects x of shape (B, T, D), got {tuple(x.shape)}")
    batch, _, dim = x.shape
    for name, value in (("shift", shift), ("scale", scale)):
        if tuple(value.shape) != (batch, dim):
            raise ValueError(f"seednorm_modulate expects {name} of shape ({batch}, {dim}), got {tuple(value.shape)}")
    if dim % num_heads:
        raise ValueError(f"SeeDNorm width {dim} is not divisible by num_heads={num_heads}")
    mult = dot_scale_factor(dot_scale, dim // num_heads)
    if select_backend(impl, x) == "triton":
        return _triton_kernels().seednorm_modulate(x, alpha, beta, shift, scale, num_heads, float(eps), mult)
    y = seednorm(x, None, alpha, beta, num_heads=num_heads, eps=eps, dot_scale=dot_scale, impl=impl)
    cdt = _compute_dtype(x.dtype)
    return (y.to(cdt) * (1.0 + scale.to(cdt)[:, None, :]) + shift.to(cdt)[:, None, :]).to(x.dtype)


def _low_precision(x: torch.Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16)


def layer_norm(x, weight, bias, eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension, statistics in float32, output in x's dtype.

    torch's LayerNorm kernels already accumulate bf16/fp16 inputs in float32 (and accept float32
    parameters with them), so the input is not upcast; autocast's float32 output is cast back.
    """
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(x.dtype)


def rms_norm(x, weight, bias, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension (eps inside the root), float32 statistics, x's dtype out."""
    dtype = x.dtype
    if _low_precision(x):
        x = x.float()
        weight = weight.float() if weight is not None else None
        bias = bias.float() if bias is not None else None
    y = F.rms_norm(x, (x.shape[-1],), weight, eps)
    if bias is not None:
        y = y + bias
    return y.to(dtype)


def dyt(x, alpha, weight, bias) -> torch.Tensor:
    """Dynamic Tanh: ``weight * tanh(alpha * x) + bias``, computed in float32, x's dtype out."""
    dtype = x.dtype
    cdt = _compute_dtype(dtype)
    y = torch.tanh(alpha.to(cdt) * x.to(cdt))
    if weight is not None:
        y = y * weight.to(cdt)
    if bias is not None:
        y = y + bias.to(cdt)
    return y.to(dtype)

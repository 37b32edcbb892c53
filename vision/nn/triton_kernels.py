"""Fused Triton kernels for SeeDNorm, registered as torch custom ops so torch.compile keeps them.

Two ops cover every form of the layer (single-head and multihead, with or without ``weight`` and
``bias``, with the dynamic-term dropout, and with DiT's adaLN ``modulate`` fused in)::

    vision::seednorm_forward(x (B, T, D), weight?, alpha, beta, bias?, shift? (B, D), scale? (B, D),
                             seed?, num_heads, eps, dot_mult, p) -> (y, rinv (B*T,), t (B*T, H))
    vision::seednorm_backward(grad, x, rinv, t, weight?, alpha, beta, bias?, scale?, seed?,
                              num_heads, dot_mult, p) -> (dx, dweight, dalpha, dbeta, dbias, dshift, dscale)

``y = ((weight + alpha * tanh(s_h)) * x / r + bias) * (1 + scale[b]) + shift[b]``, with the pieces
that are None left out. The forward reads x once and writes y once (plus 4 + 4H bytes of
statistics per row); the backward reads x and grad once and writes dx once. Parameter gradients
are accumulated in registers by a fixed grid of programs, each owning a contiguous run of rows of
one batch element, written as float32 partial sums and reduced by ``torch.sum`` afterwards:
deterministic, no atomics. Dropout on the dynamic term draws its keep mask inside the kernels from
Philox (``tl.rand``) keyed by a seed tensor and the element index, so the backward regenerates the
same mask instead of reading one from memory.

On CUDA tensors the ops launch the Triton kernels. On other devices they run the same formulas in
plain PyTorch (what ``torch.library.opcheck`` and CPU tests exercise), except under Triton's CPU
interpreter (``TRITON_INTERPRET=1`` set before triton is imported), where CPU tensors go through
the Triton kernels too; that is how the kernels are tested on a machine without a GPU.

This module imports triton when it is itself imported; ``vision.nn.functional`` imports it only
for CUDA tensors or an explicit ``impl="triton"``, so the package works without triton.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except Exception as exc:  # ImportError, or an installation that fails while loading its backends
    triton = None
    tl = None
    _IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Partial-sum slots of the backward kernel, one (D,) row each per program.
SLOT_WEIGHT, SLOT_ALPHA, SLOT_BETA, SLOT_BIAS, SLOT_SHIFT, SLOT_SCALE = range(6)
_NUM_SLOTS = 6


def available() -> bool:
    """Whether triton imported, so the fused kernels can run."""
    return triton is not None


def import_error() -> str | None:
    """Why triton could not be imported, or None."""
    return _IMPORT_ERROR


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on (read by triton when the kernels were defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_triton(x: Tensor) -> bool:
    """Whether the ops launch the Triton kernels for ``x`` (CUDA, or CPU under the interpreter)."""
    if triton is None or x.dtype not in DTYPES:
        return False
    return x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())


if triton is not None:

    @triton.jit
    def _tanh(s):
        # libdevice's tanh does not exist in Triton's CPU interpreter; this form runs in both, so
        # the interpreter tests cover the code the GPU runs. The odd Taylor series avoids the
        # cancellation of 1 - exp(-2|s|) near 0; its first omitted term is < 2e-10 at |s| = 1/8.
        a = tl.abs(s)
        e = tl.exp(-2.0 * a)
        far = (1.0 - e) / (1.0 + e)
        a2 = a * a
        near = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0))))
        t = tl.where(a < 0.125, near, far)
        return tl.where(s < 0.0, -t, t)

    @triton.jit
    def _keep_factor(SEED, elems, p):
        # 1/(1-p) where the dynamic term is kept, 0 where it is dropped; ``elems`` is the flat
        # (int64) element index, so forward, backward and keep_mask() draw the same mask.
        keep = tl.rand(tl.load(SEED), elems) >= p
        return tl.where(keep, 1.0 / (1.0 - p), 0.0)

    @triton.jit
    def _forward_kernel(
        X, W, A, BETA, BIAS, SHIFT, SCALE, SEED, Y, RINV, T,
        n_rows, tokens, eps, dot_mult, p,
        D: tl.constexpr, H: tl.constexpr, HEAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
        ROWS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MOD: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
    ):
        # A program holds ROWS rows as one (rows, heads, head width) block: the per-head dot product
        # is a reduction over the last axis, tanh(s_h) broadcasts back without a gather, and several
        # rows per program keep enough loads in flight for narrow widths.
        heads = tl.arange(0, BLOCK_H)
        cols = tl.arange(0, BLOCK_D)
        offs = heads[:, None] * HEAD + cols[None, :]
        mask = (heads[:, None] < H) & (cols[None, :] < HEAD)
        a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        b = tl.load(BETA + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        live = rows < n_rows
        rmask = mask[None, :, :] & live[:, None, None]
        elems = rows[:, None, None] * D + offs[None, :, :]
        x = tl.load(X + elems, mask=rmask, other=0.0).to(tl.float32)
        rinv = tl.rsqrt(tl.sum(tl.sum(x * x, axis=2), axis=1) / D + eps)
        t = _tanh(tl.sum(x * b, axis=2) * dot_mult)
        dyn = a * t[:, :, None]
        if HAS_DROPOUT:
            dyn = dyn * _keep_factor(SEED, elems, p)
        if HAS_WEIGHT:
            gain = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :] + dyn
        else:
            gain = 1.0 + dyn
        y = gain * (x * rinv[:, None, None])
        if HAS_BIAS:
            y = y + tl.load(BIAS + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        if HAS_MOD:
            mod = (rows // tokens)[:, None, None] * D + offs[None, :, :]
            y = y * (1.0 + tl.load(SCALE + mod, mask=rmask, other=0.0).to(tl.float32))
            y = y + tl.load(SHIFT + mod, mask=rmask, other=0.0).to(tl.float32)
        tl.store(Y + elems, y.to(Y.dtype.element_ty), mask=rmask)
        tl.store(RINV + rows, rinv, mask=live)
        tl.store(T + rows[:, None] * H + heads[None, :], t, mask=live[:, None] & (heads[None, :] < H))

    @triton.jit
    def _backward_kernel(
        G, X, RINV, T, W, A, BETA, BIAS, SCALE, SEED, DX, PARTIAL,
        tokens, rows_per_program, dot_mult, p,
        D: tl.constexpr, H: tl.constexpr, HEAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
        ROWS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_MOD: tl.constexpr,
        HAS_DROPOUT: tl.constexpr,
    ):
        # Program (b, c) owns tokens [c * rows_per_program, ...) of batch element b, ROWS at a time,
        # and sums its parameter gradients in registers; shift/scale gradients (one per batch
        # element) then need no cross-program sum. Rows past the end load as 0 and add nothing.
        batch = tl.program_id(0).to(tl.int64)
        chunk = tl.program_id(1)
        heads = tl.arange(0, BLOCK_H)
        cols = tl.arange(0, BLOCK_D)
        offs = heads[:, None] * HEAD + cols[None, :]
        mask = (heads[:, None] < H) & (cols[None, :] < HEAD)
        hmask = heads < H
        a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        b = tl.load(BETA + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        if HAS_WEIGHT:
            w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        if HAS_BIAS:
            bias = tl.load(BIAS + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        if HAS_MOD:
            scale1 = 1.0 + tl.load(SCALE + batch * D + offs, mask=mask, other=0.0).to(tl.float32)[None, :, :]
        acc_w = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
        acc_a = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
        acc_b = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
        acc_bias = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
        acc_shift = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
        acc_scale = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
        start = chunk * rows_per_program
        stop = tl.minimum(start + rows_per_program, tokens)
        for first in range(start, stop, ROWS):
            tok = first + tl.arange(0, ROWS)
            live = tok < stop
            rows = batch * tokens + tok
            rmask = mask[None, :, :] & live[:, None, None]
            elems = rows[:, None, None] * D + offs[None, :, :]
            x = tl.load(X + elems, mask=rmask, other=0.0).to(tl.float32)
            g = tl.load(G + elems, mask=rmask, other=0.0).to(tl.float32)
            rinv = tl.load(RINV + rows, mask=live, other=0.0)[:, None, None]
            t = tl.load(T + rows[:, None] * H + heads[None, :], mask=live[:, None] & hmask[None, :], other=0.0)
            n = x * rinv
            if HAS_DROPOUT:
                kf = _keep_factor(SEED, elems, p)
                a_eff = a * kf
            else:
                a_eff = a
            if HAS_WEIGHT:
                gain = w + a_eff * t[:, :, None]
            else:
                gain = 1.0 + a_eff * t[:, :, None]
            if HAS_MOD:
                y0 = gain * n
                if HAS_BIAS:
                    y0 = y0 + bias
                acc_shift += tl.sum(g, axis=0)
                acc_scale += tl.sum(g * y0, axis=0)
                g = g * scale1  # from here on, the gradient with respect to the norm's output
            gn = g * n
            k = (1.0 - t * t) * tl.sum(gn * a_eff, axis=2) * dot_mult  # dL/d(dot(x, beta)) per head
            u = g * gain
            dot_ux = tl.sum(tl.sum(u * x, axis=2), axis=1)[:, None, None]
            dx = (u - x * (dot_ux * rinv * rinv / D)) * rinv + k[:, :, None] * b
            tl.store(DX + elems, dx.to(DX.dtype.element_ty), mask=rmask)
            acc_w += tl.sum(gn, axis=0)
            if HAS_DROPOUT:
                acc_a += tl.sum(gn * t[:, :, None] * kf, axis=0)
            else:
                acc_a += tl.sum(gn * t[:, :, None], axis=0)
            acc_b += tl.sum(k[:, :, None] * x, axis=0)
            acc_bias += tl.sum(g, axis=0)
        base = PARTIAL + (batch * tl.num_programs(1) + chunk) * (6 * D) + offs
        if HAS_WEIGHT:
            tl.store(base + 0 * D, acc_w, mask=mask)
        tl.store(base + 1 * D, acc_a, mask=mask)
        tl.store(base + 2 * D, acc_b, mask=mask)
        if HAS_BIAS:
            tl.store(base + 3 * D, acc_bias, mask=mask)
        if HAS_MOD:
            tl.store(base + 4 * D, acc_shift, mask=mask)
            tl.store(base + 5 * D, acc_scale, mask=mask)

    @triton.jit
    def _keep_mask_kernel(SEED, OUT, n, p, BLOCK: tl.constexpr):
        elems = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        keep = _keep_factor(SEED, elems, p) > 0.0
        tl.store(OUT + elems, keep.to(tl.int8), mask=elems < n)


# ----------------------------------------------------------------------------- launch helpers


def blocks_for(dim: int, num_heads: int) -> dict[str, int]:
    """The kernels' shape constants for width ``dim`` split into ``num_heads`` heads."""
    head = dim // num_heads
    return {
        "D": dim, "H": num_heads, "HEAD": head,
        "BLOCK_H": triton.next_power_of_2(num_heads), "BLOCK_D": triton.next_power_of_2(head),
    }


_sm_counts: dict[int, int] = {}


def _processors(x: Tensor) -> int:
    """Streaming multiprocessors of x's GPU."""
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _sm_counts:
        _sm_counts[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_counts[index]


def _tiling(block: int, on_gpu: bool, elements: int, per_warp: int) -> tuple[int, int]:
    """(rows per block, warps) for a padded row of ``block`` elements.

    On the GPU a block holds about ``elements`` values, so narrow rows are processed several at a
    time (more bytes in flight per program), with ``per_warp`` values per warp. These are
    untuned starting points: the GPU benchmark measures the result. Under the CPU interpreter
    two rows per block exercise the row masks at tiny sizes.
    """
    if not on_gpu:
        return 2, 1
    rows = max(1, min(16, elements // block))
    return rows, min(max(rows * block // per_warp, 1), 16)


def forward_tiling(blocks: dict[str, int], on_gpu: bool) -> tuple[int, int]:
    """(rows per program, warps) of the forward kernel: ~4096 padded values, 512 per warp."""
    return _tiling(blocks["BLOCK_H"] * blocks["BLOCK_D"], on_gpu, elements=4096, per_warp=512)


def backward_tiling(blocks: dict[str, int], on_gpu: bool) -> tuple[int, int]:
    """(rows per loop step, warps) of the backward kernel: ~2048 padded values, 256 per warp.

    Smaller than the forward's because six (heads, head width) accumulators stay in registers.
    """
    return _tiling(blocks["BLOCK_H"] * blocks["BLOCK_D"], on_gpu, elements=2048, per_warp=256)


def _launch_forward(x, weight, alpha, beta, bias, shift, scale, seed, num_heads, eps, dot_mult, p):
    B, T_, D = x.shape
    n_rows = B * T_
    x = x.contiguous()
    y = torch.empty_like(x)
    rinv = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    t = torch.empty(n_rows, num_heads, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, rinv, t
    blocks = blocks_for(D, num_heads)
    rows, warps = forward_tiling(blocks, x.device.type == "cuda")
    dummy = alpha  # pointer for absent tensors; the constexpr flags keep it from being read
    _forward_kernel[(triton.cdiv(n_rows, rows),)](
        x, _c(weight, dummy), _c(alpha), _c(beta), _c(bias, dummy), _c(shift, dummy), _c(scale, dummy),
        seed if seed is not None else dummy, y, rinv, t,
        n_rows, T_, eps, dot_mult, p,
        ROWS=rows, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_MOD=scale is not None,
        HAS_DROPOUT=p > 0.0, num_warps=warps, **blocks,
    )
    return y, rinv, t


def _launch_backward(grad, x, rinv, t, weight, alpha, beta, bias, scale, seed, num_heads, dot_mult, p):
    B, T_, D = x.shape
    x = x.contiguous()
    grad = grad.contiguous()
    dx = torch.empty_like(x)
    blocks = blocks_for(D, num_heads)
    rows, warps = backward_tiling(blocks, x.device.type == "cuda")
    # About two programs per SM overall (one resident wave), each summing a contiguous run of one
    # batch element's rows; the interpreter gets 2 programs per batch element.
    programs = 2 * _processors(x) if x.device.type == "cuda" else 2 * max(B, 1)
    chunks = max(1, min(triton.cdiv(T_, rows), triton.cdiv(programs, max(B, 1))))
    rows_per_program = triton.cdiv(T_, chunks)
    # Every program stores every slot it uses (zeros when it owns no rows): no memset needed.
    partial = torch.empty(B, chunks, _NUM_SLOTS, D, dtype=torch.float32, device=x.device)
    if B * T_ == 0:
        partial.zero_()
    else:
        dummy = alpha
        _backward_kernel[(B, chunks)](
            grad, x, rinv, t, _c(weight, dummy), _c(alpha), _c(beta), _c(bias, dummy), _c(scale, dummy),
            seed if seed is not None else dummy, dx, partial,
            T_, rows_per_program, dot_mult, p,
            ROWS=rows, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, HAS_MOD=scale is not None,
            HAS_DROPOUT=p > 0.0, num_warps=warps, **blocks,
        )

    # The second reduction: per-program partial sums -> one gradient each (torch's reduction
    # kernel; one per slot, because a custom op's outputs may not be views of one tensor).
    def total(slot: int, present: bool) -> Tensor | None:
        return partial[:, :, slot].sum((0, 1)) if present else None

    def per_batch(slot: int) -> Tensor | None:
        return partial[:, :, slot].sum(1) if scale is not None else None

    return (
        dx,
        total(SLOT_WEIGHT, weight is not None),
        total(SLOT_ALPHA, True),
        total(SLOT_BETA, True),
        total(SLOT_BIAS, bias is not None),
        per_batch(SLOT_SHIFT),
        per_batch(SLOT_SCALE),
    )


def _c(tensor: Tensor | None, default: Tensor | None = None) -> Tensor | None:
    return default if tensor is None else tensor.contiguous()


def keep_mask(seed: Tensor, shape: tuple[int, ...], p: float) -> Tensor:
    """The boolean keep mask of the dynamic-term dropout that the Triton kernels draw for ``seed``.

    Element ``i`` of the flattened (rows, D) input is kept when Philox gives ``rand(seed, i) >= p``.
    Needs the Triton kernels to run on ``seed``'s device (CUDA, or the CPU interpreter).
    """
    if not runs_triton(torch.empty(0, device=seed.device)):
        raise RuntimeError(f"keep_mask needs the Triton kernels, which do not run on {seed.device} here")
    n = math.prod(shape)
    out = torch.empty(n, dtype=torch.int8, device=seed.device)
    block = 1024
    if n:
        _keep_mask_kernel[(triton.cdiv(n, block),)](seed, out, n, float(p), BLOCK=block)
    return out.view(shape).bool()


# ----------------------------------------------------------------------------- plain PyTorch


def _math_keep_factor(seed: Tensor | None, shape: torch.Size, p: float, device: torch.device) -> Tensor | None:
    # A different generator from the kernels' Philox stream (same distribution): this path runs
    # where the Triton kernels do not.
    if p <= 0.0:
        return None
    gen = torch.Generator(device=device).manual_seed(int(seed.item()))
    keep = torch.rand(shape, generator=gen, device=device) >= p
    return keep.to(torch.float32) / (1.0 - p)


def _math_forward(x, weight, alpha, beta, bias, shift, scale, seed, num_heads, eps, dot_mult, p):
    B, T_, D = x.shape
    H, d = num_heads, D // num_heads
    xf = x.float().reshape(B, T_, H, d)
    rinv = torch.rsqrt(xf.pow(2).sum((-1, -2)) / D + eps)
    t = torch.tanh((xf * beta.float().view(H, d)).sum(-1) * dot_mult)
    dyn = alpha.float().view(H, d) * t[..., None]
    kf = _math_keep_factor(seed, x.shape, p, x.device)
    if kf is not None:
        dyn = dyn * kf.view(B, T_, H, d)
    gain = dyn + (weight.float().view(H, d) if weight is not None else 1.0)
    y = (gain * xf * rinv[..., None, None]).reshape(B, T_, D)
    if bias is not None:
        y = y + bias.float()
    if scale is not None:
        y = y * (1.0 + scale.float()[:, None]) + shift.float()[:, None]
    return y.to(x.dtype), rinv.reshape(-1), t.reshape(-1, H)


def _math_backward(grad, x, rinv, t, weight, alpha, beta, bias, scale, seed, num_heads, dot_mult, p):
    B, T_, D = x.shape
    H, d = num_heads, D // num_heads
    xf = x.float().reshape(B, T_, H, d)
    g = grad.float().reshape(B, T_, H, d)
    rinv = rinv.view(B, T_, 1, 1)
    t = t.view(B, T_, H, 1)
    n = xf * rinv
    kf = _math_keep_factor(seed, x.shape, p, x.device)
    a_eff = alpha.float().view(H, d) if kf is None else alpha.float().view(H, d) * kf.view(B, T_, H, d)
    gain = a_eff * t + (weight.float().view(H, d) if weight is not None else 1.0)
    dshift = dscale = None
    if scale is not None:
        y0 = gain * n + (bias.float().view(H, d) if bias is not None else 0.0)
        dshift = g.sum(1).reshape(B, D)
        dscale = (g * y0).sum(1).reshape(B, D)
        g = g * (1.0 + scale.float().view(B, 1, H, d))
    gn = g * n
    k = (1.0 - t * t) * (gn * a_eff).sum(-1, keepdim=True) * dot_mult
    u = g * gain
    dot_ux = (u * xf).sum((-1, -2), keepdim=True)
    dx = (u - xf * (dot_ux * rinv * rinv / D)) * rinv + k * beta.float().view(H, d)
    dalpha_terms = gn * t if kf is None else gn * t * kf.view(B, T_, H, d)
    return (
        dx.reshape(B, T_, D).to(x.dtype),
        gn.sum((0, 1)).flatten() if weight is not None else None,
        dalpha_terms.sum((0, 1)).flatten(),
        (k * xf).sum((0, 1)).flatten(),
        g.sum((0, 1)).flatten() if bias is not None else None,
        dshift,
        dscale,
    )


# ----------------------------------------------------------------------------- custom ops


def _empty(x: Tensor) -> Tensor:
    # Custom ops cannot return None; an empty float32 tensor stands for "no such gradient".
    return x.new_empty(0, dtype=torch.float32)


@torch.library.custom_op("vision::seednorm_forward", mutates_args=())
def seednorm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    alpha: Tensor,
    beta: Tensor,
    bias: Optional[Tensor],
    shift: Optional[Tensor],
    scale: Optional[Tensor],
    seed: Optional[Tensor],
    num_heads: int,
    eps: float,
    dot_mult: float,
    p: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused SeeDNorm (+ modulate) forward of x (B, T, D); returns y, 1/r (B*T,), tanh(s) (B*T, H)."""
    launch = _launch_forward if runs_triton(x) else _math_forward
    y, rinv, t = launch(x, weight, alpha, beta, bias, shift, scale, seed, num_heads, eps, dot_mult, p)
    return y, rinv, t


@seednorm_forward.register_fake
def _(x, weight, alpha, beta, bias, shift, scale, seed, num_heads, eps, dot_mult, p):
    rows = x.shape[0] * x.shape[1]
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(rows, dtype=torch.float32),
        x.new_empty(rows, num_heads, dtype=torch.float32),
    )


@torch.library.custom_op("vision::seednorm_backward", mutates_args=())
def seednorm_backward(
    grad: Tensor,
    x: Tensor,
    rinv: Tensor,
    t: Tensor,
    weight: Optional[Tensor],
    alpha: Tensor,
    beta: Tensor,
    bias: Optional[Tensor],
    scale: Optional[Tensor],
    seed: Optional[Tensor],
    num_heads: int,
    dot_mult: float,
    p: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``seednorm_forward`` for x and (float32) weight, alpha, beta, bias, shift, scale.

    Absent ones come back as empty tensors.
    """
    launch = _launch_backward if runs_triton(x) else _math_backward
    grads = launch(grad, x, rinv, t, weight, alpha, beta, bias, scale, seed, num_heads, dot_mult, p)
    return tuple(_empty(x) if g is None else g for g in grads)


@seednorm_backward.register_fake
def _(grad, x, rinv, t, weight, alpha, beta, bias, scale, seed, num_heads, dot_mult, p):
    D = x.shape[-1]

    def param(present: bool) -> Tensor:
        return x.new_empty(D if present else 0, dtype=torch.float32)

    def per_batch() -> Tensor:
        return x.new_empty((x.shape[0], D), dtype=torch.float32) if scale is not None else _empty(x)

    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        param(weight is not None), param(True), param(True), param(bias is not None),
        per_batch(), per_batch(),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, alpha, beta, bias, shift, scale, seed, num_heads, eps, dot_mult, p = inputs
    _, rinv, t = output
    ctx.save_for_backward(x, rinv, t, weight, alpha, beta, bias, shift, scale, seed)
    ctx.config = (num_heads, dot_mult, p)
    ctx.mark_non_differentiable(rinv, t)


def _backward(ctx, grad_y, grad_rinv, grad_t):
    x, rinv, t, weight, alpha, beta, bias, shift, scale, seed = ctx.saved_tensors
    num_heads, dot_mult, p = ctx.config
    dx, dweight, dalpha, dbeta, dbias, dshift, dscale = seednorm_backward(
        grad_y, x, rinv, t, weight, alpha, beta, bias, scale, seed, num_heads, dot_mult, p
    )
    needs = ctx.needs_input_grad

    def cast(g: Tensor, like: Tensor | None, i: int) -> Tensor | None:
        return g.to(like.dtype) if needs[i] and like is not None else None

    return (
        dx if needs[0] else None,
        cast(dweight, weight, 1), cast(dalpha, alpha, 2), cast(dbeta, beta, 3), cast(dbias, bias, 4),
        cast(dshift, shift, 5), cast(dscale, scale, 6),
        None, None, None, None, None,
    )


seednorm_forward.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- entry points


def _draw_seed(x: Tensor) -> Tensor:
    # A tensor, not a Python int, so torch.compile traces the draw instead of breaking the graph.
    return torch.randint(0, 2**31 - 1, (1,), device=x.device, dtype=torch.int64)


def seednorm(x, weight, alpha, beta, bias, num_heads: int, eps: float, dot_mult: float, p: float) -> Tensor:
    """SeeDNorm over the last dimension of ``x`` (..., D) through the fused op.

    ``dot_mult`` multiplies dot(x, beta); ``p`` is the dropout probability of the dynamic term
    (0 outside training). Called by ``vision.nn.functional.seednorm`` for impl "triton".
    """
    shape = x.shape
    x3 = x.reshape(1, -1, shape[-1])
    seed = _draw_seed(x) if p > 0.0 else None
    y, _, _ = seednorm_forward(x3, weight, alpha, beta, bias, None, None, seed, num_heads, eps, dot_mult, p)
    return y.view(shape)


def seednorm_modulate(x, alpha, beta, shift, scale, num_heads: int, eps: float, dot_mult: float) -> Tensor:
    """Affine-free SeeDNorm of ``x`` (B, T, D) then ``* (1 + scale[:, None]) + shift[:, None]``, fused."""
    y, _, _ = seednorm_forward(x, None, alpha, beta, None, shift, scale, None, num_heads, eps, dot_mult, 0.0)
    return y

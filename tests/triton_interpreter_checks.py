"""Run SeeDNorm's Triton kernels on the CPU through Triton's interpreter and measure their errors.

Must run in a fresh process with ``TRITON_INTERPRET=1`` in the environment (triton reads it when
the kernels are defined). Every case goes through the public path (``vision.nn.functional`` ->
custom op -> autograd -> Triton kernels) and is compared with the float64 reference of
``tests/reference.py``. Prints one JSON object: ``{"cases": [...], "checks": {...}}``, where each
case lists, per output and gradient, the normwise error ``max|ours - ref| / max|ref|``.
tests/test_triton_kernels.py runs this script and holds the tolerances; run it by hand with
``TRITON_INTERPRET=1 python tests/triton_interpreter_checks.py`` to see the numbers.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("set TRITON_INTERPRET=1 before running this script (triton reads it at import time)")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

from vision.nn import SeeDNorm  # noqa: E402
from vision.nn import functional as VF  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def normwise(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    scale = ref.abs().max().item()
    err = (ours.double() - ref).abs().max().item()
    return err / scale if scale > 0 else err


def record(name: str, kind: str, dtype: str, dim: int, heads: int, measured: dict) -> dict:
    """One case: per quantity, the normwise error and the dtype the result came back in."""
    return {
        "case": name, "kind": kind, "dtype": dtype, "dim": dim, "heads": heads,
        "errors": {k: normwise(ours, ref) for k, (ours, ref) in measured.items()},
        "dtypes": {k: str(ours.dtype).replace("torch.", "") for k, (ours, _) in measured.items()},
    }


def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone().requires_grad_()


def as64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double().requires_grad_()


def make_params(dim: int, num_heads: int, weight: bool, bias: bool, gen: torch.Generator) -> dict:
    d = dim // num_heads
    return {
        "weight": torch.randn(dim, generator=gen) * 0.3 + 1.0 if weight else None,
        "alpha": torch.randn(dim, generator=gen) * 0.5 + 1.0,
        # 2/sqrt(d) puts tanh in its curved range for unit-variance inputs, so every term matters.
        "beta": torch.randn(dim, generator=gen) * (2.0 / math.sqrt(d)),
        "bias": torch.randn(dim, generator=gen) * 0.3 if bias else None,
    }


def case_norm(name, dim, num_heads, dtype, weight=True, bias=False, dot_scale="none", rows=(3, 5), seed=0):
    """Forward and every gradient of ``seednorm(impl="triton")`` against the float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    p = make_params(dim, num_heads, weight, bias, gen)
    x = (torch.randn(*rows, dim, generator=gen) * 2.0).to(DTYPES[dtype])
    grad = torch.randn(*rows, dim, generator=gen).to(DTYPES[dtype])
    ours = {k: leaf(v) for k, v in p.items()}
    xo = leaf(x)
    y = VF.seednorm(xo, ours["weight"], ours["alpha"], ours["beta"], ours["bias"], num_heads=num_heads,
                    dot_scale=dot_scale, impl="triton")
    y.backward(grad)
    refs = {k: as64(v) for k, v in p.items()}
    x64 = as64(x)
    y64 = reference.seednorm(x64, refs["weight"], refs["alpha"], refs["beta"], refs["bias"], num_heads=num_heads,
                             dot_scale=dot_scale)
    y64.backward(grad.double())
    measured = {"y": (y, y64), "x": (xo.grad, x64.grad)}
    for k in p:
        if p[k] is not None:
            measured[k] = (ours[k].grad, refs[k].grad)
    return record(name, "norm", dtype, dim, num_heads, measured)


def modulate_reference(x, alpha, beta, shift, scale, num_heads):
    """float64 ``SeeDNorm_without_weight(x) * (1 + scale[:, None]) + shift[:, None]``."""
    y = reference.seednorm(x, None, alpha, beta, num_heads=num_heads)
    return y * (1.0 + scale.double()[:, None, :]) + shift.double()[:, None, :]


def case_modulate(name, dim, num_heads, dtype, batch=2, tokens=5, seed=0):
    """``seednorm_modulate(impl="triton")`` (the fused adaLN form) and its five gradients."""
    gen = torch.Generator().manual_seed(seed)
    p = make_params(dim, num_heads, False, False, gen)
    x = (torch.randn(batch, tokens, dim, generator=gen) * 2.0).to(DTYPES[dtype])
    # adaLN outputs come out of a Linear under autocast, i.e. in the activation dtype.
    shift = (torch.randn(batch, dim, generator=gen) * 0.5).to(DTYPES[dtype])
    scale = (torch.randn(batch, dim, generator=gen) * 0.5).to(DTYPES[dtype])
    grad = torch.randn(batch, tokens, dim, generator=gen).to(DTYPES[dtype])
    xo, ao, bo, so, co = (leaf(t) for t in (x, p["alpha"], p["beta"], shift, scale))
    y = VF.seednorm_modulate(xo, ao, bo, so, co, num_heads=num_heads, impl="triton")
    y.backward(grad)
    x64, a64, b64, s64, c64 = (as64(t) for t in (x, p["alpha"], p["beta"], shift, scale))
    y64 = modulate_reference(x64, a64, b64, s64, c64, num_heads)
    y64.backward(grad.double())
    measured = {
        "y": (y, y64), "x": (xo.grad, x64.grad), "alpha": (ao.grad, a64.grad), "beta": (bo.grad, b64.grad),
        "shift": (so.grad, s64.grad), "scale": (co.grad, c64.grad),
    }
    return record(name, "modulate", dtype, dim, num_heads, measured)


def case_dropout(name, dim, num_heads, dtype, p_drop=0.3, modulate=False, seed=0):
    """Dynamic-term dropout: the op's outputs and gradients with the mask ``keep_mask`` reports."""
    from vision.nn import triton_kernels as K

    gen = torch.Generator().manual_seed(seed)
    batch, tokens = 2, 6
    p = make_params(dim, num_heads, not modulate, False, gen)
    x = (torch.randn(batch, tokens, dim, generator=gen) * 2.0).to(DTYPES[dtype])
    grad = torch.randn(batch, tokens, dim, generator=gen).to(DTYPES[dtype])
    shift = torch.randn(batch, dim, generator=gen) * 0.5 if modulate else None
    scale = torch.randn(batch, dim, generator=gen) * 0.5 if modulate else None
    seed_t = torch.tensor([1234 + seed], dtype=torch.int64)
    ours = [leaf(t) for t in (x, p["weight"], p["alpha"], p["beta"], shift, scale)]
    y, _, _ = K.seednorm_forward(ours[0], ours[1], ours[2], ours[3], None, ours[4], ours[5], seed_t, num_heads,
                                 1e-6, 1.0, p_drop)
    y.backward(grad)
    mask = K.keep_mask(seed_t, (batch, tokens, dim), p_drop)
    refs = [as64(t) for t in (x, p["weight"], p["alpha"], p["beta"], shift, scale)]
    y64 = reference.seednorm(refs[0], refs[1], refs[2], refs[3], num_heads=num_heads, mask=mask, p=p_drop)
    if modulate:
        y64 = y64 * (1.0 + refs[5][:, None, :]) + refs[4][:, None, :]
    y64.backward(grad.double())
    measured = {"y": (y, y64)}
    for key, o, r in zip(("x", "weight", "alpha", "beta", "shift", "scale"), ours, refs):
        if o is not None:
            measured[key] = (o.grad, r.grad)
    out = record(name, "dropout", dtype, dim, num_heads, measured)
    out["kept"] = mask.double().mean().item()
    return out


def check_compile_fullgraph() -> dict:
    """A Linear -> SeeDNorm(impl="triton") -> Linear model under torch.compile(fullgraph=True)."""
    torch.manual_seed(0)
    norm = SeeDNorm(48, num_heads=4, bias=True, impl="triton")
    with torch.no_grad():
        norm.beta.normal_(0.0, 0.5)
    model = torch.nn.Sequential(torch.nn.Linear(48, 48), norm, torch.nn.Linear(48, 8))
    x = torch.randn(3, 5, 48)
    explained = torch._dynamo.explain(model)(x)
    ops = sorted({str(n.target) for g in explained.graphs for n in g.graph.nodes if "vision" in str(n.target)})
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    grads = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.square().sum().backward()
    grad_err = max(normwise(g, q.grad) for g, q in zip(grads, model.parameters()))
    return {"graph_breaks": explained.graph_break_count, "graphs": explained.graph_count, "ops": ops,
            "y_err": normwise(y, y_eager), "grad_err": grad_err}


def check_edges() -> dict:
    """Empty input, a non-contiguous input, dropout's keep rate and fresh masks per call."""
    from vision.nn import triton_kernels as K

    layer = SeeDNorm(16, num_heads=2, impl="triton")
    empty = layer(torch.randn(0, 3, 16, requires_grad=True))
    empty.sum().backward()
    with torch.no_grad():
        layer.beta.normal_(0.0, 0.5)
    x = torch.randn(16, 5).t()  # (5, 16), not contiguous
    ref = reference.seednorm(x, layer.weight, layer.alpha, layer.beta, num_heads=2)
    mask = K.keep_mask(torch.tensor([7]), (20000,), 0.3)
    dropping = SeeDNorm(16, num_heads=2, dyn_dropout=0.5, impl="triton").train()
    with torch.no_grad():
        dropping.beta.normal_(0.0, 0.5)
    xd = torch.randn(8, 16)
    first, second = dropping(xd), dropping(xd)
    return {
        "empty_shape": list(empty.shape), "empty_alpha_grad": layer.alpha.grad.abs().max().item(),
        "noncontiguous_err": normwise(layer(x).detach(), ref),
        "kept_fraction_p0.3": mask.double().mean().item(),
        "dropout_masks_differ": not torch.equal(first, second),
        "eval_has_no_dropout": torch.equal(dropping.eval()(xd), dropping(xd)),
    }


def main() -> None:
    start = time.perf_counter()
    # First, before anything imports vision.nn.triton_kernels: the lazy import happens in the trace.
    compile_check = check_compile_fullgraph()
    cases = []
    for dtype in DTYPES:
        cases.append(case_norm(f"1 head, D=48, {dtype}", 48, 1, dtype))
        cases.append(case_norm(f"4 heads, D=48, bias, {dtype}", 48, 4, dtype, bias=True))
        cases.append(case_norm(f"3 heads (padded), D=96, no weight, bias, {dtype}", 96, 3, dtype, weight=False,
                               bias=True))
        cases.append(case_modulate(f"modulate, 4 heads, D=48, {dtype}", 48, 4, dtype))
    cases.append(case_norm("16 heads, D=384, sqrt_dim", 384, 16, "float32", dot_scale="sqrt_dim"))
    cases.append(case_norm("12 heads, D=768, bias, dim", 768, 12, "bfloat16", bias=True, dot_scale="dim",
                           rows=(2, 3)))
    cases.append(case_norm("16 heads, D=1024, 1 row", 1024, 16, "float32", rows=(1,)))
    cases.append(case_modulate("modulate, 16 heads, D=1152 (DiT-XL)", 1152, 16, "float32", tokens=3))
    cases.append(case_modulate("modulate, 1 head, D=1152 (DiT-XL)", 1152, 1, "bfloat16", tokens=3))
    cases.append(case_dropout("dropout p=0.3, 4 heads, D=48, float32", 48, 4, "float32"))
    cases.append(case_dropout("dropout p=0.3, 4 heads, D=48, bfloat16", 48, 4, "bfloat16"))
    cases.append(case_dropout("dropout p=0.3 + modulate, 2 heads, D=32", 32, 2, "float32", modulate=True))
    checks = {"compile": compile_check, "edges": check_edges(), "seconds": time.perf_counter() - start}
    print(json.dumps({"cases": cases, "checks": checks}))


if __name__ == "__main__":
    main()

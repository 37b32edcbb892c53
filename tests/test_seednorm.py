"""SeeDNorm against the float64 formula of SEEDNORM.md, for every kernel implementation."""

import math

import pytest
import torch

import reference
from vision.nn import SeeDNorm, build_norm, native
from vision.nn.functional import select_backend

IMPLS = ["eager", "native", "compiled"]


def randomized(layer: SeeDNorm) -> SeeDNorm:
    """Nonzero, non-trivial alpha, beta, weight and bias, as after some training."""
    d = layer.dim // layer.num_heads
    with torch.no_grad():
        layer.alpha.normal_(1.0, 0.5)
        layer.beta.normal_(0.0, 1.0 / math.sqrt(d))
        if layer.weight is not None:
            layer.weight.normal_(1.0, 0.3)
        if layer.bias is not None:
            layer.bias.normal_(0.0, 0.3)
    return layer


def params(layer):
    return layer.weight, layer.alpha, layer.beta, layer.bias


def test_native_kernels_build_here():
    assert native.available(), native.build_error()


@pytest.mark.parametrize("impl", IMPLS)
def test_backend_is_the_one_asked_for(impl):
    assert select_backend(impl, torch.zeros(2, 8)) == impl


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("num_heads", [1, 2, 4, 16])
@pytest.mark.parametrize("affine,bias", [(True, False), (False, True), (True, True)])
def test_forward_and_backward_match_float64_reference(impl, num_heads, affine, bias):
    layer = randomized(SeeDNorm(64, num_heads=num_heads, elementwise_affine=affine, bias=bias, impl=impl))
    x = torch.randn(3, 7, 64, requires_grad=True)
    grad = torch.randn(3, 7, 64)
    y = layer(x)
    y.backward(grad)

    x64 = x.detach().double().requires_grad_()
    ref_params = [p.detach().double().requires_grad_() if p is not None else None for p in params(layer)]
    y64 = reference.seednorm(x64, *ref_params, num_heads=num_heads, eps=layer.eps)
    y64.backward(grad.double())

    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    for ours, ref in zip(params(layer), ref_params):
        if ours is not None:
            torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dot_scale", ["none", "sqrt_dim", "dim"])
def test_dot_scale_matches_reference(impl, dot_scale):
    layer = randomized(SeeDNorm(48, num_heads=3, dot_scale=dot_scale, impl=impl))
    with torch.no_grad():
        layer.beta.mul_(8.0)  # make the scale matter
    x = torch.randn(5, 48)
    expected = reference.seednorm(x, *params(layer), num_heads=3, eps=layer.eps, dot_scale=dot_scale)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_heads", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_float64(num_heads, bias):
    layer = randomized(SeeDNorm(16, num_heads=num_heads, bias=bias, impl="eager")).double()
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    inputs = (x, layer.weight, layer.alpha, layer.beta) + ((layer.bias,) if bias else ())

    def fn(x, weight, alpha, beta, bias=None):
        from vision.nn.functional import seednorm

        return seednorm(x, weight, alpha, beta, bias, num_heads=num_heads, eps=1e-6, impl="eager")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_float64_compiled_kernels():
    layer = randomized(SeeDNorm(8, num_heads=2, bias=True, impl="compiled")).double()
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, alpha, beta, bias):
        from vision.nn.functional import seednorm

        return seednorm(x, weight, alpha, beta, bias, num_heads=2, impl="compiled")

    assert torch.autograd.gradcheck(fn, (x, layer.weight, layer.alpha, layer.beta, layer.bias), eps=1e-6, atol=1e-6)


def test_gradcheck_affine_free():
    layer = randomized(SeeDNorm(12, num_heads=3, elementwise_affine=False, impl="eager")).double()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_fresh_layer_is_torch_rmsnorm_and_alpha_gets_no_gradient(impl):
    layer = SeeDNorm(96, num_heads=4, impl=impl)
    rms = torch.nn.RMSNorm(96, eps=1e-6)
    x = torch.randn(4, 9, 96) * 3.0
    y = layer(x)
    assert (y - rms(x)).abs().max().item() < 1e-6
    y.backward(torch.randn_like(y))
    assert torch.equal(layer.alpha.grad, torch.zeros(96))
    # beta and gamma do get gradients: the layer can leave the RMSNorm point.
    assert layer.beta.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_one_head_is_the_single_head_layer(impl):
    single = randomized(SeeDNorm(40, impl=impl))
    multi = build_norm("mhseednorm", 40, num_heads=1, impl=impl)
    multi.load_state_dict(single.state_dict())
    x = torch.randn(6, 40)
    assert torch.equal(single(x), multi(x))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("factor", [1e-3, 1e3])
def test_scale_invariant_when_beta_is_zero(impl, factor):
    # eps is made negligible against the smallest mean square (1e-6) so only scale matters.
    layer = randomized(SeeDNorm(64, num_heads=4, eps=1e-14, impl=impl))
    with torch.no_grad():
        layer.beta.zero_()
    x = torch.randn(8, 64)
    y, y_scaled = layer(x), layer(x * factor)
    assert ((y_scaled - y).abs() / (y.abs() + 1e-3)).max().item() < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_output_bound(impl):
    layer = randomized(SeeDNorm(32, num_heads=2, impl=impl))
    with torch.no_grad():
        layer.beta.mul_(100.0)  # saturate tanh
    x = torch.randn(50, 32) * 10
    bound = (layer.weight.abs() + layer.alpha.abs()) * math.sqrt(32)
    assert (layer(x).abs() <= bound * (1 + 1e-6)).all()


@pytest.mark.parametrize("num_heads", [1, 4])
def test_hand_derived_gradients_of_section_6(num_heads):
    """The closed-form gradients of SEEDNORM.md section 6, written out here, equal autograd's."""
    dim, d = 32, 32 // num_heads
    x = torch.randn(5, dim, dtype=torch.float64, requires_grad=True)
    gamma = (torch.randn(dim, dtype=torch.float64) * 0.3 + 1).requires_grad_()
    alpha = (torch.randn(dim, dtype=torch.float64) * 0.5 + 1).requires_grad_()
    beta = (torch.randn(dim, dtype=torch.float64) / math.sqrt(d)).requires_grad_()
    eps = 1e-6
    G = torch.randn(5, dim, dtype=torch.float64)
    reference.seednorm(x, gamma, alpha, beta, num_heads=num_heads, eps=eps).backward(G)

    with torch.no_grad():
        xs = x.detach()
        r = torch.sqrt((xs * xs).mean(-1, keepdim=True) + eps)
        n = xs / r
        heads = torch.arange(dim) // d
        s = torch.zeros(5, num_heads, dtype=torch.float64).index_add_(1, heads, xs * beta)
        t = torch.tanh(s)[:, heads]
        g = gamma + alpha * t
        c = torch.zeros(5, num_heads, dtype=torch.float64).index_add_(1, heads, G * alpha * n)[:, heads]
        u = G * g
        d_gamma = (G * n).sum(0)
        d_alpha = (t * G * n).sum(0)
        d_beta = ((1 - t**2) * c * xs).sum(0)
        d_x = (u - xs * (u * xs).sum(-1, keepdim=True) / (dim * r**2)) / r + (1 - t**2) * c * beta

    for ours, ref in [(d_gamma, gamma.grad), (d_alpha, alpha.grad), (d_beta, beta.grad), (d_x, x.grad)]:
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)

    # and the layer's own backward (the kernels) gives the same numbers
    for impl in IMPLS:
        layer = SeeDNorm(dim, num_heads=num_heads, eps=eps, impl=impl)
        with torch.no_grad():
            layer.weight.copy_(gamma)
            layer.alpha.copy_(alpha)
            layer.beta.copy_(beta)
        xf = xs.float().requires_grad_()
        layer(xf).backward(G.float())
        torch.testing.assert_close(xf.grad.double(), d_x, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.beta.grad.double(), d_beta, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.alpha.grad.double(), d_alpha, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_dynamic_dropout(impl):
    p = 0.5
    layer = randomized(SeeDNorm(64, num_heads=4, dyn_dropout=p, impl=impl))
    x = torch.randn(32, 64, requires_grad=True)
    grad = torch.randn(32, 64)
    y = layer(x)
    y.backward(grad)
    w, a, b, _ = params(layer)
    kept = reference.seednorm(x, w, a, b, num_heads=4, eps=layer.eps, mask=torch.ones(32, 64), p=p)
    dropped = reference.seednorm(x, w, a, b, num_heads=4, eps=layer.eps, mask=torch.zeros(32, 64), p=p)
    is_kept = (y.double() - kept).abs() < 1e-4
    is_dropped = (y.double() - dropped).abs() < 1e-4
    assert (is_kept | is_dropped).all(), "every element is either kept or dropped"
    ambiguous = is_kept & is_dropped
    assert abs(is_kept[~ambiguous].double().mean().item() - (1 - p)) < 0.06

    # Gradients equal those of the reference with the mask the layer drew.
    mask = is_kept.double()
    x64 = x.detach().double().requires_grad_()
    ref_params = [q.detach().double().requires_grad_() for q in (w, a, b)]
    ref = reference.seednorm(x64, *ref_params, num_heads=4, eps=layer.eps, mask=mask, p=p)
    ambiguous_rows = ambiguous.any(-1, keepdim=True)
    ref.backward(grad.double())
    rows = ~ambiguous_rows.squeeze(-1)
    torch.testing.assert_close(x.grad[rows].double(), x64.grad[rows], rtol=1e-4, atol=1e-4)
    if not ambiguous.any():
        for ours, theirs in zip((w, a, b), ref_params):
            torch.testing.assert_close(ours.grad.double(), theirs.grad, rtol=1e-4, atol=1e-4)

    layer.eval()
    plain = SeeDNorm(64, num_heads=4, impl=impl)
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(layer(x), plain(x)), "no dropout in eval mode"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_low_precision_inputs_over_eight_decades(dtype, impl):
    layer = randomized(SeeDNorm(64, num_heads=4, bias=True, impl=impl))
    norms = torch.logspace(-4, 4, 17)
    direction = torch.nn.functional.normalize(torch.randn(17, 64), dim=-1)
    x = (direction * norms[:, None]).to(dtype)
    y = layer(x)
    assert y.dtype == dtype
    assert torch.isfinite(y).all()
    # Same (rounded) input computed in float32: only the output rounding may differ.
    y32 = layer(x.float())
    tol = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    assert ((y.float() - y32).abs() <= tol * y32.abs() + 1e-3 * tol).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_keeps_float32_statistics(impl):
    linear = torch.nn.Linear(64, 64)
    layer = randomized(SeeDNorm(64, num_heads=4, impl=impl))
    x = torch.randn(10, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        y = layer(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    y32 = layer(h.float())
    assert ((y.float() - y32).abs() <= 2.0 ** -7 * y32.abs() + 1e-4).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.float32, "a float32 input stays float32"


def test_native_threads_agree():
    layer = randomized(SeeDNorm(128, num_heads=8, bias=True, impl="native"))
    x = torch.randn(64, 128)
    grad = torch.randn(64, 128)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            layer.zero_grad()
            xr = x.clone().requires_grad_()
            layer(xr).backward(grad)
            results.append([layer(x), xr.grad] + [q.grad.clone() for q in layer.parameters()])
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results):
        torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5)


def test_native_handles_noncontiguous_and_empty_inputs():
    layer = randomized(SeeDNorm(16, num_heads=2, impl="native"))
    x = torch.randn(16, 5).t()  # (5, 16), not contiguous
    expected = reference.seednorm(x, *params(layer), num_heads=2, eps=layer.eps)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert layer(torch.randn(0, 3, 16)).shape == (0, 3, 16)


def test_whole_model_compiles_without_graph_break():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), randomized(SeeDNorm(32, num_heads=4)), torch.nn.Linear(32, 4))
    x = torch.randn(6, 32)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for g_compiled, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g_compiled, p.grad, rtol=1e-4, atol=1e-5)


def test_double_backward_is_refused_clearly():
    layer = randomized(SeeDNorm(8, impl="eager"))
    x = torch.randn(2, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="SeeDNorm does not support double backward"):
        torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(layer(x).sum(), x)  # first order is fine
    assert torch.isfinite(g).all()


def test_reset_parameters_and_repr():
    layer = randomized(SeeDNorm(32, num_heads=4, alpha_init=0.5, bias=True, dyn_dropout=0.1, dot_scale="sqrt_dim"))
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones(32))
    assert torch.equal(layer.alpha, torch.full((32,), 0.5))
    assert torch.equal(layer.beta, torch.zeros(32))
    assert torch.equal(layer.bias, torch.zeros(32))
    text = repr(layer)
    for part in ("32", "num_heads=4", "alpha_init=0.5", "bias=True", "dyn_dropout=0.1", "dot_scale=sqrt_dim"):
        assert part in text
    assert [n for n, _ in layer.named_parameters()] == ["weight", "alpha", "beta", "bias"]
    assert [n for n, _ in SeeDNorm(8, elementwise_affine=False).named_parameters()] == ["alpha", "beta"]


def test_device_and_dtype_arguments():
    layer = SeeDNorm(8, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    assert layer(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64


def test_without_a_c_compiler_auto_falls_back_and_native_says_why(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from vision.nn import SeeDNorm, native\n"
        "assert not native.available()\n"
        "print('ERROR', native.build_error())\n"
        "x = torch.randn(4, 8)\n"
        "print('AUTO', torch.allclose(SeeDNorm(8, num_heads=2)(x), torch.nn.RMSNorm(8, eps=1e-6)(x), atol=1e-6))\n"
        "try:\n"
        "    SeeDNorm(8, impl='native')(x)\n"
        "except RuntimeError as exc:\n"
        "    print('NATIVE', exc)\n"
    )
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), VISION_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" in proc.stdout and "no-such-compiler" in proc.stdout
    assert "AUTO True" in proc.stdout
    assert "NATIVE SeeDNorm impl='native' could not be built" in proc.stdout

"""SeeDNorm's fused Triton kernels, their custom ops, and the prepared GPU check.

Without a GPU the kernels run through Triton's CPU interpreter in a subprocess
(tests/triton_interpreter_checks.py; TRITON_INTERPRET=1 must be set before triton is imported)
and are compared with the float64 reference. Errors are normwise, ``max|ours - ref| / max|ref|``,
per output and per gradient, with the tolerance of the dtype the result comes back in:

    float32   5e-6    float32 arithmetic throughout (measured <= 6e-7)
    float16   2**-10  one fp16 ulp: the result is rounded once to float16
    bfloat16  2**-7   one bf16 ulp: the interpreter truncates float32 -> bfloat16 (the GPU rounds
                      to nearest, which would meet 2**-8)

Parameter gradients are float32 for every input dtype (they are summed in float32 from the exact
low-precision inputs), so they are held to the float32 tolerance even for bf16/fp16 inputs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reference
from vision.nn import SeeDNorm
from vision.nn import functional as VF

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"float32": 5e-6, "float16": 2.0**-10, "bfloat16": 2.0**-7}
has_triton = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not has_triton, reason="triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def normwise(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return (ours.double() - ref).abs().max().item() / ref.abs().max().item()


# ----------------------------------------------------------------------------- Triton interpreter


@pytest.fixture(scope="module")
def interpreted() -> dict:
    """The interpreter checks' results (one subprocess for the whole module, about 10 s)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "triton_interpreter_checks.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_triton
def test_interpreted_kernels_match_float64_reference(interpreted):
    failures, lines = [], []
    for case in interpreted["cases"]:
        for quantity, err in case["errors"].items():
            dtype = case["dtypes"][quantity]
            tol = TOLERANCE[dtype]
            lines.append(f"{case['case']:<50} {quantity:<6} {dtype:<9} {err:.2e} (tol {tol:.1e})")
            if not err <= tol:
                failures.append(lines[-1])
    print("\n".join(lines))
    assert not failures, "\n".join(failures)


@needs_triton
def test_interpreted_cases_cover_the_issue(interpreted):
    cases = interpreted["cases"]
    assert {c["dtype"] for c in cases} == set(TOLERANCE)
    assert {c["kind"] for c in cases} == {"norm", "modulate", "dropout"}
    assert {1, 3, 4, 12, 16} <= {c["heads"] for c in cases}
    assert {384, 768, 1024, 1152} <= {c["dim"] for c in cases}
    gradients = set().union(*(c["errors"] for c in cases))
    assert gradients == {"y", "x", "weight", "alpha", "beta", "bias", "shift", "scale"}
    for dtype in TOLERANCE:  # every dtype has the fused-modulate form and a bias case
        assert any(c["kind"] == "modulate" and c["dtype"] == dtype for c in cases)
        assert any("bias" in c["errors"] and c["dtype"] == dtype for c in cases)


@needs_triton
def test_interpreted_dropout_draws_one_minus_p_and_fresh_masks(interpreted):
    edges = interpreted["checks"]["edges"]
    # 20000 Bernoulli(0.7) draws: standard deviation 0.0032, so 0.02 is over 6 sigma.
    assert abs(edges["kept_fraction_p0.3"] - 0.7) < 0.02
    assert edges["dropout_masks_differ"] and edges["eval_has_no_dropout"]
    for case in interpreted["cases"]:
        if case["kind"] == "dropout":
            assert 0.5 < case["kept"] < 0.9


@needs_triton
def test_interpreted_layer_compiles_without_graph_break(interpreted):
    check = interpreted["checks"]["compile"]
    assert check["graph_breaks"] == 0 and check["graphs"] == 1
    assert check["ops"] == ["vision.seednorm_forward.default"]
    assert check["y_err"] < 1e-6 and check["grad_err"] < 1e-5


@needs_triton
def test_interpreted_edge_cases(interpreted):
    edges = interpreted["checks"]["edges"]
    assert edges["empty_shape"] == [0, 3, 16] and edges["empty_alpha_grad"] == 0.0
    assert edges["noncontiguous_err"] < 1e-6


# ----------------------------------------------------------------------------- GPU code generation


def _hopper_resource_usage(kernel, signature: dict, constants: dict, warps: int) -> dict[str, int]:
    """Compile ``kernel`` for sm_90 (H100/H200) on this machine and read its registers and spills."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    source = ASTSource(
        fn=kernel,
        signature={n: signature.get(n, "constexpr") for n in names},
        constexprs={(names.index(k),): v for k, v in constants.items()},
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"seednorm_{os.getpid()}_{kernel.__name__}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    try:
        text = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    finally:
        cubin.unlink()
    return {key: int(re.search(rf"{key}:(\d+)", text).group(1)) for key in ("REG", "STACK", "LOCAL")}


def _hopper_toolchain_missing() -> str | None:
    if not has_triton:
        return "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 replaces the compiler"
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "ptxas").exists() or not (bin_dir / "cuobjdump").exists():
        return f"triton's bundled ptxas/cuobjdump are missing from {bin_dir}"
    return None


@pytest.mark.skipif(_hopper_toolchain_missing() is not None, reason=str(_hopper_toolchain_missing()))
@pytest.mark.parametrize("dim,heads,flags", [
    (768, 16, dict(HAS_WEIGHT=True, HAS_BIAS=False, HAS_MOD=False, HAS_DROPOUT=True)),  # ViT-B training
    (1152, 16, dict(HAS_WEIGHT=False, HAS_BIAS=False, HAS_MOD=True, HAS_DROPOUT=False)),  # DiT-XL adaLN
    (384, 6, dict(HAS_WEIGHT=True, HAS_BIAS=True, HAS_MOD=False, HAS_DROPOUT=False)),  # padded heads
])
def test_kernels_compile_for_hopper_without_register_spills(dim, heads, flags):
    """Triton's real GPU pipeline (TTIR -> PTX -> ptxas cubin for sm_90) runs without a GPU."""
    from vision.nn import triton_kernels as K

    blocks = K.blocks_for(dim, heads)
    pointers = {n: "*fp32" for n in ("W", "A", "BETA", "BIAS", "SHIFT", "SCALE", "RINV", "T", "PARTIAL")}
    pointers.update({n: "*bf16" for n in ("X", "Y", "G", "DX")}, SEED="*i64")
    scalars = dict(n_rows="i32", tokens="i32", rows_per_program="i32", eps="fp32", dot_mult="fp32", p="fp32")
    usage = {}
    for kernel, tiling in ((K._forward_kernel, K.forward_tiling), (K._backward_kernel, K.backward_tiling)):
        rows, warps = tiling(blocks, True)
        usage[kernel.__name__] = _hopper_resource_usage(
            kernel, {**pointers, **scalars}, {**blocks, "ROWS": rows, **flags}, warps)
    print(usage)
    for name, resources in usage.items():
        assert resources["LOCAL"] == 0 and resources["STACK"] == 0, f"{name} spills: {resources}"
        assert 0 < resources["REG"] <= 255


# ----------------------------------------------------------------------------- custom ops on CPU


def _op_inputs(dim=32, heads=4, batch=2, tokens=3, weight=True, bias=False, modulate=False, seed=None,
               dtype=torch.float32, grad=True):
    gen = torch.Generator().manual_seed(1)

    def make(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).requires_grad_(grad)

    x = (torch.randn(batch, tokens, dim, generator=gen) * 2).to(dtype).requires_grad_(grad)
    return (
        x,
        make(dim, scale=0.3, shift=1.0) if weight else None,
        make(dim, scale=0.5, shift=1.0),
        make(dim, scale=2.0 / math.sqrt(dim // heads)),
        make(dim, scale=0.3) if bias else None,
        make(batch, dim, scale=0.5) if modulate else None,
        make(batch, dim, scale=0.5) if modulate else None,
        torch.tensor([seed]) if seed is not None else None,
        heads, 1e-6, 1.0, 0.3 if seed is not None else 0.0,
    )


OP_CONFIGS = {
    "weight": dict(),
    "weight+bias, 1 head": dict(heads=1, bias=True),
    "no weight+bias, bf16": dict(weight=False, bias=True, dtype=torch.bfloat16),
    "modulate": dict(weight=False, modulate=True),
    "dropout": dict(seed=5),
}


@needs_triton
@pytest.mark.parametrize("config", OP_CONFIGS)
def test_forward_op_passes_opcheck(config):
    from vision.nn import triton_kernels as K

    torch.library.opcheck(K.seednorm_forward, _op_inputs(**OP_CONFIGS[config]))


@needs_triton
@pytest.mark.parametrize("config", ["weight+bias, 1 head", "modulate", "dropout"])
def test_backward_op_passes_opcheck(config):
    from vision.nn import triton_kernels as K

    args = _op_inputs(**OP_CONFIGS[config], grad=False)
    x, weight, alpha, beta, bias, shift, scale, seed, heads, eps, mult, p = args
    _, rinv, t = K.seednorm_forward(*args)
    grad = torch.randn_like(x)
    torch.library.opcheck(K.seednorm_backward, (grad, x, rinv, t, weight, alpha, beta, bias, scale, seed, heads, mult, p))


@needs_triton
@pytest.mark.parametrize("config", ["weight+bias, 1 head", "modulate"])
def test_op_plain_pytorch_path_matches_float64_reference(config):
    """The op's CPU kernel (the plain-PyTorch formulas opcheck runs) is the same function."""
    from vision.nn import triton_kernels as K

    args = _op_inputs(**OP_CONFIGS[config])
    x, weight, alpha, beta, bias, shift, scale, _, heads, eps, _, _ = args
    y, _, _ = K.seednorm_forward(*args)
    grad = torch.randn_like(y)
    y.backward(grad)
    leaves = [t for t in (x, weight, alpha, beta, bias, shift, scale) if t is not None]
    refs = [t.detach().double().requires_grad_() for t in leaves]
    r = dict(zip([id(t) for t in leaves], refs))
    get = lambda t: None if t is None else r[id(t)]  # noqa: E731
    y64 = reference.seednorm(get(x), get(weight), get(alpha), get(beta), get(bias), num_heads=heads, eps=eps)
    if scale is not None:
        y64 = y64 * (1 + get(scale)[:, None]) + get(shift)[:, None]
    y64.backward(grad.double())
    assert normwise(y, y64) < 1e-6
    for ours, ref in zip(leaves, refs):
        assert normwise(ours.grad, ref.grad) < 1e-5


@needs_triton
def test_custom_op_compiles_without_graph_break_on_cpu():
    from vision.nn import triton_kernels as K

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(32, 32)
            self.norm = SeeDNorm(32, num_heads=4, bias=True)
            self.out = torch.nn.Linear(32, 4)
            with torch.no_grad():
                self.norm.beta.normal_(0.0, 0.5)

        def forward(self, x):
            n = self.norm
            h = K.seednorm(self.inp(x), n.weight, n.alpha, n.beta, n.bias, 4, 1e-6, 1.0, 0.0)
            return self.out(h)

    model = Block()
    x = torch.randn(3, 5, 32)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    targets = {str(n.target) for g in explained.graphs for n in g.graph.nodes}
    assert "vision.seednorm_forward.default" in targets
    torch._dynamo.reset()
    y = torch.compile(model, fullgraph=True)(x)
    y.square().sum().backward()
    grads = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    y_eager = model(x)
    y_eager.square().sum().backward()
    assert normwise(y, y_eager) < 1e-6
    for g, q in zip(grads, model.parameters()):
        assert normwise(g, q.grad) < 1e-5


# ----------------------------------------------------------------------------- dispatch and modulate


def test_triton_is_an_impl_and_cpu_keeps_its_path():
    assert "triton" in VF.IMPLS and VF.check_impl("triton") == "triton"
    x = torch.zeros(2, 8)
    assert VF.select_backend("auto", x) == "native"
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises((ValueError, RuntimeError), match="impl='triton'.*cpu"):
            VF.select_backend("triton", x)


def modulate_reference(x, alpha, beta, shift, scale, num_heads):
    y = reference.seednorm(x, None, alpha, beta, num_heads=num_heads)
    return y * (1.0 + scale.double()[:, None, :]) + shift.double()[:, None, :]


@pytest.mark.parametrize("impl", ["auto", "eager", "compiled"])
@pytest.mark.parametrize("num_heads", [1, 4])
def test_seednorm_modulate_on_cpu_matches_float64_reference(impl, num_heads):
    x = torch.randn(2, 5, 32, requires_grad=True)
    alpha = (torch.randn(32) * 0.5 + 1).requires_grad_()
    beta = (torch.randn(32) / math.sqrt(32 // num_heads)).requires_grad_()
    shift = (torch.randn(2, 32) * 0.5).requires_grad_()
    scale = (torch.randn(2, 32) * 0.5).requires_grad_()
    y = VF.seednorm_modulate(x, alpha, beta, shift, scale, num_heads=num_heads, impl=impl)
    grad = torch.randn_like(y)
    y.backward(grad)
    leaves = (x, alpha, beta, shift, scale)
    refs = [t.detach().double().requires_grad_() for t in leaves]
    y64 = modulate_reference(*refs, num_heads)
    y64.backward(grad.double())
    assert normwise(y, y64) < 1e-6
    for ours, ref in zip(leaves, refs):
        assert normwise(ours.grad, ref.grad) < 1e-5


def test_seednorm_modulate_keeps_the_input_dtype_and_rejects_bad_shapes():
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    ones, zeros = torch.ones(16), torch.zeros(16)
    y = VF.seednorm_modulate(x, ones, zeros, torch.zeros(2, 16), torch.zeros(2, 16), num_heads=2)
    assert y.dtype == torch.bfloat16
    expected = reference.rmsnorm(x, None, 1e-6)
    assert normwise(y, expected) <= 2.0**-8
    with pytest.raises(ValueError, match=r"shift of shape \(2, 16\), got \(16,\)"):
        VF.seednorm_modulate(x, ones, zeros, torch.zeros(16), torch.zeros(2, 16))
    with pytest.raises(ValueError, match=r"x of shape \(B, T, D\), got \(10, 16\)"):
        VF.seednorm_modulate(x.view(10, 16), ones, zeros, torch.zeros(2, 16), torch.zeros(2, 16))


def test_package_works_without_triton():
    script = (
        "import sys\n"
        "sys.modules['triton'] = None  # makes `import triton` raise ImportError\n"
        "import torch\n"
        "from vision.nn import SeeDNorm, triton_kernels\n"
        "x = torch.randn(4, 16)\n"
        "print('CPU', torch.allclose(SeeDNorm(16, num_heads=2)(x), torch.nn.RMSNorm(16, eps=1e-6)(x), atol=1e-6))\n"
        "print('AVAILABLE', triton_kernels.available(), '|', triton_kernels.import_error())\n"
        "try:\n"
        "    SeeDNorm(16, impl='triton')(x)\n"
        "except RuntimeError as exc:\n"
        "    print('TRITON', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU True" in proc.stdout
    assert re.search(r"AVAILABLE False \| (ModuleNotFound|Import)Error", proc.stdout), proc.stdout
    assert "TRITON SeeDNorm impl='triton' needs triton, which failed to import" in proc.stdout


# ----------------------------------------------------------------------------- on a GPU


@needs_cuda
@needs_triton
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim,heads,bias", [(768, 16, False), (1152, 1, True), (384, 6, True)])
def test_cuda_triton_kernels_match_float64_reference(dtype, dim, heads, bias):
    layer = SeeDNorm(dim, num_heads=heads, bias=bias, device="cuda")
    assert VF.select_backend("auto", torch.zeros(1, dim, device="cuda", dtype=dtype)) == "triton"
    with torch.no_grad():
        layer.beta.normal_(0.0, 2.0 / math.sqrt(dim // heads))
        layer.alpha.normal_(1.0, 0.5)
    x = (torch.randn(4, 197, dim, device="cuda") * 2).to(dtype).requires_grad_()
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    params = [p for p in (layer.weight, layer.alpha, layer.beta, layer.bias) if p is not None]
    refs = [p.detach().double().requires_grad_() for p in params]
    x64 = x.detach().double().requires_grad_()
    y64 = reference.seednorm(x64, refs[0], refs[1], refs[2], refs[3] if bias else None, num_heads=heads)
    y64.backward(grad.double())
    tol = {torch.float32: 5e-6, torch.bfloat16: 2.0**-8}[dtype]
    assert normwise(y, y64) <= tol and normwise(x.grad, x64.grad) <= tol
    for ours, ref in zip(params, refs):
        assert normwise(ours.grad, ref.grad) <= 5e-6


@needs_cuda
@needs_triton
@pytest.mark.gpu
def test_cuda_modulate_fused_matches_plain_and_compiles_whole():
    x = torch.randn(8, 256, 1152, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    alpha = torch.ones(1152, device="cuda", requires_grad=True)
    beta = (torch.randn(1152, device="cuda") * 0.1).requires_grad_()
    shift = torch.randn(8, 1152, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    scale = torch.randn(8, 1152, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fused = VF.seednorm_modulate(x, alpha, beta, shift, scale, num_heads=16)
    plain = VF.seednorm_modulate(x, alpha, beta, shift, scale, num_heads=16, impl="eager")
    assert normwise(fused, plain) <= 2.0**-7
    fn = torch.compile(lambda *a: VF.seednorm_modulate(*a, num_heads=16), fullgraph=True)
    fn(x, alpha, beta, shift, scale).float().square().sum().backward()
    assert all(t.grad is not None for t in (x, alpha, beta, shift, scale))


# ----------------------------------------------------------------------------- the GPU check


def _gpu_check_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_runs_end_to_end_on_cpu(tmp_path, capsys):
    assert _gpu_check_script().main([str(tmp_path / "out"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "DRY RUN" in printed and "| DiT-XL/2 | SeeDNorm + modulate torch.compile |" in printed
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "cpu" and report["copy_gb_per_s"] > 0
    rows = {(r["shape"], r["candidate"]) for r in report["norms"]}
    for shape in ("ViT-B/16", "ViT-L/16", "DiT-XL/2"):
        for name in ("torch LayerNorm", "torch RMSNorm", "SeeDNorm eager (unfused)", "SeeDNorm torch.compile"):
            assert (shape, name) in rows
    assert ("DiT-XL/2", "LayerNorm + modulate (torch)") in rows
    for r in report["norms"]:
        assert r["ms"] > 0 and r["copy_fraction"] > 0
        assert r["vs_rmsnorm"] == 1.0 if r["candidate"] == "torch RMSNorm" else r["vs_rmsnorm"] > 0
    models = {(m["model"], m["norm"]): m for m in report["models"]}
    assert set(models) == {(m, n) for m in ("ViT-B/16", "DiT-XL/2") for n in ("layernorm", "mhseednorm")}
    assert all(m["steps_per_s"] > 0 for m in models.values())
    assert any(t["target"].startswith("ViT-B/16 with mhseednorm") for t in report["targets"])
    if not torch.cuda.is_available():
        assert any("Triton SeeDNorm rows skipped" in n for n in report["notes"])


def test_gpu_check_fails_clearly_without_a_gpu(tmp_path, monkeypatch):
    from vision.bench_gpu import GPUUnavailableError, bench_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GPUUnavailableError, match=r"device 'cuda' requested but torch.cuda.is_available\(\) is False"):
        bench_gpu(str(tmp_path / "out"))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2
    message = [line for line in proc.stderr.splitlines() if line.startswith("gpu_check: error:")]
    assert len(message) == 1 and "torch.cuda.is_available() is False" in message[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing is written when the check cannot run"

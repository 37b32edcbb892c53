"""The peer norms, the registry, norm conversion and parameter groups."""

import functools

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

import reference
from vision.nn import NORMS, DyT, LayerNorm, RMSNorm, SeeDNorm, build_norm, convert_norms, norm_layer, param_groups

ALL_NORMS = list(NORMS)


def tiny_vit(norm=None, **kw):
    args = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
    args.update(kw)
    if norm is not None:
        args["norm_layer"] = norm
    return VisionTransformer(**args).eval()


def randomize_norms(model):
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if isinstance(p, torch.nn.Parameter) and p.ndim == 1 and not isinstance(m, torch.nn.Linear):
                    p.normal_(1.0 if name == "weight" else 0.0, 0.2)
    return model


@pytest.mark.parametrize("name", ALL_NORMS)
def test_registry_builds_every_norm_with_the_common_signature(name):
    layer = build_norm(name, 32, eps=1e-5, elementwise_affine=True, device="cpu", dtype=torch.float32)
    x = torch.randn(2, 3, 32)
    assert layer(x).shape == x.shape
    assert layer.dim == 32
    layer.reset_parameters()
    assert "32" in repr(layer)


def test_mhseednorm_defaults_to_16_heads():
    assert build_norm("mhseednorm", 384).num_heads == 16
    assert build_norm("MHSeeDNorm", 384, num_heads=8).num_heads == 8
    assert build_norm("seednorm", 384).num_heads == 1


def test_layernorm_rmsnorm_dyt_match_their_formulas():
    x = torch.randn(4, 24, dtype=torch.float64)
    ln = randomize_norms(LayerNorm(24).double())
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mean) / torch.sqrt(var + 1e-6) * ln.weight + ln.bias)
    rms = randomize_norms(RMSNorm(24, bias=True).double())
    torch.testing.assert_close(rms(x), reference.rmsnorm(x, rms.weight, 1e-6) + rms.bias)
    dyt = randomize_norms(DyT(24).double())
    assert dyt.alpha.item() == 0.5
    torch.testing.assert_close(dyt(x), dyt.weight * torch.tanh(0.5 * x) + dyt.bias)


@pytest.mark.parametrize("name", ALL_NORMS)
def test_gradcheck_every_norm(name):
    extra = {"num_heads": 2, "impl": "eager"} if name == "mhseednorm" else {"impl": "eager"} if name == "seednorm" else {}
    layer = randomize_norms(build_norm(name, 8, **extra).double())
    with torch.no_grad():
        for pname in ("alpha", "beta"):
            if hasattr(layer, pname):
                getattr(layer, pname).normal_(0.5, 0.3)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL_NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_dtype_is_input_dtype_and_low_precision_is_accurate(name, dtype):
    layer = randomize_norms(build_norm(name, 64))
    norms = torch.logspace(-4, 4, 9)
    x = (torch.nn.functional.normalize(torch.randn(9, 64), dim=-1) * norms[:, None]).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and torch.isfinite(y).all()
    y32 = layer(x.float())
    tol = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert ((y.float() - y32).abs() <= tol * y32.abs() + 1e-3).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == dtype


@pytest.mark.parametrize("name", ALL_NORMS)
def test_wrong_last_dimension_is_a_clear_error(name):
    layer = build_norm(name, 64)
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\).*\(2, 32\)"):
        layer(torch.randn(2, 32))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="width 100 is not divisible by num_heads=16"):
        SeeDNorm(100, num_heads=16)
    with pytest.raises(ValueError, match="width 100 is not divisible by num_heads=16"):
        build_norm("mhseednorm", 100)
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'; known norms: layernorm, rmsnorm, dyt, seednorm, mhseednorm"):
        build_norm("batchnorm", 8)
    with pytest.raises(ValueError, match="unknown dot_scale 'sqrt'; expected one of none, sqrt_dim, dim"):
        SeeDNorm(8, dot_scale="sqrt")
    with pytest.raises(ValueError, match="unknown SeeDNorm impl 'fast'"):
        SeeDNorm(8, impl="fast")
    with pytest.raises(ValueError, match="dyn_dropout must be in \\[0, 1\\), got 1.0"):
        SeeDNorm(8, dyn_dropout=1.0)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        SeeDNorm(8, num_heads=0)
    with pytest.raises(TypeError, match="bad arguments for norm 'seednorm'.*heads"):
        norm_layer("seednorm", heads=4)


def test_norm_layer_plugs_into_timm():
    make = norm_layer("mhseednorm", num_heads=4, dyn_dropout=0.1)
    assert isinstance(make, functools.partial)
    model = tiny_vit(make)
    norms = [m for m in model.modules() if isinstance(m, SeeDNorm)]
    assert len(norms) == 2 * 2 + 1  # two per block and the final norm
    assert all(m.num_heads == 4 and m.dyn_dropout == 0.1 and m.eps == 1e-6 for m in norms)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    model.train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()


def test_convert_norms_replaces_every_layernorm_of_a_timm_vit_and_carries_weights():
    model = randomize_norms(tiny_vit())
    before = {n: (m.weight.clone(), m.bias.clone(), m.eps) for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert len(before) == 5
    out = convert_norms(model, "mhseednorm", num_heads=4)
    assert out is model
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    after = dict(model.named_modules())
    for name, (weight, bias, eps) in before.items():
        layer = after[name]
        assert isinstance(layer, SeeDNorm) and layer.num_heads == 4
        assert torch.equal(layer.weight, weight) and torch.equal(layer.bias, bias) and layer.eps == eps
    model(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize(
    "rms", [timm.layers.RmsNorm, functools.partial(torch.nn.RMSNorm, eps=1e-6), RMSNorm], ids=["timm", "torch", "ours"]
)
@pytest.mark.parametrize("target", ["seednorm", "mhseednorm"])
def test_rmsnorm_to_seednorm_leaves_logits_unchanged(rms, target):
    model = randomize_norms(tiny_vit(rms))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        convert_norms(model, target, num_heads=4) if target == "mhseednorm" else convert_norms(model, target)
        after = model(x)
    assert sum(isinstance(m, SeeDNorm) for m in model.modules()) == 5
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_convert_back_and_forth_and_to_every_norm():
    for target in ALL_NORMS:
        model = randomize_norms(tiny_vit())
        convert_norms(model, target, **({"num_heads": 4} if target == "mhseednorm" else {}))
        cls = type(build_norm(target, 32, **({"num_heads": 4} if target == "mhseednorm" else {})))
        assert sum(type(m) is cls for m in model.modules()) == 5
    model = randomize_norms(tiny_vit())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model(x)
        convert_norms(model, "layernorm")  # LayerNorm -> LayerNorm is the same function
        torch.testing.assert_close(model(x), before)


def test_convert_channels_first_norms():
    ln2d = randomize_norms(timm.layers.LayerNorm2d(8))
    x = torch.randn(2, 8, 5, 5)
    expected = ln2d(x)
    model = torch.nn.Sequential(ln2d)
    convert_norms(model, "layernorm")
    assert type(model[0]).__name__ == "LayerNorm2d" and model[0].__module__ == "vision.nn.norms"
    torch.testing.assert_close(model(x), expected)
    convert_norms(model, "seednorm")
    assert isinstance(model[0], SeeDNorm)
    manual = reference.seednorm(x.movedim(1, -1), model[0].weight, model[0].alpha, model[0].beta, model[0].bias)
    torch.testing.assert_close(model(x).double(), manual.movedim(-1, 1), rtol=1e-5, atol=1e-5)


def test_convert_keeps_shared_modules_shared_and_handles_a_bare_norm():
    shared = torch.nn.LayerNorm(8)
    model = torch.nn.ModuleDict({"a": shared, "b": torch.nn.Sequential(shared)})
    convert_norms(model, "rmsnorm")
    assert model["a"] is model["b"][0] and isinstance(model["a"], RMSNorm)
    new = convert_norms(torch.nn.RMSNorm(8), "dyt")
    assert isinstance(new, DyT)
    assert new.bias is None  # an RMSNorm has no shift to carry


def test_convert_carries_flags_and_refuses_bad_input():
    model = torch.nn.Sequential(torch.nn.LayerNorm(16, elementwise_affine=False, eps=1e-3))
    convert_norms(model, "seednorm")
    assert model[0].weight is None and model[0].bias is None and model[0].eps == 1e-3
    with pytest.raises(ValueError, match="unknown norm 'groupnorm'"):
        convert_norms(torch.nn.Sequential(torch.nn.LayerNorm(4)), "groupnorm")
    with pytest.raises(ValueError, match=r"normalizes over \(4, 4\)"):
        convert_norms(torch.nn.Sequential(torch.nn.LayerNorm([4, 4])), "seednorm")


def test_param_groups_decay_alpha_and_beta_only_among_norm_parameters():
    model = tiny_vit(norm_layer("mhseednorm", num_heads=4))
    groups = param_groups(model, weight_decay=0.05)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    assert decay | no_decay == {id(p) for p in named.values()} and not decay & no_decay
    for name in ["blocks.0.norm1.alpha", "blocks.0.norm1.beta", "norm.alpha", "blocks.1.attn.qkv.weight", "patch_embed.proj.weight"]:
        assert id(named[name]) in decay, name
    for name in ["blocks.0.norm1.weight", "norm.weight", "blocks.1.attn.qkv.bias", "pos_embed", "cls_token", "head.bias"]:
        assert id(named[name]) in no_decay, name
    # timm's own rule would not decay alpha/beta (1-D): ours must differ from it exactly there.
    timm_decay = {id(p) for n, p in named.items() if p.ndim > 1 and n not in model.no_weight_decay()}
    assert decay - timm_decay == {id(p) for n, p in named.items() if n.endswith((".alpha", ".beta"))}


def test_param_groups_skip_frozen_and_dyt_scalars():
    model = tiny_vit(norm_layer("dyt"))
    model.patch_embed.proj.weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    everything = [p for g in groups for p in g["params"]]
    assert all(p.requires_grad for p in everything)
    assert id(model.norm.alpha) in {id(p) for p in groups[1]["params"]}
    torch.optim.AdamW(groups, lr=1e-3)  # accepted as they are

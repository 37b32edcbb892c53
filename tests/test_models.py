"""Every registered ViT builds, runs forward and backward, and the LayerNorm variant is timm's."""

import pytest
import timm
import torch

import vision  # noqa: F401  (registers the models with timm)
from vision.models import VIT_ARCHS, create_model, model_names
from vision.nn import NORMS, SeeDNorm


@pytest.mark.parametrize("name", model_names())
def test_every_registered_model_forward_and_backward(name):
    arch = VIT_ARCHS[name.rsplit("_", 1)[0]]
    patch = arch.args["patch_size"]
    size = 2 * patch  # a small input: four patches
    channels = arch.args.get("in_chans", 3)
    model = timm.create_model(name, img_size=size, num_classes=3, drop_path_rate=0.1)
    assert name in timm.list_models()
    x = torch.randn(2, channels, size, size)
    logits = model(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm, SeeDNorm)) or
             type(m).__name__ == "DyT"]
    assert len(norms) == 2 * arch.args["depth"] + 1


def test_norm_settings_reach_every_layer():
    model = create_model("vit_small_patch16_224", norm="mhseednorm", img_size=32, drop_path_rate=0.2,
                         norm_kwargs={"num_heads": 8})
    norms = [m for m in model.modules() if isinstance(m, SeeDNorm)]
    assert len(norms) == 25
    assert all(m.num_heads == 8 and m.dyn_dropout == 0.2 for m in norms), "dyn_dropout defaults to drop path"
    model = create_model("vit_small_patch16_224_seednorm", img_size=32, norm_kwargs={"dyn_dropout": 0.0})
    assert all(m.dyn_dropout == 0.0 and m.num_heads == 1 for m in model.modules() if isinstance(m, SeeDNorm))


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "vit_small_patch16_224"])
def test_layernorm_variant_is_timms_model(arch):
    stock = timm.create_model(arch, img_size=32).eval()
    ours = create_model(arch, norm="layernorm", img_size=32).eval()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in stock.named_parameters()]
    ours.load_state_dict(stock.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), stock(x))


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'vit_huge_patch14_224_seednorm'; expected <arch>_<norm>"):
        create_model("vit_huge_patch14_224_seednorm")
    with pytest.raises(ValueError, match="unknown norm 'groupnorm'"):
        create_model("vit_small_patch16_224", norm="groupnorm")
    with pytest.raises(ValueError, match="unknown ViT architecture 'vit_s'"):
        create_model("vit_s", norm="seednorm")


def test_pretrained_from_a_local_file_and_timm_overlay(tmp_path):
    from safetensors.torch import save_file

    source = create_model("vit_micro_patch2_8_mhseednorm").eval()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    x = torch.randn(2, 1, 8, 8)
    loaded = create_model("vit_micro_patch2_8_mhseednorm", pretrained=str(path)).eval()
    via_timm = timm.create_model("vit_micro_patch2_8_mhseednorm", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x)) and torch.equal(via_timm(x), source(x))


def test_registry_covers_every_arch_and_norm():
    names = set(model_names())
    assert len(names) == len(VIT_ARCHS) * len(NORMS)
    assert "vit_base_patch16_224_mhseednorm" in names and "vit_micro_patch2_8_layernorm" in names
    assert set(timm.list_models("vit_*_mhseednorm")) == {n for n in names if n.endswith("_mhseednorm")}

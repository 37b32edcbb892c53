"""Vision Transformers with any registered norm, built on timm's ``VisionTransformer``.

Every architecture in ``VIT_ARCHS`` x every norm in ``vision.nn.NORMS`` is registered in timm's
model registry as ``<arch>_<norm>`` (e.g. ``vit_base_patch16_224_mhseednorm``), so after
``import vision`` a plain ``timm.create_model`` builds them. With ``norm="layernorm"`` the model is
timm's own ViT: same parameter names and shapes, so timm checkpoints load strictly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from vision.nn import NORMS, norm_layer

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DIGITS_MEAN, DIGITS_STD = (0.5,), (0.5,)


@dataclass(frozen=True)
class ViTArch:
    """One ViT architecture: constructor arguments and its data configuration."""

    args: dict[str, Any]
    img_size: int
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    num_classes: int = 1000
    crop_pct: float = 0.875
    # timm weights for the LayerNorm variant (trained by others), loaded with pretrained=True.
    timm_weights: str | None = None
    timm_mean: tuple[float, ...] = field(default=IMAGENET_INCEPTION_MEAN)
    timm_std: tuple[float, ...] = field(default=IMAGENET_INCEPTION_STD)


VIT_ARCHS: dict[str, ViTArch] = {
    # ImageNet, 224 px, patch 16 (DeiT / ViT sizes)
    "vit_tiny_patch16_224": ViTArch(
        dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), 224,
        timm_weights="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
    "vit_small_patch16_224": ViTArch(
        dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), 224,
        timm_weights="timm/vit_small_patch16_224.augreg_in21k_ft_in1k"),
    "vit_base_patch16_224": ViTArch(
        dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), 224,
        timm_weights="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    "vit_large_patch16_224": ViTArch(
        dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), 224,
        timm_weights="timm/vit_large_patch16_224.augreg_in21k_ft_in1k"),
    # CIFAR, 32 px, patch 4 (64 tokens)
    "vit_tiny_patch4_32": ViTArch(
        dict(patch_size=4, embed_dim=192, depth=12, num_heads=3), 32, CIFAR_MEAN, CIFAR_STD, 10, 1.0),
    "vit_small_patch4_32": ViTArch(
        dict(patch_size=4, embed_dim=384, depth=12, num_heads=6), 32, CIFAR_MEAN, CIFAR_STD, 10, 1.0),
    # scikit-learn's 8 x 8 handwritten digits, one channel (16 patches of 2 x 2)
    "vit_micro_patch2_8": ViTArch(
        dict(patch_size=2, embed_dim=96, depth=4, num_heads=4, mlp_ratio=2.0, in_chans=1), 8,
        DIGITS_MEAN, DIGITS_STD, 10, 1.0),
}


def model_names() -> list[str]:
    """Every registered ``<arch>_<norm>`` name."""
    return [f"{arch}_{norm}" for arch in VIT_ARCHS for norm in NORMS]


def split_name(name: str) -> tuple[str, str]:
    """``"vit_base_patch16_224_mhseednorm"`` -> ``("vit_base_patch16_224", "mhseednorm")``."""
    for norm in NORMS:
        arch = name[: -len(norm) - 1]
        if name.endswith(f"_{norm}") and arch in VIT_ARCHS:
            return arch, norm
    raise ValueError(
        f"unknown model {name!r}; expected <arch>_<norm> with arch in {', '.join(VIT_ARCHS)} "
        f"and norm in {', '.join(NORMS)}"
    )


def _cfg(arch: ViTArch, norm: str) -> dict[str, Any]:
    weights = arch.timm_weights if norm == "layernorm" else None
    channels = arch.args.get("in_chans", 3)
    return {
        "url": "",
        "hf_hub_id": weights,
        "num_classes": arch.num_classes,
        "input_size": (channels, arch.img_size, arch.img_size),
        "crop_pct": 0.9 if weights else arch.crop_pct,  # timm evaluates its ViT weights at 0.9
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": arch.timm_mean if weights else arch.mean,
        "std": arch.timm_std if weights else arch.std,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


default_cfgs = generate_default_cfgs({f"{a}_{n}": _cfg(VIT_ARCHS[a], n) for a in VIT_ARCHS for n in NORMS})


def _create_vit(
    arch: str,
    norm: str,
    pretrained: bool = False,
    norm_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> VisionTransformer:
    spec = VIT_ARCHS[arch]
    args = {"img_size": spec.img_size, "num_classes": spec.num_classes, **spec.args, **kwargs}
    settings = dict(norm_kwargs or {})
    if norm in ("seednorm", "mhseednorm"):
        # SEEDNORM.md section 3: dropout on the dynamic term at the model's drop-path rate.
        settings.setdefault("dyn_dropout", args.get("drop_path_rate", 0.0))
    args["norm_layer"] = norm_layer(norm, eps=1e-6, **settings)
    return build_model_with_cfg(
        VisionTransformer,
        f"{arch}_{norm}",
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **args,
    )


def _entrypoint(arch: str, norm: str):
    def entry(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        return _create_vit(arch, norm, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = f"{arch}_{norm}"
    entry.__module__ = __name__
    entry.__doc__ = f"{arch} with {norm} (see vision.models.vit.VIT_ARCHS)."
    return entry


for _arch in VIT_ARCHS:
    for _norm in NORMS:
        _fn = _entrypoint(_arch, _norm)
        globals()[_fn.__name__] = register_model(_fn)


def create_model(name: str, norm: str | None = None, pretrained: bool | str = False, **kwargs: Any) -> VisionTransformer:
    """Build a registered ViT.

    Args:
        name: ``<arch>_<norm>`` (e.g. "vit_small_patch16_224_mhseednorm"), or an arch from
            ``VIT_ARCHS`` together with ``norm``.
        norm: norm name (``vision.nn.NORMS``) when ``name`` is an arch.
        pretrained: False; True for the registered pretrained weights (LayerNorm variants load
            timm's, which needs internet or a filled cache); or a local file (.safetensors/.pth)
            with this model's parameter names.
        **kwargs: VisionTransformer arguments (num_classes, drop_path_rate, img_size, ...) and
            ``norm_kwargs`` for the norm (e.g. ``{"num_heads": 8, "dyn_dropout": 0.0}``).
    """
    if norm is not None:
        if norm.lower() not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; known norms: {', '.join(NORMS)}")
        if name not in VIT_ARCHS:
            raise ValueError(f"unknown ViT architecture {name!r}; expected one of {', '.join(VIT_ARCHS)}")
        name = f"{name}_{norm.lower()}"
    split_name(name)  # a clear error for an unknown name
    if isinstance(pretrained, str):
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": pretrained, "hf_hub_id": None}, **kwargs)
    return timm.create_model(name, pretrained=pretrained, **kwargs)

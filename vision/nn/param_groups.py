"""Optimizer parameter groups with SeeDNorm's weight-decay rule (SEEDNORM.md section 5)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vision.nn.norms import SeeDNorm

# Parameters that are embeddings or tokens, whatever their rank, get no weight decay (as timm's
# ``no_weight_decay()`` lists for its models).
_NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "dist_token", "reg_token", "mask_token", "pos_embedding")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and an undecayed group.

    Decayed: SeeDNorm's ``alpha`` and ``beta`` (the paper's stability fix) and every weight matrix
    or kernel (rank >= 2). Not decayed: gamma and all other norm parameters, biases, scalars,
    position embeddings and tokens (names from ``model.no_weight_decay()`` when the model has it).
    timm's own rule (no decay for every 1-D parameter) would silently drop decay on alpha and beta.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    seednorm_dynamic = {
        id(p)
        for module in model.modules()
        if isinstance(module, SeeDNorm)
        for p in (module.alpha, module.beta)
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in seednorm_dynamic:
            decay.append(param)
        elif param.ndim < 2 or name in skip or name.split(".")[-1].endswith(_NO_DECAY_SUFFIXES):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]

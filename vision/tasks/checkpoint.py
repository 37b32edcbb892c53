"""Checkpoints that are never half-written, and plain-weights export."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vision.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes to a temporary file and renames it into place.

    A crash or Ctrl-C while saving leaves the previous checkpoint intact and loadable.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, with a clear error for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # Lightning checkpoints hold hyperparameters and loop state, not only tensors.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def model_weights(checkpoint: dict[str, Any], ema: bool = False, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The wrapped model's weights (or its EMA copy's) from a task checkpoint, with bare names."""
    state = checkpoint.get("state_dict")
    if state is None:
        raise ValueError("not a Lightning checkpoint: it has no 'state_dict'")
    source = "ema.module." if ema else prefix
    weights = {k[len(source):]: v for k, v in state.items() if k.startswith(source)}
    if not weights:
        raise ValueError(f"checkpoint has no {'EMA ' if ema else ''}weights under '{source}'"
                         + (" (was it trained with ema_decay?)" if ema else ""))
    return weights


def export_weights(ckpt: str, out: str, ema: bool = False) -> str:
    """Write a task checkpoint's model weights as plain safetensors, loadable by timm.

    Args:
        ckpt: Lightning checkpoint written by ``vision fit``.
        out: target ``.safetensors`` file (written atomically).
        ema: export the EMA weights instead of the trained ones.

    The file loads with ``timm.create_model(<model name>, pretrained=True,
    pretrained_cfg_overlay=dict(file=out), num_classes=<classes>)`` after ``import vision``.
    """
    from safetensors.torch import save_file

    checkpoint = load_checkpoint(ckpt)
    weights = {k: v.detach().contiguous() for k, v in model_weights(checkpoint, ema).items()}
    hparams = checkpoint.get("hyper_parameters", {})
    name = f"{hparams['model']}_{hparams['norm']}" if hparams.get("norm") else str(hparams.get("model"))
    metadata = {"model": name, "num_classes": str(hparams.get("num_classes")), "ema": str(ema)}
    atomic_write(out, lambda tmp: save_file(weights, tmp, metadata=metadata))
    print(f"wrote {len(weights)} tensors of {name} to {out}")
    print(f"load: import vision, timm; timm.create_model({name!r}, pretrained=True, "
          f"pretrained_cfg_overlay=dict(file={str(out)!r}), num_classes={hparams.get('num_classes')})")
    return out


def rng_states() -> dict[str, Any]:
    """This process's torch, numpy and Python random states, storable with weights_only loading."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo ``rng_states``: a resumed run draws the same random numbers as an uninterrupted one."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])

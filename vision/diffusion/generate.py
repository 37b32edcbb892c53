"""``vision sample``: class-conditional samples from a generation checkpoint, as PNGs and one .npz.

The ``.npz`` holds ``arr_0``, uint8 (N, H, W, C), the artifact that any FID tool (``vision fid``,
ADM's evaluator) scores, and ``labels``. Sample ``i`` depends only on ``(seed, i)``: the same
images come out whatever the batch size or number of devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from vision.diffusion.images import save_png, to_uint8
from vision.files import atomic_write
from vision.tasks.checkpoint import load_checkpoint


def load_generation_module(ckpt: str | os.PathLike, map_location: str = "cpu"):
    """A ``GenerationModule`` rebuilt from a checkpoint's hyperparameters and weights."""
    from vision.tasks.generation import GenerationModule

    checkpoint = load_checkpoint(ckpt)
    hparams = checkpoint.get("hyper_parameters")
    if not hparams or "model" not in hparams or "model" not in {k.split(".")[0] for k in checkpoint["state_dict"]}:
        raise ValueError(f"{ckpt} is not a generation checkpoint (written by vision fit with GenerationModule)")
    if not str(hparams["model"]).startswith("DiT-"):
        raise ValueError(f"{ckpt} holds model {hparams['model']!r}, not a DiT: not a generation checkpoint")
    module = GenerationModule(**hparams)
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    return module.eval()


def sample_labels(num_samples: int, num_classes: int, seed: int, classes: list[int] | None = None) -> torch.Tensor:
    """Class labels: ``classes`` repeated in turn, or uniform at random from ``seed`` (DiT's protocol)."""
    if classes:
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"class {bad[0]} is outside 0..{num_classes - 1}")
        return torch.tensor(classes)[torch.arange(num_samples) % len(classes)]
    return torch.randint(0, num_classes, (num_samples,), generator=torch.Generator().manual_seed(seed))


def generate_samples(
    module,
    num_samples: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.5,
    seed: int = 0,
    batch_size: int = 64,
    classes: list[int] | None = None,
    indices: list[int] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, torch.Tensor]:
    """Samples ``indices`` (default: all) of a run of ``num_samples``; returns uint8 NHWC and labels."""
    labels = sample_labels(num_samples, module.hparams.num_classes, seed, classes)
    indices = list(range(num_samples)) if indices is None else indices
    arrays = []
    bar = tqdm(total=len(indices), desc="sampling", disable=not progress, unit="img")
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        images = module.generate(labels[chunk], indices=chunk, seed=seed, sampler=sampler, steps=steps,
                                 cfg_scale=cfg_scale)
        arrays.append(to_uint8(images))
        bar.update(len(chunk))
    bar.close()
    shape = (0, module.hparams.input_size, module.hparams.input_size, 3)
    return (np.concatenate(arrays) if arrays else np.zeros(shape, np.uint8)), labels[indices]


def sample(
    ckpt: str,
    out: str,
    num_samples: int = 64,
    steps: int = 50,
    sampler: str = "ddim",
    cfg_scale: float = 1.5,
    seed: int = 0,
    batch_size: int = 64,
    classes: list[int] | None = None,
    png: bool = True,
    devices: int = 1,
    accelerator: str = "auto",
) -> str:
    """Generate samples from a ``vision fit`` generation checkpoint; write PNGs and ``samples.npz``.

    Args:
        ckpt: checkpoint of a GenerationModule run (EMA weights are used when present).
        out: output folder (``000000.png``, ... and ``samples.npz`` with ``arr_0`` and ``labels``).
        num_samples: number of images.
        steps: sampling steps.
        sampler: "ddpm", "ddim" or "dpm++" (DPM-Solver++).
        cfg_scale: classifier-free guidance scale (1 = no guidance).
        seed: seed of the labels and the noise; the same seed gives the same images.
        batch_size: images per forward pass per device.
        classes: sample these classes in turn instead of uniformly at random.
        png: also write one PNG per sample.
        devices: devices to split the samples across (processes are launched for more than one).
        accelerator: "auto", "cpu" or "gpu".
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    folder = Path(out)
    fabric = L.Fabric(accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto")
    fabric.launch()
    module = load_generation_module(ckpt).to(fabric.device)
    rank, world = fabric.global_rank, fabric.world_size
    indices = list(range(rank, num_samples, world))
    arrays, labels = generate_samples(module, num_samples, sampler=sampler, steps=steps, cfg_scale=cfg_scale,
                                      seed=seed, batch_size=batch_size, classes=classes, indices=indices,
                                      progress=rank == 0)
    folder.mkdir(parents=True, exist_ok=True)
    if png:
        for i, array in zip(indices, arrays):
            save_png(array, folder / f"{i:06d}.png")
    part = folder / f".part{rank}.npz"
    np.savez(part, arr_0=arrays, labels=labels.numpy(), indices=np.array(indices))
    fabric.barrier()
    target = folder / "samples.npz"
    if rank == 0:
        parts = [np.load(folder / f".part{r}.npz") for r in range(world)]
        order = np.argsort(np.concatenate([p["indices"] for p in parts]))
        images = np.concatenate([p["arr_0"] for p in parts])[order]
        all_labels = np.concatenate([p["labels"] for p in parts])[order]
        atomic_write(target, lambda tmp: np.savez(open(tmp, "wb"), arr_0=images, labels=all_labels))
        for r in range(world):
            (folder / f".part{r}.npz").unlink()
        print(f"wrote {len(images)} samples {images.shape[1:]} to {target}")
    fabric.barrier()
    return str(target)

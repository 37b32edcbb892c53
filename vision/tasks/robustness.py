"""Robustness evaluation as a LightningModule: classifiers scored per image, clean and corrupted.

Every image is scored under each of its set's conditions (clean, a corruption at a severity made
on the fly on the evaluating device, a released corrupted split, a 200-class subset), by every
model on the same corrupted pixels. Results are per image and gathered from all ranks by image
position, so the table is the same on one device or many (the distributed sampler's padding
repeats images, which the positions remove).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from vision.corruptions.indexed import corrupt_for_evaluation
from vision.data.cifar import CIFAR_STATS
from vision.data.digits import DIGITS_MEAN, DIGITS_STD
from vision.data.robustness import imagenet_subset_indices, subset_logits
from vision.models import create_model, split_name
from vision.tasks.checkpoint import load_checkpoint, model_weights

NOT_SCORED = -1  # the image does not belong to the condition (e.g. a class outside ImageNet-R's 200)
MISSING = -2  # never evaluated: a bug if any is left after gathering


class NormalizedClassifier(nn.Module):
    """A classifier that takes [0, 1] images and normalises them with its training mean and std."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None], persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)


@dataclass
class Classifier:
    """A classifier loaded from a task checkpoint, with what evaluation needs to know about it."""

    label: str
    path: str
    name: str
    model: NormalizedClassifier
    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    normalization: str  # where mean/std came from
    digits_seed: int | None  # the digits split a DigitsDataModule trained it on
    ema: bool

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (no weights)."""
        return {"label": self.label, "checkpoint": self.path, "model": self.name, "num_classes": self.num_classes,
                "in_chans": self.in_chans, "img_size": list(self.img_size), "ema": self.ema,
                "mean": self.model.mean.flatten().tolist(), "std": self.model.std.flatten().tolist(),
                "normalization": self.normalization}


def _normalization(checkpoint: dict[str, Any], model: nn.Module) -> tuple[tuple, tuple, str, int | None]:
    """Mean, std and their source: the training datamodule's, else the model's pretrained_cfg."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if "mean" in data and "std" in data:  # ImageFolderDataModule
        return tuple(data["mean"]), tuple(data["std"]), "training datamodule (mean/std)", None
    if data.get("dataset") in CIFAR_STATS:  # CIFARDataModule
        mean, std = CIFAR_STATS[data["dataset"]][:2]
        return mean, std, f"training datamodule ({data['dataset']})", None
    if "normalize" in data:  # DigitsDataModule: [-1, 1], or raw [0, 1] with normalize=False
        seed = data.get("seed")
        if data["normalize"]:
            return DIGITS_MEAN, DIGITS_STD, "training datamodule (digits)", seed
        return (0.0,), (1.0,), "training datamodule (digits, unnormalized)", seed
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg["mean"]), tuple(cfg["std"]), "model pretrained_cfg", None


def load_classifier(path: str | Path, *, ema: bool = False, label: str | None = None,
                    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Classifier:
    """Rebuild the ViT of a ``ClassificationModule`` checkpoint in eval mode, on the CPU.

    Args:
        path: checkpoint written by ``vision fit`` (or ``Trainer.save_checkpoint``).
        ema: use the EMA weights (the run must have had ``ema_decay``).
        label: the name in reports (default: the file name without suffix).
        mean: normalisation mean overriding the checkpoint's.
        std: normalisation std overriding the checkpoint's.
    """
    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    arch, norm = hparams.get("model"), hparams.get("norm")
    name = f"{arch}_{norm}" if norm else str(arch)
    try:
        split_name(name)
        registered = True
    except ValueError:
        registered = False
    if not registered or not isinstance(hparams.get("num_classes"), int):
        raise ValueError(f"{path} is not an image classifier checkpoint: it holds model {arch!r} with hyperparameters "
                         f"{sorted(hparams)}; expected a ClassificationModule checkpoint of a registered ViT")
    try:
        weights = model_weights(checkpoint, ema)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    model = create_model(name, num_classes=hparams["num_classes"], **(hparams.get("model_kwargs") or {}))
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise ValueError(f"{path}: the weights do not fit {name}: {first}") from None
    model.eval()
    c_mean, c_std, source, digits_seed = _normalization(checkpoint, model)
    if mean is not None or std is not None:
        c_mean, c_std, source = tuple(mean or c_mean), tuple(std or c_std), "given"
    in_chans = model.patch_embed.proj.in_channels
    if len(c_mean) != in_chans or len(c_std) != in_chans:
        raise ValueError(f"{path}: normalisation mean {c_mean} / std {c_std} do not have one value per input "
                         f"channel ({in_chans})")
    return Classifier(
        label=label or Path(path).stem, path=str(path), name=name,
        model=NormalizedClassifier(model, c_mean, c_std), num_classes=hparams["num_classes"], in_chans=in_chans,
        img_size=tuple(int(s) for s in model.patch_embed.img_size), normalization=source,
        digits_seed=digits_seed, ema=ema)


@dataclass(frozen=True)
class Condition:
    """One way to score a set's images.

    ``corruption``/``severity`` name what the images show; ``on_the_fly`` says the step corrupts
    them (else they come corrupted, or clean). ``subset`` ("imagenet-r"/"imagenet-a") scores
    on those 200 logits; ``subset_labels`` says the labels already index the 200 (the R/A
    folders) rather than the 1000 classes (then images of other classes are not scored).
    """

    key: str
    corruption: str | None = None
    severity: int | None = None
    on_the_fly: bool = False
    subset: str | None = None
    subset_labels: bool = False


@dataclass
class EvalSet:
    """A dataset of ``(image in [0, 1], label, position, index)`` and the conditions to score it under."""

    name: str
    dataset: Dataset
    conditions: tuple[Condition, ...]


class RobustnessModule(L.LightningModule):
    """Scores every image of every set under its conditions with every model (``trainer.test``).

    After testing, ``results[set name]`` is an int8 tensor (images, models, conditions): 1 correct,
    0 wrong, -1 not scored; the same on every rank and for any device count or batch size.

    Args:
        models: classifiers taking [0, 1] images (``NormalizedClassifier``).
        sets: one per test dataloader, in the same order.
        seed: the corruption seed; each image's draws depend on (seed, corruption, severity, index).
        scale: corruption parameter table: "auto" (by image size), "imagenet" or "cifar".
    """

    def __init__(self, models: list[nn.Module], sets: list[EvalSet], seed: int = 0, scale: str = "auto") -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.sets = sets
        self.seed = seed
        self.scale = scale
        self.results: dict[str, Tensor] = {}
        self._records: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def on_test_epoch_start(self) -> None:
        self._records = {i: [] for i in range(len(self.sets))}
        self.results = {}

    def _subset_targets(self, labels: Tensor, subset: str) -> Tensor:
        """1000-class labels -> positions among the subset's 200 classes, -1 outside it."""
        lookup = torch.full((1000,), -1, dtype=torch.long, device=labels.device)
        lookup[imagenet_subset_indices(subset).to(labels.device)] = torch.arange(200, device=labels.device)
        return lookup[labels]

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels, positions, indices = batch
        spec = self.sets[dataloader_idx]
        scores = torch.full((images.shape[0], len(self.models), len(spec.conditions)), NOT_SCORED,
                            dtype=torch.int8, device=images.device)
        as_given = None  # logits of the images as loaded, shared by every condition that uses them
        for k, cond in enumerate(spec.conditions):
            if cond.on_the_fly:
                # Corruptions are float32/float64 reference ops: keep mixed precision out of them.
                with torch.autocast(images.device.type, enabled=False):
                    x = corrupt_for_evaluation(images.float(), cond.corruption, cond.severity, indices,
                                               seed=self.seed, scale=self.scale)
                logits = [model(x) for model in self.models]
            else:
                if as_given is None:
                    as_given = [model(images) for model in self.models]
                logits = as_given
            targets, scored = labels, torch.ones_like(labels, dtype=torch.bool)
            if cond.subset is not None:
                logits = [subset_logits(out, cond.subset) for out in logits]
                if not cond.subset_labels:
                    targets = self._subset_targets(labels, cond.subset)
                    scored = targets >= 0
            for m, out in enumerate(logits):
                correct = (out.argmax(dim=-1) == targets).to(torch.int8)
                scores[:, m, k] = torch.where(scored, correct, torch.full_like(correct, NOT_SCORED))
        self._records[dataloader_idx].append((positions, scores))

    def on_test_epoch_end(self) -> None:
        for i, spec in enumerate(self.sets):
            shape = (len(self.models), len(spec.conditions))
            records = self._records.get(i, [])
            positions = torch.cat([p for p, _ in records]) if records else torch.zeros(0, dtype=torch.long)
            scores = torch.cat([s for _, s in records]) if records else torch.zeros((0, *shape), dtype=torch.int8)
            positions, scores = self._gather(positions.to(self.device), scores.to(self.device))
            table = torch.full((len(spec.dataset), *shape), MISSING, dtype=torch.int8)
            table[positions.cpu()] = scores.cpu()
            missing = int((table[:, 0, 0] == MISSING).sum())
            if missing:
                raise RuntimeError(f"{missing} of {len(table)} images of {spec.name} were never evaluated "
                                   "(limit_test_batches or a sampler that drops images?)")
            self.results[spec.name] = table
        self._records = {}

    def _gather(self, positions: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's (positions, scores), padded to a common length for all_gather, padding removed."""
        if self.trainer is None or self.trainer.world_size == 1:
            return positions, scores
        counts = self.all_gather(torch.tensor(len(positions), device=self.device))
        longest = int(counts.max())
        pad = longest - len(positions)
        positions = torch.cat([positions.long(), torch.full((pad,), -1, dtype=torch.long, device=self.device)])
        # int32 rather than int8: not every collective backend gathers 8-bit integers.
        scores = torch.cat([scores.int(), torch.zeros((pad, *scores.shape[1:]), dtype=torch.int32,
                                                      device=self.device)])
        positions = self.all_gather(positions).reshape(-1)
        scores = self.all_gather(scores).reshape(-1, *scores.shape[1:])
        keep = positions >= 0
        return positions[keep], scores[keep].to(torch.int8)

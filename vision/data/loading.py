"""Data loading that resumes exactly: per-epoch seeded shuffling and mid-epoch restarts.

A run resumed from a checkpoint taken in the middle of an epoch sees the same batches, in the
same order, as a run that was never interrupted: the sampler shuffles with ``seed + epoch`` (as
``DistributedSampler`` does, split across ranks) and the loader tells Lightning how many batches
of the epoch were already trained on, so the restarted epoch skips exactly those. Random
augmentation repeats exactly too when it runs in the main process (``num_workers=0``, the task
saves the RNG states); with worker processes the skipped batches shift which worker draws what.
"""

from __future__ import annotations

from typing import Any, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` (also for one process) that can start an epoch part-way."""

    def __init__(self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0  # skipping applies to the resumed epoch only
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose ``state_dict`` records how far into the epoch training got.

    Lightning saves it in checkpoints and hands it back on resume (any object with
    ``state_dict``/``load_state_dict`` counts as resumable there).
    """

    trainer: L.Trainer | None = None
    seed: int = 0

    def __iter__(self):
        # Worker processes draw their random seeds from this generator at every epoch; seeding it
        # by epoch makes augmentations in workers repeat after a resume too.
        self.generator.manual_seed(self.seed + self.sampler.epoch)
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        done = 0
        if self.trainer is not None:
            done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self.sampler.epoch, "batches_done": done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["batches_done"] * self.batch_size


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, num_workers: int = 0, seed: int = 0,
                trainer: L.Trainer | None = None, pin_memory: bool = False) -> DataLoader:
    """A loader for one split; training loaders shuffle per epoch and drop the last partial batch."""
    world = trainer.world_size if trainer is not None else 1
    rank = trainer.global_rank if trainer is not None else 0
    if not train:
        # Evaluation uses Lightning's own distributed sampler when there are several ranks.
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          pin_memory=pin_memory, persistent_workers=num_workers > 0)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                 drop_last=True, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))
    loader.trainer = trainer
    loader.seed = seed
    return loader


class SplitDataModule(L.LightningDataModule):
    """A datamodule whose train/val/test loaders come from ``dataset(split)`` through ``make_loader``.

    Subclasses implement ``dataset``; the hyperparameters ``num_workers`` and ``seed`` and the
    attribute ``batch_size`` configure the loaders.
    """

    pin_memory = False

    def dataset(self, split: str) -> Dataset:
        raise TypeError(f"{type(self).__name__} must implement dataset(split)")

    def _loader(self, split: str) -> DataLoader:
        return make_loader(self.dataset(split), batch_size=self.batch_size, train=split == "train",
                           num_workers=self.hparams.num_workers, seed=self.hparams.seed, trainer=self.trainer,
                           pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

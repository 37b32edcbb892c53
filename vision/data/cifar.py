"""CIFAR-10 / CIFAR-100 through torchvision; downloads only when asked."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from torchvision import datasets, transforms

from vision.data.loading import SplitDataModule

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), datasets.CIFAR10, 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), datasets.CIFAR100, 100),
}


def _unchecked(cls):
    """``cls`` without torchvision's checksum checks, for re-packed copies of the files."""

    def files_present(self) -> bool:
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all((Path(self.root) / self.base_folder / name).is_file() for name in names)

    def load_meta(self) -> None:
        if not files_present(self):
            raise RuntimeError("dataset files missing")
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as fh:
            self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return type(cls.__name__, (cls,), {"_check_integrity": files_present, "_load_meta": load_meta})


class CIFARDataModule(SplitDataModule):
    """CIFAR-10/100 (32 px); validation and test use the official test split.

    Args:
        root: folder holding (or receiving) ``cifar-10-batches-py`` / ``cifar-100-python``.
        dataset: "cifar10" or "cifar100".
        download: fetch the files when missing (needs internet); off by default.
        verify_md5: check the published checksums (off for re-packed copies).
        batch_size: images per batch per process.
        num_workers: loader processes.
        auto_augment: timm RandAugment string for training, or None.
        re_prob: random erasing probability.
        seed: shuffling seed.
        recipe: "classification" (crop, flip, RandAugment, erasing, CIFAR normalization) or
            "generation" (flip only, scaled to [-1, 1], for diffusion models).
    """

    img_size = 32
    in_chans = 3

    def __init__(self, root: str = "data", dataset: str = "cifar10", download: bool = False, verify_md5: bool = True,
                 batch_size: int = 128, num_workers: int = 4, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                 re_prob: float = 0.25, seed: int = 0, recipe: str = "classification") -> None:
        super().__init__()
        if dataset not in CIFAR_STATS:
            raise ValueError(f"unknown CIFAR dataset {dataset!r}; expected cifar10 or cifar100")
        if recipe not in ("classification", "generation"):
            raise ValueError(f"unknown recipe {recipe!r}; expected classification or generation")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.mean, self.std, cls, self.num_classes = CIFAR_STATS[dataset]
        self.cls = cls if verify_md5 else _unchecked(cls)
        self.datasets: dict[str, torch.utils.data.Dataset] = {}

    def prepare_data(self) -> None:
        if self.hparams.download:
            self.cls(self.hparams.root, train=True, download=True)
            self.cls(self.hparams.root, train=False, download=True)

    def _transform(self, train: bool):
        hp = self.hparams
        if hp.recipe == "generation":
            flip = [transforms.RandomHorizontalFlip()] if train else []
            return transforms.Compose(flip + [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])
        normalize = [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        if not train:
            return transforms.Compose(normalize)
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
        if hp.auto_augment:
            steps.append(rand_augment_transform(hp.auto_augment, {"translate_const": 10,
                                                                  "img_mean": tuple(round(255 * m) for m in self.mean)}))
        steps += normalize
        if hp.re_prob > 0:
            steps.append(RandomErasing(hp.re_prob, mode="pixel", device="cpu"))
        return transforms.Compose(steps)

    def dataset(self, split: str):
        split = "train" if split == "train" else "test"  # validation and test use the official test split
        if split not in self.datasets:
            train = split == "train"
            try:
                self.datasets[split] = self.cls(self.hparams.root, train=train, transform=self._transform(train))
            except RuntimeError as exc:
                raise FileNotFoundError(
                    f"{self.hparams.dataset} not found in {self.hparams.root} ({exc}); place the extracted "
                    f"{self.cls.base_folder} folder there or set download: true (needs internet)") from None
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "test") if stage in (None, "fit") else ("test",):
            self.dataset(split)


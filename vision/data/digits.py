"""scikit-learn's bundled handwritten digits: the embedded default dataset (no download)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from vision.data.loading import SplitDataModule

DIGITS_MEAN, DIGITS_STD = (0.5,), (0.5,)


def load_digits_split(seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2):
    """The 1,797 8x8 digits as float images in [0, 1], split train/val/test stratified by class.

    Returns three ``(images (N, 1, 8, 8) float32, labels (N,) int64)`` pairs; the split depends
    only on ``seed`` and the fractions.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest],
                                  random_state=seed)
    return tuple((torch.from_numpy(images[i]), torch.from_numpy(labels[i])) for i in (train, val, test))


class DigitsDataset(Dataset):
    """Digits as normalized tensors ((x - 0.5) / 0.5, i.e. [-1, 1]); optional random 1-pixel shifts."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int = 0, normalize: bool = True) -> None:
        self.images = (images - DIGITS_MEAN[0]) / DIGITS_STD[0] if normalize else images
        self.labels = labels
        self.shift = shift
        self.background = self.images.min().item()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.shift:
            dy, dx = torch.randint(-self.shift, self.shift + 1, (2,)).tolist()
            padded = torch.nn.functional.pad(image, [self.shift] * 4, value=self.background)
            h, w = image.shape[-2:]
            image = padded[:, self.shift + dy : self.shift + dy + h, self.shift + dx : self.shift + dx + w]
        return image, self.labels[i]


class DigitsDataModule(SplitDataModule):
    """Handwritten digits (scikit-learn, 1,797 images, 10 classes), split 60/20/20 by class.

    Args:
        batch_size: images per batch (per process).
        num_workers: loader worker processes (0 keeps everything in the main process).
        seed: the split and the shuffling order.
        shift: random translation in pixels for training images (0 turns it off).
        normalize: map [0, 1] to [-1, 1]; off gives raw [0, 1] images.
    """

    num_classes = 10
    mean, std = DIGITS_MEAN, DIGITS_STD
    img_size = 8
    in_chans = 1

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0, shift: int = 1,
                 normalize: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.splits = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            train, val, test = load_digits_split(self.hparams.seed)
            norm = self.hparams.normalize
            self.splits = {
                "train": DigitsDataset(*train, shift=self.hparams.shift, normalize=norm),
                "val": DigitsDataset(*val, normalize=norm),
                "test": DigitsDataset(*test, normalize=norm),
            }

    def dataset(self, split: str) -> DigitsDataset:
        self.setup()
        return self.splits[split]

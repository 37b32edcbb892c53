"""Readers for released robustness test sets: ImageNet-C folders, CIFAR-10-C/-100-C arrays, ImageNet-R/-A.

Nothing here downloads: the Zenodo archives (ImageNet-C 2235448, CIFAR-10-C 2535967, CIFAR-100-C
3555552) and the ImageNet-R / ImageNet-A tarballs are unpacked by the user into local folders.

- ImageNet-C: ``<root>/<corruption>/<severity>/<wnid>/<image>.JPEG``, images already 224 px, so the
  protocol's transform is CenterCrop(224) only; a resizing eval transform (e.g. timm's crop_pct)
  would change the benchmark.
- CIFAR-10-C / CIFAR-100-C: ``<root>/<corruption>.npy``, uint8 (50000, 32, 32, 3) = the 10,000 test
  images at severities 1..5 in order, and ``<root>/labels.npy``.
- ImageNet-R / ImageNet-A: 200 of the 1000 classes; models keep only those 200 logits, at the
  indices timm ships in ``timm/data/_info/imagenet_{r,a}_indices.txt``.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from vision.corruptions.params import ALL, COMMON
from vision.data.imagefolder import class_folders

IMAGENET_C_CROP = 224
SEVERITIES = (1, 2, 3, 4, 5)
SUBSETS = {"imagenet-r": "imagenet_r", "imagenet-a": "imagenet_a"}


def _check_name(corruption: str) -> None:
    if corruption not in ALL:
        raise ValueError(f"unknown corruption {corruption!r}; known corruptions: {', '.join(ALL)}")


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer from 1 to 5; got {severity!r}")


# ---- ImageNet-C -------------------------------------------------------------------------------------

def imagenet_c_transform(crop: int = IMAGENET_C_CROP) -> Callable:
    """The protocol's eval transform: CenterCrop(crop) and ToTensor, no resize (normalise in the model)."""
    return T.Compose([T.CenterCrop(crop), T.ToTensor()])


def imagenet_c_path(root: str | Path, corruption: str, severity: int) -> Path:
    """``<root>/<corruption>/<severity>``, checked to exist (FileNotFoundError names the missing path)."""
    _check_name(corruption)
    _check_severity(severity)
    path = Path(root) / corruption / str(int(severity))
    if not path.is_dir():
        raise FileNotFoundError(f"ImageNet-C folder not found: {path} "
                                "(expected <root>/<corruption>/<severity>/<class>/<image>)")
    return path


class _FixedClassFolder(ImageFolder):
    """ImageFolder whose class list is given, so indices match a model's even if the folders differ."""

    def __init__(self, root: str | Path, classes: Sequence[str] | None, transform: Callable | None) -> None:
        self._fixed = list(classes) if classes is not None else None
        # With a fixed list, absent classes just have no samples; the indices stay the model's.
        super().__init__(str(root), transform=transform, allow_empty=self._fixed is not None)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self._fixed is None:
            return super().find_classes(directory)
        present = {p.name for p in Path(directory).iterdir() if p.is_dir()}
        unknown = sorted(present - set(self._fixed))
        if unknown:
            raise ValueError(f"{directory} has class folders outside the given class list, e.g. {unknown[:3]}")
        return self._fixed, {c: i for i, c in enumerate(self._fixed)}


def imagenet_c_folder(root: str | Path, corruption: str, severity: int, *, transform: Callable | None = None,
                      classes: Sequence[str] | None = None) -> ImageFolder:
    """One ImageNet-C split as an ImageFolder (default transform: ``imagenet_c_transform()``).

    ``classes`` fixes the label order (e.g. the 1000 ImageNet wnids); by default it is the sorted
    folder names, which for the full release is the standard ImageNet order.
    """
    path = imagenet_c_path(root, corruption, severity)
    return _FixedClassFolder(path, classes, transform if transform is not None else imagenet_c_transform())


def imagenet_c_splits(root: str | Path, corruptions: Iterable[str] = COMMON,
                      severities: Iterable[int] = SEVERITIES) -> list[tuple[str, int, Path]]:
    """Every (corruption, severity, folder) to evaluate, all checked before any evaluation starts."""
    return [(c, int(s), imagenet_c_path(root, c, s)) for c in corruptions for s in severities]


# ---- CIFAR-10-C / CIFAR-100-C -----------------------------------------------------------------------

def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-C file not found: {path} (expected <root>/<corruption>.npy and labels.npy)")
    return np.load(path, mmap_mode="r")


def load_cifar_c(root: str | Path, corruption: str, severity: int) -> tuple[Tensor, Tensor]:
    """Images (N, 3, H, W) uint8 and labels (N,) int64 of one CIFAR-C corruption at one severity.

    The ``.npy`` stacks the test set once per severity, 1 to 5; ``labels.npy`` holds either one
    label per stacked image (the release: 50,000) or one per test image.
    """
    _check_name(corruption)
    _check_severity(severity)
    root = Path(root)
    images = _load_npy(root / f"{corruption}.npy")
    labels = _load_npy(root / "labels.npy")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) % 5:
        raise ValueError(f"{root / f'{corruption}.npy'} should be uint8 (5 x N, H, W, 3); got {images.dtype} "
                         f"{images.shape}")
    n = len(images) // 5
    if len(labels) not in (n, 5 * n):
        raise ValueError(f"{root / 'labels.npy'} has {len(labels)} labels; expected {n} or {5 * n}")
    rows = slice((int(severity) - 1) * n, int(severity) * n)
    x = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(labels[rows] if len(labels) == 5 * n else labels[:n]).astype(np.int64))
    return x, y


class CIFARCorrupted(Dataset):
    """One CIFAR-10-C / CIFAR-100-C corruption and severity: (float CHW image in [0, 1], label) pairs.

    ``transform``, if given, receives that float tensor (normalisation, resizing for a model).
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, transform: Callable | None = None) -> None:
        self.images, self.labels = load_cifar_c(root, corruption, severity)
        self.corruption, self.severity, self.transform = corruption, int(severity), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.images[index].float() / 255
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


# ---- ImageNet-R / ImageNet-A ------------------------------------------------------------------------

def _subset_key(name: str) -> str:
    try:
        return SUBSETS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown subset {name!r}; expected one of {', '.join(SUBSETS)}") from None


def _timm_info(filename: str) -> list[str]:
    text = importlib.resources.files("timm.data").joinpath("_info", filename).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=4)
def _indices(key: str) -> tuple[int, ...]:
    return tuple(int(v) for v in _timm_info(f"{key}_indices.txt"))


def imagenet_subset_indices(name: str) -> Tensor:
    """The 200 ImageNet-1k class indices of "imagenet-r" or "imagenet-a" (ascending, from timm)."""
    return torch.tensor(_indices(_subset_key(name)), dtype=torch.long)


def imagenet_subset_synsets(name: str) -> list[str]:
    """The 200 wnids of "imagenet-r" or "imagenet-a" in the same order as the indices (from timm)."""
    return _timm_info(f"{_subset_key(name)}_synsets.txt")


def imagenet_subset_mask(name: str) -> Tensor:
    """Boolean (1000,) mask of the subset's classes among the ImageNet-1k logits."""
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[imagenet_subset_indices(name)] = True
    return mask


def subset_logits(logits: Tensor, name: str) -> Tensor:
    """Keep the 200 logits of "imagenet-r" or "imagenet-a": (..., 1000) -> (..., 200).

    Column i belongs to the i-th wnid of ``imagenet_subset_synsets``, which is the label an
    ImageFolder over the dataset's sorted wnid folders assigns, so ``argmax`` compares directly.
    """
    if logits.shape[-1] != 1000:
        raise ValueError(f"expected 1000 ImageNet logits in the last dimension; got shape {tuple(logits.shape)}")
    return logits[..., imagenet_subset_indices(name).to(logits.device)]


def imagenet_subset_transform(resize: int = 256, crop: int = 224) -> Callable:
    """ImageNet-R / -A eval transform: Resize(256), CenterCrop(224), ToTensor."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor()])


def imagenet_subset_folder(root: str | Path, name: str, *, transform: Callable | None = None) -> ImageFolder:
    """ImageNet-R or ImageNet-A as an ImageFolder whose labels index ``subset_logits`` columns."""
    synsets = imagenet_subset_synsets(name)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder not found: {root} (expected <root>/<wnid>/<image>)")
    return _FixedClassFolder(root, synsets, transform if transform is not None else imagenet_subset_transform())


# ---- evaluation sets: class lists, transforms, image indices ----------------------------------------

def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k wnids in the standard label order (from timm)."""
    return _timm_info("imagenet_synsets.txt")


def evaluation_classes(root: str | Path, num_classes: int) -> list[str]:
    """The class list that gives ``<root>/<class>/<image>`` the labels a ``num_classes``-way model uses.

    Folders named 0, 1, 2 ... (ImageNet-V2) are their own labels; wnid folders of a 1000-way model
    take the standard ImageNet order, so a folder with only some classes still lines up; any
    other folder set must have exactly ``num_classes`` classes, labelled in sorted order as
    ``ImageFolder`` (and training) labels them.
    """
    root = Path(root)
    folders = class_folders(root)
    if all(name.isdigit() for name in folders):
        too_big = [name for name in folders if int(name) >= num_classes]
        if too_big:
            raise ValueError(f"{root} has numbered class folders up to {max(map(int, folders))} but the models have "
                             f"{num_classes} outputs")
        return [str(i) for i in range(num_classes)]
    if num_classes == 1000:
        wnids = imagenet_classes()
        if set(folders) <= set(wnids):
            return wnids
    if len(folders) != num_classes:
        raise ValueError(f"{root} has {len(folders)} class folders but the models have {num_classes} outputs "
                         f"(expected {num_classes} class folders, ImageNet wnids or numbered folders)")
    return folders


def evaluation_transform(size: int | tuple[int, int], in_chans: int = 3, *, resize: bool = True) -> Callable:
    """Eval transform to [0, 1] tensors: Resize(256/224 x size) + CenterCrop(size) as ImageNet-C's source images.

    ``resize=False`` crops only (released ImageNet-C images are already 224 px). One-channel
    models get greyscale images. No normalisation: corruptions act on [0, 1] images first.
    """
    h, w = (size, size) if isinstance(size, int) else size
    steps: list[Callable] = [T.Resize(round(min(h, w) * 256 / 224))] if resize else []
    steps.append(T.CenterCrop((h, w)))
    if in_chans == 1:
        steps.append(T.Grayscale(1))
    steps.append(T.ToTensor())
    return T.Compose(steps)


def evaluation_folder(root: str | Path, num_classes: int, transform: Callable) -> ImageFolder:
    """An image folder with the labels of a ``num_classes``-way model (see ``evaluation_classes``)."""
    return _FixedClassFolder(root, evaluation_classes(root, num_classes), transform)


class IndexedDataset(Dataset):
    """``(image, label, position, index)``: the position in this set, and the source dataset's index.

    The index seeds an image's corruption draws, so it stays the same when only some images of
    the source are evaluated (``indices``); the position says where its result goes.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[Tensor, int, int, int]:
        index = self.indices[position]
        image, label = self.dataset[index]
        return image, int(label), position, index


def spread_indices(length: int, count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them for None or count >= length)."""
    if count is None or count >= length:
        return list(range(length))
    if count < 1:
        raise ValueError(f"the number of images to evaluate must be at least 1; got {count}")
    return [i * length // count for i in range(count)]


class CIFARCorruptedSplit(Dataset):
    """One CIFAR-C corruption and severity read image by image from the memory-mapped ``.npy``.

    Same items as ``CIFARCorrupted`` (float CHW in [0, 1], label), without copying the split
    into memory: an evaluation over 19 corruptions x 5 severities would otherwise hold about
    3 GB of CIFAR-10-C at once.
    """

    def __init__(self, root: str | Path, corruption: str, severity: int, transform: Callable | None = None) -> None:
        _check_name(corruption)
        _check_severity(severity)
        root = Path(root)
        self.images = _load_npy(root / f"{corruption}.npy")
        labels = _load_npy(root / "labels.npy")
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3 \
                or len(self.images) % 5:
            raise ValueError(f"{root / f'{corruption}.npy'} should be uint8 (5 x N, H, W, 3); got "
                             f"{self.images.dtype} {self.images.shape}")
        n = len(self.images) // 5
        if len(labels) not in (n, 5 * n):
            raise ValueError(f"{root / 'labels.npy'} has {len(labels)} labels; expected {n} or {5 * n}")
        self.offset = (int(severity) - 1) * n
        self.labels = np.asarray(labels[self.offset:self.offset + n] if len(labels) == 5 * n else labels[:n])
        self.corruption, self.severity, self.transform = corruption, int(severity), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        array = np.array(self.images[self.offset + index])  # one (H, W, 3) image off the memory map
        image = torch.from_numpy(array).permute(2, 0, 1).float() / 255
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

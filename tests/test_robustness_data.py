"""Readers for ImageNet-C folders, CIFAR-C arrays and the ImageNet-R/-A 200-class masks, on trees written here."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest
import torch
from PIL import Image

from vision.corruptions import ALL
from vision.data.robustness import (
    CIFARCorrupted,
    imagenet_c_folder,
    imagenet_c_splits,
    imagenet_subset_folder,
    imagenet_subset_indices,
    imagenet_subset_mask,
    imagenet_subset_synsets,
    load_cifar_c,
    subset_logits,
)


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def imagenet_c_root(tmp_path):
    """fog severities 1-2 and contrast severity 1, two classes, 240x250 images with distinct pixels."""
    rng = np.random.default_rng(0)
    images = {}
    for corruption, severities in (("fog", (1, 2)), ("contrast", (1,))):
        for s in severities:
            for wnid in ("n02", "n01"):
                for k in range(2):
                    a = rng.integers(0, 256, (240, 250, 3), dtype=np.uint8)
                    path = tmp_path / corruption / str(s) / wnid / f"img{k}.png"
                    _write_png(path, a)
                    images[path] = a
    return tmp_path, images


def test_imagenet_c_folder_crops_224_without_resizing(imagenet_c_root):
    root, images = imagenet_c_root
    ds = imagenet_c_folder(root, "fog", 2)
    assert ds.classes == ["n01", "n02"] and len(ds) == 4
    for (path, label), (x, y) in zip(ds.samples, ds):
        a = images[type(root)(path)]
        top, left = round((240 - 224) / 2.0), round((250 - 224) / 2.0)  # torchvision's CenterCrop
        expected = torch.from_numpy(a[top:top + 224, left:left + 224]).permute(2, 0, 1).float() / 255
        assert x.shape == (3, 224, 224) and torch.equal(x, expected) and y == label
    assert [y for _, y in ds.samples] == [0, 0, 1, 1]


def test_imagenet_c_class_list_and_missing_severity(imagenet_c_root):
    root, _ = imagenet_c_root
    ds = imagenet_c_folder(root, "fog", 1, classes=["n00", "n01", "n02", "n03"], transform=lambda im: im.size)
    assert sorted({y for _, y in ds.samples}) == [1, 2] and ds[0][0] == (250, 240)
    with pytest.raises(ValueError, match="outside the given class list"):
        imagenet_c_folder(root, "fog", 1, classes=["n01"])
    with pytest.raises(FileNotFoundError) as info:
        imagenet_c_folder(root, "fog", 3)
    message = str(info.value)
    assert str(root / "fog" / "3") in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match=str(root / "contrast" / "2")):
        imagenet_c_splits(root, corruptions=("fog", "contrast"), severities=(1, 2))  # checked before any work
    assert [(c, s) for c, s, _ in imagenet_c_splits(root, ("fog",), (1, 2))] == [("fog", 1), ("fog", 2)]
    with pytest.raises(ValueError, match="unknown corruption 'haze'"):
        imagenet_c_folder(root, "haze", 1)
    with pytest.raises(ValueError, match="got 0"):
        imagenet_c_folder(root, "fog", 0)


def _write_cifar_c(root, n=6, labels_per_severity=False):
    blocks = [np.full((n, 32, 32, 3), 10 * s, dtype=np.uint8) for s in range(1, 6)]
    for s, block in enumerate(blocks, start=1):
        block[:, 0, 0, 0] = np.arange(n) + 100 + s  # distinct pixels per image and severity
    np.save(root / "fog.npy", np.concatenate(blocks))
    labels = np.arange(n, dtype=np.uint8) % 10
    np.save(root / "labels.npy", labels if labels_per_severity else np.tile(labels, 5))
    return n, labels


@pytest.mark.parametrize("labels_per_severity", [False, True])
def test_cifar_c_picks_the_severity_block(tmp_path, labels_per_severity):
    n, labels = _write_cifar_c(tmp_path, labels_per_severity=labels_per_severity)
    x, y = load_cifar_c(tmp_path, "fog", 3)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert x[:, 1].eq(30).all() and x[:, 0, 0, 0].tolist() == list(range(103, 103 + n))
    assert y.tolist() == labels.tolist()
    ds = CIFARCorrupted(tmp_path, "fog", 5, transform=lambda t: t * 2)
    image, label = ds[2]
    assert len(ds) == n and label == 2 and image.shape == (3, 32, 32)
    assert image[1, 5, 5].item() == pytest.approx(2 * 50 / 255)


def test_cifar_c_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar_c(tmp_path, "snow", 1)
    assert str(tmp_path / "snow.npy") in str(info.value) and "\n" not in str(info.value)
    np.save(tmp_path / "fog.npy", np.zeros((7, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(7, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"should be uint8 \(5 x N, H, W, 3\)"):
        load_cifar_c(tmp_path, "fog", 1)
    _write_cifar_c(tmp_path)
    np.save(tmp_path / "labels.npy", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="has 4 labels; expected 6 or 30"):
        load_cifar_c(tmp_path, "fog", 1)
    with pytest.raises(ValueError, match="got 6"):
        load_cifar_c(tmp_path, "fog", 6)


def _imagenet_synsets():
    text = importlib.resources.files("timm.data").joinpath("_info", "imagenet_synsets.txt").read_text()
    return text.split()


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_subset_indices_and_masks_come_from_timm(name):
    idx = imagenet_subset_indices(name)
    assert idx.shape == (200,) and idx.dtype == torch.long
    assert (idx.diff() > 0).all() and 0 <= int(idx.min()) and int(idx.max()) < 1000
    synsets = imagenet_subset_synsets(name)
    assert synsets == [_imagenet_synsets()[i] for i in idx.tolist()] and synsets == sorted(synsets)
    mask = imagenet_subset_mask(name)
    assert mask.sum() == 200 and mask[idx].all()
    logits = torch.arange(2000.0).reshape(2, 1000)
    assert torch.equal(subset_logits(logits, name), logits[:, idx])
    # A non-subset class has the overall maximum; within the 200 the 7th subset class wins.
    logits = torch.zeros(3, 1000)
    logits[:, idx[7]] = 5.0
    logits[:, int((~mask).nonzero()[0])] = 9.0
    assert subset_logits(logits, name).argmax(dim=1).tolist() == [7, 7, 7]
    assert idx[:3].tolist() == ([1, 2, 4] if name == "imagenet-r" else [6, 11, 13])


def test_subset_folder_labels_index_the_subset_logits(tmp_path):
    synsets = imagenet_subset_synsets("imagenet-r")
    tiny = np.zeros((8, 8, 3), dtype=np.uint8)
    for wnid in synsets:
        _write_png(tmp_path / wnid / "a.png", tiny)
    ds = imagenet_subset_folder(tmp_path, "imagenet-r", transform=lambda im: 0)
    assert len(ds) == 200 and ds.classes == synsets
    assert [y for _, y in ds.samples] == list(range(200))
    (tmp_path / "n99999999").mkdir()
    with pytest.raises(ValueError, match="outside the given class list"):
        imagenet_subset_folder(tmp_path, "imagenet-r")


def test_subset_bad_input():
    with pytest.raises(ValueError, match="unknown subset 'imagenet-b'; expected one of imagenet-r, imagenet-a"):
        imagenet_subset_indices("imagenet-b")
    with pytest.raises(ValueError, match="expected 1000 ImageNet logits"):
        subset_logits(torch.zeros(2, 200), "imagenet-a")
    assert len(ALL) == 19

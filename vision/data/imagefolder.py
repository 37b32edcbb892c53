"""ImageNet-style folders (``<root>/train/<class>/<image>``, ``<root>/val/...``) with the DeiT recipe."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from vision.data.loading import SplitDataModule

log = logging.getLogger(__name__)


def _readable(path: Path) -> str | None:
    """None when PIL can read the image header, else the reason."""
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018  (parses the header)
        return None
    except Exception as exc:  # PIL raises many types for broken files
        return f"{type(exc).__name__}: {exc}"


def class_folders(folder: str | Path) -> list[str]:
    """The sorted class folder names of ``folder/<class>/<image>``; a missing or empty folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder} (expected {folder}/<class>/<image>)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {folder} (expected {folder}/<class>/<image>)")
    return classes


def scan_image_folder(
    folder: str | Path,
    class_to_idx: dict[str, int] | None = None,
    check_images: bool = True,
    on_bad_image: str = "error",
    workers: int = 16,
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """List ``(path, label)`` for ``folder/<class>/<image>`` and fail early on bad data.

    A missing folder, a class without images, a class unknown to ``class_to_idx`` (the training
    classes) or, with ``check_images``, an image whose header PIL cannot read, raises a one-line
    error naming the path; with ``on_bad_image="skip"`` unreadable images are logged and left out.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    folder = Path(folder)
    classes = class_folders(folder)
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    for cls in classes:
        if cls not in class_to_idx:
            raise ValueError(f"class folder {folder / cls} is not one of the {len(class_to_idx)} training classes")
        files = sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise ValueError(f"empty class folder {folder / cls}: no images ({', '.join(IMG_EXTENSIONS)})")
        samples.extend((str(p), class_to_idx[cls]) for p in files)
    if check_images:
        with ThreadPoolExecutor(workers) as pool:
            problems = list(pool.map(_readable, (Path(p) for p, _ in samples)))
        bad = [(p, why) for (p, _), why in zip(samples, problems) if why]
        if bad and on_bad_image == "error":
            raise ValueError(f"unreadable image {bad[0][0]} ({bad[0][1]}); {len(bad)} bad in {folder} "
                             "(on_bad_image='skip' leaves them out)")
        for path, why in bad:
            log.warning("skipping unreadable image %s (%s)", path, why)
        bad_paths = {p for p, _ in bad}
        samples = [s for s in samples if s[0] not in bad_paths]
    return samples, class_to_idx


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM's (and DiT's) crop: halve with BOX while large, BICUBIC to ``size`` on the short side, center crop."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def generation_transform(size: int, train: bool) -> transforms.Compose:
    """Images for diffusion training: ADM center crop, random flip (training), scaled to [-1, 1]."""
    steps = [transforms.Lambda(lambda im: adm_center_crop(im, size))]
    if train:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    return transforms.Compose(steps)


class ImageListDataset(Dataset):
    """Images from a ``(path, label)`` list, loaded as RGB (or L) with PIL."""

    def __init__(self, samples: list[tuple[str, int]], transform=None, mode: str = "RGB") -> None:
        self.samples = samples
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                image = im.convert(self.mode)
        except Exception as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
        return (self.transform(image) if self.transform else image), label


class ImageFolderDataModule(SplitDataModule):
    """ImageNet-layout folders with DeiT's training recipe through timm's transforms.

    With ``recipe="generation"`` images are ADM-center-cropped, flipped and scaled to [-1, 1]
    instead (the diffusion models' input); the augmentation arguments are then unused.

    Args:
        root: folder holding ``train/`` and ``val/`` (each ``<class>/<image>``).
        batch_size: images per batch per process.
        num_workers: loader processes.
        img_size: training and evaluation resolution.
        crop_pct: evaluation resize is ``img_size / crop_pct`` then a center crop.
        interpolation: resize interpolation ("bicubic" in DeiT).
        mean: normalization mean.
        std: normalization std.
        auto_augment: timm RandAugment string, or None.
        re_prob: random erasing probability.
        color_jitter: color jitter strength (timm ignores it when RandAugment is on).
        scale: RandomResizedCrop area range.
        train_dir: training split folder under root.
        val_dir: validation split folder under root.
        test_dir: test split folder (default: the validation folder).
        check_images: open every image header at start-up.
        on_bad_image: "error" or "skip" for unreadable images.
        seed: shuffling seed.
        recipe: "classification" (DeiT transforms) or "generation" (ADM crop, flip, [-1, 1]).
    """

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        num_workers: int = 8,
        img_size: int = 224,
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        color_jitter: float = 0.3,
        scale: tuple[float, float] = (0.08, 1.0),
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        check_images: bool = True,
        on_bad_image: str = "error",
        seed: int = 0,
        recipe: str = "classification",
    ) -> None:
        super().__init__()
        if recipe not in ("classification", "generation"):
            raise ValueError(f"unknown recipe {recipe!r}; expected classification or generation")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.img_size = img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.in_chans = 3
        self.datasets: dict[str, ImageListDataset] = {}
        self.class_to_idx: dict[str, int] | None = None

    @property
    def num_classes(self) -> int:
        self.dataset("train")
        return len(self.class_to_idx)

    pin_memory = True

    def dataset(self, split: str) -> ImageListDataset:
        if split not in self.datasets:
            hp = self.hparams
            if self.class_to_idx is None and split != "train":
                self.dataset("train")
            folder = {"train": hp.train_dir, "val": hp.val_dir, "test": hp.test_dir or hp.val_dir}[split]
            samples, self.class_to_idx = scan_image_folder(
                Path(hp.root) / folder, self.class_to_idx, hp.check_images, hp.on_bad_image)
            train = split == "train"
            if hp.recipe == "generation":
                transform = generation_transform(self.img_size, train)
            else:
                transform = create_transform(
                    self.img_size, is_training=train, auto_augment=hp.auto_augment if train else None,
                    re_prob=hp.re_prob if train else 0.0, color_jitter=hp.color_jitter if train else None,
                    scale=hp.scale if train else None, interpolation=hp.interpolation, mean=self.mean,
                    std=self.std, crop_pct=hp.crop_pct)
            self.datasets[split] = ImageListDataset(samples, transform)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        # Scan (and check) every split this stage needs now, not when its first batch is due.
        for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ("train", "val")):
            self.dataset(split)


"""``vision fid``: FID (and KID, Inception Score) of generated images against reference images.

The metrics are torchmetrics' ``FrechetInceptionDistance``, ``KernelInceptionDistance`` and
``InceptionScore``; the features come from one pass of a ``vision.metrics.features`` extractor
(torch-fidelity's InceptionV3 by default), and the metrics receive them through an identity
``feature`` module, so FID, KID and IS share that pass. Choices that move the numbers:

- images reach the extractor as uint8 that this code rounded and clamped (``vision sample``'s
  artifact, or ``to_uint8`` of generated samples), never through ``normalize=True``, which
  truncates and wraps around;
- Inception resizes to 299 px with TF1-compatible bilinear (``antialias=False``, as torch-fidelity
  and the TF reference) unless ``antialias=True``; the setting is printed with the result;
- statistics are float64 sums, reduced across processes by summing, so N devices give one
  device's result; the sets are split in contiguous blocks, so gathered KID/IS features keep the
  single-device order;
- reference statistics (mu, sigma, count, and the features when KID needs them) are cached as
  ``.npz`` together with the extractor settings that produced them; a cache made with other
  settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vision.metrics.features import (FeatureExtractor, InceptionWeightsError, build_extractor, fid_feature_extractor,
                                     full_fp32, resolve_inception_weights)
from vision.tasks.checkpoint import atomic_write

__all__ = ["FIDEvaluator", "FeatureExtractor", "ImageSet", "InceptionWeightsError", "ReferenceStats", "add_images",
           "build_extractor", "fid", "fid_feature_extractor", "generated_images", "load_sampling_config",
           "open_images", "prepare_reference", "resolve_inception_weights"]

CACHE_ENV = "VISION_FID_CACHE"
SAMPLING_DIR = Path(__file__).resolve().parents[2] / "configs" / "sampling"
SAMPLING_KEYS = {"sampler", "steps", "cfg_scale", "num_samples", "batch_size", "seed", "classes"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
STATS_FORMAT = "vision-fid-stats/1"
SOURCES = ("a folder of images, a .npz (arr_0 uint8 images, or mu/sigma statistics), a generation checkpoint "
           "(samples only), or a dataset: digits, digits:<train|val|test|all>, cifar10:<root>, cifar100:<root>")


# ----------------------------------------------------------------------------- image sets


@dataclass
class ImageSet:
    """A set of same-size uint8 images, read by index range.

    Attributes:
        name: what the set is, for messages ("folder samples/", "digits:train").
        count: number of images.
        shape: (C, H, W), C = 1 or 3.
        read: ``read(start, stop)`` -> uint8 (stop - start, H, W, C).
        identity: stable id of the source (absolute path, dataset name), for cache file names.
        fingerprint: changes when the images change (cache validity).
        chunk: preferred read size (the generation batch of a checkpoint).
        note: how the images were made, e.g. the sampler settings.
    """

    name: str
    count: int
    shape: tuple[int, int, int]
    read: Callable[[int, int], np.ndarray]
    identity: str
    fingerprint: str
    chunk: int | None = None
    note: str = ""

    def first(self, n: int | None, role: str) -> ImageSet:
        """The first ``n`` images (all when None); an error when there are fewer."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"--num-samples must be at least 1, got {n}")
        if n > self.count:
            raise ValueError(f"{role} {self.name}: {self.count} images, fewer than the {n} asked for")
        return replace(self, count=n, fingerprint=f"{self.fingerprint}[:{n}]")


def open_images(spec: str, num: int | None = None, *, sampling: str | None = None,
                device: str | torch.device = "cpu", role: str = "samples") -> ImageSet:
    """The image set ``spec`` names: a folder, an ``.npz``, a generation checkpoint or a dataset (``SOURCES``).

    Args:
        spec: see ``SOURCES``.
        num: use the first ``num`` images (a checkpoint generates this many).
        sampling: named sampling config (``configs/sampling/<name>.yaml`` or a YAML path) for checkpoints.
        device: where a checkpoint generates.
        role: "samples" or "reference", for messages.
    """
    path = Path(spec)
    if path.is_dir():
        return _folder_images(path, role).first(num, role)
    if path.is_file():
        if path.suffix == ".npz":
            return _npz_images(path, role).first(num, role)
        if path.suffix in (".ckpt", ".pt", ".pth"):
            if role != "samples":
                raise ValueError(f"the reference must be images or statistics, not a checkpoint: {spec}")
            return _checkpoint_images(path, num, sampling, device)
        raise ValueError(f"cannot read {role} from {spec}: expected {SOURCES}")
    dataset = _dataset_images(spec)
    if dataset is not None:
        return dataset.first(num, role)
    raise FileNotFoundError(f"{role} {spec!r} not found: expected {SOURCES}")


def _folder_images(folder: Path, role: str) -> ImageSet:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise ValueError(f"{role} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    from PIL import Image

    sizes, grey = {}, True
    for file in files:  # headers only: cheap, and a mixed set fails before any feature is computed
        with Image.open(file) as image:
            sizes.setdefault(image.size, file)
            grey &= image.mode in GREY_MODES
        if len(sizes) > 1:
            (first_size, first), (other_size, other) = sizes.items()
            raise ValueError(f"{role} folder {folder} mixes image sizes: {first.relative_to(folder)} is "
                             f"{first_size[0]}x{first_size[1]}, {other.relative_to(folder)} is "
                             f"{other_size[0]}x{other_size[1]}; FID compares sets of one size (resize them first)")
    (width, height), = sizes
    mode = "L" if grey else "RGB"

    def read(start: int, stop: int) -> np.ndarray:
        arrays = []
        for file in files[start:stop]:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert(mode), dtype=np.uint8))
        batch = np.stack(arrays)
        return batch[..., None] if grey else batch

    listing = "\n".join(f"{p.relative_to(folder)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    return ImageSet(f"folder {folder}", len(files), (1 if grey else 3, height, width), read,
                    identity=str(folder.resolve()), fingerprint=_digest(listing))


def _npz_images(path: Path, role: str) -> ImageSet:
    with zipfile.ZipFile(path) as archive:
        keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
    if "arr_0" not in keys:
        what = "statistics (mu, sigma)" if {"mu", "sigma"} <= keys else f"arrays {sorted(keys)}"
        raise ValueError(f"{path} holds {what}, not images: {role} from an .npz need arr_0, uint8 (N, H, W, C)")
    images = _npz_array(path, "arr_0")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(f"{path} arr_0 must be uint8 images (N, H, W, C) with C = 1 or 3, got {images.dtype} "
                         f"{images.shape}; quantise them first (round and clamp to 0..255)")
    if images.ndim == 3:
        images = images[..., None]
    if len(images) == 0:
        raise ValueError(f"{role} file {path} holds no images (arr_0 is empty)")
    stat = path.stat()
    return ImageSet(f"{path}", len(images), (images.shape[3], images.shape[1], images.shape[2]),
                    lambda start, stop: np.array(images[start:stop]), identity=str(path.resolve()),
                    fingerprint=_digest(f"{stat.st_size} {stat.st_mtime_ns}"))


def _npz_array(path: Path, key: str) -> np.ndarray:
    """``key`` of an .npz, memory-mapped when stored uncompressed (``np.savez``): 50k samples need not fit in memory."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                fmt = np.lib.format
                reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = reader(member)
                header = member.tell()
            if not dtype.hasobject:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset)
                    name_len, extra_len = struct.unpack("<HH", fh.read(30)[26:30])
                offset = info.header_offset + 30 + name_len + extra_len + header
                return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                                 order="F" if fortran else "C")
    with np.load(path) as archive:
        return archive[key]


def _dataset_images(spec: str) -> ImageSet | None:
    name, _, arg = spec.partition(":")
    if name == "digits":
        from vision.data.digits import load_digits_split

        splits = dict(zip(("train", "val", "test"), load_digits_split(0)))
        split = arg or "train"
        if split not in (*splits, "all"):
            raise ValueError(f"unknown digits split {split!r}; expected train, val, test or all")
        images = torch.cat([s[0] for s in splits.values()]) if split == "all" else splits[split][0]
        array = (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        label = f"digits:{split}"
        return ImageSet(label, len(array), (1, 8, 8), lambda start, stop: array[start:stop], identity=label,
                        fingerprint=_digest(array.tobytes()))
    if name in ("cifar10", "cifar100"):
        from torchvision import datasets

        root = Path(arg or "data")
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        try:
            array = cls(str(root), train=True, download=False).data
        except RuntimeError:
            raise FileNotFoundError(f"{name} not found under {root}: expected {root / cls.base_folder} (the python "
                                    "version of the dataset; nothing is downloaded here)") from None
        label = f"{name}:train"
        return ImageSet(label, len(array), (3, 32, 32), lambda start, stop: array[start:stop],
                        identity=f"{label}@{root.resolve()}", fingerprint=_digest(f"{label} {len(array)}"))
    return None


def load_sampling_config(name: str) -> dict[str, Any]:
    """A named sampling config (``configs/sampling/<name>.yaml``) or a YAML file: sampler, steps, cfg_scale, ..."""
    import yaml

    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SAMPLING_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SAMPLING_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"sampling config {name!r} not found: expected {path} or a YAML file "
                                f"(known: {', '.join(known) or 'none'})")
    config = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - SAMPLING_KEYS
    missing = {"sampler", "steps", "cfg_scale"} - set(config)
    if unknown or missing:
        raise ValueError(f"sampling config {path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
                         f"expected {sorted(SAMPLING_KEYS)}")
    return {"num_samples": 50000, "batch_size": 64, "seed": 0, "classes": None, **config}


def _checkpoint_images(ckpt: Path, num: int | None, sampling: str | None, device: str | torch.device) -> ImageSet:
    from vision.diffusion.generate import load_generation_module

    if sampling is None:
        raise ValueError(f"--samples {ckpt} is a checkpoint: name a sampling config with --sampling "
                         f"(e.g. dit_fid50k, digits; see {SAMPLING_DIR})")
    config = load_sampling_config(sampling)
    if num is not None:
        config["num_samples"] = num
    module = load_generation_module(ckpt).to(device)
    images = generated_images(module, config, name=f"checkpoint {ckpt}", identity=str(ckpt.resolve()))
    images.note += f"; sampling config {sampling}"
    return images


def generated_images(module, config: dict[str, Any], name: str = "samples", identity: str = "") -> ImageSet:
    """The samples of a ``GenerationModule`` as an image set: generated when read, sample i from (seed, i).

    ``config`` holds sampler, steps, cfg_scale, num_samples, batch_size, seed and classes (a sampling config).
    """
    from vision.diffusion.generate import generate_samples

    count = int(config["num_samples"])
    if count < 1:
        raise ValueError(f"the number of samples must be at least 1, got {count}")
    hp = module.hparams
    # A latent model (SD VAE) decodes to RGB images 8x its latent side.
    side, channels = (hp.input_size * 8, 3) if hp.vae else (hp.input_size, hp.in_channels)

    def read(start: int, stop: int) -> np.ndarray:
        return generate_samples(module, count, sampler=config["sampler"], steps=int(config["steps"]),
                                cfg_scale=float(config["cfg_scale"]), seed=int(config["seed"]),
                                batch_size=stop - start, classes=config.get("classes"),
                                indices=list(range(start, stop)), progress=False)[0]

    note = f"{config['sampler']}, {config['steps']} steps, cfg {config['cfg_scale']}, seed {config['seed']}"
    return ImageSet(name, count, (channels, side, side), read, identity=identity, fingerprint="",
                    chunk=int(config["batch_size"]), note=note)


def _digest(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


# ----------------------------------------------------------------------------- reference statistics


@dataclass
class ReferenceStats:
    """Reference statistics: mean and covariance of the features, and what made them.

    ``settings`` is None for statistics written by other tools (ADM's reference batches,
    pytorch-fid or clean-fid ``.npz``), which are taken as Inception-v3 pool3 statistics.
    """

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    settings: dict[str, Any] | None
    label: str = ""
    source: str = ""
    fingerprint: str = ""
    image_shape: tuple[int, ...] = ()
    features: np.ndarray | None = None

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics as ``.npz`` atomically (readers never see half a file)."""
        arrays = {"mu": self.mu, "sigma": self.sigma, "count": np.int64(self.count), "format": STATS_FORMAT,
                  "settings": json.dumps(self.settings, sort_keys=True), "label": self.label, "source": self.source,
                  "fingerprint": self.fingerprint, "image_shape": np.array(self.image_shape, dtype=np.int64)}
        if self.features is not None:
            # float32 extractors give float32 values: store them so when that loses nothing (half the bytes).
            narrow = self.features.astype(np.float32)
            arrays["features"] = narrow if np.array_equal(narrow, self.features) else self.features

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        """Read statistics written by ``save``, or a foreign ``.npz`` with ``mu`` and ``sigma``."""
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise ValueError(f"{path} holds no FID statistics (mu, sigma); it has {sorted(z.files)}")
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a (d,) mean and a (d, d) "
                                 "covariance")
            if "format" not in z:
                return cls(mu, sigma, 0, None, source=str(path))
            return cls(mu, sigma, int(z["count"]), json.loads(str(z["settings"])), label=str(z["label"]),
                       source=str(z["source"]), fingerprint=str(z["fingerprint"]),
                       image_shape=tuple(int(v) for v in z["image_shape"]),
                       features=z.get("features"))

    def check(self, settings: dict[str, Any], path: str | os.PathLike) -> None:
        """Refuse statistics computed with other extractor settings than ``settings``."""
        if self.settings is None:
            standard = settings.get("extractor") == "inception-v3-compat" and settings.get("dims") == 2048
            if not standard or len(self.mu) != 2048:
                raise ValueError(f"reference statistics {path} record no settings (not written by vision fid; "
                                 f"{len(self.mu)}-d); they can stand only for Inception-v3 pool3 (2048-d) features, "
                                 f"not {settings.get('extractor')}")
            return
        # The most telling difference first: another extractor makes every other setting moot.
        first = ("extractor", "weights", "dims", "antialias")
        for key in sorted(set(self.settings) | set(settings), key=lambda k: (first.index(k) if k in first else 9, k)):
            theirs, ours = self.settings.get(key), settings.get(key)
            if theirs != ours:
                raise ValueError(f"reference statistics {path} were computed with {key}={theirs!r}, this run uses "
                                 f"{key}={ours!r}: pass the reference images (--ref <folder|dataset>) to recompute "
                                 "them, or delete the file")


def cache_dir() -> Path:
    """Folder of cached reference statistics: ``$VISION_FID_CACHE`` or ``~/.cache/vision/fid``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vision" / "fid")


def default_cache_path(images: ImageSet, settings: dict[str, Any]) -> Path:
    """Cache file of ``images``' statistics under ``settings``: one file per source and settings."""
    key = _digest(json.dumps({"source": images.identity, "settings": settings}, sort_keys=True))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(images.identity).name or images.identity).strip("-")[:40]
    return cache_dir() / f"{slug}-{key}.npz"


# ----------------------------------------------------------------------------- metrics


class _Precomputed(nn.Module):
    """The metrics' ``feature`` module: the extractor already ran, so pass its output through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


class FIDEvaluator:
    """torchmetrics' FID (and KID, IS) fed by one extractor, on one process or each process of a DDP run.

    Every process adds its share of the images; ``compute`` (which must run on every process)
    sums the statistics and gathers the features across processes before computing.

    Args:
        extractor: a prepared ``FeatureExtractor`` on ``device``.
        kid: also KID (keeps every feature vector).
        inception_score: also IS of the samples (needs an extractor with logits).
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (clamped to the smaller set, as clean-fid does).
        is_splits: IS splits.
        device: where the metric states live.
    """

    def __init__(self, extractor: FeatureExtractor, *, kid: bool = False, inception_score: bool = False,
                 kid_subsets: int = 100, kid_subset_size: int = 1000, is_splits: int = 10,
                 device: str | torch.device = "cpu") -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance

        if inception_score and not extractor.has_logits:
            raise ValueError(f"the Inception Score needs class logits; the {extractor.label} extractor gives "
                             "features only")
        self.extractor = extractor
        d = extractor.num_features
        self.fid = FrechetInceptionDistance(feature=_Precomputed(d), reset_real_features=False).to(device)
        with warnings.catch_warnings():  # both warn that they keep every feature vector: that is the point
            warnings.simplefilter("ignore", UserWarning)
            self.kid = KernelInceptionDistance(feature=_Precomputed(d), subsets=kid_subsets,
                                               subset_size=kid_subset_size,
                                               reset_real_features=False).to(device) if kid else None
            self.isc = InceptionScore(feature=_Precomputed(0), splits=is_splits).to(device) if inception_score else None
        self.kid_subset_size = kid_subset_size
        self.device = torch.device(device)
        self._touch()

    def _touch(self) -> None:
        # Every process contributes (possibly empty) features, so that the states have the same
        # structure everywhere when gathered, and the FID metric knows its feature dtype.
        empty = torch.empty(0, self.extractor.num_features, dtype=torch.float64, device=self.device)
        self.fid.update(empty, real=False)
        if self.kid is not None:
            self.kid.update(empty, real=True)
            self.kid.update(empty, real=False)
        if self.isc is not None:
            self.isc.update(torch.empty(0, self.extractor.num_logits, dtype=torch.float64, device=self.device))

    def _consolidate(self) -> None:
        # torchmetrics gathers a list state element by element: lists of different lengths on
        # different processes would deadlock, and equal ones would interleave the processes'
        # features. One tensor per process keeps the gather in rank (= image) order.
        from torchmetrics.utilities.data import dim_zero_cat

        for metric, names in ((self.kid, ("real_features", "fake_features")), (self.isc, ("features",))):
            if metric is not None:
                for name in names:
                    setattr(metric, name, [dim_zero_cat(getattr(metric, name))])

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Add uint8 images (N, C, H, W) to the reference (``real``) or the sample statistics."""
        with full_fp32():
            features, logits = self.extractor.extract(images.to(self.device))
        self.fid.update(features, real=real)
        if self.kid is not None:
            self.kid.update(features, real=real)
        if self.isc is not None and not real:
            self.isc.update(logits)

    def load_reference(self, stats: ReferenceStats, owner: bool) -> None:
        """Use precomputed reference statistics; only one process (``owner``) holds them, as sums add up."""
        if not owner:
            return
        n = max(stats.count, 2)  # foreign statistics have no count: any n >= 2 gives back mu and sigma
        mu = torch.as_tensor(stats.mu, dtype=torch.float64, device=self.device)
        sigma = torch.as_tensor(stats.sigma, dtype=torch.float64, device=self.device)
        self.fid.real_features_sum = mu * n
        self.fid.real_features_cov_sum = sigma * (n - 1) + n * torch.outer(mu, mu)
        self.fid.real_features_num_samples = torch.tensor(n, dtype=torch.long, device=self.device)
        if self.kid is not None:
            if stats.features is None:
                raise ValueError(f"KID needs the reference features, and {stats.source} holds only mu/sigma: pass "
                                 "the reference images with --ref")
            self.kid.real_features.append(torch.as_tensor(stats.features, device=self.device).double())

    def reference_stats(self) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
        """Mean, covariance (as torchmetrics computes them), count and features of the reference, over all processes."""
        metric = self.fid
        with metric.sync_context(should_unsync=True):
            n = int(metric.real_features_num_samples)
            total, gram = metric.real_features_sum.clone(), metric.real_features_cov_sum.clone()
        mu = total / n
        sigma = (gram - n * torch.outer(mu, mu)) / (n - 1)
        features = None
        if self.kid is not None:
            from torchmetrics.utilities.data import dim_zero_cat

            self._consolidate()
            with self.kid.sync_context(should_unsync=True):
                features = dim_zero_cat(self.kid.real_features).cpu().numpy()
        return mu.cpu().numpy(), sigma.cpu().numpy(), n, features

    def compute(self, num_reference: int, num_samples: int, seed: int = 0) -> dict[str, Any]:
        """FID (and KID, IS); call on every process. KID/IS subsets and splits are drawn from ``seed``."""
        if num_reference < 2 or num_samples < 2:
            raise ValueError(f"FID needs at least 2 reference images and 2 samples, got {num_reference} and "
                             f"{num_samples}")
        result: dict[str, Any] = {"fid": float(self.fid.compute())}
        self._consolidate()
        with torch.random.fork_rng(devices=[]):  # the same subsets on every process, every run
            torch.manual_seed(seed)
            if self.kid is not None:
                self.kid.subset_size = min(self.kid_subset_size, num_reference, num_samples)
                mean, std = self.kid.compute()
                result.update(kid=float(mean), kid_std=float(std), kid_subset_size=self.kid.subset_size)
            if self.isc is not None:
                mean, std = self.isc.compute()
                result.update(inception_score=float(mean), inception_score_std=float(std))
        return result

    def reset_samples(self) -> None:
        """Forget the samples, keep the reference (``reset_real_features=False``)."""
        for metric in (self.fid, self.kid, self.isc):
            if metric is not None:
                metric.reset()
        self._touch()


def shard(count: int, rank: int, world: int) -> tuple[int, int]:
    """This process's contiguous block [start, stop) of ``count`` images (rank order = image order)."""
    return count * rank // world, count * (rank + 1) // world


def add_images(evaluator: FIDEvaluator, images: ImageSet, *, real: bool, rank: int = 0, world: int = 1,
               batch_size: int = 64, progress: bool = False, desc: str = "features") -> None:
    """Add this process's block of ``images`` to the evaluator, with a progress bar."""
    start, stop = shard(images.count, rank, world)
    step = images.chunk or batch_size
    with tqdm(total=stop - start, desc=desc, disable=not progress, unit="img") as bar:
        for lo in range(start, stop, step):
            array = images.read(lo, min(lo + step, stop))
            batch = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
            for part in batch.split(batch_size):
                evaluator.update(part, real=real)
            bar.update(len(array))


@dataclass
class ReferenceInfo:
    """Where the reference statistics came from."""

    count: int
    name: str
    stats_path: str | None = None
    cached: bool = False
    image_shape: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)


def prepare_reference(evaluator: FIDEvaluator, ref: str, *, ref_stats: str | None = None, cache: bool = True,
                      rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
                      batch_size: int = 64, progress: bool = False) -> ReferenceInfo:
    """Fill the evaluator's reference side from ``ref`` (images or a statistics ``.npz``), cached.

    Images are reduced to statistics once; later runs with the same source and extractor
    settings read them from ``ref_stats`` (default: a file under ``cache_dir()``). Statistics
    made with other settings are refused; stale default caches (the images changed) are redone.
    Call on every process.
    """
    extractor, settings = evaluator.extractor, evaluator.extractor.settings()
    need_features = evaluator.kid is not None
    ref_path = Path(ref)
    if ref_path.suffix == ".npz" and ref_path.is_file() and _holds_statistics(ref_path):
        stats = ReferenceStats.load(ref_path)
        stats.check(settings, ref_path)
        evaluator.load_reference(stats, owner=rank == 0)
        notes = [] if stats.settings else [f"{ref} records no settings: taken as Inception-v3 pool3 statistics"]
        return ReferenceInfo(stats.count, stats.source or ref, str(ref_path), True, stats.image_shape, notes)

    images = open_images(ref, role="reference")
    extractor.prepare(images.shape)
    target = Path(ref_stats) if ref_stats else default_cache_path(images, settings) if cache else None
    notes: list[str] = []
    if target is not None and target.is_file():
        stats = ReferenceStats.load(target)
        stats.check(settings, target)
        if stats.fingerprint != images.fingerprint:
            if ref_stats:
                raise ValueError(f"reference statistics {target} were computed from other images than {images.name}; "
                                 "delete the file or choose another --ref-stats")
            notes.append(f"{images.name} changed since {target} was written: recomputed")
        elif need_features and stats.features is None:
            notes.append(f"{target} lacks the features KID needs: recomputed")
        else:
            evaluator.load_reference(stats, owner=rank == 0)
            return ReferenceInfo(stats.count, images.name, str(target), True, images.shape, notes)
    add_images(evaluator, images, real=True, rank=rank, world=world, batch_size=batch_size, progress=progress,
               desc="reference features")
    if target is not None:
        mu, sigma, count, features = evaluator.reference_stats()
        if rank == 0:
            ReferenceStats(mu, sigma, count, settings, extractor.label, images.name, images.fingerprint,
                           images.shape, features).save(target)
        barrier()
    return ReferenceInfo(images.count, images.name, str(target) if target else None, False, images.shape, notes)


def _holds_statistics(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return {"mu.npy", "sigma.npy"} <= set(archive.namelist())


# ----------------------------------------------------------------------------- vision fid


def fid(
    samples: str,
    ref: str,
    num_samples: int | None = None,
    kid: bool = False,
    inception_score: bool = False,
    features: str = "inception",
    features_name: str | None = None,
    inception_weights: str | None = None,
    antialias: bool = False,
    batch_size: int = 64,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    sampling: str | None = None,
    ref_stats: str | None = None,
    cache: bool = True,
    extractor_dtype: str = "float32",
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    download: bool = False,
    out: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score generated images by FID against reference images (optionally KID and Inception Score).

    Args:
        samples: a folder of images, an .npz (``arr_0`` uint8 NHWC, as ``vision sample`` writes) or a
            generation checkpoint (then samples are generated first, with ``sampling``'s settings).
        ref: reference images (folder, .npz, dataset: digits[:split], cifar10:<root>, cifar100:<root>)
            or reference statistics (.npz with mu, sigma).
        num_samples: use the first N samples (with a checkpoint: generate N; default from ``sampling``).
        kid: also the Kernel Inception Distance (unbiased, polynomial kernel; subsets of the smaller set).
        inception_score: also the Inception Score of the samples.
        features: "inception" (torch-fidelity's InceptionV3 pool3), "inception:<64|192|768>", a
            ClassificationModule checkpoint (its penultimate features) or "package.module:attribute".
        features_name: label of custom features ("digits" -> "FID (digits features)").
        inception_weights: local Inception weights file (else ``$VISION_INCEPTION_WEIGHTS``, else
            torch hub's cache; downloaded only with ``download``).
        antialias: Inception's resize to 299 px; False = TF1-compatible bilinear (torch-fidelity, TF).
        batch_size: images per feature-extraction batch, per device.
        devices: devices (processes are launched for more than one; statistics are summed).
        num_nodes: nodes of a multi-node run (launched by torchrun or SLURM).
        accelerator: "auto", "cpu" or "gpu".
        strategy: Lightning strategy ("auto" picks DDP for several devices).
        sampling: sampling config for a checkpoint: a name in configs/sampling/ or a YAML file.
        ref_stats: where to cache (and find) the reference statistics; default under $VISION_FID_CACHE
            or ~/.cache/vision/fid.
        cache: cache the reference statistics at the default place.
        extractor_dtype: Inception's precision, "float32" or "float64".
        seed: seed of KID's subsets and IS's splits.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (at most the smaller set).
        is_splits: Inception Score splits.
        download: download the Inception weights when not found locally (needs internet).
        out: also write the result as JSON to this file.
        progress: show progress bars.
    """
    import lightning as L

    fabric = L.Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy)
    fabric.launch()
    rank, world, device = fabric.global_rank, fabric.world_size, fabric.device
    show = progress and rank == 0
    images = open_images(samples, num_samples, sampling=sampling, device=device, role="samples")
    extractor = build_extractor(features, inception_weights=inception_weights, antialias=antialias,
                                logits=inception_score, dtype=extractor_dtype, name=features_name,
                                download=download).to(device)
    extractor.prepare(images.shape)
    evaluator = FIDEvaluator(extractor, kid=kid, inception_score=inception_score, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, is_splits=is_splits, device=device)
    reference = prepare_reference(evaluator, ref, ref_stats=ref_stats, cache=cache, rank=rank, world=world,
                                  barrier=fabric.barrier, batch_size=batch_size, progress=show)
    add_images(evaluator, images, real=False, rank=rank, world=world, batch_size=batch_size, progress=show,
               desc="sampling + features" if images.note else "sample features")
    settings = extractor.settings()
    result = {
        "label": f"FID ({extractor.label})", "features": extractor.label, "logits": extractor.logits_label,
        "settings": settings,
        "antialias": settings.get("antialias"), "num_samples": images.count, "num_reference": reference.count,
        "samples": images.name, "reference": reference.name, "reference_stats": reference.stats_path,
        "reference_cached": reference.cached, "world_size": world,
        **evaluator.compute(reference.count or 2, images.count, seed),
    }
    if reference.image_shape and tuple(reference.image_shape) != tuple(images.shape):
        reference.notes.append(f"samples are {_shape(images.shape)} but the reference images are "
                               f"{_shape(reference.image_shape)}")
    result["notes"] = reference.notes
    if rank == 0:
        print(format_result(result, images.note))
        if out:
            atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return result


def _shape(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{width}x{height}x{channels}"


def format_result(result: dict[str, Any], note: str = "") -> str:
    """The labelled result lines that ``fid`` prints."""
    settings = result["settings"]
    resize = settings.get("resize", "none")
    head = result["label"] + (f" [antialias={result['antialias']}]" if result["antialias"] is not None else "")
    reference = result["reference"]
    if result["num_reference"]:  # statistics from other tools do not say how many images they summarise
        reference = f"{result['num_reference']:,} of {reference}"
    if result["reference_stats"]:
        reference += f", statistics {'from' if result['reference_cached'] else 'cached in'} {result['reference_stats']}"
    samples = f"generated by {result['samples']} ({note})" if note else f"of {result['samples']}"
    lines = [f"{head}: {result['fid']:.4f}",
             f"  samples: {result['num_samples']:,} {samples}",
             f"  reference: {reference}",
             (f"  features: {settings.get('extractor')} (weights {settings.get('weights')}); resize: {resize}; "
              f"statistics float64; {result['world_size']} process(es)")]
    if "kid" in result:
        lines.append(f"KID ({result['features']}): {result['kid']:.6f} ± {result['kid_std']:.6f} "
                     f"({result['kid_subset_size']}-image subsets)")
    if "inception_score" in result:
        lines.append(f"IS ({result['logits']}): {result['inception_score']:.4f} ± "
                     f"{result['inception_score_std']:.4f}")
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)

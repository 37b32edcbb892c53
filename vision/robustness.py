"""``vision robustness``: classifiers under ImageNet-C style corruption and natural distribution shift.

Checkpoints are rebuilt (``vision.tasks.robustness``), the sets are read or corrupted on the fly
(``vision.data.robustness``, ``vision.corruptions``), a ``RobustnessModule`` scores every image on
one device or many, and ``vision.metrics.robustness`` writes the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms as T

from vision.corruptions.params import COMMON, HOLDOUT
from vision.corruptions.registry import (
    MIN_SIZE,
    check_severity,
    corruption_table,
    resolve_scale,
)
from vision.corruptions.transforms import NAME_SETS
from vision.data.cifar import CIFAR_STATS
from vision.data.digits import load_digits_split
from vision.data.robustness import (
    IMAGENET_C_CROP,
    CIFARCorruptedSplit,
    IndexedDataset,
    evaluation_classes,
    evaluation_folder,
    evaluation_transform,
    imagenet_c_folder,
    imagenet_c_splits,
    imagenet_subset_folder,
    spread_indices,
)
from vision.metrics.corruption import ALEXNET
from vision.metrics.robustness import (
    NATURAL_SHIFT,
    build_report,
    model_entry,
    report_markdown,
    write_report,
)
from vision.tasks.robustness import (
    Classifier,
    Condition,
    EvalSet,
    RobustnessModule,
    load_classifier,
)

CLEAN = "clean"
NAMED_DATA = ("digits", "cifar10", "cifar100")
REPEATABLE = ("ckpt", "names", "corruptions")  # list options without a default to append to


def cli_arguments(argv: Sequence[str]) -> list[str]:
    """Let ``--ckpt A --ckpt B`` (and --names, --corruptions) repeat, as jsonargparse's ``--ckpt+ A --ckpt+ B``.

    jsonargparse reads a list option once, as ``--ckpt [A,B]``; a bracketed list is kept as it is.
    """
    out = list(argv)
    for i, arg in enumerate(out):
        name, sep, value = arg.partition("=")
        if not name.startswith("--") or name[2:].replace("-", "_") not in REPEATABLE:
            continue
        given = value if sep else (out[i + 1] if i + 1 < len(out) else "")
        if not given.startswith("["):
            out[i] = f"{name}+{sep}{value}"
    return out


# ---- inputs ------------------------------------------------------------------------------------------

def corruption_names(spec: Sequence[str] | None, default: Sequence[str]) -> list[str]:
    """Names and group names ("common", "all", "noise", "hold-out", ...) -> corruption names in table order."""
    if spec is None:
        return list(default)
    if isinstance(spec, str):
        spec = [spec]
    names: list[str] = []
    for item in spec:
        if item in NAME_SETS:
            names.extend(NAME_SETS[item])
        elif item in COMMON + HOLDOUT:
            names.append(item)
        else:
            raise ValueError(f"unknown corruption {item!r}; expected a corruption name or one of "
                             f"{', '.join(NAME_SETS)} (known corruptions: {', '.join(COMMON + HOLDOUT)})")
    order = {n: i for i, n in enumerate(COMMON + HOLDOUT)}
    return sorted(dict.fromkeys(names), key=order.__getitem__)


def _check_severities(severities: Sequence[int]) -> tuple[int, ...]:
    values = tuple(severities)
    if not values:
        raise ValueError("severities is empty; expected some of 1, 2, 3, 4, 5")
    for s in values:
        check_severity(s)
    return tuple(sorted({int(s) for s in values}))


def _check_same_input(classifiers: list[Classifier]) -> None:
    """Models compared on one set must share classes and input shape (they see the same pixels)."""
    first = classifiers[0]
    for other in classifiers[1:]:
        if other.num_classes != first.num_classes:
            raise ValueError(f"models with different class counts cannot be compared on one set: {first.path} has "
                             f"{first.num_classes} classes, {other.path} has {other.num_classes}")
        if (other.in_chans, other.img_size) != (first.in_chans, first.img_size):
            raise ValueError(f"models with different inputs cannot share one evaluation: {first.path} takes "
                             f"{first.in_chans}x{first.img_size[0]}x{first.img_size[1]}, {other.path} takes "
                             f"{other.in_chans}x{other.img_size[0]}x{other.img_size[1]}")


def _check_shape(what: str, shape: tuple[int, ...], model: Classifier) -> None:
    expected = (model.in_chans, *model.img_size)
    if tuple(shape) != expected:
        raise ValueError(f"{what} has {'x'.join(map(str, shape))} images but {model.path} takes "
                         f"{'x'.join(map(str, expected))}")


def _digits_seed(classifiers: list[Classifier]) -> int:
    seeds = {c.digits_seed for c in classifiers if c.digits_seed is not None}
    if len(seeds) > 1:
        raise ValueError(f"the models were trained on different digits splits (seeds {sorted(seeds)}): no test set is "
                         "held out from all of them")
    return seeds.pop() if seeds else 0


def clean_dataset(data: str, data_root: str, classifiers: list[Classifier]) -> tuple[Dataset, str, bool]:
    """The clean set as [0, 1] images with labels, its description, and whether labels are ImageNet-1k ids."""
    model = classifiers[0]
    if data == "digits":
        seed = _digits_seed(classifiers)
        images, labels = load_digits_split(seed)[2]
        _check_shape("the digits test split", tuple(images.shape[1:]), model)
        return TensorDataset(images, labels), f"digits test split (scikit-learn, split seed {seed})", False
    if data in ("cifar10", "cifar100"):
        try:
            dataset = CIFAR_STATS[data][2](data_root, train=False, transform=T.ToTensor())
        except RuntimeError:
            raise FileNotFoundError(f"{data} test split not found in {data_root} (expected the extracted "
                                    f"{CIFAR_STATS[data][2].base_folder} folder there; set data_root)") from None
        _check_shape(f"{data}", (3, 32, 32), model)
        return dataset, f"{data} test split ({data_root})", False
    folder = Path(data)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder not found: {folder} (expected an image folder <dir>/<class>/<image>, "
                                f"or one of {', '.join(NAMED_DATA)})")
    dataset = evaluation_folder(folder, model.num_classes, evaluation_transform(model.img_size, model.in_chans))
    h, w = model.img_size
    return dataset, (f"{folder} (Resize {round(min(h, w) * 256 / 224)}, CenterCrop {h}x{w})"), model.num_classes == 1000


def evaluation_scale(scale: str, img_size: tuple[int, int], in_chans: int) -> str:
    """The parameter table on-the-fly corruption uses for these images (after enlarging small ones)."""
    side = min(img_size)
    factor = max(1, math.ceil(MIN_SIZE / side))
    return resolve_scale(scale, torch.empty(1, in_chans, img_size[0] * factor, img_size[1] * factor))


def _released(severities: Sequence[int], exists) -> list[str]:
    """The default for released files: the 15 benchmark corruptions, plus the hold-out ones present."""
    return list(COMMON) + [c for c in HOLDOUT if all(exists(c, s) for s in severities)]


# ---- the command -------------------------------------------------------------------------------------

def robustness(
    ckpt: list[str],
    out: str = "outputs/robustness",
    data: str | None = None,
    data_root: str = "data",
    imagenet_c: str | None = None,
    cifar_c: str | None = None,
    imagenet_r: str | None = None,
    imagenet_a: str | None = None,
    imagenet_sketch: str | None = None,
    imagenet_v2: str | None = None,
    corruptions: list[str] | None = None,
    severities: list[int] = [1, 2, 3, 4, 5],  # noqa: B006 (never mutated; jsonargparse shows it as the default)
    names: list[str] | None = None,
    ema: bool = False,
    seed: int = 0,
    scale: str = "auto",
    max_images: int | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    devices: int | str = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    precision: str = "32-true",
    mean: list[float] | None = None,
    std: list[float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate classifiers under corruption and distribution shift; write JSON, CSV, markdown and a PNG.

    With ``data`` alone, its images are corrupted on the fly on the evaluating device by every
    corruption at every severity (draws seeded per image, so any batch size or device count gives
    the same table; CPU and GPU random streams differ). With ``imagenet_c`` or ``cifar_c`` the
    released files are scored instead, and ``data`` only gives the clean error. Per model: clean
    error, error per corruption and severity, the unnormalised mean error over the 15 benchmark
    corruptions (CIFAR convention), hold-out error, and at ImageNet scale CE, mCE and relative mCE
    against AlexNet; natural-shift accuracy beside clean and corrupted accuracy.

    Args:
        ckpt: classifier checkpoints (``vision fit``); repeat the option for several models.
        out: folder for robustness.json, .csv, .md and .png.
        data: clean set: an image folder ``<dir>/<class>/<image>`` (Resize 256, CenterCrop 224 for
            a 224 px model), "digits" (the embedded test split), "cifar10" or "cifar100" (in data_root).
        data_root: folder holding the CIFAR test split for data=cifar10/cifar100.
        imagenet_c: released ImageNet-C root ``<corruption>/<severity>/<wnid>/<image>`` (CenterCrop
            224 only, no resize).
        cifar_c: released CIFAR-10-C / CIFAR-100-C folder (``<corruption>.npy`` and labels.npy).
        imagenet_r: ImageNet-R folder (scored on its 200 classes).
        imagenet_a: ImageNet-A folder (scored on its 200 classes).
        imagenet_sketch: ImageNet-Sketch folder (1000 wnid folders).
        imagenet_v2: ImageNet-V2 folder (e.g. MatchedFrequency, class folders 0..999).
        corruptions: corruption names or groups (common, all, noise, blur, weather, digital,
            hold-out); default all 19 on the fly, or the 15 plus the hold-out ones present.
        severities: severities to evaluate (1-5).
        names: model names in the report (default: the checkpoint file names).
        ema: evaluate the EMA weights.
        seed: corruption seed for on-the-fly evaluation.
        scale: on-the-fly parameter table: auto (by image size), imagenet or cifar.
        max_images: evaluate only this many images per set, spread evenly (quick checks).
        batch_size: images per batch per device.
        num_workers: data loader processes per device.
        devices: devices per node (an int, or "auto"/-1 for all).
        num_nodes: nodes (multi-node runs start one process per node, e.g. with torchrun or SLURM).
        accelerator: auto, cpu, gpu, ...
        strategy: Lightning strategy, e.g. ddp for several devices.
        precision: Lightning precision (corruptions always run in float32).
        mean: normalisation mean for every model, overriding the checkpoints'.
        std: normalisation std for every model, overriding the checkpoints'.
        progress: show a progress bar.
    """
    ckpts = [ckpt] if isinstance(ckpt, str) else list(ckpt)
    if not ckpts:
        raise ValueError("no checkpoint given: pass --ckpt (once per model)")
    if names is not None and len(names) != len(ckpts):
        raise ValueError(f"got {len(names)} names for {len(ckpts)} checkpoints; give one name per --ckpt")
    severities = _check_severities(severities)
    natural = {"imagenet-r": imagenet_r, "imagenet-a": imagenet_a, "imagenet-sketch": imagenet_sketch,
               "imagenet-v2": imagenet_v2}
    natural = {k: v for k, v in natural.items() if v is not None}
    if imagenet_c is not None and cifar_c is not None:
        raise ValueError("give imagenet_c or cifar_c, not both")
    if data is None and imagenet_c is None and cifar_c is None and not natural:
        raise ValueError("nothing to evaluate: give --data (corrupted on the fly), --imagenet-c, --cifar-c or a "
                         "natural-shift set (--imagenet-r/-a/-sketch/-v2)")
    if scale not in ("auto", "imagenet", "cifar"):
        raise ValueError(f"unknown scale {scale!r}; expected auto, imagenet or cifar")
    chosen = corruption_names(corruptions, ()) if corruptions is not None else None

    classifiers = [load_classifier(path, ema=ema, label=names[i] if names else None,
                                   mean=tuple(mean) if mean else None, std=tuple(std) if std else None)
                   for i, path in enumerate(ckpts)]
    labels = [c.label for c in classifiers]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two models have the same name {labels}; give distinct --names")
    _check_same_input(classifiers)
    model = classifiers[0]
    notes: list[str] = []

    def indexed(dataset: Dataset) -> IndexedDataset:
        return IndexedDataset(dataset, spread_indices(len(dataset), max_images))

    sets: list[EvalSet] = []
    clean_imagenet_labels = False
    source, table, description = None, None, None
    if data is not None:
        clean, description, clean_imagenet_labels = clean_dataset(data, data_root, classifiers)
        conditions = [Condition(CLEAN)]
        if imagenet_c is None and cifar_c is None:
            source = "on the fly"
            table = evaluation_scale(scale, model.img_size, model.in_chans)
            names_fly = COMMON + HOLDOUT if chosen is None else tuple(chosen)
            conditions += [Condition(f"{c}/{s}", c, s, on_the_fly=True) for c in names_fly for s in severities]
            notes.append(f"corrupted on the fly with the {table} parameter table, draws seeded per image (seed {seed}) "
                         "on the evaluating device (any device count or batch size gives this table; CPU and GPU "
                         "random streams differ), stored as 8 bits like the released files (no JPEG-85 step): "
                         "comparable between the models here, not with published ImageNet-C / CIFAR-C numbers")
            if min(model.img_size) < MIN_SIZE:
                factor = math.ceil(MIN_SIZE / min(model.img_size))
                notes.append(f"{model.img_size[0]}x{model.img_size[1]} images are enlarged {factor}x (nearest) to "
                             f"be corrupted and averaged back over {factor}x{factor} blocks")
        if clean_imagenet_labels:
            conditions += [Condition(f"{CLEAN}@{name}", subset=name) for name in ("imagenet-r", "imagenet-a")
                           if name in natural]
        sets.append(EvalSet(CLEAN, indexed(clean), tuple(conditions)))

    if imagenet_c is not None:
        source, table = "ImageNet-C (released files)", "imagenet"
        root = Path(imagenet_c)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageNet-C folder not found: {root} (expected <root>/<corruption>/<severity>/"
                                    "<class>/<image>)")
        chosen = chosen if chosen is not None else _released(severities, lambda c, s: (root / c / str(s)).is_dir())
        steps: list[Any] = [T.CenterCrop(IMAGENET_C_CROP)]
        if model.img_size != (IMAGENET_C_CROP, IMAGENET_C_CROP):
            steps.append(T.Resize(model.img_size))
            notes.append(f"ImageNet-C crops resized from 224 to {model.img_size[0]}x{model.img_size[1]}: the models' "
                         "input size (the protocol feeds 224 px crops straight in)")
        if model.in_chans == 1:
            steps.append(T.Grayscale(1))
        transform = T.Compose(steps + [T.ToTensor()])
        for c, s, path in imagenet_c_splits(root, chosen, severities):
            folder = imagenet_c_folder(root, c, s, transform=transform,
                                       classes=evaluation_classes(path, model.num_classes))
            sets.append(EvalSet(f"imagenet-c/{c}/{s}", indexed(folder), (Condition(f"{c}/{s}", c, s),)))

    if cifar_c is not None:
        source, table = "CIFAR-C (released files)", "cifar"
        root = Path(cifar_c)
        if not root.is_dir():
            raise FileNotFoundError(f"CIFAR-C folder not found: {root} "
                                    "(expected <root>/<corruption>.npy and labels.npy)")
        chosen = chosen if chosen is not None else _released(severities, lambda c, s: (root / f"{c}.npy").is_file())
        steps = []
        if model.img_size != (32, 32):
            steps.append(T.Resize(model.img_size))
            notes.append(f"CIFAR-C images resized from 32 to {model.img_size[0]}x{model.img_size[1]}: the models' "
                         "input size")
        if model.in_chans == 1:
            steps.append(T.Grayscale(1))
        transform = T.Compose(steps) if steps else None
        splits = [CIFARCorruptedSplit(root, c, s, transform) for c in chosen for s in severities]  # checks all first
        for split in splits:
            c, s = split.corruption, split.severity
            sets.append(EvalSet(f"cifar-c/{c}/{s}", indexed(split), (Condition(f"{c}/{s}", c, s),)))

    for name, root in natural.items():
        transform = evaluation_transform(model.img_size, model.in_chans)
        if name in ("imagenet-r", "imagenet-a"):
            if model.num_classes != 1000:
                raise ValueError(f"{name} is scored on 200 of the 1000 ImageNet classes; the models have "
                                 f"{model.num_classes} outputs")
            dataset = imagenet_subset_folder(root, name, transform=transform)
            condition = Condition(name, subset=name, subset_labels=True)
        else:
            dataset = evaluation_folder(root, model.num_classes, transform)
            condition = Condition(name)
        sets.append(EvalSet(name, indexed(dataset), (condition,)))

    module = RobustnessModule([c.model for c in classifiers], sets, seed=seed, scale=table or "auto")
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        precision=precision, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress, default_root_dir=out, inference_mode=True)
    loaders = [DataLoader(s.dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                          pin_memory=isinstance(trainer.accelerator, CUDAAccelerator)) for s in sets]
    trainer.test(module, dataloaders=loaders, verbose=False)

    baseline = ALEXNET if table == "imagenet" else None
    if baseline is not None:
        notes.append(f"CE and mCE normalised by {baseline.label} ({baseline.source.split(':')[0]})")
    elif table == "cifar":
        notes.append("CIFAR-scale corruptions: the summary is the unnormalised mean error (CIFAR-C convention); "
                     "AlexNet CE/mCE are defined at ImageNet scale only")
    evaluated = sorted({cond.corruption for s in sets for cond in s.conditions if cond.corruption})
    entries = [model_entry(c.describe(), *_scores(module.results, sets, m), baseline=baseline)
               for m, c in enumerate(classifiers)]
    what = description or source or ", ".join(natural)
    parts = [f"{len(classifiers)} model{'s' if len(classifiers) > 1 else ''}",
             f"clean set: {description} ({len(sets[0].dataset)} images)" if data is not None else "no clean set",
             f"corruptions: {source}" if source else "no corruptions"]
    if natural:
        parts.append("natural shift: " + ", ".join(natural))
    settings = {
        "description": "; ".join(parts) + ".",
        "data": data, "clean_set": description, "corruption_source": source, "parameter_table": table,
        "imagenet_c": imagenet_c, "cifar_c": cifar_c, "natural_shift": natural, "severities": list(severities),
        "seed": seed, "max_images": max_images, "world_size": trainer.world_size, "precision": precision,
        "images": {s.name: len(s.dataset) for s in sets}, "notes": notes,
    }
    rows = [row for row in corruption_table() if row["name"] in evaluated]
    report = build_report(f"Robustness: {what}", settings, entries, rows)
    if trainer.is_global_zero:
        paths = write_report(report, out)
        print(report_markdown(report))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return report


def _scores(results: Mapping[str, torch.Tensor], sets: list[EvalSet], m: int):
    """Model ``m``'s (clean, corruption errors, natural-shift accuracies) from the per-image tables."""

    def rate(table: torch.Tensor, k: int) -> tuple[float | None, int]:
        column = table[:, m, k]
        scored = int((column >= 0).sum())
        # None, not NaN: e.g. a clean set with no image of ImageNet-A's 200 classes (JSON has no NaN)
        return (float((column == 1).sum()) / scored if scored else None), scored

    clean, errors, natural = None, {}, {}
    for spec in sets:
        table = results[spec.name]
        for k, cond in enumerate(spec.conditions):
            accuracy, images = rate(table, k)
            if accuracy is None and (cond.key == CLEAN or cond.corruption is not None):
                raise ValueError(f"{spec.name} has no images to score")
            if cond.key == CLEAN:
                clean = (1 - accuracy, images)
            elif cond.corruption is not None:
                errors[(cond.corruption, cond.severity)] = (1 - accuracy, images)
            elif cond.key.startswith(f"{CLEAN}@"):
                name = cond.key.split("@", 1)[1]
                natural.setdefault(name, {}).update(clean_accuracy_same_classes=accuracy,
                                                    clean_images_same_classes=images)
            elif cond.key in NATURAL_SHIFT:
                natural.setdefault(cond.key, {}).update(accuracy=accuracy, images=images)
    return clean, errors, natural


def digits_robustness(
    ckpts: Mapping[str, str] | Sequence[str],
    out: str = "outputs/demo/robustness",
    corruptions: list[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    batch_size: int = 128,
    devices: int = 1,
    accelerator: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Score digits classifiers on the digits test split under every corruption and severity; write the report.

    Uses the CIFAR-10-C (32 px) parameter table: it is the one made for the smallest images, and
    the 8x8 digits are 4x4 block counts of 32x32 bitmaps, so each image is enlarged 4x (nearest),
    corrupted at 32 px, and averaged back over the same blocks. (The ImageNet table is made for
    224 px; at 32 px it is far harsher than CIFAR-10-C.) The summary number is therefore the
    unnormalised mean error of the CIFAR-C convention: AlexNet CE/mCE exist only for ImageNet scale.

    Args:
        ckpts: {name: checkpoint} (e.g. {"mhseednorm": ".../digits_mhseednorm.ckpt"}) or a list of checkpoints.
        out: folder for robustness.json, .csv, .md and .png.
        corruptions: names or groups (default all 19: the 15 benchmark ones and the 4 hold-out ones).
        severities: severities to evaluate.
        seed: corruption seed.
        batch_size: images per batch.
        devices: devices to evaluate on.
        accelerator: cpu, gpu or auto.
        progress: show a progress bar.

    Returns the report dict (also written as ``out/robustness.json``).
    """
    if isinstance(ckpts, Mapping):
        names, paths = list(ckpts), [str(p) for p in ckpts.values()]
    else:
        names, paths = None, [str(p) for p in ckpts]
    return robustness(paths, out=out, data="digits", corruptions=corruptions, severities=list(severities),
                      names=names, seed=seed, scale="cifar", batch_size=batch_size, num_workers=0, devices=devices,
                      accelerator=accelerator, progress=progress)

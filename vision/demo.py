"""The main job: SeeDNorm against LayerNorm on the embedded digits data, end to end on a CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from vision.data.digits import DigitsDataModule
from vision.tasks import ClassificationModule
from vision.files import atomic_write

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DIGITS_CONFIG = CONFIGS / "classification" / "vit_micro_digits.yaml"
DIGITS_DIT_CONFIG = CONFIGS / "diffusion" / "dit_mi2_digits.yaml"


def _config(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the demo runs from a source checkout "
                                "(git clone, then pip install -e .)")
    return yaml.safe_load(path.read_text())


def digits_recipe() -> dict:
    """The model arguments of the shipped digits config (the demo trains exactly that recipe)."""
    return _config(DIGITS_CONFIG)["model"]["init_args"]


def train_digits_classifier(norm: str, epochs: int, out: Path, seed: int = 0) -> tuple[ClassificationModule, dict]:
    """Train the digits ViT with ``norm``; returns the module and its test metrics."""
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(batch_size=64, seed=seed)
    recipe = {**digits_recipe(), "norm": norm}
    module = ClassificationModule(**recipe)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out), enable_checkpointing=False)
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    result = trainer.test(module, data, verbose=False)[0]
    trainer.save_checkpoint(out / f"digits_{norm}.ckpt")
    return module, {"norm": norm, "test_acc1": result["test/acc1"], "test_loss": result["test/loss"],
                    "epochs": epochs, "train_seconds": seconds}


def train_digits_generator(norm: str, steps: int, out: Path, seed: int = 0):
    """Train the digits DiT of ``configs/diffusion/dit_mi2_digits.yaml`` with ``norm``."""
    from vision.tasks import GenerationModule

    config = _config(DIGITS_DIT_CONFIG)
    L.seed_everything(seed, verbose=False)
    module = GenerationModule(**{**config["model"]["init_args"], "norm": norm, "sample_every_n_steps": 0})
    data = DigitsDataModule(**{**config["data"]["init_args"], "seed": seed})
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=str(out))
    start = time.perf_counter()
    trainer.fit(module, data)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(out / f"dit_{norm}.ckpt")
    return module, seconds


def digits_judge(seed: int = 0):
    """An SVM trained on the real training digits (about 98% on the real test split): the judge of samples."""
    from sklearn.svm import SVC

    from vision.data.digits import load_digits_split

    (images, labels), _, (test_images, test_labels) = load_digits_split(seed)
    judge = SVC(gamma="scale").fit(images.flatten(1).numpy(), labels.numpy())
    judge.real_accuracy = judge.score(test_images.flatten(1).numpy(), test_labels.numpy())
    return judge


def sample_agreement(module, judge, per_class: int = 50, seed: int = 0) -> float:
    """Fraction of class-conditional samples (config's sampler, steps, guidance) the judge reads as asked."""
    labels = torch.arange(module.hparams.num_classes).repeat_interleave(per_class)
    images = (module.generate(labels, seed=seed) + 1) / 2
    return float((judge.predict(images.flatten(1).numpy()) == labels.numpy()).mean())


def _write_report(folder: Path, name: str, rows: list[dict], text: str) -> None:
    atomic_write(folder / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    atomic_write(folder / f"{name}.md", lambda tmp: Path(tmp).write_text(text + "\n"))


def demo(out: str = "outputs/demo", epochs: int = 60, dit_steps: int | None = None,
         norms: tuple[str, ...] = ("mhseednorm", "layernorm"), seed: int = 0) -> dict:
    """Compare norms on the embedded digits data on the CPU: classifiers, robustness, generators.

    For each norm: train the digits ViT and report its test accuracy; score the classifiers under
    every corruption and severity (``robustness/robustness.{md,png}``); train the digits DiT, write
    a grid of samples per class (``dit_<norm>_samples.png``), report how often an SVM trained on
    real digits reads a sample as the class that was asked for, and the FID of 500 samples against
    the real training digits in the features of the first norm's digits classifier.

    Args:
        out: folder for checkpoints, sample grids and reports (``*.json``, ``*.md``).
        epochs: ViT training epochs per model (60 take about a minute each on 2 cores).
        dit_steps: DiT training steps per model (default: the digits DiT config's max_steps).
        norms: norms to compare.
        seed: data split, shuffling, initialization and sampling seed.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for norm in norms:
        print(f"training the digits ViT with {norm} for {epochs} epochs ...", flush=True)
        rows.append(train_digits_classifier(norm, epochs, folder, seed)[1])
    table = ["| norm | test top-1 | train time |", "|---|---|---|"]
    table += [f"| {r['norm']} | {r['test_acc1']:.4f} | {r['train_seconds']:.0f} s |" for r in rows]
    text = "Digits classification (scikit-learn, 360 test images), vit_micro_patch2_8:\n\n" + "\n".join(table)
    print("\n" + text + "\n", flush=True)
    _write_report(folder, "classification", rows, text)

    from vision.robustness import digits_robustness

    print("scoring the classifiers under 19 corruptions x 5 severities ...", flush=True)
    robustness = digits_robustness({n: str(folder / f"digits_{n}.ckpt") for n in norms}, str(folder / "robustness"),
                                   seed=seed)

    from vision.metrics.fid import fid

    steps = dit_steps or _config(DIGITS_DIT_CONFIG)["trainer"]["max_steps"]
    judge = digits_judge(seed)
    features = folder / f"digits_{norms[0]}.ckpt"
    generation = []
    for norm in norms:
        print(f"training the digits DiT with {norm} for {steps} steps ...", flush=True)
        module, seconds = train_digits_generator(norm, steps, folder, seed)
        module.write_grid(folder / f"dit_{norm}_samples.png", classes=10, per_class=10)
        score = fid(samples=str(folder / f"dit_{norm}.ckpt"), ref="digits", features=str(features),
                    features_name="digits", sampling="digits", progress=False)
        generation.append({"norm": norm, "steps": steps, "train_seconds": seconds,
                           "samples_read_as_asked": sample_agreement(module, judge, seed=seed),
                           "fid_digits_features": score["fid"]})
    table = ["| norm | samples read as the requested class | FID (digits features) | train time |",
             "|---|---|---|---|"]
    table += [f"| {r['norm']} | {r['samples_read_as_asked']:.3f} | {r['fid_digits_features']:.2f} | "
              f"{r['train_seconds']:.0f} s |" for r in generation]
    text = (f"Digits generation, DiT-Mi/2, {steps} steps, DDIM 50 steps, guidance 2.0. Judge: an SVM trained on "
            f"real digits ({judge.real_accuracy:.3f} on the real test split), 50 samples per class. FID: 500 "
            f"samples against the 1,077 real training digits in the features of the {norms[0]} digits "
            f"classifier:\n\n" + "\n".join(table))
    print("\n" + text, flush=True)
    _write_report(folder, "generation", generation, text)
    return {"classification": rows, "robustness": robustness, "generation": generation}

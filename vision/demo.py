"""The main job: SeeDNorm against LayerNorm on the embedded digits data, end to end on a CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import yaml

from vision.data.digits import DigitsDataModule
from vision.tasks import ClassificationModule
from vision.files import atomic_write

DIGITS_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "classification" / "vit_micro_digits.yaml"


def digits_recipe() -> dict:
    """The model arguments of the shipped digits config (the demo trains exactly that recipe)."""
    if not DIGITS_CONFIG.is_file():
        raise FileNotFoundError(f"{DIGITS_CONFIG} not found: the demo runs from a source checkout "
                                "(git clone, then pip install -e .)")
    return yaml.safe_load(DIGITS_CONFIG.read_text())["model"]["init_args"]


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


def demo(out: str = "outputs/demo", epochs: int = 60, norms: tuple[str, ...] = ("mhseednorm", "layernorm"),
         seed: int = 0) -> list[dict]:
    """Train the digits ViT with each norm on the CPU and print their test accuracy side by side.

    Args:
        out: folder for checkpoints and the results (``classification.json``, ``classification.md``).
        epochs: training epochs per model (60 takes about a minute each on 2 cores).
        norms: norms to compare.
        seed: data split, shuffling and initialization seed.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for norm in norms:
        print(f"training the digits ViT with {norm} for {epochs} epochs ...", flush=True)
        rows.append(train_digits_classifier(norm, epochs, folder, seed)[1])
    table = ["| norm | test top-1 | train time |", "|---|---|---|"]
    table += [f"| {r['norm']} | {r['test_acc1']:.4f} | {r['train_seconds']:.0f} s |" for r in rows]
    text = "\n".join(table)
    print("\nDigits (scikit-learn, 360 test images), vit_micro_patch2_8:\n" + text)
    atomic_write(folder / "classification.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2)))
    atomic_write(folder / "classification.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    return rows

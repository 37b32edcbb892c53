"""`vision robustness`: per-image seeded corruption, the evaluation module, the report files, DDP equality."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from vision.corruptions import ALL, COMMON, HOLDOUT, Corrupt, corrupt, to_uint8
from vision.corruptions.indexed import corrupt_for_evaluation, corrupt_indexed, image_seed
from vision.data.cifar import CIFAR_STATS
from vision.data.digits import load_digits_split
from vision.data.robustness import imagenet_classes, imagenet_subset_indices, imagenet_subset_synsets
from vision.metrics.corruption import ALEXNET, summarize_corruption_errors
from vision.metrics.robustness import (
    build_report,
    group_curves,
    model_entry,
    report_markdown,
    summarize_errors,
    write_report,
)
from vision.robustness import cli_arguments, robustness
from vision.tasks import ClassificationModule

REPO = Path(__file__).resolve().parent.parent
DIGITS_DATA = {"batch_size": 64, "num_workers": 0, "seed": 0, "shift": 1, "normalize": True}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one intra-op thread is several times faster than two contending ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(path: Path, module: ClassificationModule, datamodule: dict | None = None) -> str:
    """What Trainer.save_checkpoint writes and evaluation reads: weights, hyperparameters, data hyperparameters."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    if datamodule is not None:
        checkpoint["datamodule_hyper_parameters"] = datamodule
    torch.save(checkpoint, path)
    return str(path)


def _tiny(model: str, num_classes: int, norm: str = "layernorm", **kwargs) -> ClassificationModule:
    return ClassificationModule(model=model, norm=norm, num_classes=num_classes, drop_path_rate=0.0,
                                model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 1, **kwargs})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Two one-block digits ViTs (multihead SeeDNorm, LayerNorm), trained for 200 steps, as checkpoints."""
    folder = tmp_path_factory.mktemp("digits")
    (x, y), _, _ = load_digits_split(0)
    out = {}
    for norm in ("mhseednorm", "layernorm"):
        torch.manual_seed(0)
        module = ClassificationModule(model="vit_micro_patch2_8", norm=norm, num_classes=10, drop_path_rate=0.0,
                                      model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
        optimizer = torch.optim.Adam(module.model.parameters(), lr=5e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            idx = torch.randint(len(x), (64,), generator=g)
            loss = torch.nn.functional.cross_entropy(module.model((x[idx] - 0.5) / 0.5), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        module.eval()
        out[norm] = (_save(folder / f"digits_{norm}.ckpt", module, DIGITS_DATA), module.model)
    return out


def _digits_loop(model: torch.nn.Module, conditions, seed: int = 0) -> dict:
    """Errors by a plain loop: each image alone through the public ``corrupt``, 4x enlarged by hand."""
    _, _, (x, y) = load_digits_split(0)
    errors = {}
    with torch.no_grad():
        for cond in conditions:
            images = []
            for i in range(len(x)):
                image = x[i:i + 1]
                if cond != "clean":
                    big = image.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
                    big = corrupt(big, cond[0], cond[1], scale="cifar", seed=image_seed(seed, cond[0], cond[1], i))
                    image = (to_uint8(big).float() / 255).reshape(1, 1, 8, 4, 8, 4).mean(dim=(3, 5))
                images.append(image)
            predictions = model((torch.cat(images) - 0.5) / 0.5).argmax(dim=1)
            errors[cond] = int((predictions != y).sum()) / len(y)
    return errors


# ---- per-image seeded corruption -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_indexed_corruption_is_per_image_and_batch_independent(name):
    x = torch.rand(3, 3, 32, 32)
    indices = [7, 0, 12]
    batch = corrupt_indexed(x, name, 3, indices, seed=5)
    for i, k in enumerate(indices):  # each image = the library on that image alone, seeded by its index
        alone = corrupt(x[i:i + 1], name, 3, seed=image_seed(5, name, 3, k))
        assert torch.equal(batch[i:i + 1], alone), name
    order = [2, 0, 1]  # another batch composition: the same images come out
    assert torch.equal(corrupt_indexed(x[order], name, 3, [indices[i] for i in order], seed=5), batch[order])
    if get_random(name):
        assert not torch.equal(corrupt_indexed(x, name, 3, indices, seed=6), batch)


def get_random(name: str) -> bool:
    from vision.corruptions import CORRUPTIONS

    return CORRUPTIONS[name].random


def test_small_images_are_corrupted_at_32_px_and_averaged_back():
    x = torch.rand(4, 1, 8, 8)
    out = corrupt_for_evaluation(x, "fog", 2, [0, 1, 2, 3], seed=1, scale="cifar")
    big = corrupt_indexed(x.repeat_interleave(4, 2).repeat_interleave(4, 3), "fog", 2, [0, 1, 2, 3], seed=1,
                          scale="cifar")
    assert out.shape == x.shape
    torch.testing.assert_close(out, (to_uint8(big).float() / 255).reshape(4, 1, 8, 4, 8, 4).mean(dim=(3, 5)),
                               rtol=0, atol=1e-6)
    # Contrast leaves a constant image alone and 8 bits store 0 and 1 exactly: the enlargement and
    # block average add nothing of their own.
    flat = torch.cat([torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)])
    assert torch.equal(corrupt_for_evaluation(flat, "contrast", 5, [0, 1], scale="cifar"), flat)
    with pytest.raises(ValueError, match="need one index per image; got 3 indices for 4 images"):
        corrupt_indexed(torch.rand(4, 3, 32, 32), "fog", 1, [0, 1, 2])


# ---- the digits report ------------------------------------------------------------------------------

def test_digits_report_files_match_a_plain_loop_for_two_models(digits, tmp_path):
    conditions = [("contrast", 1), ("contrast", 5), ("gaussian_noise", 5), ("frost", 3), ("saturate", 4)]
    ckpts = {norm: path for norm, (path, _) in digits.items()}
    report = robustness(list(ckpts.values()), out=str(tmp_path), data="digits", names=list(ckpts),
                        corruptions=["contrast", "gaussian_noise", "frost", "saturate"], severities=[1, 3, 4, 5],
                        batch_size=50, num_workers=0, accelerator="cpu", progress=False)
    written = json.loads((tmp_path / "robustness.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert [m["label"] for m in written["models"]] == ["mhseednorm", "layernorm"]
    rows = list(csv.DictReader((tmp_path / "robustness.csv").open()))
    markdown = (tmp_path / "robustness.md").read_text()
    for entry in written["models"]:
        model = digits[entry["label"]][1]
        expected = _digits_loop(model, ["clean"] + conditions)
        assert entry["clean"]["error"] == pytest.approx(expected["clean"], abs=1e-12)
        assert entry["clean"]["images"] == 360 and 0.05 < expected["clean"] < 0.7  # trained, not perfect
        for c, s in conditions:
            assert entry["errors"][c][str(s)] == pytest.approx(expected[(c, s)], abs=1e-12), (entry["label"], c, s)
            row = next(r for r in rows if r["model"] == entry["label"] and r["metric"] == "error"
                       and r["condition"] == c and r["severity"] == str(s))
            assert float(row["value"]) == entry["errors"][c][str(s)] and row["images"] == "360"
        summary = entry["corruption_summary"]
        common = [entry["errors"][c][str(s)] for c in ("gaussian_noise", "frost", "contrast") for s in (1, 3, 4, 5)]
        assert summary["mean_corruption_error"] == pytest.approx(sum(common) / 12)
        assert summary["holdout_error"] == pytest.approx(sum(entry["errors"]["saturate"].values()) / 4)
        assert summary["mce"] is None and summary["baseline"] is None  # CIFAR scale: no AlexNet
        line = next(r for r in markdown.splitlines() if r.startswith(f"| {entry['label']} |"))
        assert f"{100 * expected['clean']:.1f}" in line and f"{100 * summary['mean_corruption_error']:.1f}" in line
    # contrast at severity 5 (factor 0.15) hurts both models more than severity 1 (0.75)
    assert all(m["errors"]["contrast"]["5"] > m["errors"]["contrast"]["1"] for m in written["models"])
    for entry in written["models"]:  # the plotted points: contrast is the only "digital" corruption here
        curves = group_curves(entry)
        assert curves["digital"] == {s: entry["errors"]["contrast"][str(s)] for s in (1, 3, 4, 5)}
        assert curves["noise"][5] == entry["errors"]["gaussian_noise"]["5"] and "blur" not in curves
    with Image.open(tmp_path / "robustness.png") as png:
        assert png.format == "PNG" and png.size[0] > 3 * png.size[1] / 2  # one panel per group, side by side
    assert "cifar parameter table" in json.dumps(written["settings"]["notes"])


def test_on_the_fly_results_do_not_depend_on_batch_size_and_repeat(digits, tmp_path):
    path = digits["layernorm"][0]
    kwargs = dict(data="digits", corruptions=["glass_blur", "fog", "impulse_noise"], severities=[2], max_images=60,
                  num_workers=0, accelerator="cpu", progress=False)
    a = robustness([path], out=str(tmp_path / "a"), batch_size=7, **kwargs)["models"][0]
    b = robustness([path], out=str(tmp_path / "b"), batch_size=60, **kwargs)["models"][0]
    c = robustness([path], out=str(tmp_path / "c"), batch_size=60, seed=1, **kwargs)["models"][0]
    assert a["errors"] == b["errors"] and a["clean"] == b["clean"] and a["images"]["fog"]["2"] == 60
    # The per-image tables, not just their means: same corrupted pixels for every batch size.
    x = load_digits_split(0)[2][0][:60]
    whole = corrupt_for_evaluation(x, "fog", 2, range(60), scale="cifar")
    parts = torch.cat([corrupt_for_evaluation(x[i:i + 7], "fog", 2, range(i, min(i + 7, 60)), scale="cifar")
                       for i in range(0, 60, 7)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, corrupt_for_evaluation(x, "fog", 2, range(60), seed=1, scale="cifar"))
    assert c["clean"] == a["clean"]


DDP_SCRIPT = """
import json, sys
import torch
from vision.robustness import robustness

if __name__ == "__main__":
    out, devices, ckpts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    robustness(ckpts, out=out, data="digits", corruptions=["fog", "shot_noise", "motion_blur"], severities=[1, 4],
               max_images=101, batch_size=16, num_workers=0, accelerator="cpu", devices=devices,
               strategy="ddp" if devices > 1 else "auto", progress=False)
"""


def test_ddp_with_two_processes_gives_the_one_process_table(digits, tmp_path):
    script = tmp_path / "evaluate.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    ckpts = [digits["mhseednorm"][0], digits["layernorm"][0]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ddp"), "2", *ckpts], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "ddp" / "robustness.json").read_text())
    one = robustness(ckpts, out=str(tmp_path / "one"), data="digits", corruptions=["fog", "shot_noise", "motion_blur"],
                     severities=[1, 4], max_images=101, batch_size=16, num_workers=0, accelerator="cpu",
                     progress=False)
    one = json.loads(json.dumps(one))
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    # 101 images over 2 ranks: the sampler repeats one, which the gathered positions remove
    assert [m["clean"]["images"] for m in two["models"]] == [101, 101]
    assert two["models"] == one["models"]
    assert (tmp_path / "ddp" / "robustness.md").read_text() == (tmp_path / "one" / "robustness.md").read_text()


# ---- released files: ImageNet-C folders, CIFAR-C arrays -----------------------------------------------

def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagenet_c_folders_are_cropped_not_resized(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["cls_a", "cls_b", "cls_c"]
    splits = [("clean", None)] + [(c, s) for c in ("fog", "contrast") for s in (1, 2)]
    for c, s in splits:
        folder = tmp_path / "val" if c == "clean" else tmp_path / "inc" / c / str(s)
        for wnid in classes:
            for k in range(2):  # a random colour and a little noise: a random ViT tells colours apart
                colour = rng.integers(20, 236, 3)
                _png(folder / wnid / f"{k}.png", (colour + rng.integers(-20, 20, (240, 250, 3))).astype(np.uint8))
    torch.manual_seed(3)
    module = _tiny("vit_tiny_patch16_224", 3, global_pool="avg")
    with torch.no_grad():
        module.model.head.weight.normal_(0, 1)
    ckpt = _save(tmp_path / "tiny.ckpt", module, {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD})
    report = robustness([ckpt], out=str(tmp_path / "out"), data=str(tmp_path / "val"), imagenet_c=str(tmp_path / "inc"),
                        corruptions=["fog", "contrast"], severities=[1, 2], batch_size=4, num_workers=0,
                        accelerator="cpu", progress=False)
    entry = report["models"][0]
    normalize = T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    predictions = []
    with torch.no_grad():
        for c, s in splits:
            folder = tmp_path / "val" if c == "clean" else tmp_path / "inc" / c / str(s)
            wrong = 0
            for label, wnid in enumerate(classes):
                for k in range(2):
                    array = np.asarray(Image.open(folder / wnid / f"{k}.png"))
                    if c == "clean":  # the source protocol: Resize 256, CenterCrop 224
                        x = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(Image.fromarray(array))
                    else:  # released files: CenterCrop 224 only
                        x = torch.from_numpy(array[8:232, 13:237].copy()).permute(2, 0, 1).float() / 255
                    prediction = int(module.model(normalize(x)[None]).argmax())
                    predictions.append(prediction)
                    wrong += prediction != label
            error = wrong / 6
            if c == "clean":
                assert entry["clean"]["error"] == pytest.approx(error)
            else:
                assert entry["errors"][c][str(s)] == pytest.approx(error), (c, s)
    assert len(set(predictions)) > 1  # the check can tell labels apart
    assert report["settings"]["parameter_table"] == "imagenet"
    assert entry["corruption_summary"]["ce"] is None and entry["corruption_summary"]["mce"] is None  # 2 of 15
    assert entry["normalization"] == "training datamodule (mean/std)"


def test_cifar_c_arrays(tmp_path):
    rng = np.random.default_rng(1)
    n = 8
    labels = np.arange(n) % 10
    for c in ("fog", "contrast"):
        np.save(tmp_path / f"{c}.npy", rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.tile(labels, 5).astype(np.uint8))
    torch.manual_seed(0)
    module = _tiny("vit_tiny_patch4_32", 10)
    ckpt = _save(tmp_path / "tiny.ckpt", module, {"dataset": "cifar10", "recipe": "classification"})
    report = robustness([ckpt], out=str(tmp_path / "out"), cifar_c=str(tmp_path), corruptions=["fog", "contrast"],
                        batch_size=3, num_workers=0, accelerator="cpu", progress=False)
    entry = report["models"][0]
    mean, std = (torch.tensor(v)[:, None, None] for v in CIFAR_STATS["cifar10"][:2])
    errors = []
    with torch.no_grad():
        for c in ("fog", "contrast"):
            array = np.load(tmp_path / f"{c}.npy")
            for s in range(1, 6):
                x = torch.from_numpy(array[(s - 1) * n:s * n]).permute(0, 3, 1, 2).float() / 255
                error = float((module.model((x - mean) / std).argmax(1).numpy() != labels).mean())
                assert entry["errors"][c][str(s)] == pytest.approx(error)
                errors.append(error)
    summary = entry["corruption_summary"]
    assert summary["mean_corruption_error"] == pytest.approx(sum(errors) / 10) and summary["mce"] is None
    assert entry["clean"] is None and report["settings"]["parameter_table"] == "cifar"
    with pytest.raises(FileNotFoundError) as info:  # default: all 15, which this folder lacks
        robustness([ckpt], out=str(tmp_path / "out"), cifar_c=str(tmp_path), accelerator="cpu", progress=False)
    assert "gaussian_noise.npy" in str(info.value) and "\n" not in str(info.value)


# ---- natural shift: the 200-class masks of ImageNet-R/-A, numbered V2 folders -----------------------

def test_imagenet_r_a_are_scored_on_their_200_classes(tmp_path):
    r_idx, a_idx = imagenet_subset_indices("imagenet-r").tolist(), imagenet_subset_indices("imagenet-a").tolist()
    wnids = imagenet_classes()
    outside = 5  # in neither subset: the overall argmax, wrong for every R/A image
    assert outside not in r_idx and outside not in a_idx
    r_hit = next(i for i in r_idx if i not in a_idx)
    a_hit = next(i for i in a_idx if i not in r_idx)
    r_miss = next(i for i in r_idx if i not in (r_hit, a_hit))
    neither = next(i for i in range(1000) if i not in r_idx and i not in a_idx and i != outside)
    torch.manual_seed(0)
    module = _tiny("vit_tiny_patch16_224", 1000)
    with torch.no_grad():  # logits = the head's bias: the prediction is fixed whatever the image
        module.model.head.weight.zero_()
        module.model.head.bias.zero_()
        module.model.head.bias[[outside, a_hit, r_hit]] = torch.tensor([5.0, 4.0, 3.0])
    ckpt = _save(tmp_path / "in1k.ckpt", module)
    image = np.full((40, 48, 3), 128, dtype=np.uint8)
    for wnid, count in ((wnids[r_hit], 2), (wnids[r_miss], 1)):  # ImageNet-R: 2 of 3 right within the 200
        for k in range(count):
            _png(tmp_path / "r" / wnid / f"{k}.png", image)
    _png(tmp_path / "a" / wnids[a_hit] / "0.png", image)  # ImageNet-A: 1 of 1 right within its 200
    _png(tmp_path / "val" / wnids[r_hit] / "0.png", image)  # clean: an R class ...
    _png(tmp_path / "val" / wnids[neither] / "0.png", image)  # ... and a class in neither list
    for folder, count in (("5", 2), ("7", 1)):  # ImageNet-V2 numbers its class folders
        for k in range(count):
            _png(tmp_path / "v2" / folder / f"{k}.png", image)
    _png(tmp_path / "sketch" / wnids[outside] / "0.png", image)
    report = robustness([ckpt], out=str(tmp_path / "out"), data=str(tmp_path / "val"), imagenet_r=str(tmp_path / "r"),
                        imagenet_a=str(tmp_path / "a"), imagenet_v2=str(tmp_path / "v2"),
                        imagenet_sketch=str(tmp_path / "sketch"), corruptions=["contrast"], severities=[1],
                        batch_size=2, num_workers=0, accelerator="cpu", progress=False)
    entry = report["models"][0]
    shift = entry["natural_shift"]
    assert shift["imagenet-r"]["accuracy"] == pytest.approx(2 / 3) and shift["imagenet-r"]["images"] == 3
    assert shift["imagenet-a"]["accuracy"] == 1.0
    # unmasked, every image would be called class 5: 0 % on R and A
    assert entry["clean"]["error"] == 1.0  # 1000-way: both clean images -> class 5
    assert shift["imagenet-r"]["clean_accuracy_same_classes"] == 1.0  # only the R-class image, scored on 200
    assert shift["imagenet-r"]["clean_images_same_classes"] == 1
    # no clean image belongs to ImageNet-A's classes: no number rather than a made-up one
    assert shift["imagenet-a"]["clean_accuracy_same_classes"] is None
    assert shift["imagenet-a"]["clean_images_same_classes"] == 0
    assert shift["imagenet-v2"]["accuracy"] == pytest.approx(2 / 3)  # folder "5" is label 5
    assert shift["imagenet-sketch"]["accuracy"] == 1.0
    markdown = (tmp_path / "out" / "robustness.md").read_text()
    assert "| imagenet-r acc % |" in markdown and "66.7" in markdown
    with pytest.raises(ValueError, match="scored on 200 of the 1000 ImageNet classes; the models have 3 outputs"):
        small = _save(tmp_path / "small.ckpt", _tiny("vit_tiny_patch16_224", 3))
        robustness([small], out=str(tmp_path / "x"), imagenet_r=str(tmp_path / "r"), accelerator="cpu", progress=False)
    assert imagenet_subset_synsets("imagenet-r")[r_idx.index(r_hit)] == wnids[r_hit]


# ---- bad input ----------------------------------------------------------------------------------------

def test_bad_input_gives_single_line_errors(digits, tmp_path):
    digits_ckpt = digits["layernorm"][0]
    generator = {"state_dict": {"model.x_embedder.proj.weight": torch.zeros(1)},
                 "hyper_parameters": {"model": "DiT-Mi/2", "norm": "layernorm", "num_classes": 10}}
    torch.save(generator, tmp_path / "dit.ckpt")
    three = _save(tmp_path / "three.ckpt", ClassificationModule(model="vit_micro_patch2_8", norm="layernorm",
                                                                num_classes=3))
    cases = [
        (dict(ckpt=[str(tmp_path / "dit.ckpt")], data="digits"), ValueError,
         f"{tmp_path / 'dit.ckpt'} is not an image classifier checkpoint: it holds model 'DiT-Mi/2'"),
        (dict(ckpt=[digits_ckpt, three], data="digits"), ValueError,
         f"different class counts cannot be compared on one set: {digits_ckpt} has 10 classes, {three} has 3"),
        (dict(ckpt=[digits_ckpt], data=str(tmp_path / "nowhere")), FileNotFoundError,
         f"data folder not found: {tmp_path / 'nowhere'}"),
        (dict(ckpt=[digits_ckpt]), ValueError, "nothing to evaluate: give --data"),
        (dict(ckpt=[digits_ckpt], data="digits", corruptions=["haze"]), ValueError, "unknown corruption 'haze'"),
        (dict(ckpt=[digits_ckpt], data="digits", severities=[0]), ValueError,
         "severity must be an integer from 1 to 5"),
        (dict(ckpt=[str(tmp_path / "missing.ckpt")], data="digits"), FileNotFoundError, "checkpoint not found"),
        (dict(ckpt=[digits_ckpt, digits_ckpt], data="digits"), ValueError, "two models have the same name"),
        (dict(ckpt=[digits_ckpt], data="digits", ema=True), ValueError,
         f"{digits_ckpt}: checkpoint has no EMA weights"),
    ]
    for kwargs, kind, message in cases:
        with pytest.raises(kind) as info:
            robustness(out=str(tmp_path / "out"), accelerator="cpu", progress=False, **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written before the inputs were checked


def test_ema_weights_are_evaluated_when_asked(tmp_path):
    torch.manual_seed(0)
    module = ClassificationModule(model="vit_micro_patch2_8", norm="mhseednorm", num_classes=10, ema_decay=0.9,
                                  model_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 1})
    with torch.no_grad():  # the EMA copy always says 3
        module.ema.module.head.weight.zero_()
        module.ema.module.head.bias.copy_(torch.arange(10) == 3)
    ckpt = _save(tmp_path / "ema.ckpt", module, DIGITS_DATA)
    kwargs = dict(data="digits", corruptions=["contrast"], severities=[5], num_workers=0, accelerator="cpu",
                  progress=False)
    ema = robustness([ckpt], out=str(tmp_path / "ema"), ema=True, **kwargs)["models"][0]
    plain = robustness([ckpt], out=str(tmp_path / "plain"), **kwargs)["models"][0]
    labels = load_digits_split(0)[2][1]
    assert ema["clean"]["error"] == pytest.approx(1 - float((labels == 3).float().mean()))
    assert ema["errors"]["contrast"]["5"] == ema["clean"]["error"] and ema["ema"] and not plain["ema"]
    assert plain["clean"]["error"] != ema["clean"]["error"]


# ---- the report on its own: ImageNet scale ---------------------------------------------------------

def test_imagenet_scale_report_has_mce_relative_mce_and_holdout(tmp_path):
    errors = {(c, s): 0.5 * ALEXNET.errors[c][s - 1] for c in COMMON for s in range(1, 6)}
    errors.update({(c, s): 0.3 for c in HOLDOUT for s in range(1, 6)})
    entry = model_entry({"label": "half-alexnet"}, (0.2, 100), {k: (v, 100) for k, v in errors.items()}, {},
                        baseline=ALEXNET)
    summary = entry["corruption_summary"]
    reference = summarize_corruption_errors(errors, 0.2)
    assert summary["mce"] == pytest.approx(50.0) and summary["relative_mce"] == pytest.approx(reference.relative_mce)
    assert summary["holdout_error"] == pytest.approx(0.3) and summary["complete"]
    assert summary["corrupted_accuracy"] == pytest.approx(1 - reference.mean_corruption_error)
    report = build_report("ImageNet-C test", {}, [entry], [])
    paths = write_report(report, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["robustness.csv", "robustness.json", "robustness.md",
                                                      "robustness.png"]
    line = next(r for r in report_markdown(report).splitlines() if r.startswith("| half-alexnet |"))
    assert line == f"| half-alexnet | 20.0 | {100 * reference.mean_corruption_error:.1f} | 30.0 | 50.0 | " \
                   f"{reference.relative_mce:.1f} |"
    rows = {(r["metric"], r["condition"]): r for r in csv.DictReader(paths["csv"].open())}
    assert float(rows[("mce", "all")]["value"]) == pytest.approx(50.0)
    assert float(rows[("ce", "fog")]["value"]) == pytest.approx(0.5)
    partial = summarize_errors({("fog", s): 0.4 for s in range(1, 6)}, 0.1)
    assert partial["mce"] is None and partial["ce"] == {"fog": pytest.approx(0.4 / ALEXNET.mean_errors["fog"])}
    assert "partial evaluation" in partial["notes"][0]


# ---- the transform in a Lightning pipeline; the command line -------------------------------------------

class _Images(Dataset):
    def __init__(self, images: torch.Tensor, transform) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), 0


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 2)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[0].clone())
        return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_corrupt_transform_in_a_lightning_training_pipeline():
    images = torch.rand(8, 3, 32, 32)

    def pipeline():
        return T.Compose([Corrupt("common", severity=(1, 5), seed=0), T.Normalize([0.5] * 3, [0.5] * 3)])

    module = _Recorder()
    loader = DataLoader(_Images(images, pipeline()), batch_size=4, num_workers=0)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False).fit(module, loader)
    seen = torch.cat(module.seen)
    again = pipeline()
    assert torch.equal(seen, torch.stack([again(x) for x in images]))  # reproducible with the seed
    clean = (images - 0.5) / 0.5
    assert (seen != clean).flatten(1).any(dim=1).all()  # every training image was corrupted


def test_command_line_options_and_configs():
    from jsonargparse import auto_cli, capture_parser

    # The parser `vision robustness` gets when cli.py lists the function among its components.
    parser = capture_parser(lambda: auto_cli({"robustness": robustness}, args=[], as_positional=False))
    parser.exit_on_error = False

    def parse(args):
        return parser.parse_args(["robustness", *cli_arguments(args)]).robustness

    cfg = parse(["--ckpt", "a.ckpt", "--ckpt=b.ckpt", "--data", "digits", "--corruptions", "fog", "--corruptions",
                 "noise", "--severities", "[1,3]", "--devices", "2", "--num_nodes", "1"])
    assert cfg.ckpt == ["a.ckpt", "b.ckpt"] and cfg.corruptions == ["fog", "noise"] and cfg.severities == [1, 3]
    assert cfg.devices == 2 and cfg.data == "digits"
    assert parse(["--ckpt", "[a.ckpt,b.ckpt]"]).ckpt == ["a.ckpt", "b.ckpt"]
    configs = REPO / "configs" / "robustness"
    cfg = parse(["--config", str(configs / "digits.yaml")])
    assert cfg.ckpt == ["outputs/demo/digits_mhseednorm.ckpt", "outputs/demo/digits_layernorm.ckpt"]
    assert cfg.data == "digits" and cfg.scale == "cifar"
    cfg = parse(["--config", str(configs / "imagenet.yaml"), "--config", str(configs / "ddp.yaml"), "--ckpt", "x"])
    assert cfg.ckpt == ["x"] and cfg.strategy == "ddp" and cfg.devices == -1 and cfg.imagenet_c == "data/imagenet-c"
    help_text = parser._subcommands_action._name_parser_map["robustness"].format_help()
    assert "released ImageNet-C root" in help_text and "CIFAR-10-C" in help_text

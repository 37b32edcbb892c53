"""Classification end to end: shipped configs, digits accuracy, resume, DDP, export, bad data."""

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image

import vision  # noqa: F401
from vision.cli import main as vision_main
from vision.data import CIFARDataModule, DigitsDataModule, ImageFolderDataModule
from vision.demo import train_digits_classifier
from vision.tasks import ClassificationModule
from vision.tasks.checkpoint import AtomicCheckpointIO, export_weights

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "classification").glob("*.yaml"))


def write_image_tree(root: Path, classes=("cat", "dog"), per_class=4, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def write_fake_cifar10(root: Path, n=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return root


def tiny_overrides(config: Path, tmp_path: Path) -> list[str]:
    text = config.read_text()
    args = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path / "run")]
    if "ImageFolderDataModule" in text:
        root = write_image_tree(tmp_path / "imagenet")
        args += ["--data.init_args.root", str(root), "--data.init_args.batch_size", "4",
                 "--data.init_args.num_workers", "0", "--data.init_args.img_size", "32",
                 "--model.init_args.model_kwargs", "{img_size: 32}", "--model.init_args.num_classes", "2"]
    elif "CIFARDataModule" in text:
        root = write_fake_cifar10(tmp_path / "cifar")
        args += ["--data.init_args.root", str(root), "--data.init_args.verify_md5", "false",
                 "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0"]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_runs_a_fast_dev_run(config, tmp_path):
    assert len(CONFIGS) == 12
    vision_main(["fit", "--config", str(config)] + tiny_overrides(config, tmp_path))


def test_presets_combine_with_a_config(tmp_path):
    config = ROOT / "configs" / "classification" / "vit_micro_digits.yaml"
    vision_main(["fit", "--config", str(config), "--config", str(ROOT / "configs/presets/cpu.yaml"),
                 "--config", str(ROOT / "configs/presets/debug.yaml"), "--trainer.default_root_dir", str(tmp_path)])


def test_digits_end_to_end_multihead_seednorm_reaches_90_percent(tmp_path):
    module, result = train_digits_classifier("mhseednorm", epochs=60, out=tmp_path)
    print(f"digits mhseednorm test top-1 = {result['test_acc1']:.4f} in {result['train_seconds']:.0f} s")
    assert result["test_acc1"] >= 0.90


class RecordStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.optimizer_state = {k: v.clone() for k, v in trainer.optimizers[0].state_dict()["state"][0].items()}


def digits_trainer(tmp_path, callbacks=(), epochs=3):
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=list(callbacks),
                     plugins=[AtomicCheckpointIO()])


def digits_module():
    return ClassificationModule(model="vit_micro_patch2_8", norm="mhseednorm", num_classes=10, lr=2e-3,
                                lr_batch_size=64, warmup_epochs=1, mixup=0.0, cutmix=0.0, mixup_prob=0.0,
                                drop_path_rate=0.1, ema_decay=0.99)


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    L.seed_everything(0)
    full = digits_module()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=20, save_top_k=-1, filename="{step}")
    digits_trainer(tmp_path / "a", [saver]).fit(full, DigitsDataModule(batch_size=64))
    ckpt = tmp_path / "ckpt" / "step=20.ckpt"
    assert ckpt.is_file()  # 16 steps per epoch: step 20 is four batches into the second epoch
    saved = torch.load(ckpt, weights_only=False)

    L.seed_everything(123)  # a different process state; the checkpoint must carry what matters
    resumed = digits_module()
    record = RecordStart()
    trainer = digits_trainer(tmp_path / "b", [record])
    trainer.fit(resumed, DigitsDataModule(batch_size=64), ckpt_path=str(ckpt))
    assert record.step == 20 and trainer.global_step == 48
    for key, value in saved["optimizer_states"][0]["state"][0].items():
        torch.testing.assert_close(record.optimizer_state[key], value, rtol=0, atol=0)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(f"""
        import lightning as L, torch
        from vision.data import DigitsDataModule
        from vision.tasks import ClassificationModule

        class Save(L.Callback):
            def on_train_end(self, trainer, module):
                torch.save(module.model.state_dict(), r"{tmp_path}/rank%d.pt" % trainer.global_rank)

        if __name__ == "__main__":
            L.seed_everything(0)
            module = ClassificationModule(model="vit_micro_patch2_8", norm="mhseednorm", mixup=0.0, cutmix=0.0,
                                          mixup_prob=0.0, warmup_epochs=0.5)
            trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, limit_train_batches=6,
                                limit_val_batches=2, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, callbacks=[Save()])
            trainer.fit(module, DigitsDataModule(batch_size=16))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    initial = ClassificationModule(model="vit_micro_patch2_8", norm="mhseednorm").model.state_dict()
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0), "training changed the weights"


def test_export_loads_in_timm_with_the_same_logits(tmp_path):
    L.seed_everything(0)
    module = digits_module()
    trainer = digits_trainer(tmp_path, epochs=1)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    for ema in (False, True):
        out = tmp_path / f"weights_{ema}.safetensors"
        export_weights(str(ckpt), str(out), ema=ema)
        model = timm.create_model("vit_micro_patch2_8_mhseednorm", pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(out)), num_classes=10).eval()
        reference = (module.ema.module if ema else module.model).eval()
        x = torch.randn(4, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_cli_resume_and_validate_with_ckpt_path(tmp_path):
    config = str(ROOT / "configs" / "classification" / "vit_micro_digits.yaml")
    common = ["--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false"]
    vision_main(["fit", "--config", config, "--trainer.max_epochs", "1", "--trainer.callbacks+",
                 "ModelCheckpoint", "--trainer.callbacks.dirpath", str(tmp_path / "ck"),
                 "--trainer.callbacks.save_last", "true"] + common)
    last = tmp_path / "ck" / "last.ckpt"
    assert last.is_file()
    vision_main(["fit", "--config", config, "--trainer.max_epochs", "2", "--ckpt_path", str(last)] + common)
    vision_main(["validate", "--config", config, "--ckpt_path", str(last)] + common)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    module = digits_module()
    trainer = digits_trainer(tmp_path, epochs=1)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    ckpt = tmp_path / "micro.ckpt"
    trainer.save_checkpoint(ckpt)
    other = ClassificationModule(model="vit_micro_patch2_8", norm="layernorm", num_classes=10)
    with pytest.raises(ValueError, match="checkpoint holds model 'vit_micro_patch2_8_mhseednorm' but this run builds "
                                         "'vit_micro_patch2_8_layernorm'"):
        digits_trainer(tmp_path, epochs=2).fit(other, DigitsDataModule(batch_size=64), ckpt_path=str(ckpt))
    with pytest.raises(ValueError, match="num_classes|shape"):
        ClassificationModule.load_from_checkpoint(ckpt, num_classes=5)


def test_interrupted_save_leaves_the_last_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temporary file left behind"


def test_bad_image_folders_fail_at_start_up_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image folder not found: {tmp_path / 'nowhere' / 'train'}"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")

    root = write_image_tree(tmp_path / "empty")
    (root / "train" / "bird").mkdir()
    with pytest.raises(ValueError, match=f"empty class folder {root / 'train' / 'bird'}: no images"):
        ImageFolderDataModule(str(root)).setup("fit")

    root = write_image_tree(tmp_path / "broken")
    bad = root / "val" / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match=f"unreadable image {bad}"):
        ImageFolderDataModule(str(root)).setup("fit")
    data = ImageFolderDataModule(str(root), on_bad_image="skip", batch_size=2, num_workers=0, img_size=32)
    data.setup("fit")
    assert len(data.datasets["val"]) == 8 and data.num_classes == 2

    root = write_image_tree(tmp_path / "extra")
    (root / "val" / "fish").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "fish" / "0.png")
    with pytest.raises(ValueError, match=f"class folder {root / 'val' / 'fish'} is not one of the 2 training classes"):
        ImageFolderDataModule(str(root)).setup("fit")


def test_cifar_missing_files_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"cifar10 not found in {tmp_path}.*download: true"):
        CIFARDataModule(str(tmp_path)).setup("fit")
    with pytest.raises(ValueError, match="unknown CIFAR dataset 'cifar20'"):
        CIFARDataModule(str(tmp_path), dataset="cifar20")


def test_digits_split_is_fixed_and_stratified():
    a, b = DigitsDataModule(seed=0), DigitsDataModule(seed=0)
    a.setup(), b.setup()
    assert [len(a.splits[s]) for s in ("train", "val", "test")] == [1077, 360, 360]
    assert torch.equal(a.splits["test"].labels, b.splits["test"].labels)
    counts = torch.bincount(a.splits["test"].labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37

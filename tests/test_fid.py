"""FID / KID / IS (``vision.metrics.fid``): exactness, caching, offline Inception, digits, DDP, errors.

Everything runs offline on the CPU in about a minute and a half: the Inception network gets random
weights of the real architecture from a file the test writes, and the digits tests use a briefly
trained digits ViT as the feature extractor and a small DiT as the generator.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from fid_helpers import (digits_arrays, digits_generator, save_generator, to_uint8_nhwc, train_digits_classifier,
                         train_digits_generator, write_random_inception_weights)
from PIL import Image

from vision.metrics.features import INCEPTION_FILE, InceptionWeightsError, resolve_inception_weights
from vision.metrics.fid import ReferenceStats, fid, fid_feature_extractor

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _one_thread_and_private_cache(tmp_path, monkeypatch):
    # The machine's two cores are shared: one thread is both kinder and, under contention, faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("VISION_FID_CACHE", str(tmp_path / "fid-cache"))
    monkeypatch.delenv("VISION_INCEPTION_WEIGHTS", raising=False)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch):
    """No network at all: name resolution and connections fail."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> Path:
    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / INCEPTION_FILE)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """A digits ViT classifier (features) and a DiT generator before and after 150 training steps."""
    folder = tmp_path_factory.mktemp("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    accuracy = train_digits_classifier(folder / "classifier.ckpt", steps=80)
    generator = digits_generator()
    save_generator(generator, folder / "untrained.ckpt")
    save_generator(train_digits_generator(generator, 150), folder / "trained.ckpt")
    torch.set_num_threads(threads)
    (train_x, _), _, (test_x, _) = digits_arrays()
    np.savez(folder / "train.npz", arr_0=to_uint8_nhwc(train_x))
    np.savez(folder / "test.npz", arr_0=to_uint8_nhwc(test_x))
    return {"folder": folder, "classifier": str(folder / "classifier.ckpt"), "accuracy": accuracy,
            "untrained": str(folder / "untrained.ckpt"), "trained": str(folder / "trained.ckpt"),
            "train": str(folder / "train.npz"), "test": str(folder / "test.npz")}


def _save_npz(path: Path, images_uint8_nchw: torch.Tensor) -> str:
    np.savez(path, arr_0=images_uint8_nchw.permute(0, 2, 3, 1).numpy())
    return str(path)


# ----------------------------------------------------------------------------- Inception, offline


def test_inception_weights_resolution_and_offline_error(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    with pytest.raises(InceptionWeightsError) as info:
        resolve_inception_weights(download=True)  # tries to download: the network is off
    message = str(info.value)
    assert "\n" not in message and f"place {INCEPTION_FILE}" in message and f"in {expected.parent}/" in message
    assert "--inception-weights" in message and "VISION_INCEPTION_WEIGHTS" in message and "download failed" in message
    assert not expected.exists() and not any(expected.parent.glob("*"))  # no partial file left behind
    with pytest.raises(InceptionWeightsError, match=r"Inception weights not found: place .*--download true to fetch"):
        resolve_inception_weights()  # the default: nothing is downloaded
    with pytest.raises(InceptionWeightsError, match=r"missing\.pth \(from --inception-weights\) not found"):
        resolve_inception_weights(str(tmp_path / "missing.pth"))
    monkeypatch.setenv("VISION_INCEPTION_WEIGHTS", str(tmp_path / "gone.pth"))
    with pytest.raises(InceptionWeightsError, match=r"gone\.pth \(from \$VISION_INCEPTION_WEIGHTS\) not found"):
        resolve_inception_weights()
    # Found, in order: the argument, the environment variable, torch hub's cache.
    expected.write_bytes(b"hub")
    (tmp_path / "env.pth").write_bytes(b"env")
    (tmp_path / "arg.pth").write_bytes(b"arg")
    monkeypatch.setenv("VISION_INCEPTION_WEIGHTS", str(tmp_path / "env.pth"))
    assert resolve_inception_weights(str(tmp_path / "arg.pth")) == str(tmp_path / "arg.pth")
    assert resolve_inception_weights() == str(tmp_path / "env.pth")
    monkeypatch.delenv("VISION_INCEPTION_WEIGHTS")
    assert resolve_inception_weights() == str(expected)


def test_fid_without_weights_offline_says_which_file_where(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    images = _save_npz(tmp_path / "a.npz", torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(InceptionWeightsError, match=rf"place {INCEPTION_FILE} .* in {tmp_path}/torch/hub/checkpoints/"):
        fid(images, images, progress=False)


def test_inception_from_a_local_file_offline(tmp_path, monkeypatch, offline, inception_weights):
    from torchmetrics.image.fid import FrechetInceptionDistance

    # The full network: 2048-d pool3 features and 1008 logits of two images, finite and distinct.
    net = fid_feature_extractor(str(inception_weights))
    pair = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = net(pair)
    assert features.shape == (2, 2048) and features.dtype == torch.float64
    assert torch.isfinite(features).all() and (features[0] - features[1]).abs().max() > 1e-4

    # Our FID on the 64-d Inception features = torchmetrics' own FID fed the same uint8 images
    # (its result is cast to float32, hence 1e-6), for both resize settings, which differ.
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=generator)
    fake = (real.float() * 0.6 + 40).round().to(torch.uint8)
    real_path, fake_path = _save_npz(tmp_path / "real.npz", real), _save_npz(tmp_path / "fake.npz", fake)
    values = {}
    for antialias in (False, True):
        reference = FrechetInceptionDistance(feature=64, feature_extractor_weights_path=str(inception_weights),
                                             antialias=antialias)
        reference.update(real, real=True)
        reference.update(fake, real=False)
        ours = fid(fake_path, real_path, features="inception:64", inception_weights=str(inception_weights),
                   antialias=antialias, cache=False, progress=False)
        assert ours["antialias"] is antialias and ours["label"] == "FID (Inception-v3 64-d)"
        assert ours["fid"] == pytest.approx(float(reference.compute()), rel=1e-6)
        values[antialias] = ours["fid"]
    assert abs(values[True] - values[False]) > 1e-3 * values[False]

    # KID and IS load the same file, here through the environment variable; grey images are RGB repeated.
    monkeypatch.setenv("VISION_INCEPTION_WEIGHTS", str(inception_weights))
    grey = _save_npz(tmp_path / "grey.npz", real[:, :1])
    rgb = _save_npz(tmp_path / "rgb.npz", real[:, :1].repeat(1, 3, 1, 1))
    kwargs = {"features": "inception:64", "kid": True, "inception_score": True, "is_splits": 2, "cache": False,
              "progress": False}
    from_grey, from_rgb = fid(grey, rgb, **kwargs), fid(rgb, rgb, **kwargs)
    assert abs(from_rgb["fid"]) < 1e-6 and from_rgb["kid_subset_size"] == 6
    assert from_rgb["inception_score"] > 1.0 and np.isfinite(from_rgb["inception_score_std"])
    for key in ("fid", "kid", "kid_std", "inception_score", "inception_score_std"):
        assert from_grey[key] == pytest.approx(from_rgb[key], rel=1e-9, abs=1e-12), key


# ----------------------------------------------------------------------------- exactness and cache


def _classifier_features(ckpt: str, images_uint8_nhwc: np.ndarray) -> np.ndarray:
    """Penultimate features computed here, independently of vision.metrics."""
    from vision.tasks.classification import ClassificationModule

    checkpoint = torch.load(ckpt, weights_only=False)
    module = ClassificationModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    model = module.model.eval()
    x = torch.from_numpy(images_uint8_nhwc).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return model.forward_head(model.forward_features((x - 0.5) / 0.5), pre_logits=True).double().numpy()


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(root))


def test_fid_equals_scipy_self_is_zero_and_cache_equals_recompute(digits, tmp_path):
    kwargs = {"features": digits["classifier"], "features_name": "digits", "progress": False}
    first = fid(digits["test"], "digits", **kwargs)
    assert first["label"] == "FID (digits features)" and first["num_samples"] == 360 and first["num_reference"] == 1077
    assert not first["reference_cached"] and Path(first["reference_stats"]).is_file()

    train, test = np.load(digits["train"])["arr_0"], np.load(digits["test"])["arr_0"]
    classifier = digits["classifier"]
    direct = _scipy_fid(_classifier_features(classifier, test), _classifier_features(classifier, train))
    assert first["fid"] == pytest.approx(direct, rel=1e-6)
    print(f"FID (digits features) test vs train: {first['fid']:.8f}, numpy/scipy {direct:.8f}")

    # Read back from the cache, and given as --ref: the same FID as recomputing.
    second = fid(digits["test"], "digits", **kwargs)
    assert second["reference_cached"] and second["reference_stats"] == first["reference_stats"]
    assert second["fid"] == pytest.approx(first["fid"], rel=1e-7)
    from_file = fid(digits["test"], first["reference_stats"], **kwargs)
    assert from_file["fid"] == pytest.approx(first["fid"], rel=1e-7)
    stats = ReferenceStats.load(first["reference_stats"])
    assert stats.count == 1077 and stats.settings["resize"] == "none" and stats.image_shape == (1, 8, 8)

    # A set against itself: zero up to the eigenvalue round-off (trace of sigma for scale).
    itself = fid(digits["train"], "digits", **kwargs)
    assert abs(itself["fid"]) < 1e-5
    assert abs(itself["fid"]) < 1e-8 * np.trace(stats.sigma)

    # A folder of PNGs reads the same images as the .npz.
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(train[:50]):
        Image.fromarray(image[..., 0]).save(folder / f"{i:04d}.png")
    from_folder = fid(str(folder), "digits", **kwargs)
    from_npz = fid(digits["train"], "digits", num_samples=50, **kwargs)
    assert from_folder["fid"] == pytest.approx(from_npz["fid"], rel=1e-12)


def test_cli_parses_fid(digits, capsys):
    from jsonargparse import auto_cli

    result = auto_cli({"fid": fid}, args=["fid", "--samples", digits["test"], "--ref", "digits:test", "--features",
                                          digits["classifier"], "--features_name", "digits", "--kid", "true",
                                          "--progress", "false"], as_positional=False)
    assert abs(result["fid"]) < 1e-5 and "kid" in result
    assert "FID (digits features): " in capsys.readouterr().out


# ----------------------------------------------------------------------------- digits


def test_digits_fid_ranks_generators_and_corruptions(digits, tmp_path):
    from vision.corruptions import PARAMS

    kwargs = {"features": digits["classifier"], "features_name": "digits", "progress": False}
    print(f"digits classifier test accuracy: {digits['accuracy']:.3f}")
    scores = {name: fid(digits[name], "digits", sampling="digits", num_samples=200, **kwargs)
              for name in ("untrained", "trained")}
    assert all(s["label"] == "FID (digits features)" and s["num_samples"] == 200 for s in scores.values())
    print(f"FID (digits features): untrained DiT {scores['untrained']['fid']:.3f}, "
          f"trained {scores['trained']['fid']:.3f}")
    assert scores["trained"]["fid"] < 0.5 * scores["untrained"]["fid"]

    # Real images with ImageNet-C's Gaussian-noise severities: FID rises with every step. The noise
    # is added here because vision.corruptions' ops need images of at least 32 px.
    (train_x, _), _, _ = digits_arrays()
    noise = torch.randn(train_x.shape, generator=torch.Generator().manual_seed(0))
    values = [fid(digits["train"], "digits", **kwargs)["fid"]]
    for severity, sigma in enumerate(PARAMS["gaussian_noise"]["imagenet"], 1):
        path = tmp_path / f"noise{severity}.npz"
        np.savez(path, arr_0=to_uint8_nhwc((train_x + sigma * noise).clamp(0, 1)))
        values.append(fid(str(path), "digits", **kwargs)["fid"])
    print("FID (digits features) by noise severity 0-5:", ", ".join(f"{v:.4f}" for v in values))
    assert all(b > a for a, b in itertools.pairwise(values)), values


def test_fid_callback_logs_every_n_steps(digits, tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from vision.data.digits import DigitsDataModule
    from vision.diffusion.generate import load_generation_module
    from vision.tasks.callbacks import FIDCallback

    module = load_generation_module(digits["untrained"]).train()
    callback = FIDCallback(every_n_steps=2, num_samples=32, ref="digits", features=digits["classifier"],
                           features_name="digits", sampler="ddim", steps=5, cfg_scale=2.0, batch_size=32)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, limit_val_batches=0,
                        logger=CSVLogger(tmp_path, name="fid"), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, DigitsDataModule(batch_size=16, shift=0))
    assert [step for step, _ in callback.history] == [2, 4] and callback.reference_builds == 1
    assert callback.reference.count == 1077 and Path(callback.reference.stats_path).is_file()
    assert callback.history[0][1] != callback.history[1][1]  # the weights moved between evaluations
    rows = [line.split(",") for line in Path(trainer.logger.log_dir, "metrics.csv").read_text().splitlines()]
    column = rows[0].index("val/fid")
    logged = [(int(row[rows[0].index("step")]), float(row[column])) for row in rows[1:] if row[column]]
    assert logged == callback.history  # at the step it was computed, at full precision
    assert float(trainer.callback_metrics["val/fid"]) == pytest.approx(callback.history[-1][1], rel=1e-6)


# ----------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_two_processes_equal_one(digits, tmp_path):
    sampling = tmp_path / "sampling.yaml"
    sampling.write_text("num_samples: 100\nsampler: ddim\nsteps: 10\ncfg_scale: 2.0\nbatch_size: 50\nseed: 0\n")
    common = {"samples": digits["trained"], "ref": "digits", "features": digits["classifier"],
              "features_name": "digits", "sampling": str(sampling), "kid": True, "inception_score": True}
    # A fresh rendezvous for each launch: no inherited MASTER_PORT for the two concurrent runs to share.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK",
                                                            "LOCAL_RANK", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    script = str(HERE / "fid_ddp_script.py")
    ddp_fid = {**common, "ref_stats": str(tmp_path / "ddp_ref.npz"), "out": str(tmp_path / "ddp.json")}
    callback = {"generator": digits["untrained"], "classifier": digits["classifier"], "num_samples": 64,
                "out": str(tmp_path / "callback.json")}
    runs = [subprocess.Popen([sys.executable, script, mode, json.dumps(payload)], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
            for mode, payload in (("fid", ddp_fid), ("callback", callback))]
    try:  # meanwhile, the single-process values
        single = fid(**common, ref_stats=str(tmp_path / "single_ref.npz"), progress=False)
        untrained = fid(digits["untrained"], "digits", features=digits["classifier"], sampling=str(sampling),
                        num_samples=64, cache=False, progress=False)
        outputs = [run.communicate(timeout=240)[0] for run in runs]
    finally:
        for run in runs:  # on failure, also the rank-1 process Lightning started, in the run's own group
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-3000:]

    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    print(f"FID 2 processes {ddp['fid']!r}, 1 process {single['fid']!r}")
    assert ddp["fid"] == pytest.approx(single["fid"], rel=1e-9)
    for key in ("kid", "kid_std", "inception_score", "inception_score_std"):  # same features in the same order
        assert ddp[key] == pytest.approx(single[key], rel=1e-9), key
    ddp_stats = ReferenceStats.load(tmp_path / "ddp_ref.npz")
    single_stats = ReferenceStats.load(tmp_path / "single_ref.npz")
    assert ddp_stats.count == single_stats.count == 1077
    np.testing.assert_allclose(ddp_stats.mu, single_stats.mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ddp_stats.sigma, single_stats.sigma, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ddp_stats.features, single_stats.features)

    # The callback under DDP (learning rate 0: the checkpoint's weights) logs the single-process FID.
    logged = json.loads((tmp_path / "callback.json").read_text())
    assert logged["world"] == 2 and logged["builds"] == 1 and [s for s, _ in logged["history"]] == [2, 4]
    print(f"FIDCallback on 2 processes {logged['history']}, fid() on 1 process {untrained['fid']!r}")
    for _, value in logged["history"]:
        assert value == pytest.approx(untrained["fid"], rel=1e-6)
    assert logged["logged"] == pytest.approx(untrained["fid"], rel=1e-6)


# ----------------------------------------------------------------------------- errors


def test_reference_statistics_with_other_settings_are_refused(digits, tmp_path, inception_weights):
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = _save_npz(tmp_path / "images.npz", images)
    stats = tmp_path / "stats.npz"
    common = {"features": "inception:64", "inception_weights": str(inception_weights), "progress": False}
    fid(path, path, ref_stats=str(stats), **common)
    with pytest.raises(ValueError, match=r"computed with antialias=False, this run uses antialias=True"):
        fid(path, str(stats), antialias=True, **common)
    with pytest.raises(ValueError, match=r"computed with antialias=False, this run uses antialias=True"):
        fid(path, path, ref_stats=str(stats), antialias=True, **common)
    digits_stats = fid(digits["test"], "digits", features=digits["classifier"], progress=False)["reference_stats"]
    with pytest.raises(ValueError, match=r"with extractor='classifier .*', this run uses extractor='inception"):
        fid(path, digits_stats, **common)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mu=np.zeros(96), sigma=np.eye(96))
    with pytest.raises(ValueError, match=r"record no settings .* only for Inception-v3 pool3"):
        fid(digits["test"], str(foreign), features=digits["classifier"], progress=False)
    with pytest.raises(ValueError, match=r"KID needs the reference features"):
        fid(path, str(stats), kid=True, **common)


def test_bad_inputs_are_clear_errors(digits, tmp_path):
    kwargs = {"features": digits["classifier"], "progress": False}
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"samples folder .*empty holds no images"):
        fid(str(empty), "digits", **kwargs)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (8, 8)).save(mixed / "a.png")
    Image.new("L", (9, 8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match=r"mixes image sizes: a.png is 8x8, b.png is 9x8"):
        fid(str(mixed), "digits", **kwargs)
    with pytest.raises(ValueError, match=r"mixes image sizes"):
        fid(digits["test"], str(mixed), **kwargs)
    floats = tmp_path / "floats.npz"
    np.savez(floats, arr_0=np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"arr_0 must be uint8 images"):
        fid(str(floats), "digits", **kwargs)
    big = _save_npz(tmp_path / "big.npz", torch.zeros(4, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"takes images of shape \(1, 8, 8\) \(C, H, W\), got \(1, 16, 16\)"):
        fid(big, "digits", **kwargs)
    with pytest.raises(ValueError, match=r"is a checkpoint: name a sampling config with --sampling"):
        fid(digits["trained"], "digits", **kwargs)
    with pytest.raises(FileNotFoundError, match=r"sampling config 'nope' not found"):
        fid(digits["trained"], "digits", sampling="nope", **kwargs)
    with pytest.raises(ValueError, match=r"test.npz: 360 images, fewer than the 500 asked for"):
        fid(digits["test"], "digits", num_samples=500, **kwargs)
    with pytest.raises(FileNotFoundError, match=r"reference 'no/such/folder' not found"):
        fid(digits["test"], "no/such/folder", **kwargs)
    with pytest.raises(ValueError, match=r"unknown features 'vgg'"):
        fid(digits["test"], "digits", features="vgg", progress=False)
    with pytest.raises(ValueError, match=r"Inception Score needs class logits"):
        fid(digits["test"], "digits", features="torch.nn:Flatten", inception_score=True, progress=False)

"""DiT: every config, the block equations, zero init, guidance, loss terms, sampling, checkpoints."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision.diffusion import diffusion_loss, per_sample_generators, sample, train_scheduler
from vision.diffusion.schedule import vlb_terms
from vision.models.dit import DiT, DiT_models, create_dit
from vision.nn import NORMS, SeeDNorm, convert_norms

ROOT = Path(__file__).resolve().parent.parent


def randomized(model: DiT) -> DiT:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("name", list(DiT_models))
def test_every_dit_config_forward_and_backward(name):
    # The real width, heads and patch of every configuration; one block and a two-patch input keep
    # it small (the blocks are identical, so depth adds nothing to what is checked).
    spec = DiT_models[name]
    size = 2 * spec["patch_size"]
    model = create_dit(name, depth=1, input_size=size, in_channels=4, num_classes=7, zero_init=False)
    x, t, y = torch.randn(2, 4, size, size), torch.tensor([3, 999]), torch.tensor([0, 6])
    out = model(x, t, y)
    assert out.shape == (2, 8, size, size) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert model.blocks[0].attn.num_heads == spec["num_heads"] and model.pos_embed.shape[-1] == spec["hidden_size"]


def reference_dit(model: DiT, x, t, y):
    """DiT's equations written out with plain tensor ops and the model's weights (LayerNorm)."""
    p, C, D = model.patch_size, model.in_channels, model.pos_embed.shape[-1]
    W = dict(model.named_parameters())
    n, _, h, w = x.shape
    patches = x.reshape(n, C, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, C * p * p)
    tokens = patches @ W["x_embedder.proj.weight"].reshape(D, -1).T + W["x_embedder.proj.bias"] + W["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = t[:, None].float() * freqs
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.linear(F.silu(F.linear(temb, W["t_embedder.mlp.0.weight"], W["t_embedder.mlp.0.bias"])),
                    W["t_embedder.mlp.2.weight"], W["t_embedder.mlp.2.bias"])
    c = temb + W["y_embedder.embedding_table.weight"][y]

    def ln(v):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)

    def mod(v, shift, scale):
        return v * (1 + scale[:, None]) + shift[:, None]

    heads = model.blocks[0].attn.num_heads
    for i in range(len(model.blocks)):
        b = f"blocks.{i}."
        m = F.linear(F.silu(c), W[b + "adaLN_modulation.1.weight"], W[b + "adaLN_modulation.1.bias"]).chunk(6, 1)
        a = mod(ln(tokens), m[0], m[1])
        qkv = F.linear(a, W[b + "attn.qkv.weight"], W[b + "attn.qkv.bias"]).reshape(n, -1, 3, heads, D // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), -1) @ v
        att = F.linear(att.transpose(1, 2).reshape(n, -1, D), W[b + "attn.proj.weight"], W[b + "attn.proj.bias"])
        tokens = tokens + m[2][:, None] * att
        a = mod(ln(tokens), m[3], m[4])
        hidden = F.gelu(F.linear(a, W[b + "mlp.fc1.weight"], W[b + "mlp.fc1.bias"]), approximate="tanh")
        tokens = tokens + m[5][:, None] * F.linear(hidden, W[b + "mlp.fc2.weight"], W[b + "mlp.fc2.bias"])
    shift, scale = F.linear(F.silu(c), W["final_layer.adaLN_modulation.1.weight"],
                            W["final_layer.adaLN_modulation.1.bias"]).chunk(2, 1)
    out = F.linear(mod(ln(tokens), shift, scale), W["final_layer.linear.weight"], W["final_layer.linear.bias"])
    out = out.reshape(n, h // p, w // p, p, p, -1).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(n, -1, h, w)


def test_layernorm_dit_equals_the_block_equations():
    model = randomized(create_dit("DiT-Mi/2", input_size=8, in_channels=3, num_classes=5)).eval()
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([0, 4, 5])  # 5: the null class
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), reference_dit(model, x, t, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", list(NORMS))
def test_zero_init_output_is_exactly_zero(norm):
    model = create_dit("DiT-Mi/2", input_size=8, in_channels=4, num_classes=10, norm=norm, norm_kwargs=(
        {"num_heads": 4} if norm == "mhseednorm" else None))
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 2]))
    assert torch.equal(out, torch.zeros_like(out))
    unzeroed = create_dit("DiT-Mi/2", input_size=8, in_channels=4, num_classes=10, norm=norm, zero_init=False)
    assert unzeroed(torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.tensor([1, 2])).abs().max() > 0


def test_seednorm_dit_uses_affine_free_seednorm_everywhere():
    model = create_dit("DiT-Mi/2", input_size=8, in_channels=1, norm="mhseednorm")
    norms = [m for m in model.modules() if isinstance(m, SeeDNorm)]
    assert len(norms) == 2 * 4 + 1 and all(m.weight is None and m.bias is None and m.num_heads == 16 for m in norms)


def test_guidance():
    model = randomized(create_dit("DiT-Mi/2", input_size=8, in_channels=2, num_classes=4)).eval()
    x, t, y = torch.randn(3, 2, 8, 8), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 3])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 4))
        assert torch.equal(model.forward_with_cfg(x, t, y, 1.0), cond)
        guided = model.forward_with_cfg(x, t, y, 3.0)
        torch.testing.assert_close(guided[:, :2], uncond[:, :2] + 3.0 * (cond[:, :2] - uncond[:, :2]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(guided[:, 2:], cond[:, 2:], rtol=1e-5, atol=1e-5)
        # the batched path at scale 1 (reached with a scale a hair above 1) is the conditional prediction
        torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0 + 1e-9), cond, rtol=1e-5, atol=1e-5)


def test_label_dropout_only_in_training():
    model = create_dit("DiT-Mi/2", input_size=8, in_channels=1, num_classes=3, class_dropout_prob=0.5)
    labels = torch.zeros(2000, dtype=torch.long)
    emb = model.y_embedder
    dropped = (emb(labels, train=True) == emb.embedding_table.weight[3]).all(-1).float().mean().item()
    assert abs(dropped - 0.5) < 0.05
    assert not (emb(labels, train=False) == emb.embedding_table.weight[3]).all(-1).any()


def test_vlb_kl_matches_torch_distributions_and_loss_terms():
    scheduler = train_scheduler(learn_sigma=True)
    x0 = torch.rand(4, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 10, 500, 999])
    x_t = scheduler.add_noise(x0, noise, t)
    eps, v = torch.randn_like(x0), torch.rand_like(x0) * 2 - 1
    ours = vlb_terms(scheduler, x0, x_t, t, eps, v)
    # independent: posterior and model Gaussians from the DDPM/improved-DDPM definitions
    ab = scheduler.alphas_cumprod.double()
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    beta = scheduler.betas.double()
    for i, step in enumerate(t.tolist()):
        a, ap, b = ab[step], ab_prev[step], beta[step]
        x0_hat = (x_t[i].double() - torch.sqrt(1 - a) * eps[i].double()) / torch.sqrt(a)

        def mean(start):
            return b * torch.sqrt(ap) / (1 - a) * start + (1 - ap) * torch.sqrt(1 - b) / (1 - a) * x_t[i].double()

        post_var = b * (1 - ap) / (1 - a)
        log_var = (v[i].double() + 1) / 2 * torch.log(b) + (1 - v[i].double()) / 2 * torch.log(post_var)
        q = torch.distributions.Normal(mean(x0[i].double()), torch.sqrt(post_var))
        p = torch.distributions.Normal(mean(x0_hat), torch.exp(0.5 * log_var))
        kl_bits = torch.distributions.kl_divergence(q, p).mean() / math.log(2)
        assert abs(ours[i].item() - kl_bits.item()) < 1e-4 * max(1.0, kl_bits.item())
    terms = diffusion_loss(scheduler, torch.cat([eps, v], 1), x0, x_t, noise, t, learn_sigma=True)
    torch.testing.assert_close(terms["mse"], (eps - noise).pow(2).mean())
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vlb"])
    v_sched = train_scheduler(prediction_type="v_prediction", learn_sigma=False)
    v_terms = diffusion_loss(v_sched, eps, x0, x_t, noise, t, learn_sigma=False)
    target = torch.sqrt(ab[t]).float().view(-1, 1, 1, 1) * noise - torch.sqrt(1 - ab[t]).float().view(-1, 1, 1, 1) * x0
    torch.testing.assert_close(v_terms["loss"], (eps - target).pow(2).mean())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_sampling_is_deterministic_and_batch_independent(sampler):
    model = randomized(create_dit("DiT-Mi/2", input_size=8, in_channels=1, num_classes=4)).eval()
    scheduler = train_scheduler(learn_sigma=True)
    labels = torch.tensor([0, 1, 2, 3])

    def run(seed, idx):
        return sample(model, labels[idx], per_sample_generators(seed, idx, torch.device("cpu")), (1, 8, 8),
                      scheduler, sampler=sampler, steps=8, cfg_scale=2.0)

    first, again = run(0, [0, 1, 2, 3]), run(0, [0, 1, 2, 3])
    assert torch.equal(first, again)
    assert torch.equal(run(0, [2, 3]), first[2:]), "a sample does not depend on its batch"
    assert not torch.equal(run(1, [0, 1, 2, 3]), first)
    assert torch.isfinite(first).all()


def reference_layout(depth, hidden, heads, patch, channels, classes, size, learn_sigma=True):
    """Parameter names and shapes of the published DiT checkpoints, written out independently."""
    out = 2 * channels if learn_sigma else channels
    mlp = 4 * hidden
    shapes = {"pos_embed": (1, (size // patch) ** 2, hidden), "x_embedder.proj.weight": (hidden, channels, patch, patch),
              "x_embedder.proj.bias": (hidden,), "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
              "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
              "y_embedder.embedding_table.weight": (classes + 1, hidden)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "attn.qkv.weight": (3 * hidden, hidden), b + "attn.qkv.bias": (3 * hidden,),
                       b + "attn.proj.weight": (hidden, hidden), b + "attn.proj.bias": (hidden,),
                       b + "mlp.fc1.weight": (mlp, hidden), b + "mlp.fc1.bias": (mlp,),
                       b + "mlp.fc2.weight": (hidden, mlp), b + "mlp.fc2.bias": (hidden,),
                       b + "adaLN_modulation.1.weight": (6 * hidden, hidden), b + "adaLN_modulation.1.bias": (6 * hidden,)})
    shapes.update({"final_layer.linear.weight": (patch * patch * out, hidden), "final_layer.linear.bias": (patch * patch * out,),
                   "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
                   "final_layer.adaLN_modulation.1.bias": (2 * hidden,)})
    return shapes


def test_reference_checkpoint_layout_loads_strictly_then_converts(tmp_path):
    shapes = reference_layout(depth=2, hidden=64, heads=4, patch=2, channels=4, classes=10, size=8)
    torch.manual_seed(1)
    state = {k: torch.randn(v) * 0.05 for k, v in shapes.items()}
    torch.save(state, tmp_path / "DiT-ref.pt")
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    model.load_state_dict(torch.load(tmp_path / "DiT-ref.pt"), strict=True)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.tensor([1, 9])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, t, y), reference_dit(model, x, t, y), rtol=1e-4, atol=1e-5)
    convert_norms(model, "mhseednorm", num_heads=4)
    norms = [m for m in model.modules() if isinstance(m, SeeDNorm)]
    assert len(norms) == 5 and all(m.weight is None and m.bias is None for m in norms)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert torch.isfinite(model(x, t, y)).all()


def test_bad_input_is_a_clear_error(tmp_path):
    from vision.diffusion.generate import load_generation_module
    from vision.diffusion.vae import LatentVAE
    from vision.tasks import ClassificationModule, GenerationModule

    with pytest.raises(ValueError, match="unknown DiT model 'DiT-XXL/2'; expected one of DiT-XL/2"):
        create_dit("DiT-XXL/2")
    with pytest.raises(ValueError, match="unknown DiT model 'DiT-H/2'"):
        GenerationModule(model="DiT-H/2")
    with pytest.raises(FileNotFoundError, match=f"VAE not found: {tmp_path / 'vae'}"):
        LatentVAE(str(tmp_path / "vae"))
    with pytest.raises(ValueError, match=r"DiT expects input \(N, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        create_dit("DiT-Mi/2", input_size=8, in_channels=1)(torch.randn(2, 3, 8, 8), torch.zeros(2).long(),
                                                           torch.zeros(2).long())
    import lightning as L

    classifier = ClassificationModule()
    trainer = L.Trainer(logger=False, max_steps=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(classifier)
    trainer.save_checkpoint(tmp_path / "classifier.ckpt")
    with pytest.raises(ValueError, match="not a generation checkpoint"):
        load_generation_module(tmp_path / "classifier.ckpt")
    generator = GenerationModule(model="DiT-Mi/2", norm="mhseednorm")
    trainer.strategy.connect(generator)
    trainer.save_checkpoint(tmp_path / "dit.ckpt")
    other = GenerationModule(model="DiT-Mi/2", norm="layernorm")
    with pytest.raises(ValueError, match="checkpoint holds 'DiT-Mi/2 with mhseednorm' but this run builds "
                                         "'DiT-Mi/2 with layernorm'"):
        other.on_load_checkpoint(torch.load(tmp_path / "dit.ckpt", weights_only=False))


def tiny_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1)
    vae.save_pretrained(folder)
    return folder


def test_latent_mode_trains_and_samples_through_a_local_vae(tmp_path):
    import lightning as L

    from vision.tasks import GenerationModule

    vae_dir = tiny_vae(tmp_path / "vae")
    module = GenerationModule(model="DiT-Mi/2", norm="mhseednorm", num_classes=3, input_size=8, in_channels=4,
                              vae=str(vae_dir), grid_steps=3)
    assert module.vae.downsample == 2 and module.vae.scaling_factor == 0.18215
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    batch = (images, torch.tensor([0, 1, 2, 0]))
    module._loss(batch)["loss"].backward()
    out = module.generate(torch.tensor([0, 2]))
    assert out.shape == (2, 3, 16, 16) and out.min() >= -1 and out.max() <= 1
    assert not any(k.startswith("_vae") or ".vae." in k for k in module.state_dict()), "the VAE stays out of checkpoints"


def test_sample_command_writes_pngs_and_a_deterministic_npz(tmp_path):
    import lightning as L

    from vision.cli import main as vision_main
    from vision.tasks import GenerationModule

    module = GenerationModule(model="DiT-Mi/2", norm="mhseednorm", num_classes=3, input_size=8, in_channels=1,
                              zero_init=False)
    trainer = L.Trainer(logger=False, max_steps=0, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "dit.ckpt"
    trainer.save_checkpoint(ckpt)
    common = ["sample", "--ckpt", str(ckpt), "--num-samples", "5", "--steps", "4", "--sampler", "ddim",
              "--cfg-scale", "2.0", "--seed", "3", "--accelerator", "cpu"]
    vision_main(common + ["--out", str(tmp_path / "a"), "--batch-size", "5"])
    vision_main(common + ["--out", str(tmp_path / "b"), "--batch-size", "2", "--png", "false"])
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert a["arr_0"].shape == (5, 8, 8, 1) and a["arr_0"].dtype == np.uint8
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"{i:06d}.png" for i in range(5)] + ["samples.npz"]
    # two processes on the CPU give the same file as one
    proc = subprocess.run([sys.executable, "-m", "vision.cli"] + common + ["--out", str(tmp_path / "c"), "--devices", "2"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "c" / "samples.npz")["arr_0"], a["arr_0"])


def test_digits_end_to_end_samples_are_read_as_the_requested_class(tmp_path):
    from vision.demo import digits_judge, sample_agreement, train_digits_generator

    module, seconds = train_digits_generator("mhseednorm", steps=800, out=tmp_path)
    judge = digits_judge()
    agreement = sample_agreement(module, judge, per_class=30)
    print(f"digits DiT (mhseednorm, 800 steps, {seconds:.0f} s): {agreement:.3f} of samples read as asked; "
          f"judge {judge.real_accuracy:.3f} on real digits")
    assert judge.real_accuracy >= 0.95
    assert agreement >= 0.80


def test_latent_cache_keeps_flips_explicit_and_trains(tmp_path):
    import lightning as L
    from PIL import Image

    from vision.cli import main as vision_main
    from vision.diffusion.latents import LatentCacheDataModule, LatentCacheDataset
    from vision.diffusion.vae import LatentVAE
    from vision.tasks import GenerationModule

    vae_dir = tiny_vae(tmp_path / "vae")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    out = tmp_path / "latents.safetensors"
    vision_main(["cache-latents", "--vae", str(vae_dir), "--root", str(tmp_path / "train"), "--out", str(out),
                 "--img-size", "16", "--batch-size", "4", "--device", "cpu"])
    data = LatentCacheDataset(out)
    assert data.latents.shape == (6, 2, 4, 8, 8) and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # index 1 is the latent of the flipped image, not the flipped latent
    vae = LatentVAE(str(vae_dir))
    from vision.data.imagefolder import generation_transform

    image = generation_transform(16, train=False)(Image.open(tmp_path / "train" / "a" / "0.png").convert("RGB"))
    with torch.no_grad():
        mean = vae.vae.encode(image.flip(-1)[None]).latent_dist.mean[0] * vae.scaling_factor
    torch.testing.assert_close(data.latents[0, 1].float(), mean, rtol=2e-3, atol=2e-3)  # float16 storage
    assert (data.latents[0, 0].float().flip(-1) - mean).abs().max() > 1e-2
    module = GenerationModule(model="DiT-Mi/2", num_classes=2, input_size=8, in_channels=4, vae=str(vae_dir),
                              latent_input=True, ema_decay=None)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, LatentCacheDataModule(str(out), batch_size=2, num_workers=0))
    assert trainer.global_step == 2
    with pytest.raises(FileNotFoundError, match="latent cache not found"):
        LatentCacheDataset(tmp_path / "missing.safetensors")


def test_generation_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from vision.data import DigitsDataModule
    from vision.tasks import GenerationModule
    from vision.tasks.checkpoint import AtomicCheckpointIO

    def module():
        return GenerationModule(model="DiT-Mi/2", norm="mhseednorm", num_classes=10, input_size=8, in_channels=1,
                                lr=1e-3, ema_decay=0.99)

    def trainer(root, callbacks=()):
        return L.Trainer(max_steps=24, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=str(root),
                         callbacks=list(callbacks), plugins=[AtomicCheckpointIO()])

    data = lambda: DigitsDataModule(batch_size=64, shift=0)  # noqa: E731  (16 steps per epoch)
    L.seed_everything(0)
    full = module()
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=20, save_top_k=-1, filename="{step}")
    trainer(tmp_path / "a", [saver]).fit(full, data())
    L.seed_everything(7)
    resumed = module()
    run = trainer(tmp_path / "b")
    run.fit(resumed, data(), ckpt_path=str(tmp_path / "ckpt" / "step=20.ckpt"))
    assert run.global_step == 24
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)

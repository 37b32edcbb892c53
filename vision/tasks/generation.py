"""Class-conditional diffusion training of DiT models as a LightningModule."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from timm.utils import ModelEmaV3

from vision.diffusion import diffusion_loss, per_sample_generators, sample, train_scheduler
from vision.diffusion.images import save_grid
from vision.models.dit import DiT_models, create_dit
from vision.nn import param_groups
from vision.tasks.checkpoint import restore_rng_states, rng_states


class GenerationModule(L.LightningModule):
    """Train a DiT (any norm) with DiT's recipe: AdamW 1e-4, no weight decay, EMA 0.9999.

    Args:
        model: a name from ``vision.models.dit.DiT_models`` (e.g. "DiT-B/4").
        norm: norm of every adaLN block (``vision.nn.NORMS``).
        norm_kwargs: extra norm arguments (e.g. ``{"num_heads": 16}``).
        num_classes: class labels (a null class for guidance is added).
        input_size: side of the model input (pixels, or latents = image side / 8 with a VAE).
        in_channels: input channels (4 for the SD VAE's latents).
        learn_sigma: predict the variance too (hybrid loss of improved DDPM).
        class_dropout_prob: label dropout for classifier-free guidance.
        zero_init: adaLN-Zero initialization of the modulation and output layers.
        prediction_type: "epsilon" or "v_prediction".
        vlb_weight: weight of the variational bound term (with learn_sigma).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (through ``vision.nn.param_groups``).
        betas: AdamW betas.
        ema_decay: EMA of the weights, used for sampling; None turns it off.
        vae: latent mode: a VAE folder/file/hub id (see ``vision.diffusion.vae.LatentVAE``); images
            from the datamodule are encoded on the fly unless ``latent_input``.
        latent_input: the datamodule already yields scaled latents (a latent cache).
        sample_every_n_steps: write a grid of samples per class every N steps (0: never).
        grid_classes: classes in the grid (the first ones).
        grid_per_class: samples per class in the grid.
        grid_sampler: sampler of the grid ("ddpm", "ddim", "dpm++").
        grid_steps: sampling steps of the grid.
        grid_cfg_scale: guidance scale of the grid.
        seed: seed of the grid samples (the same noise every time, to watch training progress).
    """

    def __init__(
        self,
        model: str = "DiT-Mi/2",
        norm: str = "layernorm",
        norm_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        input_size: int = 8,
        in_channels: int = 1,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        zero_init: bool = True,
        prediction_type: str = "epsilon",
        vlb_weight: float = 1.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        ema_decay: float | None = 0.9999,
        vae: str | None = None,
        latent_input: bool = False,
        sample_every_n_steps: int = 0,
        grid_classes: int = 10,
        grid_per_class: int = 4,
        grid_sampler: str = "ddim",
        grid_steps: int = 50,
        grid_cfg_scale: float = 1.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if model not in DiT_models:
            raise ValueError(f"unknown DiT model {model!r}; expected one of {', '.join(DiT_models)}")
        self.model = create_dit(model, input_size=input_size, in_channels=in_channels, num_classes=num_classes,
                                learn_sigma=learn_sigma, class_dropout_prob=class_dropout_prob, norm=norm,
                                norm_kwargs=norm_kwargs, zero_init=zero_init)
        self.ema = ModelEmaV3(self.model, decay=ema_decay) if ema_decay else None
        self.scheduler = train_scheduler(prediction_type=prediction_type, learn_sigma=learn_sigma)
        self._vae = None
        self._last_step_time: float | None = None

    @property
    def vae(self):
        """The frozen VAE (latent mode), loaded on first use and kept out of checkpoints."""
        if self.hparams.vae and self._vae is None:
            from vision.diffusion.vae import LatentVAE

            object.__setattr__(self, "_vae", LatentVAE(self.hparams.vae).to(self.device))
        return self._vae

    @property
    def sampling_model(self):
        """The EMA weights when kept (what DiT samples with), else the trained ones."""
        return (self.ema.module if self.ema is not None else self.model).eval()

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.vae and not self.hparams.latent_input:
            return self.vae.encode(images)
        return images

    def _loss(self, batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        images, labels = batch
        x0 = self._latents(images)
        n = x0.shape[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (n,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.scheduler.add_noise(x0, noise, t)
        out = self.model(x_t, t, labels)
        return diffusion_loss(self.scheduler, out, x0, x_t, noise, t, self.hparams.learn_sigma, self.hparams.vlb_weight)

    def training_step(self, batch, batch_idx: int):
        terms = self._loss(batch)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=True, sync_dist=True)
        return terms["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        # The same timesteps and noise at every validation, so the numbers compare across epochs.
        generator = torch.Generator(self.device).manual_seed(self.hparams.seed + batch_idx)
        for name, value in self._loss(batch, generator).items():
            self.log(f"val/{name}", value, sync_dist=True)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_step_time is not None:
            self.log("train/steps_per_sec", 1.0 / (now - self._last_step_time), on_step=True, on_epoch=False)
        self._last_step_time = now

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # before callbacks run, so checkpoints hold the matching EMA
            self.ema.update(self.model, step=self.global_step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.hparams.sample_every_n_steps
        if every and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.write_grid(self.grid_path(self.global_step))

    def configure_optimizers(self):
        hp = self.hparams
        return torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, labels: torch.Tensor, indices: list[int] | None = None, seed: int | None = None,
                 sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Images in [-1, 1] for ``labels``; sample ``i`` depends only on (seed, indices[i])."""
        hp = self.hparams
        indices = list(range(len(labels))) if indices is None else indices
        generators = per_sample_generators(hp.seed if seed is None else seed, indices, self.device)
        shape = (hp.in_channels, hp.input_size, hp.input_size)
        was_training = self.model.training
        x = sample(self.sampling_model, labels.to(self.device), generators, shape, self.scheduler,
                   sampler=sampler or hp.grid_sampler, steps=steps or hp.grid_steps,
                   cfg_scale=hp.grid_cfg_scale if cfg_scale is None else cfg_scale, progress=progress)
        self.model.train(was_training)
        return self.vae.decode(x) if hp.vae else x.clamp(-1, 1)

    def grid_path(self, step: int) -> Path:
        root = Path(self.trainer.log_dir or self.trainer.default_root_dir) if self._trainer else Path(".")
        return root / "samples" / f"step_{step:07d}.png"

    def write_grid(self, path: str | Path, classes: int | None = None, per_class: int | None = None) -> torch.Tensor:
        """Sample ``per_class`` images of each of the first ``classes`` classes; one row per class."""
        classes = min(classes or self.hparams.grid_classes, self.hparams.num_classes)
        per_class = per_class or self.hparams.grid_per_class
        labels = torch.arange(classes).repeat_interleave(per_class)
        images = self.generate(labels)
        upscale = max(1, 64 // images.shape[-1])
        save_grid(images, per_class, path, upscale=upscale)
        return images

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # So a resumed single-process run draws the same noise and augmentations as an uninterrupted one.
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from vision.tasks.classification import check_same_architecture

        hp = checkpoint.get("hyper_parameters", {})
        saved = f"{hp.get('model')} with {hp.get('norm')}" if hp else None
        expected = f"{self.hparams.model} with {self.hparams.norm}"
        if saved and saved != expected:
            raise ValueError(f"checkpoint holds {saved!r} but this run builds {expected!r}")
        check_same_architecture({"state_dict": checkpoint.get("state_dict", {})}, expected, self.state_dict())
        states = checkpoint.get("rng_states")
        if states and self.trainer is not None and self.trainer.world_size == 1:
            restore_rng_states(states)

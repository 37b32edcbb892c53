"""Lightning callbacks of the tasks: FID of a generation run's samples while it trains."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from vision.metrics.fid import (FIDEvaluator, ReferenceInfo, add_images, build_extractor, generated_images,
                                load_sampling_config, prepare_reference)


class FIDCallback(L.Callback):
    """FID of a ``GenerationModule``'s samples every ``every_n_steps`` optimizer steps, logged at that step.

    The reference statistics are computed (or read from the cache) once, when fitting starts, and
    kept across evaluations (torchmetrics' ``reset_real_features=False``). Every process generates
    and scores its own block of the samples and computes the FID, as DDP requires; the statistics
    are summed, so the value is the one a single device would get. Add it to a config with::

        trainer:
          callbacks:
            - class_path: vision.tasks.callbacks.FIDCallback
              init_args: {every_n_steps: 1000, num_samples: 500, ref: digits, features: <digits ckpt>,
                          features_name: digits, sampling: digits}

    Args:
        every_n_steps: evaluate after every N optimizer steps.
        num_samples: samples per evaluation. FID is biased upwards roughly as 1/N: compare values
            at equal N only.
        ref: reference images or statistics, as ``vision fid --ref``.
        features: extractor, as ``vision fid --features``.
        features_name: label of custom features ("digits" -> "FID (digits features)").
        inception_weights: local Inception weights file.
        antialias: Inception's resize to 299 px (False: TF1-compatible).
        sampling: sampling config (name in configs/sampling/ or a YAML file); default: the module's
            grid settings (``grid_sampler``, ``grid_steps``, ``grid_cfg_scale``).
        sampler: overrides the sampler.
        steps: overrides the sampling steps.
        cfg_scale: overrides the guidance scale.
        seed: seed of the samples' labels and noise, the same at every evaluation (default: the
            sampling config's, else 0).
        batch_size: images per generation and extraction batch, per process.
        ref_stats: where to cache the reference statistics (default: under ``$VISION_FID_CACHE``).
        cache: cache the reference statistics at the default place.
        key: name of the logged metric.
    """

    def __init__(self, every_n_steps: int = 1000, num_samples: int = 500, ref: str = "digits",
                 features: str = "inception", features_name: str | None = None, inception_weights: str | None = None,
                 antialias: bool = False, sampling: str | None = None, sampler: str | None = None,
                 steps: int | None = None, cfg_scale: float | None = None, seed: int | None = None,
                 batch_size: int = 64, ref_stats: str | None = None, cache: bool = True, key: str = "val/fid") -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        if num_samples < 2:
            raise ValueError(f"num_samples must be at least 2 for a covariance, got {num_samples}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.ref = ref
        self.features = features
        self.features_name = features_name
        self.inception_weights = inception_weights
        self.antialias = antialias
        self.sampling = sampling
        self.overrides = {"sampler": sampler, "steps": steps, "cfg_scale": cfg_scale, "seed": seed}
        self.batch_size = batch_size
        self.ref_stats = ref_stats
        self.cache = cache
        self.key = key
        self.evaluator: FIDEvaluator | None = None
        self.reference: ReferenceInfo | None = None
        self.reference_builds = 0  # how often the reference side was prepared (once per fit)
        self.history: list[tuple[int, float]] = []
        self._last_step = -1

    def sampling_config(self, pl_module: L.LightningModule) -> dict[str, Any]:
        """Sampler, steps, guidance, seed and sample count of the evaluations."""
        hp = pl_module.hparams
        config = {"sampler": hp.grid_sampler, "steps": hp.grid_steps, "cfg_scale": hp.grid_cfg_scale, "seed": 0,
                  "classes": None}
        if self.sampling:
            config.update(load_sampling_config(self.sampling))
        config.update({k: v for k, v in self.overrides.items() if v is not None})
        return {**config, "num_samples": self.num_samples, "batch_size": self.batch_size}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here rather than in setup(): the module is on its device now.
        if not hasattr(pl_module, "generate"):
            raise TypeError(f"FIDCallback needs a generation module with generate(), got {type(pl_module).__name__}")
        extractor = build_extractor(self.features, inception_weights=self.inception_weights, antialias=self.antialias,
                                    name=self.features_name).to(pl_module.device)
        extractor.prepare(generated_images(pl_module, self.sampling_config(pl_module)).shape)
        self.evaluator = FIDEvaluator(extractor, device=pl_module.device)
        self.reference = prepare_reference(self.evaluator, self.ref, ref_stats=self.ref_stats, cache=self.cache,
                                           rank=trainer.global_rank, world=trainer.world_size,
                                           barrier=trainer.strategy.barrier, batch_size=self.batch_size)
        self.reference_builds += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end at one step: evaluate once.
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        value = self.evaluate(trainer, pl_module)
        self.history.append((step, value))
        # Straight to the loggers at this step: self.log() would hold a step value until the next
        # log_every_n_steps flush and drop it in between. Every process has the same value.
        for logger in trainer.loggers:
            logger.log_metrics({self.key: value}, step=step)
        # For ModelCheckpoint(monitor=key), early stopping and the progress bar.
        trainer.callback_metrics[self.key] = torch.tensor(value)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Generate this process's block of samples and return the FID (call on every process)."""
        if self.evaluator is None or self.reference is None:
            raise RuntimeError("FIDCallback.evaluate runs after on_fit_start prepared the reference")
        images = generated_images(pl_module, self.sampling_config(pl_module))
        add_images(self.evaluator, images, real=False, rank=trainer.global_rank, world=trainer.world_size,
                   batch_size=self.batch_size)
        value = self.evaluator.compute(self.reference.count or 2, images.count)["fid"]
        self.evaluator.reset_samples()
        return value

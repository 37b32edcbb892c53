"""Image classification with the DeiT recipe as a LightningModule."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from vision.models import create_model, split_name
from vision.nn import param_groups
from vision.tasks.checkpoint import restore_rng_states, rng_states


class WarmupCosine:
    """LR multiplier per step: linear warmup from ``warmup_factor`` to 1, then cosine to ``min_factor``.

    The step counts are set once training starts (``configure``): counting the training batches
    earlier would build the train loader before Lightning restores its position on resume.
    """

    def __init__(self, warmup_factor: float, min_factor: float, has_warmup: bool) -> None:
        self.warmup_factor = warmup_factor
        self.min_factor = min_factor
        self.has_warmup = has_warmup
        self.warmup_steps: int | None = None
        self.total_steps: int | None = None

    def configure(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if self.total_steps is None:  # only the initial call, before training starts
            return self.warmup_factor if self.has_warmup else 1.0
        if step < self.warmup_steps:
            return self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ClassificationModule(L.LightningModule):
    """Train a registered ViT (any norm) on an image classification datamodule.

    Defaults follow DeiT: AdamW with the learning rate scaled by batch/512, cosine schedule with
    warmup, label smoothing, Mixup/CutMix, drop path, weight decay by ``vision.nn.param_groups``.

    Args:
        model: registered name ``<arch>_<norm>`` or an arch (then ``norm`` picks the norm).
        norm: norm name when ``model`` is an arch.
        num_classes: classifier outputs.
        model_kwargs: more VisionTransformer arguments (e.g. ``img_size``, ``norm_kwargs``).
        pretrained: None, or a local weights file / True for the registered weights.
        drop_path_rate: stochastic depth (and SeeDNorm's dynamic-term dropout, unless set).
        lr: base learning rate for a global batch of ``lr_batch_size``.
        lr_batch_size: the reference batch of the linear scaling rule.
        weight_decay: AdamW weight decay (SeeDNorm's alpha/beta and weight matrices only).
        betas: AdamW betas.
        warmup_epochs: linear warmup length (fractions allowed).
        warmup_lr: learning rate at step 0.
        min_lr: final learning rate of the cosine schedule.
        label_smoothing: label smoothing (also inside Mixup).
        mixup: Mixup alpha (0 off).
        cutmix: CutMix alpha (0 off).
        mixup_prob: probability of applying Mixup/CutMix to a batch.
        mixup_switch_prob: probability of CutMix instead of Mixup when both are on.
        ema_decay: keep an exponential moving average of the weights (e.g. 0.99996) and
            evaluate it alongside; None turns it off.
        compile: run the model through ``torch.compile``.
    """

    def __init__(
        self,
        model: str = "vit_micro_patch2_8",
        norm: str | None = "mhseednorm",
        num_classes: int = 10,
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        drop_path_rate: float = 0.1,
        lr: float = 5e-4,
        lr_batch_size: int = 512,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        label_smoothing: float = 0.1,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model_name = f"{model}_{norm}" if norm else model
        split_name(self.model_name)
        self.model = create_model(self.model_name, pretrained=pretrained or False, num_classes=num_classes,
                                  drop_path_rate=drop_path_rate, **(model_kwargs or {}))
        self.ema = ModelEmaV3(self.model, decay=ema_decay) if ema_decay else None
        self.mixup = None
        if mixup_prob > 0 and (mixup > 0 or cutmix > 0):
            self.mixup = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob, switch_prob=mixup_switch_prob,
                               label_smoothing=label_smoothing, num_classes=num_classes)
        self.train_loss = SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{stage}_{k}": MulticlassAccuracy(num_classes, top_k=k_val, average="micro")
            for stage in ("val", "val_ema", "test", "test_ema") for k, k_val in (("acc1", 1), ("acc5", top5))
        })
        self._step_started: float | None = None
        self._compiled = None

    # -- model ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.hparams.compile and self._compiled is None:
            # Kept off the module tree so that state_dict keys stay the model's own.
            object.__setattr__(self, "_compiled", torch.compile(self.model))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self._compiled or self.model)(images)

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        images, targets = batch
        if self.mixup is not None:
            if images.shape[0] % 2:
                raise ValueError(f"Mixup/CutMix need an even batch size, got {images.shape[0]}")
            images, targets = self.mixup(images, targets)
        loss = self.train_loss(self(images), targets)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._step_started is not None:
            images = batch[0].shape[0] * self.trainer.world_size
            self.log("train/images_per_sec", images / (now - self._step_started), on_step=True, on_epoch=False)
        self._step_started = now

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: callbacks (checkpointing) run before that hook,
        # and a checkpoint must hold the EMA of the weights it holds.
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_train_epoch_start(self) -> None:
        self._step_started = None  # the first step of an epoch includes loader start-up

    def configure_optimizers(self):
        hp = self.hparams
        global_batch = self._batch_size() * self.trainer.world_size * self.trainer.accumulate_grad_batches
        lr = hp.lr * global_batch / hp.lr_batch_size
        optimizer = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=lr, betas=tuple(hp.betas))
        self.schedule = WarmupCosine(hp.warmup_lr / lr, min(1.0, hp.min_lr / lr), hp.warmup_epochs > 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        total_steps = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        self.schedule.configure(round(self.hparams.warmup_epochs * steps_per_epoch), total_steps)

    def _batch_size(self) -> int:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "batch_size"):
            raise ValueError("ClassificationModule scales its learning rate by the batch size: train it with a "
                             "datamodule that has a batch_size attribute (vision.data)")
        return datamodule.batch_size

    # -- evaluation -----------------------------------------------------------------------------
    def _evaluate(self, batch, stage: str) -> None:
        images, targets = batch
        outputs = [("", self(images))]
        if self.ema is not None:
            outputs.append(("_ema", self.ema.module(images)))
        for suffix, logits in outputs:
            self.log(f"{stage}{suffix}/loss", self.eval_loss(logits, targets), sync_dist=True)
            for k in ("acc1", "acc5"):
                metric = self.metrics[f"{stage}{suffix}_{k}"]
                metric(logits, targets)
                self.log(f"{stage}{suffix}/{k}", metric, prog_bar=k == "acc1" and not suffix)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # So a resumed single-process run draws the same noise and augmentations as an uninterrupted one.
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_same_architecture(checkpoint, self.model_name, self.state_dict())
        states = checkpoint.get("rng_states")
        if states and self.trainer is not None and self.trainer.world_size == 1:
            restore_rng_states(states)


def check_same_architecture(checkpoint: dict[str, Any], expected: str, state: dict[str, torch.Tensor]) -> None:
    """Raise one clear line when a checkpoint was saved by a different architecture."""
    hparams = checkpoint.get("hyper_parameters", {})
    saved = f"{hparams['model']}_{hparams['norm']}" if hparams.get("norm") else hparams.get("model")
    if saved and saved != expected:
        raise ValueError(f"checkpoint holds model {saved!r} but this run builds {expected!r}")
    saved_state = checkpoint.get("state_dict", {})
    for key, value in state.items():
        if key in saved_state and saved_state[key].shape != value.shape:
            raise ValueError(f"checkpoint parameter {key} has shape {tuple(saved_state[key].shape)}, "
                             f"this model's has {tuple(value.shape)}: a different architecture")
    missing = [k for k in state if k.startswith("model.") and k not in saved_state]
    if saved_state and missing:
        raise ValueError(f"checkpoint lacks {len(missing)} parameters of {expected!r} (e.g. {missing[0]}): "
                         "a different architecture")

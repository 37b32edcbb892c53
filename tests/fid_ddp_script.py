"""Run by tests/test_fid.py in a subprocess: ``fid`` and ``FIDCallback`` on 2 CPU processes (DDP over gloo).

Usage: python fid_ddp_script.py fid '<json kwargs of vision.metrics.fid.fid>'
       python fid_ddp_script.py callback '<json: generator, classifier, out>'
Lightning relaunches this script for rank 1 with the same arguments; rank 0 writes the results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def run_fid(kwargs: dict) -> None:
    from vision.metrics.fid import fid

    fid(devices=2, accelerator="cpu", strategy="ddp", progress=False, **kwargs)


def run_callback(args: dict) -> None:
    import lightning as L

    from vision.data.digits import DigitsDataModule
    from vision.diffusion.generate import load_generation_module
    from vision.tasks.callbacks import FIDCallback

    module = load_generation_module(args["generator"]).train()
    module.hparams.lr = 0.0  # the weights stay those of the checkpoint, so every FID can be checked
    callback = FIDCallback(every_n_steps=2, num_samples=args["num_samples"], ref="digits",
                           features=args["classifier"], features_name="digits", sampler="ddim", steps=10,
                           cfg_scale=2.0, seed=0, batch_size=32)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=4, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, DigitsDataModule(batch_size=16, shift=0))
    if trainer.is_global_zero:
        Path(args["out"]).write_text(json.dumps({"history": callback.history, "world": trainer.world_size,
                                                 "builds": callback.reference_builds,
                                                 "logged": float(trainer.callback_metrics["val/fid"])}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    {"fid": run_fid, "callback": run_callback}[mode](payload)

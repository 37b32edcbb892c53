"""The ``vision`` command.

``vision fit|validate|test`` is LightningCLI: a model (``vision.tasks``) and a datamodule
(``vision.data``) from a YAML config, every argument overridable on the command line, resume with
``--ckpt_path``. The other commands are built by jsonargparse (the parser LightningCLI uses) from
their functions' signatures and docstrings.
"""

from __future__ import annotations

import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

USAGE = """usage: vision <command> [options]

training and evaluation (LightningCLI; `vision fit --help` for all options):
  fit        train:    vision fit --config configs/classification/vit_micro_digits.yaml
  validate   evaluate: vision validate --config <config> --ckpt_path <ckpt>
  test       test:     vision test --config <config> --ckpt_path <ckpt>

other commands (`vision <command> --help`):
  demo       the main job: train the digits ViT with multihead SeeDNorm and LayerNorm, compare
  export     write a checkpoint's weights as safetensors that timm loads
  bench      benchmarks: `vision bench norms`, `vision bench train`
"""


def _components() -> dict:
    from vision.bench import bench_norms, bench_train
    from vision.demo import demo
    from vision.tasks.checkpoint import export_weights

    return {
        "demo": demo,
        "export": export_weights,
        "bench": {"norms": bench_norms, "train": bench_train},
    }


def run_lightning(argv: list[str]):
    """Run LightningCLI with this project's defaults; returns the CLI object."""
    import lightning as L
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.plugins.io import CheckpointIO

    import vision  # noqa: F401  (registers the models)
    from vision.tasks.checkpoint import AtomicCheckpointIO

    class VisionCLI(LightningCLI):
        def _instantiate_trainer(self, config, callbacks):
            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())
            config["plugins"] = plugins
            return super()._instantiate_trainer(config, callbacks)

    return VisionCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``vision`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in LIGHTNING_COMMANDS:
        run_lightning(argv)
        return
    from jsonargparse import auto_cli

    components = _components()
    if argv[0] not in components:
        raise SystemExit(f"vision: unknown command {argv[0]!r}; expected one of "
                         f"{', '.join(LIGHTNING_COMMANDS + tuple(components))}")
    auto_cli(components, args=argv, as_positional=False)


if __name__ == "__main__":
    main()

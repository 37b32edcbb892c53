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
  demo       the main job: digits ViTs and DiTs with multihead SeeDNorm and with LayerNorm, compared
  sample     images from a generation checkpoint: PNGs and samples.npz (arr_0: uint8 NHWC)
  cache-latents  encode a training folder (and its flips) through the VAE once, for latent training
  fid        FID (KID, IS) of samples against a reference, Inception or a custom feature extractor
  robustness classifiers under ImageNet-C corruptions and natural shift: JSON, CSV, markdown, plot
  export     write a checkpoint's weights as safetensors that timm loads
  bench      benchmarks: `vision bench norms|train|dit|gpu`
"""


def _components() -> dict:
    from vision.bench import bench_dit, bench_norms, bench_train
    from vision.bench_gpu import bench_gpu
    from vision.demo import demo
    from vision.diffusion.generate import sample
    from vision.diffusion.latents import cache_latents
    from vision.metrics.fid import fid
    from vision.robustness import robustness
    from vision.tasks.checkpoint import export_weights

    return {
        "demo": demo,
        "sample": sample,
        "cache-latents": cache_latents,
        "fid": fid,
        "robustness": robustness,
        "export": export_weights,
        "bench": {"norms": bench_norms, "train": bench_train, "dit": bench_dit, "gpu": bench_gpu},
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


def _underscored(argv: list[str]) -> list[str]:
    """Accept ``--num-samples`` as well as ``--num_samples`` (jsonargparse names options by argument)."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


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

    from vision.bench_gpu import GPUUnavailableError
    from vision.robustness import cli_arguments

    components = _components()
    if argv[0] not in components:
        raise SystemExit(f"vision: unknown command {argv[0]!r}; expected one of "
                         f"{', '.join(LIGHTNING_COMMANDS + tuple(components))}")
    args = _underscored(argv)
    if args[0] == "robustness":  # --ckpt A --ckpt B means a list of checkpoints
        args = [args[0]] + cli_arguments(args[1:])
    try:
        auto_cli(components, args=args, as_positional=False)
    except (GPUUnavailableError, FileNotFoundError, ValueError) as exc:
        # Bad input: one line naming the value, not a traceback.
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()

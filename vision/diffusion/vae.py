"""Latent mode: diffusers' ``AutoencoderKL`` from a local folder/file, or a hub id with internet."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


class LatentVAE(nn.Module):
    """Frozen VAE mapping images in [-1, 1] to scaled latents and back.

    Args:
        source: a local diffusers folder (with config.json), a single ``.safetensors``/``.ckpt``
            file, or a hub id such as ``stabilityai/sd-vae-ft-ema`` (downloaded by diffusers; needs
            internet or a filled Hugging Face cache).
        scaling_factor: latent scale; None takes the VAE's ``config.scaling_factor`` (0.18215 for
            the Stable Diffusion VAE).
    """

    def __init__(self, source: str, scaling_factor: float | None = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        path = Path(source).expanduser()
        try:
            if path.is_dir():
                vae = AutoencoderKL.from_pretrained(str(path))
            elif path.is_file():
                vae = AutoencoderKL.from_single_file(str(path))
            elif _looks_like_hub_id(source):
                vae = AutoencoderKL.from_pretrained(source)
            else:
                raise FileNotFoundError(f"VAE not found: {source} (expected a diffusers folder, a .safetensors "
                                        "file, or a hub id like stabilityai/sd-vae-ft-ema)")
        except (OSError, ValueError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise OSError(f"cannot load VAE {source!r}: {str(exc).splitlines()[0]} (offline? pass a local folder "
                          "saved with AutoencoderKL.save_pretrained)") from None
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else vae.config.scaling_factor)
        self.latent_channels = vae.config.latent_channels
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> latents (N, C, H/f, W/f), scaled; a posterior sample or its mean."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return (dist.sample(generator) if sample else dist.mean) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample.clamp(-1, 1)

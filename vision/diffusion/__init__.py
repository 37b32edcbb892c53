"""Diffusion through diffusers: training schedule and losses, samplers with guidance, latent VAE."""

from vision.diffusion.sampling import SAMPLERS, make_sampler, per_sample_generators, sample
from vision.diffusion.schedule import diffusion_loss, train_scheduler

__all__ = ["SAMPLERS", "diffusion_loss", "make_sampler", "per_sample_generators", "sample", "train_scheduler"]

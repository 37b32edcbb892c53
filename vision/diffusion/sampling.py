"""Sampling with diffusers' schedulers (DDPM, DDIM, DPM-Solver++) and classifier-free guidance."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

SAMPLERS = ("ddpm", "ddim", "dpm++")


def make_sampler(name: str, train: DDPMScheduler):
    """A fresh sampling scheduler with the training schedule's betas and prediction type."""
    common = dict(num_train_timesteps=train.config.num_train_timesteps, beta_schedule=train.config.beta_schedule,
                  beta_start=train.config.beta_start, beta_end=train.config.beta_end,
                  prediction_type=train.config.prediction_type)
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=False, variance_type=train.config.variance_type)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")


def per_sample_generators(seed: int, indices: list[int] | torch.Tensor, device: torch.device) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, index): a sample does not depend on its batch."""
    return [torch.Generator(device).manual_seed(seed * 1_000_003 + int(i)) for i in indices]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in generators])


@torch.no_grad()
def sample(
    model: Callable,
    labels: torch.Tensor,
    generators: list[torch.Generator],
    shape: tuple[int, int, int],
    train: DDPMScheduler,
    sampler: str = "ddim",
    steps: int = 50,
    cfg_scale: float = 1.0,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one sample per label; ``model`` is a DiT (``forward_with_cfg``). Returns (N, C, H, W)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    scheduler = make_sampler(sampler, train)
    device = labels.device
    scheduler.set_timesteps(steps, device=device)
    x = initial_noise(generators, shape, device) * scheduler.init_noise_sigma
    channels = shape[0]
    for t in tqdm(scheduler.timesteps, disable=not progress, desc=f"{sampler} x{steps}", leave=False):
        tt = torch.full((x.shape[0],), int(t), device=device, dtype=torch.long)
        out = model.forward_with_cfg(scheduler.scale_model_input(x, t), tt, labels, cfg_scale)
        if sampler != "ddpm":  # DDIM and DPM-Solver use the noise prediction only
            out = out[:, :channels]
        kwargs = {"generator": generators} if sampler == "ddpm" else {}
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x

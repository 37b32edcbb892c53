"""Training noise schedule (diffusers' DDPMScheduler) and the diffusion losses.

DiT's setup: linear betas 1e-4..0.02 over 1000 steps, epsilon prediction (v-prediction as an
option), and with a learned variance the hybrid loss of improved DDPM (Nichol & Dhariwal 2021):
``L_simple + vlb_weight * L_vlb``, where ``L_vlb`` is the KL between the true posterior
``q(x_{t-1} | x_t, x_0)`` and the model's Gaussian (its mean from the stop-gradient noise
prediction, its log-variance interpolated between ``log beta_t`` and ``log beta~_t``), in bits
per dimension, and the discretized Gaussian decoder likelihood at ``t = 0``. Written from the
paper's equations.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler

PREDICTION_TYPES = ("epsilon", "v_prediction")


def train_scheduler(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                    prediction_type: str = "epsilon", learn_sigma: bool = True) -> DDPMScheduler:
    """DiT's training schedule as a diffusers ``DDPMScheduler`` (no sample clipping)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {', '.join(PREDICTION_TYPES)}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear", beta_start=beta_start,
                         beta_end=beta_end, prediction_type=prediction_type, clip_sample=False,
                         variance_type="learned_range" if learn_sigma else "fixed_small")


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return values.to(t.device)[t].float().view(-1, *([1] * (ndim - 1)))


def _normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for x in [-1, 1] quantized to 256 levels, under N(mean, exp(log_scale)^2)."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def predicted_x0(scheduler: DDPMScheduler, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_0 implied by an epsilon or v prediction."""
    alpha_bar = _gather(scheduler.alphas_cumprod, t, x_t.ndim)
    if scheduler.config.prediction_type == "epsilon":
        return (x_t - torch.sqrt(1 - alpha_bar) * model_output) / torch.sqrt(alpha_bar)
    return torch.sqrt(alpha_bar) * x_t - torch.sqrt(1 - alpha_bar) * model_output


def vlb_terms(scheduler: DDPMScheduler, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              prediction: torch.Tensor, variance_output: torch.Tensor) -> torch.Tensor:
    """Per-sample variational bound term (bits/dim): KL for t > 0, decoder NLL for t = 0."""
    ndim = x_t.ndim
    alphas, alpha_bar = scheduler.alphas, scheduler.alphas_cumprod
    alpha_bar_prev = torch.cat([torch.ones(1), alpha_bar[:-1]])
    betas = scheduler.betas
    posterior_var = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    # beta~_0 is 0: its log is replaced by that of beta~_1, as in improved DDPM.
    posterior_log_var = torch.log(torch.cat([posterior_var[1:2], posterior_var[1:]]))
    coef_x0 = betas * torch.sqrt(alpha_bar_prev) / (1 - alpha_bar)
    coef_xt = (1 - alpha_bar_prev) * torch.sqrt(alphas) / (1 - alpha_bar)

    def posterior_mean(x_start):
        return _gather(coef_x0, t, ndim) * x_start + _gather(coef_xt, t, ndim) * x_t

    true_mean, true_log_var = posterior_mean(x0), _gather(posterior_log_var, t, ndim)
    frac = (variance_output + 1) / 2
    model_log_var = frac * _gather(torch.log(betas), t, ndim) + (1 - frac) * true_log_var
    model_mean = posterior_mean(predicted_x0(scheduler, prediction, x_t, t))
    kl = _normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).mean(1) / math.log(2.0)
    nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var).flatten(1).mean(1) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def diffusion_loss(scheduler: DDPMScheduler, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                   noise: torch.Tensor, t: torch.Tensor, learn_sigma: bool, vlb_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The training loss: MSE on the noise (or v) target, plus the VLB term with a learned variance."""
    channels = x0.shape[1]
    prediction = model_output[:, :channels]
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(x0, noise, t)
    mse = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    terms = {"mse": mse.mean()}
    loss = mse
    if learn_sigma:
        # The mean gets its gradient from the MSE only; the VLB trains the variance (improved DDPM).
        vb = vlb_terms(scheduler, x0.float(), x_t.float(), t, prediction.detach().float(),
                       model_output[:, channels:].float())
        terms["vlb"] = vb.mean()
        loss = loss + vlb_weight * vb
    terms["loss"] = loss.mean()
    return terms

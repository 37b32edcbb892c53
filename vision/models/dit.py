"""Diffusion Transformers (DiT, Peebles & Xie 2023) whose adaLN norms can be any registered norm.

Parameter names and shapes follow the published DiT checkpoints (``x_embedder``, ``t_embedder``,
``y_embedder``, ``pos_embed``, ``blocks.N.{attn,mlp,adaLN_modulation}``, ``final_layer``), so a
released DiT-XL/2 file loads strictly with ``norm="layernorm"``. With ``norm="seednorm"`` or
``"mhseednorm"`` every norm is ``SeeDNorm(D, elementwise_affine=False)`` followed by the usual
modulation: AdaSeeDNorm of SEEDNORM.md section 4.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Attention
from torch import nn

from vision.nn import SeeDNorm, norm_layer
from vision.nn.functional import seednorm_modulate

# name -> (depth, hidden_size, num_heads, patch_size)
DIT_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6),
             # small configurations for 8-32 px images
             "Ti": (6, 192, 3), "Mi": (4, 128, 4)}
DiT_models: dict[str, dict[str, int]] = {
    f"DiT-{size}/{patch}": {"depth": d, "hidden_size": h, "num_heads": n, "patch_size": patch}
    for size, (d, h, n) in DIT_SIZES.items()
    for patch in ((2, 4, 8) if size in ("XL", "L", "B", "S") else (1, 2, 4))
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of tokens (N, T, D) by per-sample shift and scale (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def norm_modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``modulate(norm(x), shift, scale)``; for AdaSeeDNorm a single fused kernel on CUDA."""
    if isinstance(norm, SeeDNorm) and norm.weight is None and norm.bias is None and not (
            norm.training and norm.dyn_dropout > 0):
        return seednorm_modulate(x, norm.alpha, norm.beta, shift, scale, num_heads=norm.num_heads, eps=norm.eps,
                                 dot_scale=norm.dot_scale, impl=norm.impl)
    return modulate(norm(x), shift, scale)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos, sin] of geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid*grid, dim), tokens in row-major order.

    The first half of each vector encodes the column, the second half the row (MAE's layout,
    which the released DiT checkpoints store).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """Timesteps -> vectors: sinusoidal features through a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors, with a learned null class (index ``num_classes``) for guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: norms modulated by the condition, gated residuals."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, make_norm) -> None:
        super().__init__()
        self.norm1 = make_norm(hidden_size)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = make_norm(hidden_size)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(norm_modulate(self.norm1, x, shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(norm_modulate(self.norm2, x, shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Modulated norm and a linear map from tokens to patches of the output channels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, make_norm) -> None:
        super().__init__()
        self.norm_final = make_norm(hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(norm_modulate(self.norm_final, x, shift, scale))


class DiT(nn.Module):
    """Class-conditional Diffusion Transformer.

    Args:
        input_size: side of the (latent or pixel) input.
        patch_size: side of a patch.
        in_channels: input channels (4 for SD-VAE latents, 1 or 3 for pixels).
        hidden_size: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width / token width.
        class_dropout_prob: label dropout in training (classifier-free guidance); > 0 adds the
            null class embedding.
        num_classes: number of classes.
        learn_sigma: also predict the variance (output has twice the input channels).
        norm: norm name from ``vision.nn.NORMS``; every norm is built without its own affine
            parameters (adaLN supplies scale and shift).
        norm_kwargs: extra norm arguments (e.g. ``{"num_heads": 16, "alpha_init": 1.0}``).
        zero_init: zero the modulation and output layers (adaLN-Zero); the output is exactly 0 at
            initialization. DyT's DiT port found this, with the learning rate, decides whether a
            swapped norm trains well, so it is a switch.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        norm: str = "layernorm",
        norm_kwargs: dict[str, Any] | None = None,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"DiT input_size {input_size} is not divisible by patch_size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.input_size = input_size
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.norm = norm
        self.zero_init = zero_init
        make_norm = norm_layer(norm, elementwise_affine=False, eps=1e-6, **(norm_kwargs or {}))
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        grid = input_size // patch_size
        # A parameter that never trains, as in the released checkpoints (they store it).
        self.pos_embed = nn.Parameter(sincos_2d(hidden_size, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, make_norm) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, make_norm)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialization; the zeroed layers make every block start as the identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # The patch embedding is a linear map of flattened patches: initialize it as one.
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.zero_init:
            for block in self.blocks:
                nn.init.zeros_(block.adaLN_modulation[-1].weight)
                nn.init.zeros_(block.adaLN_modulation[-1].bias)
            for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, T, p*p*C) -> images (N, C, H, W)."""
        p, c = self.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predict noise (and variance) for noisy inputs ``x`` (N, C, H, W) at timesteps ``t`` of class ``y``."""
        if x.shape[1:] != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"DiT expects input (N, {self.in_channels}, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance on the noise prediction, in one batched pass.

        ``eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)`` on all ``in_channels`` noise
        channels (DiT's own code guides only the first three); a learned variance is taken from the
        conditional pass. ``cfg_scale == 1`` is the conditional prediction itself.
        """
        if cfg_scale == 1.0:
            return self(x, t, y)
        null = torch.full_like(y, self.num_classes)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        c = self.in_channels
        eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)


def create_dit(name: str, **kwargs: Any) -> DiT:
    """Build a DiT from ``DiT_models`` (e.g. "DiT-XL/2"); keyword arguments override."""
    if name not in DiT_models:
        raise ValueError(f"unknown DiT model {name!r}; expected one of {', '.join(DiT_models)}")
    return DiT(**{**DiT_models[name], **kwargs})

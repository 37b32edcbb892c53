"""Independent float64 references used by the tests (written from SEEDNORM.md, not from vision/)."""

import math

import torch


def seednorm(x, weight, alpha, beta, bias=None, num_heads=1, eps=1e-6, dot_scale="none", mask=None, p=0.0):
    """SeeDNorm in float64, one head at a time; ``mask`` is the kept-element mask of dropout."""
    x = x.double()
    dim = x.shape[-1]
    d = dim // num_heads
    scale = {"none": 1.0, "sqrt_dim": 1.0 / math.sqrt(d), "dim": 1.0 / d}[dot_scale]
    r = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    pieces = []
    for h in range(num_heads):
        sl = slice(h * d, (h + 1) * d)
        s = (x[..., sl] * beta[sl].double()).sum(-1, keepdim=True) * scale
        dyn = alpha[sl].double() * torch.tanh(s)
        if mask is not None:
            dyn = dyn * mask[..., sl].double() / (1.0 - p)
        gamma = weight[sl].double() if weight is not None else 1.0
        pieces.append((gamma + dyn) * x[..., sl] / r)
    y = torch.cat(pieces, -1)
    if bias is not None:
        y = y + bias.double()
    return y


def rmsnorm(x, weight, eps):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * weight.double() if weight is not None else y

"""``Corrupt``: an ImageNet-C corruption as a transform for torchvision / Lightning pipelines."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vision.corruptions.params import ALL, COMMON, GROUPS
from vision.corruptions.registry import check_severity, corrupt, get_corruption, resolve_scale

NAME_SETS: dict[str, tuple[str, ...]] = {"common": COMMON, "all": ALL, **GROUPS}


def _names(spec: str | Sequence[str]) -> tuple[str, ...]:
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError("Corrupt needs at least one corruption name")
    out: list[str] = []
    for item in items:
        if item in NAME_SETS:
            out.extend(NAME_SETS[item])
        else:
            out.append(get_corruption(item).name)  # raises for unknown names
    return tuple(dict.fromkeys(out))


def _severities(spec: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        values = tuple(spec)
        if len(values) == 2 and values[0] < values[1]:  # an inclusive (low, high) range
            values = tuple(range(values[0], values[1] + 1))
    else:
        values = (spec,)
    if not values:
        raise ValueError("Corrupt needs at least one severity")
    for s in values:
        check_severity(s)
    return tuple(int(s) for s in values)


class Corrupt(nn.Module):
    """Corrupt each image with probability ``p`` by one of ``names`` at one of ``severities``.

    Args:
        names: a corruption name, a group ("noise", "blur", "weather", "digital", "hold-out"),
            "common" (the 15 benchmark corruptions), "all" (19), or a sequence of these.
        severity: an int 1-5, a (low, high) inclusive range, or a sequence of severities.
        p: probability of corrupting an image.
        scale: "auto", "imagenet" or "cifar" (see ``corrupt``).
        seed: makes the sequence of choices and draws reproducible; None uses torch's global RNG
            (so DataLoader workers, which torch seeds differently, draw differently).

    Works on a float CHW image or an NCHW batch in [0, 1] (before normalisation). In a batch each
    image gets its own corruption and severity; images sharing a choice are corrupted together.
    """

    def __init__(self, names: str | Sequence[str], severity: int | Sequence[int] = (1, 5), p: float = 1.0,
                 scale: str = "auto", seed: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1]; got {p!r}")
        if scale not in ("auto", "imagenet", "cifar"):
            raise ValueError(f"unknown scale {scale!r}; expected 'auto', 'imagenet' or 'cifar'")
        self.names = _names(names)
        self.severities = _severities(severity)
        self.p = float(p)
        self.scale = scale
        self.seed = seed
        self._choices = None if seed is None else torch.Generator().manual_seed(int(seed))

    def _randint(self, high: int, n: int) -> Tensor:
        return torch.randint(high, (n,), generator=self._choices)

    def forward(self, images: Tensor) -> Tensor:
        """Corrupt a CHW image or an NCHW batch; returns the same shape and dtype."""
        single = images.ndim == 3
        batch = images.unsqueeze(0) if single else images
        if batch.ndim != 4:
            raise ValueError(f"Corrupt expects a CHW image or an NCHW batch; got shape {tuple(images.shape)}")
        n = batch.shape[0]
        chosen = torch.rand(n, generator=self._choices) < self.p
        which = self._randint(len(self.names), n)
        level = self._randint(len(self.severities), n)
        out = batch.clone()
        scale = resolve_scale(self.scale, batch)
        for key in torch.unique(which[chosen] * len(self.severities) + level[chosen]).tolist():
            name, severity = self.names[key // len(self.severities)], self.severities[key % len(self.severities)]
            rows = (chosen & (which == key // len(self.severities)) & (level == key % len(self.severities)))
            index = rows.nonzero().squeeze(1).to(batch.device)
            seed = None if self._choices is None else int(torch.randint(2 ** 62, (1,), generator=self._choices))
            out[index] = corrupt(batch[index], name, severity, scale=scale, seed=seed)
        return out[0] if single else out

    def extra_repr(self) -> str:
        names = self.names if len(self.names) <= 4 else f"{len(self.names)} corruptions"
        return f"names={names}, severities={self.severities}, p={self.p}, scale={self.scale!r}, seed={self.seed}"

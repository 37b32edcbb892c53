"""A picture of every corruption at a few severities on one real photo (for the README)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch

from vision.corruptions.params import ALL
from vision.files import atomic_write


def save_corruption_grid(path: str, *, image: str = "astronaut", size: int = 224, severities: Sequence[int] = (1, 3, 5),
                         tile: int = 112, seed: int = 0) -> str:
    """Write a PNG grid: the clean photo, then each of the 19 corruptions at ``severities``.

    The photo is one of scikit-image's samples, centre-cropped and resized to ``size`` (224 uses
    the ImageNet-C table); tiles are shown at ``tile`` pixels. Saved as an optimised RGB PNG (no
    palette: quantising would add its own artefacts) with ``atomic_write``. Returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from vision.corruptions.bench import SAMPLE_IMAGES, sample_photos
    from vision.corruptions.registry import corrupt

    order = list(SAMPLE_IMAGES)
    if image not in order:
        raise ValueError(f"unknown sample image {image!r}; expected one of {', '.join(order)}")
    photo = sample_photos(size, order.index(image) + 1)[-1]
    x = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255

    def show(t: torch.Tensor) -> np.ndarray:
        arr = (t[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return np.asarray(Image.fromarray(arr).resize((tile, tile), Image.LANCZOS))

    rows_per_panel = (len(ALL) + 1 + 1) // 2  # two side-by-side panels of (corruption x severities)
    names = [None] + list(ALL)
    cols = len(severities)
    fig, axes = plt.subplots(rows_per_panel, 2 * cols, figsize=(2 * cols * tile / 80, rows_per_panel * tile / 80),
                             dpi=100)
    for ax in axes.flat:
        ax.axis("off")
    for i, name in enumerate(names):
        panel, row = divmod(i, rows_per_panel)
        for j, s in enumerate(severities):
            ax = axes[row, panel * cols + j]
            if name is None:
                if j == 0:
                    ax.imshow(show(x))
                    ax.set_title("clean", fontsize=8)
                continue
            ax.imshow(show(corrupt(x, name, s, seed=seed)))
            if row == 0 or (panel == 0 and row == 1):
                ax.set_title(f"severity {s}", fontsize=8)
            if j == 0:
                ax.text(-0.04, 0.5, name.replace("_", " "), transform=ax.transAxes, ha="right", va="center",
                        fontsize=8, rotation=90)
    fig.subplots_adjust(left=0.03, right=0.995, top=0.98, bottom=0.005, wspace=0.04, hspace=0.12)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=100, format="png")
    finally:
        plt.close(fig)
    rgb = Image.open(buffer).convert("RGB")
    atomic_write(path, lambda tmp: rgb.save(tmp, format="PNG", optimize=True))
    return path

"""A pre-encoded latent cache: encode a training set through the VAE once, train on the latents.

Each image is stored twice, as the latent of the image and as the latent of its horizontal flip:
flipping a latent is not the same as encoding the flipped image, so the flip is kept explicit and
training picks one of the two at random.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vision.data.imagefolder import ImageListDataset, generation_transform, scan_image_folder
from vision.data.loading import make_loader
from vision.files import atomic_write


def cache_latents(vae: str, root: str, out: str, img_size: int = 256, batch_size: int = 32,
                  device: str = "auto", check_images: bool = True) -> str:
    """Encode every image of an ImageNet-style folder (and its flip) into a latent cache file.

    Args:
        vae: VAE folder, file or hub id (see ``vision.diffusion.vae.LatentVAE``).
        root: image folder ``<root>/<class>/<image>`` (e.g. ``data/imagenet/train``).
        out: the ``.safetensors`` file to write (atomically): ``latents`` (N, 2, C, h, w) float16
            (index 1 is the flipped image), ``labels`` (N,), and the classes in its metadata. The
            latents are the VAE posterior's means (its spread is tiny for the SD VAE), so the
            cache does not depend on a seed.
        img_size: ADM center crop side before encoding.
        batch_size: images per VAE pass.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        check_images: open every image header first, to fail before hours of encoding.
    """
    from vision.diffusion.vae import LatentVAE

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    samples, class_to_idx = scan_image_folder(root, check_images=check_images)
    dataset = ImageListDataset(samples, generation_transform(img_size, train=False))
    model = LatentVAE(vae).to(dev)
    latents, labels = [], []
    for images, targets in tqdm(DataLoader(dataset, batch_size=batch_size), desc="encoding", unit="batch"):
        images = images.to(dev)
        pair = torch.stack([model.encode(images, sample=False), model.encode(images.flip(-1), sample=False)], dim=1)
        latents.append(pair.half().cpu())
        labels.append(targets)
    tensors = {"latents": torch.cat(latents).contiguous(), "labels": torch.cat(labels).contiguous()}
    classes = ",".join(sorted(class_to_idx, key=class_to_idx.get))
    metadata = {"vae": vae, "img_size": str(img_size), "scaling_factor": str(model.scaling_factor), "classes": classes}
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    print(f"wrote {len(tensors['labels'])} latent pairs {tuple(tensors['latents'].shape[2:])} to {out}")
    return out


class LatentCacheDataset(Dataset):
    """Latents of a cache file; each item is the image's latent or its flip's, at random."""

    def __init__(self, path: str | Path, flip: bool = True) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latent cache not found: {path} (write one with vision cache-latents)")
        tensors = load_file(str(path))
        if set(tensors) != {"latents", "labels"} or tensors["latents"].dim() != 5 or tensors["latents"].shape[1] != 2:
            raise ValueError(f"{path} is not a latent cache: expected latents (N, 2, C, h, w) and labels (N,)")
        self.latents, self.labels = tensors["latents"], tensors["labels"]
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        which = int(torch.randint(0, 2, ())) if self.flip else 0
        return self.latents[i, which].float(), self.labels[i]


class LatentCacheDataModule(L.LightningDataModule):
    """Training batches from a latent cache (use with ``GenerationModule(latent_input=True, vae=...)``).

    Args:
        path: the cache file written by ``vision cache-latents``.
        batch_size: latents per batch per process.
        num_workers: loader processes.
        flip: pick the flipped image's latent half of the time.
        seed: shuffling seed.
    """

    def __init__(self, path: str, batch_size: int = 32, num_workers: int = 2, flip: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.dataset: LatentCacheDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = LatentCacheDataset(self.hparams.path, self.hparams.flip)

    def train_dataloader(self):
        self.setup()
        return make_loader(self.dataset, batch_size=self.batch_size, train=True, num_workers=self.hparams.num_workers,
                           seed=self.hparams.seed, trainer=self.trainer)

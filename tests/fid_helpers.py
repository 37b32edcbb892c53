"""Builders for the FID tests: a random-weights Inception file, tiny digits classifier and generator checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch


def write_random_inception_weights(path: Path, seed: int = 0) -> Path:
    """Save torch-fidelity's InceptionV3 with random weights: the real file's keys and shapes, no download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            return None  # keep the random initialisation

    empty = path.with_suffix(".empty")
    torch.save({}, empty)  # torch-fidelity loads a file unless it downloads one
    torch.manual_seed(seed)
    net = Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    # He initialisation keeps activations at unit scale through the 94 convolutions (PyTorch's
    # default shrinks them ~1e5-fold), so features and logits differ visibly between images.
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.nn.init.normal_(net.fc.weight, std=0.1)
    torch.save(net.state_dict(), path)
    return path


def digits_arrays():
    """Digits train/val/test as float (N, 1, 8, 8) in [0, 1] and labels (the project's split, seed 0)."""
    from vision.data.digits import load_digits_split

    return load_digits_split(0)


def to_uint8_nhwc(images: torch.Tensor):
    """Float (N, C, H, W) in [0, 1] -> rounded uint8 (N, H, W, C), the artifact ``vision sample`` writes."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_digits_classifier(path: Path, steps: int = 80, seed: int = 0) -> float:
    """Train the digits ViT (LayerNorm) briefly, save a ClassificationModule checkpoint; returns test accuracy."""
    from vision.tasks.classification import ClassificationModule

    (train_x, train_y), _, (test_x, test_y) = digits_arrays()
    torch.manual_seed(seed)
    module = ClassificationModule(norm="layernorm", drop_path_rate=0.0, mixup=0.0, cutmix=0.0, mixup_prob=0.0)
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train_x), (128,), generator=generator)
        loss = torch.nn.functional.cross_entropy(module.model(train_x[idx] * 2 - 1), train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        accuracy = (module.model(test_x * 2 - 1).argmax(1) == test_y).float().mean().item()
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return accuracy


def digits_generator(seed: int = 0):
    """A small digits DiT (DiT-Mi/4, 4 tokens) as a GenerationModule, untrained."""
    from vision.tasks.generation import GenerationModule

    torch.manual_seed(seed)
    return GenerationModule(model="DiT-Mi/4", ema_decay=None, learn_sigma=False, lr=1e-3, grid_sampler="ddim",
                            grid_steps=10, grid_cfg_scale=2.0)


def train_digits_generator(module, steps: int, seed: int = 0):
    """A few hundred AdamW steps of the diffusion loss on the digits train split, in place."""
    (train_x, train_y), _, _ = digits_arrays()
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train_x), (64,), generator=generator)
        loss = module._loss((train_x[idx] * 2 - 1, train_y[idx]))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module


def save_generator(module, path: Path) -> Path:
    """A checkpoint that ``load_generation_module`` reads (hyperparameters and weights)."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path

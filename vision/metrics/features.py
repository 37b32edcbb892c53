"""Feature extractors for FID / KID / IS: torch-fidelity's InceptionV3, a classifier checkpoint, any module.

Every extractor takes the images FID compares as uint8 (N, C, H, W) tensors (C = 1 or 3) and
returns float64 features (N, d) and, when it has a classifier head, class logits (for the
Inception Score). ``settings()`` lists everything that changes the features; reference
statistics record it, so statistics computed one way are never compared with features computed
another way.

Inception weights are looked for, in order, at the path given, at ``$VISION_INCEPTION_WEIGHTS``,
and in torch hub's cache (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``,
where torchmetrics and torch-fidelity keep them); only then downloaded, and without internet the
error names the file and the folder to put it in.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import importlib
import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = INCEPTION_URL.rsplit("/", 1)[1]
WEIGHTS_ENV = "VISION_INCEPTION_WEIGHTS"
INCEPTION_DIMS = (64, 192, 768, 2048)
DOWNLOAD_TIMEOUT_S = 60.0


class InceptionWeightsError(FileNotFoundError):
    """The Inception weights file is neither on disk nor downloadable."""


def inception_hub_path() -> Path:
    """Where torch hub (and so torchmetrics and torch-fidelity) caches the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def resolve_inception_weights(path: str | os.PathLike | None = None, download: bool = False) -> str:
    """The local Inception weights file: ``path``, else ``$VISION_INCEPTION_WEIGHTS``, else torch hub's cache.

    Nothing is downloaded unless ``download`` is on (then the file is fetched into torch hub's
    cache); otherwise, or when that fails, the error says which file to place where.
    """
    for given, origin in ((path, "--inception-weights"), (os.environ.get(WEIGHTS_ENV) or None, f"${WEIGHTS_ENV}")):
        if given is not None:
            if not Path(given).is_file():
                raise InceptionWeightsError(f"Inception weights file {given} (from {origin}) not found; expected "
                                            f"{INCEPTION_FILE} from {INCEPTION_URL}")
            return str(given)
    cached = inception_hub_path()
    if cached.is_file():
        return str(cached)
    hint = (f"place {INCEPTION_FILE} (from {INCEPTION_URL}) in {cached.parent}/, or pass --inception-weights PATH, "
            f"or set {WEIGHTS_ENV}=PATH")
    if not download:
        raise InceptionWeightsError(f"Inception weights not found: {hint} (or --download true to fetch them)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    # A firewalled cluster drops packets instead of refusing them: fail in a minute, not hang.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        print(f"downloading Inception weights to {cached}", file=sys.stderr)
        torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=True)
    except OSError as exc:  # no internet: URLError, socket errors, timeouts and SSL errors are all OSErrors
        raise InceptionWeightsError(f"Inception weights not found and the download failed "
                                    f"({type(exc).__name__}: {exc}): {hint}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return str(cached)


@contextlib.contextmanager
def full_fp32():
    """TF32 off for convolutions and matmuls inside: features must not depend on the GPU generation."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def weights_digest(module: nn.Module) -> str:
    """A short hash of a module's parameters and buffers: equal digests, equal features."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class FeatureExtractor(nn.Module, abc.ABC):
    """Maps uint8 images (N, C, H, W) to float64 features (N, d) and, if it can, class logits.

    Attributes:
        label: how results are labelled, e.g. "digits features" -> "FID (digits features)".
        logits_label: how the Inception Score is labelled, when there are logits.
        num_features: d, known after ``prepare`` for modules that do not declare it.
        num_logits: number of classes of the logits (0 without).
        has_logits: whether ``extract`` returns logits (needed for the Inception Score).
    """

    label: str
    logits_label: str | None = None
    num_features: int
    num_logits: int = 0
    has_logits: bool = False

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything that changes the features; reference statistics must have been made with the same."""

    @abc.abstractmethod
    def extract(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Features (N, d) float64 and logits (N, k) or None, from uint8 images (N, C, H, W)."""

    def prepare(self, image_shape: tuple[int, int, int]) -> None:
        """Check that images of ``image_shape`` (C, H, W) fit; find ``num_features`` if needed."""

    def forward(self, images: Tensor) -> Tensor:
        return self.extract(images)[0]


class InceptionFeatures(FeatureExtractor):
    """torch-fidelity's InceptionV3 (TF 2015-12-05 weights) through torchmetrics' ``NoTrainInceptionV3``.

    The network resizes to 299 px itself: TF1-compatible bilinear (what torch-fidelity and the TF
    reference do) when ``antialias`` is off, ``F.interpolate(antialias=True)`` (torchmetrics'
    default since 1.8) when on. Grey images are repeated to three channels first.

    Args:
        weights: local weights file (see ``resolve_inception_weights``), or "random" for an
            untrained network of the same architecture (benchmarks only: its features mean nothing).
        antialias: the resize to 299 px, see above.
        dims: pooled features of the first/second max-pool, Mixed_6e or the final pool (FID: 2048).
        logits: also return the 1008 class logits (``logits_unbiased``, as the Inception Score uses).
        dtype: the network's precision, "float32" (torch-fidelity's default) or "float64" (slower,
            removes the dependence of the features on the batch size).
    """

    def __init__(self, weights: str, antialias: bool = False, dims: int = 2048, logits: bool = False,
                 dtype: str = "float32") -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        if dims not in INCEPTION_DIMS:
            raise ValueError(f"Inception features must be one of {INCEPTION_DIMS}, got {dims}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"extractor dtype must be float32 or float64, got {dtype!r}")
        wanted = [str(dims)] + (["logits_unbiased"] if logits else [])
        if weights == "random":
            self.net = _random_inception(wanted, antialias)
        else:
            try:
                self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=wanted,
                                              feature_extractor_weights_path=weights, antialias=antialias)
            except Exception as exc:  # noqa: BLE001 (torch.load/load_state_dict fail many ways on a wrong file)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{weights} is not the FID InceptionV3 weights file {INCEPTION_FILE}: "
                                 f"{first}") from None
        torch_dtype = getattr(torch, dtype)
        self.net.to(torch_dtype)
        self.net._dtype = torch_dtype  # torchmetrics' forward casts the uint8 input to this
        self.weights = weights
        self.antialias = antialias
        self.dims = dims
        self.dtype_name = dtype
        self.num_features = dims
        self.has_logits = logits
        self.num_logits = 1008 if logits else 0
        self.label = f"Inception-v3 pool3, {dims}-d" if dims == 2048 else f"Inception-v3 {dims}-d"
        self.logits_label = "Inception-v3 logits"
        self._digest = "random" if weights == "random" else weights_digest(self.net)

    def settings(self) -> dict[str, Any]:
        return {"extractor": "inception-v3-compat", "dims": self.dims, "weights": self._digest,
                "resize": "299 bilinear, " + ("antialias (torch)" if self.antialias else "TF1-compatible"),
                "antialias": self.antialias, "grey": "repeated to RGB", "dtype": self.dtype_name}

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        _check_uint8(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        # torchmetrics' copy of torch-fidelity's forward gives pool features and logits from one pass.
        out = self.net._torch_fidelity_forward(images)
        features = out[0].reshape(images.shape[0], -1).double()
        return features, (out[1].double() if self.has_logits else None)


def _random_inception(features_list: list[str], antialias: bool) -> nn.Module:
    """torchmetrics' InceptionV3 with PyTorch's default random initialisation, built without any file."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    class Untrained(NoTrainInceptionV3):
        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            return None  # keep the random initialisation

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # torch-fidelity loads a file unless it downloads one
        return Untrained(name="inception-v3-compat", features_list=features_list,
                         feature_extractor_weights_path=str(empty), antialias=antialias)


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features (and logits) of a ``vision fit`` ClassificationModule checkpoint.

    Images are scaled to [0, 1] and normalised with the model's mean and std, at their own size,
    which must be the model's input size (e.g. 8x8 grey for the digits ViT).

    Args:
        ckpt: the checkpoint (its trained weights, not the EMA copy).
        name: label of the features ("digits" -> "digits features"); default: the file's stem.
    """

    def __init__(self, ckpt: str | os.PathLike, name: str | None = None) -> None:
        super().__init__()
        from vision.tasks.checkpoint import load_checkpoint
        from vision.tasks.classification import ClassificationModule

        checkpoint = load_checkpoint(ckpt)
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        if "model" not in hparams or not str(hparams["model"]).startswith("vit"):
            raise ValueError(f"{ckpt} is not a ClassificationModule checkpoint (written by vision fit); "
                             "expected hyper_parameters with a ViT model")
        # Weights come from the checkpoint: never fetch pretrained ones, never compile.
        hparams.update(pretrained=None, compile=False)
        module = ClassificationModule(**hparams)
        module.load_state_dict(checkpoint["state_dict"], strict=True)
        self.model = module.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = tuple(cfg["input_size"])
        self.num_features = self.model.num_features
        self.has_logits = True
        self.num_logits = self.model.num_classes
        self.model_name = module.model_name
        self.label = f"{name or Path(ckpt).stem} features"
        self.logits_label = f"{name or Path(ckpt).stem} classifier logits"
        self._digest = weights_digest(self.model)

    def settings(self) -> dict[str, Any]:
        return {"extractor": f"classifier {self.model_name} penultimate", "weights": self._digest,
                "resize": "none", "antialias": None, "input": "x/255 normalised by the model's mean/std"}

    def prepare(self, image_shape: tuple[int, int, int]) -> None:
        if tuple(image_shape) != self.input_size:
            raise ValueError(f"the {self.label} extractor ({self.model_name}) takes images of shape {self.input_size} "
                             f"(C, H, W), got {tuple(image_shape)}")

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        _check_uint8(images)
        x = (images.float() / 255 - self.mean) / self.std
        pre = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return pre.double(), self.model.get_classifier()(pre).double()


class ModuleFeatures(FeatureExtractor):
    """Any ``nn.Module`` as the extractor: it gets float images in [0, 1] and returns (N, d) features.

    The module is ``package.module:attribute``: an ``nn.Module`` instance, or a class or function
    called without arguments that returns one. Its ``name`` attribute (default: the import path)
    labels the results; ``num_features`` is read from it or found by one forward pass.
    """

    def __init__(self, spec: str, name: str | None = None) -> None:
        super().__init__()
        module_name, _, attr = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import {module_name!r} for features {spec!r}: {exc}") from None
        for part in attr.split("."):
            if not hasattr(target, part):
                raise ValueError(f"{module_name!r} has no attribute {attr!r} (features {spec!r})")
            target = getattr(target, part)
        module = target if isinstance(target, nn.Module) else target() if callable(target) else None
        if not isinstance(module, nn.Module):
            raise TypeError(f"features {spec!r} must be an nn.Module or return one, got {type(module).__name__}")
        self.module = module.eval().requires_grad_(False)
        self.spec = spec
        declared = getattr(module, "num_features", None)
        self.num_features = int(declared) if declared is not None else 0
        label = name or getattr(module, "name", None)
        self.label = f"{label if isinstance(label, str) else spec} features"
        self._digest = weights_digest(self.module)

    def settings(self) -> dict[str, Any]:
        return {"extractor": self.spec, "weights": self._digest, "resize": "none", "antialias": None,
                "input": "float [0, 1]"}

    def prepare(self, image_shape: tuple[int, int, int]) -> None:
        if not self.num_features:
            probe = torch.zeros(2, *image_shape, dtype=torch.uint8, device=_device_of(self))
            with torch.no_grad():
                self.num_features = self.extract(probe)[0].shape[1]

    def extract(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        _check_uint8(images)
        out = self.module(images.float() / 255)
        out = out[0] if isinstance(out, (tuple, list)) else out
        if out.dim() != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"features {self.spec!r} must return (N, d) for N images, got {tuple(out.shape)} "
                             f"for N={images.shape[0]}")
        return out.double(), None


def build_extractor(features: str = "inception", *, inception_weights: str | None = None, antialias: bool = False,
                    logits: bool = False, dtype: str = "float32", name: str | None = None,
                    download: bool = False) -> FeatureExtractor:
    """The extractor named by ``features``.

    Args:
        features: "inception" (pool3, 2048-d), "inception:<64|192|768|2048>", a ClassificationModule
            checkpoint file (its penultimate features), or "package.module:attribute" (any nn.Module).
        inception_weights: local Inception weights (see ``resolve_inception_weights``), or "random".
        antialias: Inception's resize to 299 px (False: TF1-compatible, as torch-fidelity).
        logits: Inception also returns class logits (for the Inception Score).
        dtype: Inception's precision ("float32" or "float64").
        name: label of custom features (e.g. "digits" -> "FID (digits features)").
        download: fetch the Inception weights into torch hub's cache when not found locally.
    """
    match = re.fullmatch(r"inception(?::(\d+))?", features)
    if match:
        weights = inception_weights if inception_weights == "random" else resolve_inception_weights(
            inception_weights, download)
        return InceptionFeatures(weights, antialias=antialias, dims=int(match.group(1) or 2048), logits=logits,
                                 dtype=dtype)
    if Path(features).is_file():
        return ClassifierFeatures(features, name=name)
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", features):
        return ModuleFeatures(features, name=name)
    if features.endswith((".ckpt", ".pt", ".pth")) or os.sep in features:
        raise FileNotFoundError(f"feature extractor checkpoint not found: {features}")
    raise ValueError(f"unknown features {features!r}; expected 'inception', 'inception:<64|192|768|2048>', a "
                     "ClassificationModule checkpoint file, or 'package.module:attribute'")


def fid_feature_extractor(weights: str | None = None, device: str | torch.device = "cpu", antialias: bool = False,
                          dims: int = 2048, dtype: str = "float32", download: bool = False) -> InceptionFeatures:
    """The FID Inception network on ``device``: uint8 (N, 3, H, W) -> (N, dims) float64 features.

    ``weights="random"`` builds it untrained (throughput benchmarks on machines without the file).
    """
    resolved = weights if weights == "random" else resolve_inception_weights(weights, download)
    return InceptionFeatures(resolved, antialias=antialias, dims=dims, dtype=dtype).to(device)


def _check_uint8(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"feature extractors take uint8 images (N, 1 or 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")

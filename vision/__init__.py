"""seednorm-vision: SeeDNorm for image classifiers and diffusion transformers."""

__version__ = "0.1.0"

# Registers every <arch>_<norm> model with timm, so timm.create_model finds them after `import vision`.
from vision import models  # noqa: E402,F401

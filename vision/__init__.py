"""seednorm-vision: SeeDNorm for image classifiers and diffusion transformers."""

__version__ = "0.1.0"

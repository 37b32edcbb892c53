"""LightningModules: they wire models, data and metrics."""

from vision.tasks.classification import ClassificationModule

__all__ = ["ClassificationModule"]

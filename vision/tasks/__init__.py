"""LightningModules: they wire models, data and metrics."""

from vision.tasks.classification import ClassificationModule
from vision.tasks.generation import GenerationModule

__all__ = ["ClassificationModule", "GenerationModule"]

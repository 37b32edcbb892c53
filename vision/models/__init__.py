"""Architectures built from ``vision.nn`` layers; importing this registers them with timm."""

from vision.models.vit import VIT_ARCHS, create_model, model_names, split_name

__all__ = ["VIT_ARCHS", "create_model", "model_names", "split_name"]

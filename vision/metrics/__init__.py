"""Evaluation metrics: corruption error and mCE (``vision.metrics.corruption``)."""

"""Training on the encoded splits, then the automatic evaluation of the trained weights."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]

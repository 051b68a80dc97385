"""A saved checkpoint evaluated on the split ``evaluation.split`` names."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]

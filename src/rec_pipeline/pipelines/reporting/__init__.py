"""Figures and a self-contained HTML report of the latest run."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]

"""The raw folder: synthetic planted-truth data written, or the user's own files checked."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]

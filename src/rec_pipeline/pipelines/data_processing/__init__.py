"""Raw files to parsed shards, vocabularies, encoded splits, sampled training rows, metadata and
the data-quality report."""

from .pipeline import create_pipeline, create_sampling_pipeline

__all__ = ["create_pipeline", "create_sampling_pipeline"]

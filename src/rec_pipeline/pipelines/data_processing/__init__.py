from .pipeline import create_pipeline, create_sampling_pipeline

__all__ = ["create_pipeline", "create_sampling_pipeline"]

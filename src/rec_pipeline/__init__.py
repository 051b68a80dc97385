"""Ali-CCP logs to a trained multi-task ranking model: a Kedro project over a library that does
not import Kedro (data, model, train, metrics, report)."""

__version__ = "0.1"

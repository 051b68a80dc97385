"""The HTML report and its figures, from a run's history, metrics and predictions."""

"""Metrics of predictions against labels: exact AUC, log loss, calibration bins and the Platt
calibrator (docs/model.md, Metrics). NumPy/PyTorch only."""

"""Training: the objective, schedules, optimisers, the training loop and its checkpoints, and
the diagnostics it records."""

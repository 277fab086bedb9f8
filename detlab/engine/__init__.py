"""Training: the loop, hooks, optimizers and schedules, checkpoints, logging."""

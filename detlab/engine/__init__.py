"""Training: the loop, hooks, optimizers and schedules, checkpoints, logging.

Importing this package registers the built-in hooks and optimizers.
"""

from detlab.engine import hooks, optim  # noqa: F401  (registration)

"""The hook base class, priorities and the log buffer.

A hook has methods named after the moments of the loop (``before_run``, ``before_train_epoch``,
``before_train_iter``, ``after_train_iter``, ``after_train_epoch``, ``after_run`` and the ``val``
versions); each receives the :class:`~detlab.engine.trainer.Trainer`. As in mmcv 1.x, the train
and val versions call the generic ``before_epoch`` / ``after_epoch`` / ``before_iter`` /
``after_iter`` unless a hook overrides them, so a hook written for mmcv's runner that defines only
the generic names runs here unchanged. Hooks run in order of priority (lower number first), as in
MMDetection: LR schedule (VERY_HIGH), optimizer step (ABOVE_NORMAL), checkpoint (NORMAL),
evaluation and timer (LOW), logging (VERY_LOW).

A hook that keeps state a resumed run needs (an EMA's step count, a loss scaler, the best score so
far) defines ``state_dict()`` and ``load_state_dict(state)``; the trainer stores it in each
checkpoint under ``hooks`` and gives it back on resume.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from torch import nn

from detlab.config import ConfigError

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

PRIORITIES = {"HIGHEST": 0, "VERY_HIGH": 10, "HIGH": 30, "ABOVE_NORMAL": 40, "NORMAL": 50,
              "BELOW_NORMAL": 60, "LOW": 70, "VERY_LOW": 90, "LOWEST": 100}


def priority_value(priority: int | str) -> int:
    """A priority name (``'NORMAL'``) or number as a number."""
    if isinstance(priority, int):
        return priority
    if not isinstance(priority, str) or priority.upper() not in PRIORITIES:
        raise ConfigError(f"unknown hook priority {priority!r}; use a number or one of "
                          f"{', '.join(PRIORITIES)}")
    return PRIORITIES[priority.upper()]


def is_module_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` wraps the real model in ``.module`` (DataParallel, DDP), as mmcv's
    function of that name tells."""
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))


class Hook:
    """Base class: every moment of the loop is a no-op unless a subclass overrides it."""

    priority: int | str = "NORMAL"

    def before_run(self, trainer: Trainer) -> None: ...
    def after_run(self, trainer: Trainer) -> None: ...

    # the generic moments, called by the train and val versions below
    def before_epoch(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def before_iter(self, trainer: Trainer) -> None: ...
    def after_iter(self, trainer: Trainer) -> None: ...

    def before_train_epoch(self, trainer: Trainer) -> None:
        self.before_epoch(trainer)

    def after_train_epoch(self, trainer: Trainer) -> None:
        self.after_epoch(trainer)

    def before_train_iter(self, trainer: Trainer) -> None:
        self.before_iter(trainer)

    def after_train_iter(self, trainer: Trainer) -> None:
        self.after_iter(trainer)

    def before_val_epoch(self, trainer: Trainer) -> None:
        self.before_epoch(trainer)

    def after_val_epoch(self, trainer: Trainer) -> None:
        self.after_epoch(trainer)

    def before_val_iter(self, trainer: Trainer) -> None:
        self.before_iter(trainer)

    def after_val_iter(self, trainer: Trainer) -> None:
        self.after_iter(trainer)

    # mmcv's helpers for interval logic
    def every_n_epochs(self, trainer: Trainer, n: int) -> bool:
        return (trainer.epoch + 1) % n == 0 if n > 0 else False

    def every_n_inner_iters(self, trainer: Trainer, n: int) -> bool:
        return (trainer.inner_iter + 1) % n == 0 if n > 0 else False

    def every_n_iters(self, trainer: Trainer, n: int) -> bool:
        return (trainer.iter + 1) % n == 0 if n > 0 else False

    def end_of_epoch(self, trainer: Trainer) -> bool:
        return trainer.inner_iter + 1 == trainer.iters_per_epoch

    def is_last_epoch(self, trainer: Trainer) -> bool:
        return trainer.epoch + 1 == trainer.max_epochs

    def is_last_iter(self, trainer: Trainer) -> bool:
        return trainer.iter + 1 == trainer.max_iters


class LogBuffer(defaultdict):
    """``{key: [values since the last log row]}``."""

    def __init__(self) -> None:
        super().__init__(list)
        self.row: dict[str, Any] = {}  # the last logged row, shared by the logger hooks
        self.row_iter = -1  # the iteration it was made at

    def averages(self) -> dict[str, float]:
        """The mean of each key's values (keys without values left out)."""
        return {key: sum(values) / len(values) for key, values in self.items() if values}


def hook_state(hook: Any) -> dict[str, Any] | None:
    """What a hook asks to keep in checkpoints (``None`` for a stateless hook)."""
    state_dict = getattr(hook, "state_dict", None)
    return state_dict() if callable(state_dict) else None

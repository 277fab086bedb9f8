"""Iteration timing: ``data_time`` and ``time`` for the log."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


@HOOKS.register_module()
class IterTimerHook(Hook):
    """Measures ``data_time`` (waiting for the batch) and ``time`` (the whole iteration)."""

    priority = "LOW"

    def before_run(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()

    def before_train_epoch(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()

    def before_train_iter(self, trainer: Trainer) -> None:
        trainer.log_buffer["data_time"].append(time.perf_counter() - self._last)

    def after_train_iter(self, trainer: Trainer) -> None:
        trainer.log_buffer["time"].append(time.perf_counter() - self._last)
        self._last = time.perf_counter()

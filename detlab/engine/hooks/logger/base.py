"""The base of logger hooks (``log_config.hooks``): when to log and what a row holds.

Every logger hook logs the same rows: at each ``interval`` the first logger to run averages the
log buffer once (``LogBuffer.average``) and every logger reads that row, so the text log,
TensorBoard and MLflow show the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from detlab.engine.hooks.base import Hook

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

TIMING_KEYS = ("time", "data_time")


def memory_mb(device: torch.device) -> int:
    """Peak memory in MB: CUDA's allocator on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) / 2**20)
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except ImportError:  # not on Windows
        return 0


def train_row(trainer: Trainer) -> dict[str, Any]:
    """The training row of this iteration: position, lr, timings, memory and the averages of
    the log buffer since the last row (the buffer is emptied; the row is kept on it so that
    every logger hook of this iteration reads the same one)."""
    buffer = trainer.log_buffer
    if buffer.row_iter == trainer.iter:
        return buffer.row
    values = buffer.averages()
    row: dict[str, Any] = {"mode": "train", "epoch": trainer.epoch + 1,
                           "iter": trainer.inner_iter + 1 if trainer.by_epoch else trainer.iter + 1,
                           "lr": trainer.current_lr()[0]}
    row.update({k: values[k] for k in TIMING_KEYS if k in values})
    row["memory"] = memory_mb(trainer.device)
    row.update({k: v for k, v in values.items() if k not in TIMING_KEYS})
    buffer.clear()
    buffer.row, buffer.row_iter = row, trainer.iter
    return row


def val_row(trainer: Trainer) -> dict[str, Any]:
    """The row of an evaluation: position, lr and the metrics."""
    position = trainer.iters_per_epoch if trainer.by_epoch else trainer.iter + 1
    return {"mode": "val", "epoch": trainer.epoch + 1, "iter": position,
            "lr": trainer.current_lr()[0], **trainer.val_outputs}


class LoggerHook(Hook):
    """Logs a training row every ``interval`` iterations (counted in the epoch with
    ``by_epoch``, else over the run) and a row after each evaluation. The last iterations of an
    epoch that do not fill an interval are dropped (``ignore_last``), unless the whole epoch is
    shorter than the interval. Subclasses define :meth:`log`."""

    priority = "VERY_LOW"

    def __init__(self, interval: int = 10, ignore_last: bool = True, reset_flag: bool = False,
                 by_epoch: bool = True) -> None:
        # reset_flag: mmcv's switch for clearing the shared buffer; rows are shared here
        self.interval, self.ignore_last, self.by_epoch = interval, ignore_last, by_epoch
        self._logged_eval: int | None = None

    def log(self, trainer: Trainer, row: Mapping[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define log(trainer, row)")

    def _due(self, trainer: Trainer) -> bool:
        if not (self.by_epoch and trainer.by_epoch):
            return (trainer.iter + 1) % self.interval == 0
        inner = trainer.inner_iter + 1
        if inner % self.interval == 0:
            return True
        # an epoch shorter than the interval still logs its last iteration (small datasets)
        short_epoch = trainer.iters_per_epoch < self.interval
        return inner == trainer.iters_per_epoch and (not self.ignore_last or short_epoch)

    def after_train_iter(self, trainer: Trainer) -> None:
        if self._due(trainer):
            self.log(trainer, train_row(trainer))
        self._log_evaluation(trainer)

    def after_train_epoch(self, trainer: Trainer) -> None:
        self._log_evaluation(trainer)

    def _log_evaluation(self, trainer: Trainer) -> None:
        """The row of an evaluation that ran since this hook last looked (the evaluation hook
        runs before the loggers at the same moment)."""
        if trainer.evaluated_at is not None and trainer.evaluated_at != self._logged_eval:
            self._logged_eval = trainer.evaluated_at
            self.log(trainer, val_row(trainer))

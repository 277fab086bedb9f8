"""TensorBoard logging (``log_config.hooks=[dict(type='TensorboardLoggerHook')]``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from detlab.engine.hooks.logger.base import LoggerHook
from detlab.engine.hooks.logger.tags import log_step, loggable_tags, missing_package
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


@HOOKS.register_module()
class TensorboardLoggerHook(LoggerHook):
    """Writes each row as TensorBoard scalars (``train/loss``, ``val/bbox_mAP``,
    ``learning_rate``, ``momentum``; mmcv's tags and steps) to event files in ``log_dir``
    (default ``<work_dir>/tf_logs``), from the main process. Needs ``tensorboard``."""

    def __init__(self, log_dir: str | None = None, interval: int = 10, ignore_last: bool = True,
                 reset_flag: bool = False, by_epoch: bool = True) -> None:
        super().__init__(interval, ignore_last, reset_flag, by_epoch)
        self.log_dir = log_dir
        self.writer: Any = None

    def before_run(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise missing_package("TensorboardLoggerHook", "tensorboard") from err
        if self.log_dir is None:
            self.log_dir = os.path.join(trainer.work_dir, "tf_logs")
        self.writer = SummaryWriter(self.log_dir)

    def log(self, trainer: Trainer, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        step = log_step(trainer)
        for tag, value in loggable_tags(trainer, row).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a crash later loses no row

    def after_run(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

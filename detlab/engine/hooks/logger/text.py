"""The text logger: MMDetection's text log lines and ``.log.json`` rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from detlab.engine.hooks.logger.base import LoggerHook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


@HOOKS.register_module()
class TextLoggerHook(LoggerHook):
    """Writes each row to the run's ``<timestamp>.log.json`` and a line to its text log, as
    MMDetection's ``TextLoggerHook`` (main process only)."""

    def __init__(self, interval: int = 10, ignore_last: bool = True, reset_flag: bool = False,
                 by_epoch: bool = True, interval_exp_name: int = 1000,
                 out_dir: str | None = None, out_suffix: tuple[str, ...] = (".log.json", ".log",
                                                                            ".py"),
                 keep_local: bool = True, file_client_args: dict | None = None) -> None:
        # interval_exp_name, out_dir, out_suffix, keep_local, file_client_args: mmcv's options
        # for copying logs to another storage; logs stay in work_dir here.
        super().__init__(interval, ignore_last, reset_flag, by_epoch)

    def log(self, trainer: Trainer, row: Mapping[str, Any]) -> None:
        trainer.write_log_row(dict(row))

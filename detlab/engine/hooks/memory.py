"""Memory: MMDetection's ``MemoryProfilerHook`` (what the machine and the process use) and mmcv's
``EmptyCacheHook`` (hand CUDA's cached blocks back)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

MB = 1024 * 1024


def _import_psutil() -> Any:
    try:
        import psutil
    except ImportError as err:
        raise ImportError("MemoryProfilerHook reads memory with psutil, which is not installed: "
                          "pip install psutil") from err
    return psutil


def memory_report(psutil: Any) -> str:
    """MMDetection's line: available / used memory, swap, and this process's resident memory
    (what ``memory_profiler.memory_usage()`` measures), in MB."""
    virtual, swap = psutil.virtual_memory(), psutil.swap_memory()
    process = psutil.Process(os.getpid()).memory_info().rss
    return (f"Memory information available_memory: {round(virtual.available / MB)} MB, "
            f"used_memory: {round(virtual.used / MB)} MB, "
            f"memory_utilization: {virtual.percent} %, "
            f"available_swap_memory: {round((swap.total - swap.used) / MB)} MB, "
            f"used_swap_memory: {round(swap.used / MB)} MB, "
            f"swap_memory_utilization: {swap.percent} %, "
            f"current_process_memory: {round(process / MB)} MB")


@HOOKS.register_module()
class MemoryProfilerHook(Hook):
    """Logs the machine's and the process's memory every ``interval`` iterations (training and
    validation-loss iterations, as MMDetection's ``after_iter``). Needs ``psutil``."""

    def __init__(self, interval: int = 50) -> None:
        self._psutil = _import_psutil()
        self.interval = interval

    def after_iter(self, trainer: Trainer) -> None:
        if self.every_n_iters(trainer, self.interval):
            trainer.logger.info(memory_report(self._psutil))


@HOOKS.register_module()
class EmptyCacheHook(Hook):
    """Empties CUDA's cache of freed blocks before and/or after each epoch or after each
    iteration (mmcv's hook; nothing happens without CUDA)."""

    def __init__(self, before_epoch: bool = False, after_epoch: bool = True,
                 after_iter: bool = False) -> None:
        self._before_epoch, self._after_epoch = before_epoch, after_epoch
        self._after_iter = after_iter

    @staticmethod
    def _empty() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def after_iter(self, trainer: Trainer) -> None:
        if self._after_iter:
            self._empty()

    def before_epoch(self, trainer: Trainer) -> None:
        if self._before_epoch:
            self._empty()

    def after_epoch(self, trainer: Trainer) -> None:
        if self._after_epoch:
            self._empty()

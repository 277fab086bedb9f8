"""Checkpoints (``checkpoint_config``): ``epoch_N.pth`` / ``iter_N.pth`` every ``interval``, and
``latest.pth`` pointing at the newest state."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from detlab.checkpoint import link_latest
from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


@HOOKS.register_module()
class CheckpointHook(Hook):
    """Saves ``epoch_N.pth`` (``iter_N.pth`` with ``by_epoch=False``) every ``interval`` and at
    the end of the run (``save_last``), keeping the newest ``max_keep_ckpts``; ``latest.pth`` is a
    link to the newest file (a copy where links fail).

    So that an interrupted run loses no finished epoch, an epoch that is not a multiple of
    ``interval`` is still saved: as ``latest.pth`` itself (replacing the link), which holds
    everything resuming needs. Only the main process writes or removes files.
    """

    priority = "NORMAL"

    def __init__(self, interval: int = -1, by_epoch: bool = True, save_optimizer: bool = True,
                 out_dir: str | None = None, max_keep_ckpts: int = -1, save_last: bool = True,
                 sync_buffer: bool = False, file_client_args: dict | None = None) -> None:
        # sync_buffer / file_client_args: mmcv's; buffers are identical across processes under
        # DDP and checkpoints go to local files, so both are accepted and unused.
        self.interval, self.by_epoch, self.save_optimizer = interval, by_epoch, save_optimizer
        self.out_dir, self.max_keep_ckpts, self.save_last = out_dir, max_keep_ckpts, save_last

    def out_dir_of(self, trainer: Trainer) -> str:
        """``out_dir/<work_dir's name>`` when ``out_dir`` is another folder, as mmcv puts it,
        else the work_dir."""
        if not self.out_dir or os.path.abspath(self.out_dir) == os.path.abspath(trainer.work_dir):
            return trainer.work_dir
        return os.path.join(self.out_dir, os.path.basename(trainer.work_dir.rstrip(os.sep)))

    def _due(self, done: int, total: int) -> bool:
        return (self.interval > 0 and done % self.interval == 0) or (
            self.save_last and done == total)

    def after_train_epoch(self, trainer: Trainer) -> None:
        if self.by_epoch:
            self._save(trainer, "epoch", trainer.epoch + 1, trainer.max_epochs,
                       dict(epoch=trainer.epoch + 1))

    def after_train_iter(self, trainer: Trainer) -> None:
        if not self.by_epoch and self._due(trainer.iter + 1, trainer.max_iters):
            self._save(trainer, "iter", trainer.iter + 1, trainer.max_iters,
                       dict(iter=trainer.iter + 1))

    def _save(self, trainer: Trainer, unit: str, done: int, total: int,
              counters: dict[str, int]) -> None:
        out_dir = self.out_dir_of(trainer)
        if not self._due(done, total):
            trainer.save_checkpoint(out_dir, "latest.pth", self.save_optimizer, **counters)
            return
        path = trainer.save_checkpoint(out_dir, f"{unit}_{done}.pth", self.save_optimizer,
                                       **counters)
        if trainer.rank == 0:
            link_latest(path, os.path.join(out_dir, "latest.pth"))
            trainer.logger.info("saved checkpoint %s", path)
            self._remove_old(out_dir, done, unit)

    def _remove_old(self, out_dir: str, done: int, unit: str) -> None:
        if self.max_keep_ckpts <= 0 or self.interval <= 0:
            return
        step = self.interval
        for old in range(done - self.max_keep_ckpts * step, 0, -step):
            path = os.path.join(out_dir, f"{unit}_{old}.pth")
            if not os.path.exists(path):
                break
            os.remove(path)

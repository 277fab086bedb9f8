"""Evaluation during training (``evaluation=dict(interval, metric, save_best, ...)``).

The hook is handed the function that evaluates (``evaluate(model, dataloader, **options) ->
metrics``, built by :mod:`detlab.engine.setup` from the tester); it decides when, keeps the best
checkpoint and leaves the training's random streams where they were.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from detlab.config import ConfigError
from detlab.dist import preserved_random_states
from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

# mmcv's rule inference for save_best: a metric whose name holds one of these is better when larger
GREATER_KEYS = ("acc", "top", "AR@", "auc", "precision", "mAP", "mDice", "mIoU", "mAcc", "aAcc")
LESS_KEYS = ("loss",)


def infer_rule(key: str, greater_keys: Sequence[str] = GREATER_KEYS,
               less_keys: Sequence[str] = LESS_KEYS) -> str:
    """'greater' or 'less' for a metric name, as mmcv 1.x infers it for ``save_best``."""
    if any(k in key for k in greater_keys):
        return "greater"
    if any(k in key for k in less_keys):
        return "less"
    raise ConfigError(f"evaluation.save_best={key!r}: cannot tell whether larger is better; set "
                      f"evaluation.rule='greater' or 'less'")


@HOOKS.register_module(name=["EvalHook", "DistEvalHook"])
class EvalHook(Hook):
    """Evaluates every ``interval`` epochs (iterations with ``by_epoch=False``), after the
    checkpoint of that epoch is written, so a crash here loses nothing. ``dynamic_intervals``
    (``[(epoch, interval), ...]``) changes the interval from an epoch on (YOLOX's configs).
    ``save_best`` (a metric name, or ``'auto'`` for the first one) keeps the best checkpoint as
    ``best_<metric>_epoch_N.pth``; ``rule`` is inferred from the name when not given. The other
    options (``metric``, ``classwise``, ...) go to ``dataset.evaluate`` -- setup checks them
    against its signature before the first iteration.
    """

    priority = "LOW"

    def __init__(self, dataloader: Any, evaluate: Callable[..., Mapping[str, Any]],
                 interval: int = 1, by_epoch: bool = True, start: int | None = None,
                 save_best: str | None = None, rule: str | None = None,
                 dynamic_intervals: Sequence[tuple[int, int]] | None = None,
                 greater_keys: Sequence[str] | None = None,
                 less_keys: Sequence[str] | None = None, gpu_collect: bool = False,
                 tmpdir: str | None = None, broadcast_bn_buffer: bool = True,
                 eval_options: Mapping[str, Any] | None = None) -> None:
        # gpu_collect / tmpdir / broadcast_bn_buffer choose how MMDetection gathers results;
        # detlab gathers them with all_gather_object and keeps BN buffers equal under DDP.
        if rule not in (None, "greater", "less"):
            raise ConfigError(f"evaluation.rule must be 'greater' or 'less', got {rule!r}")
        if interval <= 0:
            raise ConfigError(f"evaluation.interval must be a positive int, got {interval!r}")
        self.dataloader, self.evaluate = dataloader, evaluate
        self.interval, self.by_epoch, self.start = interval, by_epoch, start
        self.milestones = sorted((int(e), int(i)) for e, i in (dynamic_intervals or []))
        self.save_best, self.rule = save_best, rule
        self.greater_keys = tuple(greater_keys or GREATER_KEYS)
        self.less_keys = tuple(less_keys or LESS_KEYS)
        self.eval_options = dict(eval_options or {})
        self.best: float | None = None
        self.best_path: str | None = None

    # ---- when --------------------------------------------------------------------------------

    def _interval(self, done: int) -> int:
        interval = self.interval
        for milestone, value in self.milestones:
            if done >= milestone:  # MMDetection: from the milestone epoch on
                interval = value
        return interval

    def _due(self, done: int) -> bool:
        if self.start is not None and done < self.start:
            return False
        start = self.start or 0
        return (done - start) % self._interval(done) == 0

    def after_train_epoch(self, trainer: Trainer) -> None:
        if self.by_epoch and self._due(trainer.epoch + 1):
            self.run(trainer, f"epoch_{trainer.epoch + 1}", dict(epoch=trainer.epoch + 1))

    def after_train_iter(self, trainer: Trainer) -> None:
        if not self.by_epoch and self._due(trainer.iter + 1):
            self.run(trainer, f"iter_{trainer.iter + 1}", dict(iter=trainer.iter + 1))

    # ---- what --------------------------------------------------------------------------------

    def run(self, trainer: Trainer, tag: str, counters: dict[str, int]) -> None:
        """Evaluate now; log the metrics (``trainer.val_outputs``) and keep the best."""
        # as mmcv's EvalHook, no val moments are called: hooks with generic before_epoch /
        # after_epoch would run twice an epoch; loggers see trainer.evaluated_at change instead
        trainer.mode = "val"
        with preserved_random_states():
            metrics = self.evaluate(trainer.model, self.dataloader, **self.eval_options)
        trainer.val_outputs = {k: v for k, v in metrics.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trainer.logger.info("%s evaluation: %s", tag.replace("_", " "), ", ".join(
            f"{k}: {v:.4f}" for k, v in trainer.val_outputs.items()))
        trainer.evaluated_at = trainer.iter
        self._keep_best(trainer, tag, counters)
        trainer.mode = "train"

    def _keep_best(self, trainer: Trainer, tag: str, counters: dict[str, int]) -> None:
        if not self.save_best or not trainer.val_outputs:
            return
        key = next(iter(trainer.val_outputs)) if self.save_best == "auto" else self.save_best
        if key not in trainer.val_outputs:
            raise ConfigError(f"evaluation.save_best={key!r} is not among the metrics "
                              f"({', '.join(trainer.val_outputs)})")
        rule = self.rule or infer_rule(key, self.greater_keys, self.less_keys)
        value = trainer.val_outputs[key]
        if self.best is not None and not (value > self.best if rule == "greater"
                                          else value < self.best):
            return
        if trainer.rank == 0 and self.best_path and os.path.exists(self.best_path):
            os.remove(self.best_path)
        self.best = value
        self.best_path = trainer.save_checkpoint(trainer.work_dir, f"best_{key}_{tag}.pth",
                                                 False, **counters)
        trainer.logger.info("best %s so far: %.4f (%s)", key, value, tag.replace("_", " "))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_path": self.best_path}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_path = state.get("best"), state.get("best_path")

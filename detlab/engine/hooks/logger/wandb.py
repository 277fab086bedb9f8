"""Weights & Biases logging: mmcv's ``WandbLoggerHook`` and MMDetection's ``MMDetWandbHook``
(``log_config.hooks=[dict(type='MMDetWandbHook', init_kwargs=dict(project=...))]``). Without a
W&B account, ``init_kwargs=dict(mode='offline')`` writes the run to a local folder
(``wandb sync`` uploads it later)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from detlab.config import Config, ConfigError
from detlab.engine.hooks.checkpoint import CheckpointHook
from detlab.engine.hooks.evaluation import EvalHook
from detlab.engine.hooks.logger.base import LoggerHook
from detlab.engine.hooks.logger.tags import log_step, loggable_tags, missing_package
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

SUMMARIES = ("min", "max", "mean", "best", "last", "none")


def _import_wandb(hook: str) -> Any:
    try:
        import wandb
    except ImportError as err:
        raise missing_package(hook, "wandb") from err
    return wandb


def files_with_suffix(folder: str, suffix: str | Sequence[str]) -> list[str]:
    """Paths under ``folder`` (recursively, as mmcv's ``scandir``) whose names end with
    ``suffix``, sorted."""
    suffixes = (suffix,) if isinstance(suffix, str) else tuple(suffix)
    found = []
    for root, _, names in os.walk(folder):
        found += [os.path.join(root, n) for n in names if n.endswith(suffixes)]
    return sorted(found)


@HOOKS.register_module()
class WandbLoggerHook(LoggerHook):
    """Logs each row's numbers to a W&B run (mmcv's tags; at step ``iter + 1`` with
    ``with_step``, else as ``global_step``), started with ``wandb.init(**init_kwargs)``; at the
    end, the work_dir's files ending with ``out_suffix`` as an artifact (``log_artifact``).
    ``define_metric_cfg`` (``{'val/bbox_mAP': 'max'}``) sets the summaries. Main process only.
    Needs ``wandb``."""

    def __init__(self, init_kwargs: Mapping[str, Any] | None = None, interval: int = 10,
                 ignore_last: bool = True, reset_flag: bool = False, commit: bool = True,
                 by_epoch: bool = True, with_step: bool = True, log_artifact: bool = True,
                 out_suffix: str | Sequence[str] = (".log.json", ".log", ".py"),
                 define_metric_cfg: Mapping[str, str] | None = None) -> None:
        super().__init__(interval, ignore_last, reset_flag, by_epoch)
        self.wandb = _import_wandb(type(self).__name__)
        self.init_kwargs = dict(init_kwargs or {})
        self.commit, self.with_step = commit, with_step
        self.log_artifact, self.out_suffix = log_artifact, out_suffix
        self.define_metric_cfg = dict(define_metric_cfg or {})

    def before_run(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        self.wandb.init(**self.init_kwargs)
        for metric, summary in self.define_metric_cfg.items():
            if summary not in SUMMARIES:
                warnings.warn(f"define_metric_cfg: the summary of {metric} should be one of "
                              f"{SUMMARIES}, got {summary!r}; wandb will skip it", stacklevel=2)
            self.wandb.define_metric(metric, summary=summary)

    def log(self, trainer: Trainer, row: Mapping[str, Any]) -> None:
        if trainer.rank != 0:
            return
        tags = loggable_tags(trainer, row)
        if self.with_step:
            self.wandb.log(tags, step=log_step(trainer), commit=self.commit)
        else:
            self.wandb.log(dict(tags, global_step=log_step(trainer)), commit=self.commit)

    def after_run(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        if self.log_artifact:
            artifact = self.wandb.Artifact(name="artifacts", type="model")
            for path in files_with_suffix(trainer.work_dir, self.out_suffix):
                artifact.add_file(path, name=os.path.relpath(path, trainer.work_dir))
            self.wandb.log_artifact(artifact)
        self.wandb.finish()


@HOOKS.register_module()
class MMDetWandbHook(WandbLoggerHook):
    """MMDetection's W&B hook: the metrics, the run's config (the work_dir's copy, also saved
    as a file) and, with ``log_checkpoint``, each checkpoint the checkpoint hook writes as a
    ``run_<id>_model`` artifact (aliases ``epoch_N`` / ``iter_N`` and ``latest``), whose metadata
    holds that evaluation's metrics with ``log_checkpoint_metadata``.

    MMDetection also logs ``num_eval_images`` validation images with their ground truth and
    predictions as W&B tables; detlab's evaluation hook keeps no predictions, so these tables
    are not logged (``num_eval_images`` and ``bbox_score_thr`` are accepted and unused).
    """

    def __init__(self, init_kwargs: Mapping[str, Any] | None = None, interval: int = 50,
                 log_checkpoint: bool = False, log_checkpoint_metadata: bool = False,
                 num_eval_images: int = 100, bbox_score_thr: float = 0.3,
                 ignore_last: bool = True, reset_flag: bool = False, commit: bool = True,
                 by_epoch: bool = True, with_step: bool = True, log_artifact: bool = True,
                 out_suffix: str | Sequence[str] = (".log.json", ".log", ".py"),
                 define_metric_cfg: Mapping[str, str] | None = None) -> None:
        super().__init__(init_kwargs=init_kwargs, interval=interval, ignore_last=ignore_last,
                         reset_flag=reset_flag, commit=commit, by_epoch=by_epoch,
                         with_step=with_step, log_artifact=log_artifact, out_suffix=out_suffix,
                         define_metric_cfg=define_metric_cfg)
        self.log_checkpoint = log_checkpoint
        self.log_checkpoint_metadata = log_checkpoint and log_checkpoint_metadata
        self.num_eval_images, self.bbox_score_thr = num_eval_images, bbox_score_thr
        self.ckpt_hook: CheckpointHook | None = None
        self.eval_hook: EvalHook | None = None

    def before_run(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        super().before_run(trainer)
        self._log_config(trainer)
        hooks = [hook for _, hook in trainer.hooks]
        self.ckpt_hook = next((h for h in hooks if isinstance(h, CheckpointHook)), None)
        self.eval_hook = next((h for h in hooks if isinstance(h, EvalHook)), None)
        if self.log_checkpoint and self.ckpt_hook is None:
            trainer.logger.warning("MMDetWandbHook: log_checkpoint needs a checkpoint hook "
                                   "(checkpoint_config); no checkpoint will be logged")
            self.log_checkpoint = self.log_checkpoint_metadata = False
        if self.log_checkpoint_metadata and self.eval_hook is None:
            trainer.logger.warning("MMDetWandbHook: log_checkpoint_metadata needs evaluation "
                                   "(evaluation=dict(...) and data.val); logging none")
            self.log_checkpoint_metadata = False
        if self.log_checkpoint_metadata:
            self._check_intervals()

    def _check_intervals(self) -> None:
        every, evaluated = self.ckpt_hook.interval, self.eval_hook.interval
        if every % evaluated != 0:
            raise ConfigError(
                f"MMDetWandbHook log_checkpoint_metadata: checkpoint_config.interval ({every}) "
                f"must be a multiple of evaluation.interval ({evaluated}), so that every "
                f"logged checkpoint has metrics")

    def _log_config(self, trainer: Trainer) -> None:
        names = [trainer.meta.get("exp_name"), "config.py"]
        path = next((os.path.join(trainer.work_dir, n) for n in names
                     if n and os.path.isfile(os.path.join(trainer.work_dir, n))), None)
        if path is None:
            trainer.logger.warning("MMDetWandbHook: no config file in %s to log",
                                   trainer.work_dir)
            return
        self.wandb.save(path, base_path=trainer.work_dir)
        self.wandb.config.update(Config.fromfile(path).to_dict())

    def after_train_epoch(self, trainer: Trainer) -> None:
        super().after_train_epoch(trainer)
        if trainer.rank != 0 or not (self.by_epoch and self.log_checkpoint):
            return
        done, total = trainer.epoch + 1, trainer.max_epochs
        if self.every_n_epochs(trainer, self.ckpt_hook.interval) or (
                self.ckpt_hook.save_last and done == total):
            self._log_checkpoint(trainer, "epoch", done)

    def after_train_iter(self, trainer: Trainer) -> None:
        super().after_train_iter(trainer)
        if trainer.rank != 0 or self.by_epoch or not self.log_checkpoint:
            return
        done = trainer.iter + 1
        if self.every_n_iters(trainer, self.ckpt_hook.interval) or (
                self.ckpt_hook.save_last and done == trainer.max_iters):
            self._log_checkpoint(trainer, "iter", done)

    def _log_checkpoint(self, trainer: Trainer, unit: str, done: int) -> None:
        out_dir = self.ckpt_hook.out_dir_of(trainer)
        path = os.path.join(out_dir, f"{unit}_{done}.pth")
        if not os.path.exists(path):
            return
        metadata = ({unit: done, **trainer.val_outputs} if self.log_checkpoint_metadata
                    else None)
        artifact = self.wandb.Artifact(f"run_{self.wandb.run.id}_model", type="model",
                                       metadata=metadata)
        artifact.add_file(path)
        self.wandb.log_artifact(artifact, aliases=[f"{unit}_{done}", "latest"])

    def after_run(self, trainer: Trainer) -> None:
        if trainer.rank == 0:
            self.wandb.finish()

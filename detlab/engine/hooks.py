"""Hooks: the pieces of the training loop that configs switch on and tune.

A hook has methods named after the moments of the loop (``before_run``, ``before_train_epoch``,
``before_train_iter``, ``after_train_iter``, ``after_train_epoch``, ``after_run``, and the ``val``
versions); each receives the :class:`~detlab.engine.trainer.Trainer`. Hooks run in order of
priority (lower number first), as in MMDetection: LR schedule (VERY_HIGH), optimizer step
(ABOVE_NORMAL), checkpoint (NORMAL), evaluation and timer (LOW), logging (VERY_LOW).
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from detlab.config import ConfigError, did_you_mean
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

PRIORITIES = {"HIGHEST": 0, "VERY_HIGH": 10, "HIGH": 30, "ABOVE_NORMAL": 40, "NORMAL": 50,
              "BELOW_NORMAL": 60, "LOW": 70, "VERY_LOW": 90, "LOWEST": 100}


def priority_value(priority: int | str) -> int:
    """A priority name (``'NORMAL'``) or number as a number."""
    if isinstance(priority, int):
        return priority
    if priority.upper() not in PRIORITIES:
        raise ConfigError(f"unknown hook priority {priority!r}; use a number or one of "
                          f"{', '.join(PRIORITIES)}")
    return PRIORITIES[priority.upper()]


class Hook:
    """Base class: every moment of the loop is a no-op unless a subclass overrides it."""

    priority: int | str = "NORMAL"

    def before_run(self, trainer: Trainer) -> None: ...
    def after_run(self, trainer: Trainer) -> None: ...
    def before_train_epoch(self, trainer: Trainer) -> None: ...
    def after_train_epoch(self, trainer: Trainer) -> None: ...
    def before_train_iter(self, trainer: Trainer) -> None: ...
    def after_train_iter(self, trainer: Trainer) -> None: ...
    def before_val_epoch(self, trainer: Trainer) -> None: ...
    def after_val_epoch(self, trainer: Trainer) -> None: ...
    def before_val_iter(self, trainer: Trainer) -> None: ...
    def after_val_iter(self, trainer: Trainer) -> None: ...


# --------------------------------------------------------------------------------------------
# Learning-rate schedules (lr_config)
# --------------------------------------------------------------------------------------------


class LrUpdaterHook(Hook):
    """Sets each parameter group's lr from its initial lr: a schedule by epoch (or iteration),
    preceded by a warmup by iteration (``'constant'``, ``'linear'`` or ``'exp'``)."""

    priority = "VERY_HIGH"

    def __init__(self, by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        if warmup not in (None, "constant", "linear", "exp"):
            raise ConfigError(f"lr_config.warmup must be 'constant', 'linear', 'exp' or None, "
                              f"got {warmup!r}")
        if warmup is not None and not 0 < warmup_ratio <= 1.0:
            raise ConfigError(f"lr_config.warmup_ratio must be in (0, 1], got {warmup_ratio}")
        self.by_epoch = by_epoch
        self.warmup = warmup
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.warmup_by_epoch = warmup_by_epoch
        self.base_lr: list[float] = []

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        """The scheduled lr (before warmup) for a group whose initial lr is ``base_lr``."""
        raise NotImplementedError(f"{type(self).__name__} must define get_lr")

    def warmup_factor(self, cur_iter: int) -> float:
        """The factor warmup applies to the scheduled lr at iteration ``cur_iter``."""
        progress = cur_iter / max(self.warmup_iters, 1)
        if self.warmup == "constant":
            return self.warmup_ratio
        if self.warmup == "linear":
            return 1 - (1 - progress) * (1 - self.warmup_ratio)
        return self.warmup_ratio ** (1 - progress)

    def _set_lr(self, trainer: Trainer, lrs: Sequence[float]) -> None:
        for group, lr in zip(trainer.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def before_run(self, trainer: Trainer) -> None:
        for group in trainer.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lr = [group["initial_lr"] for group in trainer.optimizer.param_groups]
        if self.warmup_by_epoch:
            self.warmup_iters = self.warmup_iters * trainer.iters_per_epoch

    def before_train_iter(self, trainer: Trainer) -> None:
        regular = [self.get_lr(trainer, lr) for lr in self.base_lr]
        if self.warmup is not None and trainer.iter < self.warmup_iters:
            factor = self.warmup_factor(trainer.iter)
            self._set_lr(trainer, [lr * factor for lr in regular])
        else:
            self._set_lr(trainer, regular)

    def progress(self, trainer: Trainer) -> tuple[int, int]:
        """(done, total) in epochs or iterations, as the schedule counts."""
        if self.by_epoch:
            return trainer.epoch, trainer.max_epochs
        return trainer.iter, trainer.max_iters


@HOOKS.register_module()
class StepLrUpdaterHook(LrUpdaterHook):
    """``policy='step'``: multiply the lr by ``gamma`` at each epoch (or iteration) in ``step``
    (an int means every ``step``), never below ``min_lr``."""

    def __init__(self, step: int | Sequence[int], gamma: float = 0.1, min_lr: float | None = None,
                 by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        steps = [step] if isinstance(step, int) else list(step)
        if not steps or any(not isinstance(s, int) or s <= 0 for s in steps):
            raise ConfigError(f"lr_config.step must be a positive int or a list of them, "
                              f"got {step!r}")
        self.step, self.gamma, self.min_lr = step, gamma, min_lr

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, _ = self.progress(trainer)
        if isinstance(self.step, int):
            exponent = done // self.step
        else:
            exponent = sum(done >= s for s in self.step)
        lr = base_lr * self.gamma**exponent
        return max(lr, self.min_lr) if self.min_lr is not None else lr


@HOOKS.register_module()
class FixedLrUpdaterHook(LrUpdaterHook):
    """``policy='fixed'``: the initial lr throughout (after warmup)."""

    def __init__(self, by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        return base_lr


@HOOKS.register_module()
class CosineAnnealingLrUpdaterHook(LrUpdaterHook):
    """``policy='CosineAnnealing'``: from the initial lr down to ``min_lr`` (or
    ``min_lr_ratio`` x initial lr) along half a cosine over the run."""

    def __init__(self, min_lr: float | None = None, min_lr_ratio: float | None = None,
                 by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        if (min_lr is None) == (min_lr_ratio is None):
            raise ConfigError("lr_config for CosineAnnealing needs exactly one of min_lr and "
                              "min_lr_ratio")
        self.min_lr, self.min_lr_ratio = min_lr, min_lr_ratio

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, total = self.progress(trainer)
        target = self.min_lr if self.min_lr is not None else base_lr * self.min_lr_ratio
        return target + (base_lr - target) * (1 + math.cos(math.pi * done / max(total, 1))) / 2


LR_POLICIES = {"step": "StepLrUpdaterHook", "fixed": "FixedLrUpdaterHook",
               "cosineannealing": "CosineAnnealingLrUpdaterHook"}


def build_lr_hook(lr_config: dict[str, Any]) -> LrUpdaterHook:
    """The LR hook an ``lr_config=dict(policy=..., ...)`` describes."""
    cfg = dict(lr_config)
    policy = str(cfg.pop("policy", "fixed"))
    name = LR_POLICIES.get(policy.lower(), f"{policy}LrUpdaterHook")
    if name not in HOOKS:
        hint = did_you_mean(policy, LR_POLICIES)
        raise ConfigError(f"lr_config.policy {policy!r} is not known.{hint} Known policies: "
                          f"step, fixed, CosineAnnealing.")
    return HOOKS.build(dict(cfg, type=name), _path="lr_config")


# --------------------------------------------------------------------------------------------
# Optimizer step, checkpoints, timing, logging
# --------------------------------------------------------------------------------------------


@HOOKS.register_module()
class OptimizerHook(Hook):
    """Backward, optional gradient clipping (``grad_clip=dict(max_norm, norm_type)``) and the
    optimizer step; with a ``GradScaler`` (AMP on CUDA) the loss is scaled first."""

    priority = "ABOVE_NORMAL"

    def __init__(self, grad_clip: dict | None = None) -> None:
        self.grad_clip = grad_clip

    def after_train_iter(self, trainer: Trainer) -> None:
        optimizer, scaler = trainer.optimizer, trainer.scaler
        optimizer.zero_grad(set_to_none=True)
        loss = trainer.outputs["loss"]
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            params = [p for p in trainer.model.parameters()
                      if p.requires_grad and p.grad is not None]
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params, **self.grad_clip)
                trainer.log_buffer["grad_norm"].append(float(norm))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()


@HOOKS.register_module()
class CheckpointHook(Hook):
    """Saves ``epoch_N.pth`` every ``interval`` epochs and ``latest.pth`` after every epoch (so
    an interrupted run loses no finished epoch); keeps the newest ``max_keep_ckpts``."""

    priority = "NORMAL"

    def __init__(self, interval: int = 1, by_epoch: bool = True, save_optimizer: bool = True,
                 out_dir: str | None = None, max_keep_ckpts: int = -1,
                 save_last: bool = True) -> None:
        if not by_epoch:
            raise ConfigError("checkpoint_config.by_epoch=False needs an iteration-based runner, "
                              "which detlab does not have; use epochs")
        self.interval, self.save_optimizer = interval, save_optimizer
        self.out_dir, self.max_keep_ckpts, self.save_last = out_dir, max_keep_ckpts, save_last

    def after_train_epoch(self, trainer: Trainer) -> None:
        out_dir = self.out_dir or trainer.work_dir
        epoch = trainer.epoch + 1  # the epoch that just finished, counted from 1
        if epoch % self.interval == 0 or (self.save_last and epoch == trainer.max_epochs):
            path = trainer.save_checkpoint(out_dir, f"epoch_{epoch}.pth", self.save_optimizer)
            trainer.logger.info("saved checkpoint %s", path)
            self._remove_old(out_dir, epoch)
        trainer.save_checkpoint(out_dir, "latest.pth", self.save_optimizer)

    def _remove_old(self, out_dir: str, epoch: int) -> None:
        if self.max_keep_ckpts <= 0:
            return
        for old in range(epoch - self.max_keep_ckpts * self.interval, 0, -self.interval):
            path = os.path.join(out_dir, f"epoch_{old}.pth")
            if not os.path.exists(path):
                break
            os.remove(path)


@HOOKS.register_module()
class IterTimerHook(Hook):
    """Measures ``data_time`` (waiting for the batch) and ``time`` (the whole iteration)."""

    priority = "LOW"

    def before_train_epoch(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()

    def before_train_iter(self, trainer: Trainer) -> None:
        trainer.log_buffer["data_time"].append(time.perf_counter() - self._last)

    def after_train_iter(self, trainer: Trainer) -> None:
        trainer.log_buffer["time"].append(time.perf_counter() - self._last)
        self._last = time.perf_counter()


def _memory_mb(device: torch.device) -> int:
    """Peak memory in MB: CUDA's allocator on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device) / 2**20)
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    except ImportError:  # not on Windows
        return 0


@HOOKS.register_module()
class TextLoggerHook(Hook):
    """Every ``interval`` iterations, writes the averages of the log buffer as a row of the JSON
    log and a line of the text log; after validation, the metrics. The last iterations of an
    epoch that do not fill an interval are dropped (``ignore_last``), unless the whole epoch is
    shorter than the interval."""

    priority = "VERY_LOW"

    def __init__(self, interval: int = 50, by_epoch: bool = True,
                 ignore_last: bool = True) -> None:
        self.interval, self.ignore_last = interval, ignore_last

    def after_train_iter(self, trainer: Trainer) -> None:
        inner = trainer.inner_iter + 1
        last = inner == trainer.iters_per_epoch
        # an epoch shorter than the interval still logs its last iteration (small datasets)
        short_epoch = trainer.iters_per_epoch < self.interval
        if inner % self.interval and not (last and (not self.ignore_last or short_epoch)):
            return
        row = {"mode": "train", "epoch": trainer.epoch + 1, "iter": inner,
               "lr": trainer.current_lr()[0]}
        buffer = trainer.log_buffer
        for key in ("time", "data_time"):
            if buffer.get(key):
                row[key] = sum(buffer[key]) / len(buffer[key])
        row["memory"] = _memory_mb(trainer.device)
        for key, values in buffer.items():
            if key not in ("time", "data_time") and values:
                row[key] = sum(values) / len(values)
        trainer.write_log_row(row)
        buffer.clear()

    def after_val_epoch(self, trainer: Trainer) -> None:
        if trainer.val_outputs:
            row = {"mode": "val", "epoch": trainer.epoch + 1, "iter": trainer.iters_per_epoch,
                   "lr": trainer.current_lr()[0]}
            row.update(trainer.val_outputs)
            trainer.write_log_row(row)


@HOOKS.register_module()
class NumClassCheckHook(Hook):
    """Stops a run early when the head's ``num_classes`` differs from the dataset's classes --
    the classic cause of a silent zero mAP."""

    def before_run(self, trainer: Trainer) -> None:
        model = getattr(trainer.model, "module", trainer.model)
        classes = getattr(trainer.train_dataset, "CLASSES", None)
        if classes is None:
            return
        for name, module in model.named_modules():
            num_classes = getattr(module, "num_classes", None)
            if isinstance(num_classes, int) and num_classes != len(classes):
                raise ConfigError(
                    f"model.{name}.num_classes is {num_classes} but the training dataset has "
                    f"{len(classes)} classes ({', '.join(map(str, classes[:10]))}"
                    f"{' ...' if len(classes) > 10 else ''}); set "
                    f"model.{name}.num_classes={len(classes)} or data.train.classes")


@HOOKS.register_module()
class EvalHook(Hook):
    """Evaluates on the validation set every ``interval`` epochs, after the checkpoint of the
    epoch is written (a crash here loses nothing). With ``save_best`` (a metric name, or
    ``'auto'`` for the first one), the best epoch is also kept as ``best_<metric>_epoch_N.pth``.
    Other keys (``metric``, ``classwise``, ...) go to ``dataset.evaluate``."""

    priority = "LOW"

    def __init__(self, dataloader: Any, interval: int = 1, save_best: str | None = None,
                 rule: str | None = None, start: int | None = None, by_epoch: bool = True,
                 gpu_collect: bool = False, tmpdir: str | None = None,
                 **eval_kwargs: Any) -> None:
        # gpu_collect / tmpdir choose how MMDetection gathers results across processes; detlab
        # gathers them with all_gather_object either way, so they are accepted and unused.
        if not by_epoch:
            raise ConfigError("evaluation.by_epoch=False needs an iteration-based runner, which "
                              "detlab does not have; evaluate every `interval` epochs")
        if rule not in (None, "greater", "less"):
            raise ConfigError(f"evaluation.rule must be 'greater' or 'less', got {rule!r}")
        self.dataloader, self.interval, self.start = dataloader, interval, start
        self.save_best, self.rule = save_best, rule or "greater"
        self.eval_kwargs = eval_kwargs
        self.best: float | None = None
        self.best_path: str | None = None

    def after_train_epoch(self, trainer: Trainer) -> None:
        epoch = trainer.epoch + 1
        if (self.start is not None and epoch < self.start) or epoch % self.interval:
            return
        from detlab.engine.tester import single_gpu_test

        trainer.call_hook("before_val_epoch")
        results = single_gpu_test(trainer.model, self.dataloader, progress=trainer.progress)
        kwargs = dict(self.eval_kwargs)
        if "logger" in inspect.signature(self.dataloader.dataset.evaluate).parameters:
            kwargs.setdefault("logger", trainer.logger)  # per-class tables go to the log
        metrics = self.dataloader.dataset.evaluate(results, **kwargs)
        trainer.val_outputs = {k: v for k, v in metrics.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        trainer.logger.info("epoch %d evaluation: %s", epoch, ", ".join(
            f"{k}: {v:.4f}" for k, v in trainer.val_outputs.items()))
        self._keep_best(trainer, epoch)
        trainer.call_hook("after_val_epoch")

    def _keep_best(self, trainer: Trainer, epoch: int) -> None:
        if not self.save_best or not trainer.val_outputs:
            return
        key = next(iter(trainer.val_outputs)) if self.save_best == "auto" else self.save_best
        if key not in trainer.val_outputs:
            raise ConfigError(f"evaluation.save_best={key!r} is not among the metrics "
                              f"({', '.join(trainer.val_outputs)})")
        value = trainer.val_outputs[key]
        better = self.best is None or (value > self.best if self.rule == "greater"
                                       else value < self.best)
        if better:
            if self.best_path and os.path.exists(self.best_path):
                os.remove(self.best_path)
            self.best = value
            self.best_path = trainer.save_checkpoint(trainer.work_dir,
                                                     f"best_{key}_epoch_{epoch}.pth", False)
            trainer.logger.info("best %s so far: %.4f (epoch %d)", key, value, epoch)


class LogBuffer(defaultdict):
    """``{key: [values since the last log row]}``."""

    def __init__(self) -> None:
        super().__init__(list)

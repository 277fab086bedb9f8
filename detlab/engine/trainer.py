"""The training loop (:class:`Trainer`) and ``detlab.train(cfg)``, which builds everything a
config describes and runs it: an epoch loop driven by hooks, as MMDetection's runner.

``work_dir`` receives the resolved ``config.py``, a text log ``<timestamp>.log``, a JSON-lines log
``<timestamp>.log.json``, ``epoch_N.pth`` every ``checkpoint_config.interval`` epochs and
``latest.pth`` after every epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detlab.config import Config, ConfigError, load_config
from detlab.engine.checkpoint import load_checkpoint, save_checkpoint
from detlab.engine.dist import is_main_process, reduce_mean
from detlab.engine.hooks import Hook, LogBuffer, priority_value
from detlab.engine.logging import JsonLog, format_row, progress_bar
from detlab.structures import Batch


def parse_losses(losses: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss (the sum of every entry whose key starts with ``loss``) and the values to
    log (averaged over processes). A list of tensors counts as their sum."""
    log_vars: dict[str, torch.Tensor] = {}
    for name, value in losses.items():
        if isinstance(value, torch.Tensor):
            log_vars[name] = value.mean()
        elif isinstance(value, Iterable):
            log_vars[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f"loss {name!r} must be a tensor or a list of tensors, got "
                            f"{type(value).__name__}")
    loss = sum(v for k, v in log_vars.items() if k.startswith("loss"))
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the model's loss() returned no key starting with 'loss': "
                         f"{list(losses)}")
    log_vars["loss"] = loss
    return loss, {k: float(reduce_mean(v.detach())) for k, v in log_vars.items()}


class _LossForward(nn.Module):
    """Makes ``detector.loss`` the forward of a module, which DistributedDataParallel needs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.detector.loss(batch)


class Trainer:
    """Runs ``max_epochs`` epochs of ``train_loader`` through ``model.loss``, calling hooks.

    State that hooks read: ``epoch`` (finished epochs), ``iter`` (finished iterations),
    ``inner_iter`` (index in the epoch), ``outputs`` (``loss`` and log values of the last
    iteration), ``log_buffer``, ``val_outputs`` (metrics of the last evaluation).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: Any,
                 work_dir: str, max_epochs: int, device: torch.device,
                 logger: logging.Logger, json_log: JsonLog | None = None,
                 scaler: Any = None, meta: Mapping[str, Any] | None = None,
                 val_loss_loader: Any = None, train_dataset: Any = None,
                 distributed: bool = False, progress: bool = True) -> None:
        self.model, self.optimizer, self.train_loader = model, optimizer, train_loader
        self.work_dir, self.max_epochs, self.device = work_dir, max_epochs, device
        self.logger, self.json_log, self.scaler = logger, json_log, scaler
        self.meta = dict(meta or {})
        self.val_loss_loader, self.progress = val_loss_loader, progress
        self.train_dataset = train_dataset if train_dataset is not None else getattr(
            train_loader, "dataset", None)
        self.forward_loss = model.loss
        if distributed:
            ddp = nn.parallel.DistributedDataParallel(
                _LossForward(model), device_ids=[device.index] if device.type == "cuda" else None)
            self.forward_loss = ddp
        self.hooks: list[tuple[int, Hook]] = []
        self.epoch = self.iter = self.inner_iter = 0
        self.outputs: dict[str, Any] = {}
        self.val_outputs: dict[str, float] = {}
        self.log_buffer = LogBuffer()

    # ---- hooks ---------------------------------------------------------------------------

    @property
    def iters_per_epoch(self) -> int:
        return len(self.train_loader)

    @property
    def max_iters(self) -> int:
        return self.max_epochs * self.iters_per_epoch

    def register_hook(self, hook: Hook, priority: int | str | None = None) -> None:
        """Add ``hook``; among equal priorities, the one registered first runs first."""
        value = priority_value(priority if priority is not None else hook.priority)
        position = sum(1 for p, _ in self.hooks if p <= value)
        self.hooks.insert(position, (value, hook))

    def call_hook(self, name: str) -> None:
        for _, hook in self.hooks:
            getattr(hook, name)(self)

    def current_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def write_log_row(self, row: dict[str, Any]) -> None:
        """One row to the JSON log and one line to the text log (main process only)."""
        if not is_main_process():
            return
        if self.json_log is not None:
            self.json_log.write(row)
        self.logger.info(format_row(row, self.iters_per_epoch))

    # ---- checkpoints ---------------------------------------------------------------------

    def save_checkpoint(self, out_dir: str, filename: str, save_optimizer: bool = True) -> str:
        """Write the model (and optimizer) with the run's meta; main process only."""
        path = os.path.join(out_dir, filename)
        if is_main_process():
            meta = dict(self.meta, epoch=self.epoch + 1, iter=self.iter)
            extra = {"scaler": self.scaler.state_dict()} if self.scaler is not None else None
            save_checkpoint(path, self.model, self.optimizer if save_optimizer else None, meta,
                            extra)
        return path

    def resume(self, path: str) -> None:
        """Continue the run saved at ``path``: weights, optimizer, epoch and iteration."""
        checkpoint = load_checkpoint(self.model, path, map_location=self.device, strict=True,
                                     log=self.logger)
        meta = checkpoint["meta"]
        self.epoch, self.iter = int(meta.get("epoch", 0)), int(meta.get("iter", 0))
        if "optimizer" in checkpoint:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scaler is not None and "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.logger.info("resumed from %s: epoch %d, iter %d", path, self.epoch, self.iter)

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Train until ``max_epochs``; a Ctrl-C says which checkpoint holds the last epoch."""
        self.call_hook("before_run")
        try:
            while self.epoch < self.max_epochs:
                self.train_epoch()
                if self.val_loss_loader is not None:
                    self.val_loss_epoch()
        except KeyboardInterrupt:
            latest = os.path.join(self.work_dir, "latest.pth")
            self.logger.warning("interrupted in epoch %d; %s", self.epoch + 1,
                                f"{latest} holds epoch {self.epoch} (resume_from={latest!r})"
                                if os.path.exists(latest) else "no epoch had finished")
            raise
        self.call_hook("after_run")

    def _batches(self, loader: Any, desc: str) -> Iterable:
        if not self.progress or not is_main_process():
            return loader
        return progress_bar(loader, desc)

    def train_epoch(self) -> None:
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.call_hook("before_train_epoch")
        desc = f"epoch {self.epoch + 1}/{self.max_epochs}"
        for inner_iter, batch in enumerate(self._batches(self.train_loader, desc)):
            self.inner_iter = inner_iter
            self.call_hook("before_train_iter")
            self.train_iter(batch)
            self.call_hook("after_train_iter")
            self.iter += 1
        self.call_hook("after_train_epoch")
        self.epoch += 1

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.scaler is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def train_iter(self, batch: Batch) -> None:
        batch = batch.to(self.device, non_blocking=True)
        with self._autocast():
            losses = self.forward_loss(batch)
        loss, log_vars = parse_losses(losses)
        if not math.isfinite(log_vars["loss"]):
            raise FloatingPointError(
                f"the loss became {log_vars['loss']} at epoch {self.epoch + 1}, iteration "
                f"{self.inner_iter + 1} ({', '.join(f'{k}={v:.4g}' for k, v in log_vars.items())})"
                f"; lower optimizer.lr, lengthen the warmup or set "
                f"optimizer_config.grad_clip=dict(max_norm=35, norm_type=2)")
        self.outputs = {"loss": loss, "log_vars": log_vars, "num_samples": len(batch)}
        for key, value in log_vars.items():
            self.log_buffer[key].append(value)

    @torch.no_grad()
    def val_loss_epoch(self) -> None:
        """The ``('val', 1)`` workflow: average losses on the validation set, logged."""
        self.model.eval()
        totals: dict[str, float] = {}
        count = 0
        for batch in self._batches(self.val_loss_loader, "val losses"):
            _, log_vars = parse_losses(self.model.loss(batch.to(self.device)))
            for key, value in log_vars.items():
                totals[key] = totals.get(key, 0.0) + value
            count += 1
        row = {"mode": "val", "epoch": self.epoch, "iter": count,
               "lr": self.current_lr()[0]}
        row.update({k: v / max(count, 1) for k, v in totals.items()})
        self.write_log_row(row)


@dataclass
class TrainRun:
    """What :func:`train` leaves behind: the trained model and where its files are."""

    model: nn.Module
    work_dir: str
    json_log: str
    text_log: str
    checkpoint: str
    metrics: dict[str, float] = field(default_factory=dict)
    config: Config | None = None
    seconds: float = 0.0


def _max_epochs(cfg: Config) -> int:
    runner = cfg.get("runner")
    if runner is not None:
        if runner.get("type", "EpochBasedRunner") != "EpochBasedRunner":
            raise ConfigError(f"runner.type={runner.get('type')!r}: detlab trains by epochs; use "
                              f"runner=dict(type='EpochBasedRunner', max_epochs=N)")
        if "max_epochs" not in runner:
            raise ConfigError("runner needs max_epochs (runner=dict(type='EpochBasedRunner', "
                              "max_epochs=12))")
        epochs = runner["max_epochs"]
    elif "total_epochs" in cfg:
        epochs = cfg.total_epochs
    else:
        raise ConfigError("the config has neither runner=dict(max_epochs=...) nor total_epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"runner.max_epochs must be a positive int, got {epochs!r}")
    return epochs


def _work_dir(cfg: Config, work_dir: str | None) -> str:
    if work_dir is None:
        work_dir = cfg.get("work_dir")
    if work_dir is None:
        stem = os.path.splitext(os.path.basename(cfg.filename or "run"))[0]
        work_dir = os.path.join("work_dirs", stem)
    return os.path.abspath(work_dir)


def train(cfg: str | Config | Mapping, work_dir: str | None = None, device: str | None = None,
          resume_from: str | None = None, load_from: str | None = None, validate: bool = True,
          seed: int | None = None, deterministic: bool = False,
          cfg_options: Mapping[str, Any] | Iterable[str] | None = None,
          progress: bool = True, hooks: Iterable[Hook] = ()) -> TrainRun:
    """Train the model a config describes on its ``data.train``, validating on ``data.val``.

    Args:
        cfg: a config path, ``Config`` or dict.
        work_dir: where logs and checkpoints go (default: ``cfg.work_dir``, else
            ``work_dirs/<config name>``).
        device: ``'cuda'``, ``'cpu'``, ... (default: CUDA when present).
        resume_from: continue a run from its checkpoint (weights, optimizer, epoch).
        load_from: start from a checkpoint's weights only.
        validate: evaluate every ``evaluation.interval`` epochs.
        seed, deterministic: seeding of every random source.
        cfg_options: dotted overrides, as ``--cfg-options``.
        progress: show progress bars.
        hooks: extra hook objects (e.g. a notebook's live training monitor), registered at
            their own ``priority``.
    """
    from detlab.engine.setup import setup_training

    cfg = load_config(cfg, cfg_options)
    cfg.work_dir = _work_dir(cfg, work_dir)
    if resume_from is not None:
        cfg.resume_from = resume_from
    if load_from is not None:
        cfg.load_from = load_from
    trainer, run = setup_training(cfg, device, validate, seed, deterministic, progress,
                                  _max_epochs(cfg))
    for hook in hooks:
        trainer.register_hook(hook)
    start = time.perf_counter()
    try:
        trainer.run()
    finally:
        run.seconds = time.perf_counter() - start
        from detlab.engine.logging import close_file_handlers

        close_file_handlers(trainer.logger)
    run.metrics = dict(trainer.val_outputs)
    run.checkpoint = os.path.join(cfg.work_dir, "latest.pth")
    return run

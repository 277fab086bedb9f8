"""The training loop: :class:`Trainer` runs epochs (MMDetection's ``EpochBasedRunner``) or a number
of iterations (``IterBasedRunner``) of ``model.loss``, calling hooks at every moment of the loop.

The trainer knows nothing of configs: :mod:`detlab.engine.setup` builds it and its hooks. It owns
what a resumed run must continue exactly -- the counters, the random states and the position of
the data sampler -- and writes them into each checkpoint with the model and the optimizer, so that
a run resumed from epoch (or iteration) N is the run that never stopped, bit for bit on a CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detlab.checkpoint import load_checkpoint, save_checkpoint
from detlab.config import Config
from detlab.dist import (
    get_dist_info,
    preserved_random_states,
    random_states,
    reduce_mean,
    set_random_states,
)
from detlab.engine.hooks.base import Hook, LogBuffer, hook_state, priority_value
from detlab.engine.logging import JsonLog, format_row, progress_bar
from detlab.structures import Batch


def parse_losses(losses: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss (the sum of every entry whose key holds ``loss``, as MMDetection's
    ``_parse_losses``: ``loss_cls``, a cascade's ``s0.loss_rpn_reg`` ...) and the values to log
    (averaged over processes). A list of tensors counts as their sum."""
    log_vars: dict[str, torch.Tensor] = {}
    for name, value in losses.items():
        if isinstance(value, torch.Tensor):
            log_vars[name] = value.mean()
        elif isinstance(value, Iterable):
            log_vars[name] = sum(v.mean() for v in value)
        else:
            raise TypeError(f"loss {name!r} must be a tensor or a list of tensors, got "
                            f"{type(value).__name__}")
    loss = sum(v for k, v in log_vars.items() if "loss" in k)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the model's loss() returned no key holding 'loss': "
                         f"{list(losses)}")
    log_vars["loss"] = loss
    return loss, {k: float(reduce_mean(v.detach())) for k, v in log_vars.items()}


def non_finite_parameters(model: nn.Module) -> list[str]:
    """Names of parameters holding NaN or infinity (a diverged model)."""
    return [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]


class _LossForward(nn.Module):
    """Makes ``detector.loss`` the forward of a module, which DistributedDataParallel needs."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.detector.loss(batch)


def _set_position(loader: Any, epoch: int, start_batch: int) -> None:
    """Point the loader's sampler at ``epoch`` from batch ``start_batch`` (or just the epoch for
    samplers that only know ``set_epoch``)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_position"):
        sampler.set_position(epoch, start_batch)
    elif hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


class Trainer:
    """Runs ``max_epochs`` epochs (or ``max_iters`` iterations) of ``data_loader`` through
    ``model.loss``, calling hooks at each moment of the loop.

    Exactly one of ``max_epochs`` and ``max_iters`` is given. State that hooks read, under
    mmcv's runner names: ``model``, ``optimizer``, ``data_loader``, ``work_dir``, ``logger``,
    ``meta``, ``epoch`` (finished epochs), ``iter`` (finished iterations), ``inner_iter`` (index
    in the epoch), ``max_epochs``, ``max_iters``, ``mode`` ('train' / 'val'), ``outputs`` (``loss``,
    ``log_vars`` and ``num_samples`` of the last iteration), ``log_buffer``, ``val_outputs``
    (metrics of the last evaluation) and ``evaluated_at`` (``iter`` then), ``rank``,
    ``world_size``. ``autocast_dtype`` (set by the fp16
    optimizer hook) runs the forward under ``torch.autocast``.
    """

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, data_loader: Any,
                 work_dir: str, logger: logging.Logger, device: torch.device,
                 max_epochs: int | None = None, max_iters: int | None = None,
                 json_log: JsonLog | None = None, meta: Mapping[str, Any] | None = None,
                 workflow: Sequence[tuple[str, int]] = (("train", 1),),
                 val_loss_loader: Any = None, distributed: bool = False,
                 find_unused_parameters: bool = False, progress: bool = True) -> None:
        if (max_epochs is None) == (max_iters is None):
            raise ValueError("give the Trainer exactly one of max_epochs and max_iters")
        self.model, self.optimizer, self.data_loader = model, optimizer, data_loader
        self.work_dir, self.logger, self.device = work_dir, logger, device
        self.by_epoch = max_epochs is not None
        self._max_epochs, self._max_iters = max_epochs, max_iters
        self.json_log, self.meta = json_log, dict(meta or {})
        self.workflow = [tuple(step) for step in workflow]
        self.val_loss_loader, self.progress = val_loss_loader, progress
        self._val_batches: Any = None  # the validation batches of an iteration-based workflow
        self.rank, self.world_size = get_dist_info()
        self.forward_loss: Any = model.loss
        if distributed:
            self.forward_loss = nn.parallel.DistributedDataParallel(
                _LossForward(model), device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters)
        self.hooks: list[tuple[int, Hook]] = []
        self.epoch = self.iter = self.inner_iter = 0
        self.mode = "train"
        self.outputs: dict[str, Any] = {}
        self.val_outputs: dict[str, float] = {}
        self.evaluated_at: int | None = None  # ``iter`` when val_outputs were computed
        self.log_buffer = LogBuffer()
        self.autocast_dtype: torch.dtype | None = None

    # ---- sizes ---------------------------------------------------------------------------

    @property
    def iters_per_epoch(self) -> int:
        return len(self.data_loader)

    @property
    def max_epochs(self) -> int:
        """Epochs of the run (for an iteration-based run, the epochs its iterations span)."""
        if self._max_epochs is not None:
            return self._max_epochs
        return -(-self._max_iters // max(self.iters_per_epoch, 1))

    @property
    def max_iters(self) -> int:
        if self._max_iters is not None:
            return self._max_iters
        return self._max_epochs * self.iters_per_epoch

    @property
    def train_dataset(self) -> Any:
        return getattr(self.data_loader, "dataset", None)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.max_epochs if self.by_epoch else self.iter >= self.max_iters

    # ---- hooks ---------------------------------------------------------------------------

    def register_hook(self, hook: Hook, priority: int | str | None = None) -> None:
        """Add ``hook``; among equal priorities, the one registered first runs first."""
        value = priority_value(priority if priority is not None else hook.priority)
        position = sum(1 for p, _ in self.hooks if p <= value)
        self.hooks.insert(position, (value, hook))

    def call_hook(self, name: str) -> None:
        for _, hook in self.hooks:
            getattr(hook, name)(self)

    def get_hook(self, cls: type) -> Any:
        """The first registered hook that is an instance of ``cls`` (or None)."""
        return next((hook for _, hook in self.hooks if isinstance(hook, cls)), None)

    def current_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def current_momentum(self) -> list[float]:
        """Each group's momentum (SGD) or first beta (Adam family)."""
        return [group["betas"][0] if "betas" in group else group.get("momentum", 0.0)
                for group in self.optimizer.param_groups]

    def write_log_row(self, row: dict[str, Any]) -> None:
        """One row to the JSON log and one line to the text log (main process only)."""
        if self.rank != 0:
            return
        if self.json_log is not None:
            self.json_log.write(row)
        if self.by_epoch:
            self.logger.info(format_row(row, self.iters_per_epoch))
        else:
            self.logger.info(format_row(row, max_iters=self.max_iters))

    # ---- checkpoints ---------------------------------------------------------------------

    def _hook_states(self) -> dict[str, Any]:
        states = {}
        for _, hook in self.hooks:
            state = hook_state(hook)
            if state is not None:
                states[type(hook).__name__] = state
        return states

    def save_checkpoint(self, out_dir: str, filename: str, save_optimizer: bool = True, *,
                        epoch: int | None = None, iter: int | None = None) -> str:
        """Write the model, optimizer, random states and hook states with the run's meta (main
        process only). ``epoch`` / ``iter`` are the finished epochs and iterations to record
        (default: the counters now; a hook's ``after_train_epoch`` passes ``epoch + 1``, since
        the trainer counts an epoch as finished after its hooks ran). Refuses to save a model
        whose weights are not finite: the previous checkpoint stays the newest good one."""
        path = os.path.join(out_dir, filename)
        if self.rank != 0:
            return path
        bad = non_finite_parameters(self.model)
        if bad:
            raise FloatingPointError(
                f"not saving {path}: the weights are no longer finite ({', '.join(bad[:3])}"
                f"{' ...' if len(bad) > 3 else ''}) after iteration {self.iter}; the previous "
                f"checkpoint is the last good one. Lower optimizer.lr, lengthen the warmup or "
                f"set optimizer_config.grad_clip=dict(max_norm=35, norm_type=2)")
        meta = dict(self.meta, epoch=self.epoch if epoch is None else epoch,
                    iter=self.iter if iter is None else iter)
        extra = {"rng": random_states(), "hooks": self._hook_states()}
        save_checkpoint(path, self.model, self.optimizer if save_optimizer else None, meta, extra)
        return path

    def resume(self, path: str) -> None:
        """Continue the run saved at ``path``: weights (strictly), optimizer, counters, random
        states, sampler position and hook states."""
        checkpoint = load_checkpoint(self.model, path, map_location=self.device, strict=True,
                                     log=self.logger)
        meta = checkpoint["meta"]
        self.epoch, self.iter = int(meta.get("epoch", 0)), int(meta.get("iter", 0))
        for key in ("seed", "hook_msgs"):
            if key in meta:
                self.meta[key] = meta[key]
        if "optimizer" in checkpoint:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if "rng" in checkpoint:
            set_random_states(checkpoint["rng"])
        states = checkpoint.get("hooks") or {}
        for _, hook in self.hooks:
            name = type(hook).__name__
            if name in states and hasattr(hook, "load_state_dict"):
                hook.load_state_dict(states[name])
        self.logger.info("resumed from %s: epoch %d, iter %d", path, self.epoch, self.iter)

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Train until ``max_epochs`` / ``max_iters``."""
        self.call_hook("before_run")
        if self.by_epoch:
            self._run_epochs()
        else:
            self._run_iters()
        self.call_hook("after_run")

    def _run_epochs(self) -> None:
        while self.epoch < self.max_epochs:
            for mode, epochs in self.workflow:
                for _ in range(epochs):
                    if mode == "train" and self.epoch >= self.max_epochs:
                        break
                    self.train_epoch() if mode == "train" else self.val_loss_epoch()

    def _batches(self, loader: Any, desc: str) -> Iterable:
        if not self.progress or self.rank != 0:
            return loader
        return progress_bar(loader, desc)

    def train_epoch(self) -> None:
        self.mode = "train"
        self.model.train()
        _set_position(self.data_loader, self.epoch, 0)
        self.call_hook("before_train_epoch")
        desc = f"epoch {self.epoch + 1}/{self.max_epochs}"
        for inner_iter, batch in enumerate(self._batches(self.data_loader, desc)):
            self.inner_iter = inner_iter
            self._train_step(batch)
        self.call_hook("after_train_epoch")
        self.epoch += 1

    def _train_step(self, batch: Batch) -> None:
        self.call_hook("before_train_iter")
        self.train_iter(batch)
        self.call_hook("after_train_iter")
        self.iter += 1

    def _run_iters(self) -> None:
        """mmcv's IterBasedRunner: the workflow alternates ``('train', n)`` iterations with
        ``('val', m)`` validation-loss iterations; the loader restarts (next epoch) when it
        runs out, and a resumed run starts mid-epoch where the checkpoint left off."""
        per_epoch = max(self.iters_per_epoch, 1)
        self.epoch, start = divmod(self.iter, per_epoch)
        _set_position(self.data_loader, self.epoch, start)
        batches = iter(self.data_loader)
        self.inner_iter = start
        self.call_hook("before_epoch")
        while self.iter < self.max_iters:
            for mode, count in self.workflow:
                for _ in range(count):
                    if self.iter >= self.max_iters:
                        break
                    if mode == "val":
                        self.val_loss_iter()
                        continue
                    batch, batches = self._next_batch(batches)
                    self.mode = "train"
                    self.model.train()
                    self._train_step(batch)
                    self.inner_iter += 1
        self.call_hook("after_epoch")

    def _next_batch(self, batches: Any) -> tuple[Batch, Any]:
        try:
            return next(batches), batches
        except StopIteration:
            self.epoch += 1
            self.inner_iter = 0
            _set_position(self.data_loader, self.epoch, 0)
            batches = iter(self.data_loader)
            return next(batches), batches

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train_iter(self, batch: Batch) -> None:
        """The forward and the losses; the optimizer hook does backward and step."""
        batch = batch.to(self.device, non_blocking=True)
        with self._autocast():
            losses = self.forward_loss(batch)
        loss, log_vars = parse_losses(losses)
        self.outputs = {"loss": loss, "log_vars": log_vars, "num_samples": len(batch)}
        for key, value in log_vars.items():
            self.log_buffer[key].append(value)

    @torch.no_grad()
    def _val_losses(self, batches: Iterable) -> dict[str, float]:
        totals: dict[str, float] = {}
        count = 0
        for batch in batches:
            with self._autocast():
                _, log_vars = parse_losses(self.model.loss(batch.to(self.device)))
            for key, value in log_vars.items():
                totals[key] = totals.get(key, 0.0) + value
            count += 1
        return {k: v / max(count, 1) for k, v in totals.items()}

    def val_loss_epoch(self) -> None:
        """The ``('val', 1)`` workflow: average losses on the validation set, logged, computed
        in eval mode (BatchNorm with its running statistics), as mmcv's runner does."""
        self.mode = "val"
        self.model.eval()
        self.call_hook("before_val_epoch")
        with preserved_random_states():
            averages = self._val_losses(self._batches(self.val_loss_loader, "val losses"))
        row = {"mode": "val", "epoch": self.epoch, "iter": len(self.val_loss_loader),
               "lr": self.current_lr()[0], **averages}
        self.write_log_row(row)
        self.call_hook("after_val_epoch")
        self.mode = "train"

    def val_loss_iter(self) -> None:
        """One ``('val', m)`` iteration of an iteration-based workflow: the losses of the next
        validation batch, logged."""
        if self._val_batches is None:
            self._val_batches = iter(self.val_loss_loader)
        try:
            batch = next(self._val_batches)
        except StopIteration:  # the loader ran out: start it again
            self._val_batches = iter(self.val_loss_loader)
            batch = next(self._val_batches)
        self.mode = "val"
        self.model.eval()
        with preserved_random_states():
            averages = self._val_losses([batch])
        self.write_log_row({"mode": "val", "epoch": self.epoch + 1, "iter": self.iter,
                            "lr": self.current_lr()[0], **averages})
        self.mode = "train"


@dataclass
class TrainRun:
    """What :func:`~detlab.engine.setup.train` leaves behind: the trained model and where its
    files are."""

    model: nn.Module
    work_dir: str
    json_log: str
    text_log: str
    checkpoint: str
    metrics: dict[str, float] = field(default_factory=dict)
    config: Config | None = None
    seconds: float = 0.0
    status: str = "running"


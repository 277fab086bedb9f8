"""Exponential moving averages of the weights (``custom_hooks=[dict(type='ExpMomentumEMAHook',
...)]``): mmcv's ``EMAHook`` and MMDetection's ``ExpMomentumEMAHook`` / ``LinearMomentumEMAHook``.

As in mmcv and MMDetection, the averages live in the model itself, as buffers named
``ema_<state_dict key with '.' replaced by '_'>`` (``ema_backbone_conv1_weight``), so that a
checkpoint written with EMA has MMDetection's keys and loads in either library. Every
``interval`` iterations each average moves towards the live value::

    ema = (1 - momentum) * ema + momentum * live

At the end of each training epoch the averages and the live weights swap places, so the
checkpoint of that epoch and the evaluation after it use the averaged weights (the live ones wait
in the ``ema_*`` buffers); the next epoch swaps them back. A finished run leaves the averaged
weights in the model, as MMDetection does. An iteration-based run never swaps (mmcv's
``IterBasedRunner`` calls no training-epoch moments): its checkpoints hold the live weights and
the averages in the buffers.

Resuming: the trainer loads a checkpoint before the hooks' ``before_run``, when the model has no
``ema_*`` buffers yet, so the hook also keeps the buffers' values in its own checkpoint state and
puts them back once it has made the buffers. A run resumed from MMDetection's checkpoint (which has
no such state) gives the hook ``resume_from`` as MMDetection's YOLOX configs do: the hook loads
that checkpoint again after making its buffers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.engine.hooks.base import Hook, is_module_wrapper
from detlab.engine.hooks.checkpoint import CheckpointHook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


def ema_buffer_name(key: str) -> str:
    """The name of the buffer holding the average of ``key`` (mmcv's and MMDetection's)."""
    return f"ema_{key.replace('.', '_')}"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_module_wrapper(model) else model


def _runs_before_checkpoint(hook: Hook, trainer: Trainer) -> bool:
    """Whether ``hook`` comes before the checkpoint hook in ``trainer``'s order."""
    order = [h for _, h in trainer.hooks]
    saver = next((h for h in order if isinstance(h, CheckpointHook)), None)
    return saver is None or order.index(hook) < order.index(saver)


class BaseEMAHook(Hook):
    """Averages the model's weights (and, unless ``skip_buffers``, its buffers such as BatchNorm
    statistics); MMDetection's ``BaseEMAHook``. Subclasses say when to update
    (:meth:`update_due`) and with which momentum (:meth:`momentum_at`).

    Args:
        momentum: weight of the live value in each update (``0 < momentum < 1``).
        interval: update every ``interval`` iterations.
        skip_buffers: average the parameters only.
        resume_from: a checkpoint to load again once the ``ema_*`` buffers exist (MMDetection's
            way of resuming the averages).
    """

    priority = 49  # MMDetection's configs: before the checkpoint hook (50), which saves averages

    def __init__(self, momentum: float = 0.0002, interval: int = 1, skip_buffers: bool = False,
                 resume_from: str | None = None) -> None:
        if not 0 < momentum < 1:
            raise ConfigError(f"{type(self).__name__}: momentum must be in (0, 1), got "
                              f"{momentum!r} (the weight of the live value in each update)")
        if not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"{type(self).__name__}: interval must be a positive int, got "
                              f"{interval!r}")
        self.momentum, self.interval = momentum, interval
        self.skip_buffers, self.checkpoint = skip_buffers, resume_from
        self.tracked: dict[str, torch.Tensor] = {}  # state_dict key -> live tensor
        self.averages: dict[str, torch.Tensor] = {}  # state_dict key -> its ema_* buffer
        self.swapped = False  # the model holds the averages, the buffers the live values
        self._pending: Mapping[str, Any] | None = None

    # ---- the schedule ---------------------------------------------------------------------

    def momentum_at(self, step: int) -> float:
        """The momentum of the update after iteration ``step`` (0-based)."""
        return self.momentum

    def update_due(self, step: int) -> bool:
        """Whether the iteration ``step`` (0-based) updates the averages."""
        return (step + 1) % self.interval == 0

    # ---- the buffers ----------------------------------------------------------------------

    def _tracked_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.skip_buffers:
            named = {name: p.data for name, p in model.named_parameters()}
        else:
            named = dict(model.state_dict())  # detached tensors sharing the live storage
        # a second before_run (the same hook object trained again) must not average averages
        return {k: v for k, v in named.items() if not k.startswith("ema_")}

    def before_run(self, trainer: Trainer) -> None:
        """Register an ``ema_*`` buffer per tracked tensor, holding a copy of it."""
        model = _unwrap(trainer.model)
        self.tracked = self._tracked_tensors(model)
        for key, value in self.tracked.items():
            model.register_buffer(ema_buffer_name(key), value.detach().clone())
        buffers = dict(model.named_buffers())
        self.averages = {key: buffers[ema_buffer_name(key)] for key in self.tracked}
        if self._pending is not None:
            self._restore(self._pending)
        if self.checkpoint is not None:
            # a checkpoint without this hook's state (MMDetection's) holds the averages in the
            # weights if this hook swaps before the checkpoint hook saves
            self.swapped = _runs_before_checkpoint(self, trainer)
            trainer.resume(self.checkpoint)

    @torch.no_grad()
    def after_train_iter(self, trainer: Trainer) -> None:
        """Move each average towards its live value."""
        if not self.update_due(trainer.iter):
            return
        momentum = self.momentum_at(trainer.iter)
        pairs = [(self.averages[k], v) for k, v in self.tracked.items()
                 if v.dtype.is_floating_point]  # num_batches_tracked is copied, not averaged
        if not pairs:
            return
        averages, live = (list(side) for side in zip(*pairs, strict=True))
        torch._foreach_mul_(averages, 1 - momentum)
        torch._foreach_add_(averages, live, alpha=momentum)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live tensors and their averages, in place."""
        for key, live in self.tracked.items():
            average = self.averages[key]
            held = live.clone()
            live.copy_(average)
            average.copy_(held)
        self.swapped = not self.swapped

    def after_train_epoch(self, trainer: Trainer) -> None:
        """The averages into the model, for this epoch's checkpoint and evaluation."""
        if not self.swapped:
            self.swap()

    def before_train_epoch(self, trainer: Trainer) -> None:
        """The live weights back into the model before training goes on."""
        if self.swapped:
            self.swap()

    # ---- resuming -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Whether the model holds the averages, and the ``ema_*`` buffers' values."""
        return {"swapped": self.swapped,
                "buffers": {ema_buffer_name(k): v.detach().cpu() for k, v in
                            self.averages.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore now if the buffers exist, else once :meth:`before_run` made them."""
        if self.averages:
            self._restore(state)
        else:
            self._pending = state

    @torch.no_grad()
    def _restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get("buffers", {})
        names = {ema_buffer_name(k): k for k in self.averages}
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        if missing or extra:
            raise ConfigError(
                f"{type(self).__name__}: the checkpoint's EMA state does not match the model "
                f"(missing {missing[:3]}, unexpected {extra[:3]}); was it written with another "
                f"model or another skip_buffers?")
        for name, key in names.items():
            self.averages[key].copy_(saved[name])
        self.swapped = bool(state.get("swapped", False))
        self._pending = None


@HOOKS.register_module()
class EMAHook(BaseEMAHook):
    """mmcv's ``EMAHook``: averages the parameters (not the buffers), updating when the
    iteration count is a multiple of ``interval``, with momentum
    ``min(momentum ** interval, (1 + step) / (warm_up + step))``.

    Its priority is mmcv's default for a custom hook (NORMAL): registered after the checkpoint
    hook, the epoch's checkpoint holds the live weights and the evaluation the averaged ones.
    """

    priority = "NORMAL"

    def __init__(self, momentum: float = 0.0002, interval: int = 1, warm_up: int = 100,
                 resume_from: str | None = None) -> None:
        super().__init__(momentum=momentum, interval=interval, skip_buffers=True,
                         resume_from=resume_from)
        self.warm_up = warm_up

    def momentum_at(self, step: int) -> float:
        return min(self.momentum**self.interval, (1 + step) / (self.warm_up + step))

    def update_due(self, step: int) -> bool:
        return step % self.interval == 0


@HOOKS.register_module()
class ExpMomentumEMAHook(BaseEMAHook):
    """MMDetection's EMA with a momentum that decays exponentially to ``momentum``:
    ``(1 - momentum) * exp(-(1 + step) / total_iter) + momentum`` (YOLOX's configs)."""

    def __init__(self, momentum: float = 0.0002, interval: int = 1, skip_buffers: bool = False,
                 resume_from: str | None = None, total_iter: int = 2000) -> None:
        super().__init__(momentum=momentum, interval=interval, skip_buffers=skip_buffers,
                         resume_from=resume_from)
        self.total_iter = total_iter

    def momentum_at(self, step: int) -> float:
        return (1 - self.momentum) * math.exp(-(1 + step) / self.total_iter) + self.momentum


@HOOKS.register_module()
class LinearMomentumEMAHook(BaseEMAHook):
    """MMDetection's EMA whose momentum starts small:
    ``min(momentum ** interval, (1 + step) / (warm_up + step))``."""

    def __init__(self, momentum: float = 0.0002, interval: int = 1, skip_buffers: bool = False,
                 resume_from: str | None = None, warm_up: int = 100) -> None:
        super().__init__(momentum=momentum, interval=interval, skip_buffers=skip_buffers,
                         resume_from=resume_from)
        self.warm_up = warm_up

    def momentum_at(self, step: int) -> float:
        return min(self.momentum**self.interval, (1 + step) / (self.warm_up + step))

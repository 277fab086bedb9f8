"""Telling others which epoch it is: the model (``SetEpochInfoHook``) and the data sampler
(``DistSamplerSeedHook``, which the trainer makes unnecessary)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detlab.config import ConfigError
from detlab.engine.hooks.base import Hook, is_module_wrapper
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


@HOOKS.register_module()
class SetEpochInfoHook(Hook):
    """Calls ``model.set_epoch(epoch)`` (0-based) before each training epoch, for models whose
    behaviour changes over training (MMDetection's hook, used by DDOD-style schedules)."""

    def before_train_epoch(self, trainer: Trainer) -> None:
        model = trainer.model.module if is_module_wrapper(trainer.model) else trainer.model
        if not callable(getattr(model, "set_epoch", None)):
            raise ConfigError(f"SetEpochInfoHook (custom_hooks) calls model.set_epoch(epoch), "
                              f"which {type(model).__name__} does not have; remove the hook "
                              f"or use a detector that takes the epoch")
        model.set_epoch(trainer.epoch)


def _positionable(loader: Any) -> Any:
    """The sampler the trainer does not reach: the one inside a custom batch sampler, when the
    loader's own sampler cannot be told the epoch."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_position") or hasattr(sampler, "set_epoch"):
        return None  # the trainer positions it
    inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    if hasattr(inner, "set_position") or hasattr(inner, "set_epoch"):
        return inner
    return None


@HOOKS.register_module()
class DistSamplerSeedHook(Hook):
    """mmcv's hook that tells the sampler the epoch. detlab's trainer already positions the
    loader's sampler at every epoch, and mid-epoch on resume; this hook only reaches what the
    trainer cannot -- the sampler of a custom batch sampler -- and never moves a sampler back to
    the start of an epoch that a resumed run entered in the middle."""

    def before_epoch(self, trainer: Trainer) -> None:
        sampler = _positionable(trainer.data_loader)
        if sampler is None:
            return
        # an epoch run starts its epochs at batch 0; an iteration run may start mid-epoch
        start = 0 if trainer.by_epoch else trainer.inner_iter
        if hasattr(sampler, "set_position"):
            sampler.set_position(trainer.epoch, start)
        elif start == 0:
            sampler.set_epoch(trainer.epoch)

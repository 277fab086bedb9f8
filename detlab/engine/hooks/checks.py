"""Checks that stop a run early: class counts that do not match the dataset."""

from __future__ import annotations

from typing import TYPE_CHECKING

from detlab.config import ConfigError
from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


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

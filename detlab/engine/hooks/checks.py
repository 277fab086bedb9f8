"""Checks that stop a run early: class counts that do not match the dataset, a loss that is no
longer finite."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from detlab.config import ConfigError
from detlab.engine.hooks.base import Hook, is_module_wrapper
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

# modules whose num_classes is not the dataset's by design (a region proposal network has one
# "object" class; a semantic head counts stuff classes); matched by class name, subclasses too,
# as MMDetection's isinstance check
NOT_DATASET_CLASSES = ("RPNHead", "GARPNHead", "FusedSemanticHead", "VGG")


def _exempt(module: Any, names: Sequence[str] = NOT_DATASET_CLASSES) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)


def check_num_classes(model: Any, classes: Sequence[str], split: str = "training") -> None:
    """Raise if a module of ``model`` counts other classes than ``classes``."""
    if isinstance(classes, str):
        raise ConfigError(f"the {split} dataset's CLASSES is the string {classes!r}, not a tuple "
                          f"of names; write classes=({classes!r},) with a comma")
    for name, module in model.named_modules():
        num_classes = getattr(module, "num_classes", None)
        if not isinstance(num_classes, int) or _exempt(module):
            continue
        if num_classes != len(classes):
            raise ConfigError(
                f"model.{name}.num_classes is {num_classes} but the {split} dataset has "
                f"{len(classes)} classes ({', '.join(map(str, classes[:10]))}"
                f"{' ...' if len(classes) > 10 else ''}); set "
                f"model.{name}.num_classes={len(classes)} or data.train.classes")


@HOOKS.register_module()
class NumClassCheckHook(Hook):
    """Stops a run when a head's ``num_classes`` differs from the dataset's classes -- the
    classic cause of a silent zero mAP. As MMDetection, it checks before each training epoch
    (the training set) and each validation-loss epoch (the validation set), and skips the
    modules whose class count is not the dataset's by design (``RPNHead``, ``GARPNHead``,
    ``FusedSemanticHead``, ``VGG``). An iteration-based run is checked once, before its loop."""

    def _check(self, trainer: Trainer, loader: Any, split: str) -> None:
        dataset = getattr(loader, "dataset", None)
        classes = getattr(dataset, "CLASSES", None)
        if classes is None:
            trainer.logger.warning(
                "the %s dataset has no CLASSES: cannot check the heads' num_classes against "
                "it; set data.%s.classes", split, "train" if split == "training" else "val")
            return
        model = trainer.model.module if is_module_wrapper(trainer.model) else trainer.model
        check_num_classes(model, classes, split)

    def before_train_epoch(self, trainer: Trainer) -> None:
        self._check(trainer, trainer.data_loader, "training")

    def before_val_epoch(self, trainer: Trainer) -> None:
        # the ('val', 1) workflow's loader; the evaluation hook's runs check nothing new
        if getattr(trainer, "val_loss_loader", None) is not None:
            self._check(trainer, trainer.val_loss_loader, "validation")

    def before_epoch(self, trainer: Trainer) -> None:
        # reached only in an iteration-based run (the train / val versions are overridden)
        self._check(trainer, trainer.data_loader, "training")


@HOOKS.register_module()
class CheckInvalidLossHook(Hook):
    """Stops the run when the loss is NaN or infinite, checked every ``interval`` iterations
    (MMDetection's hook of that name)."""

    def __init__(self, interval: int = 50) -> None:
        self.interval = interval

    def after_train_iter(self, trainer: Trainer) -> None:
        if not self.every_n_iters(trainer, self.interval):
            return
        loss = trainer.outputs["loss"]
        if not torch.isfinite(torch.as_tensor(loss)).all():
            losses = ", ".join(f"{k}: {v:.4g}" for k, v in trainer.outputs.get(
                "log_vars", {}).items())
            raise FloatingPointError(
                f"the loss became infinite or NaN at iteration {trainer.iter + 1} ({losses}). "
                f"Lower optimizer.lr, lengthen lr_config.warmup_iters or set "
                f"optimizer_config.grad_clip=dict(max_norm=35, norm_type=2)")

"""YOLOX's training hooks: the last epochs without mosaic and mixup and with the L1 loss
(``YOLOXModeSwitchHook``), norm statistics averaged over processes (``SyncNormHook``) and a random
input size shared by all of them (``SyncRandomSizeHook``)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import distributed as torch_dist
from torch import nn

from detlab.config import ConfigError
from detlab.dist import broadcast_object, get_dist_info
from detlab.engine.hooks.base import Hook, is_module_wrapper
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


def _dataset_method(trainer: Trainer, name: str) -> Any:
    """``trainer``'s training dataset's method ``name``, or an error saying which dataset
    wrapper has it."""
    dataset = trainer.data_loader.dataset
    method = getattr(dataset, name, None)
    if method is None:
        kind = type(getattr(dataset, "dataset", dataset)).__name__
        raise ConfigError(f"data.train is a {kind}, which has no {name}(); wrap it in "
                          f"dict(type='MultiImageMixDataset', dataset=..., pipeline=...)")
    return method


def _restart_workers(loader: Any) -> None:
    """Make a loader with persistent workers start new ones at its next pass, so that they
    copy the dataset as it is now (MMDetection resets the same DataLoader attribute)."""
    if getattr(loader, "persistent_workers", False) and getattr(loader, "_iterator", None):
        loader._iterator = None  # the old workers shut down when their iterator goes


@HOOKS.register_module()
class YOLOXModeSwitchHook(Hook):
    """From epoch ``max_epochs - num_last_epochs`` (counted from 1) on, the training dataset
    skips the transforms named in ``skip_type_keys`` (``MultiImageMixDataset``) and the head
    adds its L1 loss (``bbox_head.use_l1 = True``), as MMDetection's hook. A run resumed after
    that epoch switches at its first epoch."""

    def __init__(self, num_last_epochs: int = 15,
                 skip_type_keys: Sequence[str] = ("Mosaic", "RandomAffine", "MixUp")) -> None:
        self.num_last_epochs, self.skip_type_keys = num_last_epochs, tuple(skip_type_keys)
        self.switched = False

    def before_train_epoch(self, trainer: Trainer) -> None:
        if self.switched or trainer.epoch + 1 < trainer.max_epochs - self.num_last_epochs:
            return
        trainer.logger.info("No mosaic and mixup aug now! (skipping %s)",
                            ", ".join(self.skip_type_keys))
        _dataset_method(trainer, "update_skip_type_keys")(list(self.skip_type_keys))
        _restart_workers(trainer.data_loader)
        model = trainer.model.module if is_module_wrapper(trainer.model) else trainer.model
        head = getattr(model, "bbox_head", None)
        if hasattr(head, "use_l1"):
            trainer.logger.info("Add additional L1 loss now!")
            head.use_l1 = True
        else:
            trainer.logger.warning("YOLOXModeSwitchHook: model.bbox_head (%s) has no use_l1; "
                                   "only the data augmentation switched",
                                   type(head).__name__)
        self.switched = True


def norm_states(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state (weights and statistics) of every BatchNorm-like layer, by state_dict key."""
    states = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            for key, value in module.state_dict().items():
                states[f"{name}.{key}" if name else key] = value
    return states


def all_reduce_mean(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor's mean over the processes, computed in float32 in one flat all-reduce (as
    MMDetection's ``all_reduce_dict(..., op='mean')``)."""
    world_size = get_dist_info()[1]
    if world_size == 1 or not tensors:
        return tensors
    keys = list(tensors)
    flat = torch.cat([tensors[k].flatten().float() for k in keys])
    torch_dist.all_reduce(flat, op=torch_dist.ReduceOp.SUM)
    flat /= world_size
    parts = torch.split(flat, [tensors[k].numel() for k in keys])
    return {k: part.reshape(tensors[k].shape) for k, part in zip(keys, parts, strict=True)}


@HOOKS.register_module()
class SyncNormHook(Hook):
    """Averages the norm layers' states over the processes after every ``interval`` epochs, and
    after every epoch of the last ``num_last_epochs`` (YOLOX trains with unsynchronized
    BatchNorm). A single process has nothing to do."""

    def __init__(self, num_last_epochs: int = 15, interval: int = 1) -> None:
        self.num_last_epochs, self.interval = num_last_epochs, interval

    def before_train_epoch(self, trainer: Trainer) -> None:
        # MMDetection switches at exactly this epoch; from it on, so a resumed run switches too
        if trainer.epoch + 1 >= trainer.max_epochs - self.num_last_epochs:
            self.interval = 1

    def after_train_epoch(self, trainer: Trainer) -> None:
        if (trainer.epoch + 1) % self.interval != 0 or get_dist_info()[1] == 1:
            return
        model = trainer.model.module if is_module_wrapper(trainer.model) else trainer.model
        states = norm_states(model)
        if states:
            model.load_state_dict(all_reduce_mean(states), strict=False)


@HOOKS.register_module()
class SyncRandomSizeHook(Hook):
    """Every ``interval`` epochs, the main process draws an input size of ``32 * r`` pixels
    (``r`` in ``ratio_range``, the height following ``img_scale``'s aspect) and every process
    gives it to the training dataset's ``update_dynamic_scale`` (``MultiImageMixDataset``).

    Deprecated in MMDetection 2.28 (a ``Resize`` with ``multiscale_mode='range'`` does the same
    per image), whose dataset wrapper no longer has ``update_dynamic_scale``; detlab's still has.
    ``device`` (where MMDetection put the broadcast tensor) is accepted and unused: the size is
    broadcast as an object.
    """

    def __init__(self, ratio_range: Sequence[int] | None = (14, 26),
                 img_scale: Sequence[int] = (640, 640), interval: int = 1,
                 device: str = "cuda") -> None:
        warnings.warn("SyncRandomSizeHook is deprecated (as in MMDetection 2.28): use a Resize "
                      "with img_scale=[(448, 448), (832, 832)], multiscale_mode='range', "
                      "keep_ratio=True", FutureWarning, stacklevel=2)
        self.ratio_range, self.img_scale = ratio_range, tuple(img_scale)
        self.interval, self.device = interval, device

    def draw_size(self) -> tuple[int, int]:
        """A size as MMDetection draws it, with Python's ``random``."""
        factor = self.img_scale[1] * 1.0 / self.img_scale[0]
        ratio = random.randint(*self.ratio_range)
        return int(32 * ratio), 32 * int(ratio * factor)

    def after_train_epoch(self, trainer: Trainer) -> None:
        if self.ratio_range is None or (trainer.epoch + 1) % self.interval != 0:
            return
        size = self.draw_size() if trainer.rank == 0 else None
        size = broadcast_object(size)
        _dataset_method(trainer, "update_dynamic_scale")(size)


"""What the experiment trackers (TensorBoard, MLflow, W&B) receive of a log row, under mmcv's
names: ``train/<loss>`` and ``val/<metric>`` with ``learning_rate`` and ``momentum``, at step
``iter + 1`` (mmcv's ``LoggerHook.get_loggable_tags`` and ``get_iter``)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer

# what a row holds besides the values mmcv's log buffer would hold (timings are skipped by mmcv)
NOT_TAGGED = ("mode", "epoch", "iter", "lr", "time", "data_time", "memory")


def loggable_tags(trainer: Trainer, row: Mapping[str, Any], add_mode: bool = True
                  ) -> dict[str, float]:
    """The numbers of ``row`` as ``<mode>/<key>`` (``train/loss_cls``, ``val/bbox_mAP``), plus
    the first parameter group's ``learning_rate`` and ``momentum``."""
    mode = row.get("mode", "train")
    tags = {}
    for key, value in row.items():
        if key in NOT_TAGGED or isinstance(value, bool) or not isinstance(value, numbers.Number):
            continue
        tags[f"{mode}/{key}" if add_mode else key] = float(value)
    tags["learning_rate"] = trainer.current_lr()[0]
    tags["momentum"] = trainer.current_momentum()[0]
    return tags


def log_step(trainer: Trainer) -> int:
    """mmcv's step of a row: the iterations done, counting the one logging now."""
    return trainer.iter + 1


def missing_package(hook: str, package: str, pip_name: str | None = None) -> ImportError:
    """The error of a logger hook whose package is not installed."""
    return ImportError(f"{hook} needs the {package} package, which is not installed: "
                       f"pip install {pip_name or package}")

"""Hooks: the pieces of the training loop that configs switch on and tune.

One module per kind: :mod:`.base` (the ``Hook`` class, priorities), :mod:`.lr_updater`
(``lr_config``), :mod:`.optimizer` (``optimizer_config`` / ``fp16``), :mod:`.checkpoint`
(``checkpoint_config``), :mod:`.evaluation` (``evaluation``), :mod:`.logger` (``log_config``),
:mod:`.timer`, :mod:`.checks`, :mod:`.ema` (weight averages), :mod:`.memory`, :mod:`.yolox` and
:mod:`.epoch_info`. Importing this package registers them all in ``HOOKS``.
"""

from detlab.engine.hooks import (  # noqa: F401  (registration)
    checkpoint,
    checks,
    ema,
    epoch_info,
    evaluation,
    logger,
    lr_updater,
    memory,
    momentum_updater,
    optimizer,
    timer,
    yolox,
)
from detlab.engine.hooks.base import PRIORITIES, Hook, LogBuffer, is_module_wrapper, priority_value
from detlab.engine.hooks.checkpoint import CheckpointHook
from detlab.engine.hooks.ema import EMAHook, ExpMomentumEMAHook, LinearMomentumEMAHook
from detlab.engine.hooks.evaluation import EvalHook
from detlab.engine.hooks.logger import LoggerHook, TextLoggerHook
from detlab.engine.hooks.lr_updater import LR_POLICIES, LrUpdaterHook, build_lr_hook
from detlab.engine.hooks.momentum_updater import MOMENTUM_POLICIES, build_momentum_hook
from detlab.engine.hooks.optimizer import (
    Fp16OptimizerHook,
    GradientCumulativeFp16OptimizerHook,
    GradientCumulativeOptimizerHook,
    OptimizerHook,
    build_optimizer_hook,
)
from detlab.engine.hooks.timer import IterTimerHook

__all__ = [
    "PRIORITIES", "Hook", "LogBuffer", "is_module_wrapper", "priority_value", "CheckpointHook",
    "EvalHook", "LoggerHook", "TextLoggerHook", "LR_POLICIES", "LrUpdaterHook", "build_lr_hook",
    "OptimizerHook", "build_optimizer_hook", "IterTimerHook", "EMAHook", "ExpMomentumEMAHook",
    "LinearMomentumEMAHook", "MOMENTUM_POLICIES", "build_momentum_hook", "Fp16OptimizerHook",
    "GradientCumulativeOptimizerHook", "GradientCumulativeFp16OptimizerHook",
]

"""Momentum schedules (``momentum_config``), as mmcv 1.7's momentum updater hooks.

``momentum_config=dict(policy='cyclic', ...)`` builds ``CyclicMomentumUpdaterHook`` by the rule
of ``lr_config`` (see :mod:`detlab.engine.hooks.lr_updater`). The momentum is a parameter group's
``momentum`` (SGD, RMSprop) or the first of its ``betas`` (Adam, AdamW); each group's schedule
starts from its ``initial_momentum``, set when the run begins and kept by a resumed optimizer.

Warmup works backwards from the LR's: the momentum is *divided* by the warmup factor, so it starts
at momentum / ``warmup_ratio`` and comes down to the scheduled value. The times the hooks act are
those of the LR hooks (by epoch: at each epoch's start; by iteration: every iteration); they run
after the LR hook (priority HIGH).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from detlab.config import ConfigError
from detlab.engine.hooks.base import Hook
from detlab.engine.hooks.lr_updater import (
    annealing_cos,
    annealing_function,
    annealing_linear,
    build_policy_hook,
    check_cyclic,
    check_pct_start,
    check_schedule_fits,
    check_steps,
    check_target,
    check_warmup,
    cyclic_lengths,
    cyclic_targets,
    cyclic_value,
    per_group,
    progress_of,
    step_exponent,
    update_at_iter,
    warmup_factor,
)
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


def group_momentum(group: Mapping[str, Any]) -> float:
    """A parameter group's momentum: ``momentum``, else ``betas[0]``."""
    return group["momentum"] if "momentum" in group else group["betas"][0]


def set_momentum(trainer: Trainer, momenta: Sequence[float]) -> None:
    """Give each parameter group its momentum (``momentum``, else ``betas[0]``)."""
    for group, momentum in zip(trainer.optimizer.param_groups, momenta, strict=True):
        if "momentum" in group:
            group["momentum"] = momentum
        elif "betas" in group:
            group["betas"] = (momentum, group["betas"][1])


def check_has_momentum(trainer: Trainer) -> None:
    """Refuse an optimizer whose groups have no momentum to schedule."""
    optimizer = trainer.optimizer
    if any("momentum" not in g and "betas" not in g for g in optimizer.param_groups):
        raise ConfigError(f"momentum_config schedules a momentum, but the optimizer "
                          f"{type(optimizer).__name__} has neither 'momentum' nor 'betas'; "
                          f"remove momentum_config or use SGD, Adam, AdamW ...")


class MomentumUpdaterHook(Hook):
    """Sets each parameter group's momentum from its ``initial_momentum``: a policy's schedule
    by epoch (or iteration), preceded by a warmup by iteration that divides it by a factor going
    from ``warmup_ratio`` to 1 (``'constant'``, ``'linear'`` or ``'exp'``).

    A policy defines :meth:`get_momentum`."""

    priority = "HIGH"
    config_key = "momentum_config"

    def __init__(self, by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9) -> None:
        check_warmup(self.config_key, warmup, warmup_iters, warmup_ratio)
        self.by_epoch = by_epoch
        self.warmup = warmup
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        self.base_momentum: list[float] = []  # each group's initial momentum, read in before_run

    def get_momentum(self, trainer: Trainer, base_momentum: float) -> float:
        """The scheduled momentum (before warmup) of a group whose initial momentum is
        ``base_momentum``."""
        raise NotImplementedError(f"{type(self).__name__} must define get_momentum")

    def regular_momentum(self, trainer: Trainer) -> list[float]:
        """Each group's scheduled momentum now, without warmup."""
        return [self.get_momentum(trainer, base) for base in self.base_momentum]

    def warmup_momentum(self, trainer: Trainer, cur_iter: int) -> list[float]:
        """Each group's momentum at warmup iteration ``cur_iter``."""
        factor = warmup_factor(self.warmup, cur_iter, self.warmup_iters, self.warmup_ratio)
        return [momentum / factor for momentum in self.regular_momentum(trainer)]

    def before_run(self, trainer: Trainer) -> None:
        check_has_momentum(trainer)
        check_schedule_fits(self.config_key, trainer, self.by_epoch)
        # setdefault: a resumed optimizer brings the initial momentum of the first run
        for group in trainer.optimizer.param_groups:
            group.setdefault("initial_momentum", group_momentum(group))
        self.base_momentum = [g["initial_momentum"] for g in trainer.optimizer.param_groups]

    def before_train_epoch(self, trainer: Trainer) -> None:
        if self.by_epoch:
            set_momentum(trainer, self.regular_momentum(trainer))

    def before_train_iter(self, trainer: Trainer) -> None:
        if self.by_epoch and not trainer.by_epoch:
            return  # no epoch starts to set the schedule, as in mmcv's IterBasedRunner
        momenta = update_at_iter(self.by_epoch, self.warmup, trainer.iter, self.warmup_iters,
                                 lambda: self.regular_momentum(trainer),
                                 lambda: self.warmup_momentum(trainer, trainer.iter))
        if momenta is not None:
            set_momentum(trainer, momenta)


@HOOKS.register_module()
class StepMomentumUpdaterHook(MomentumUpdaterHook):
    """``policy='step'``: the momentum times ``gamma`` at each epoch (or iteration) of ``step``
    (an int means every ``step``), never below ``min_momentum``."""

    def __init__(self, step: int | list[int], gamma: float = 0.5,
                 min_momentum: float | None = None, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio)
        self.step = check_steps(self.config_key, step)
        self.gamma, self.min_momentum = gamma, min_momentum

    def get_momentum(self, trainer: Trainer, base_momentum: float) -> float:
        done, _ = progress_of(trainer, self.by_epoch)
        momentum = base_momentum * self.gamma ** step_exponent(done, self.step)
        return max(momentum, self.min_momentum) if self.min_momentum is not None else momentum


class _AnnealingMomentumUpdaterHook(MomentumUpdaterHook):
    """The target of the annealing policies: ``min_momentum``, or ``min_momentum_ratio`` x
    initial momentum."""

    def __init__(self, min_momentum: float | None, min_momentum_ratio: float | None,
                 by_epoch: bool, warmup: str | None, warmup_iters: int,
                 warmup_ratio: float) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio)
        check_target(self.config_key, "momentum", min_momentum, min_momentum_ratio)
        self.min_momentum, self.min_momentum_ratio = min_momentum, min_momentum_ratio

    def target_momentum(self, base_momentum: float) -> float:
        """Where the annealing ends for a group whose initial momentum is ``base_momentum``."""
        if self.min_momentum_ratio is not None:
            return base_momentum * self.min_momentum_ratio
        return self.min_momentum


@HOOKS.register_module()
class CosineAnnealingMomentumUpdaterHook(_AnnealingMomentumUpdaterHook):
    """``policy='CosineAnnealing'``: from the initial momentum to ``min_momentum`` (or
    ``min_momentum_ratio`` x initial momentum) along half a cosine over the run."""

    def __init__(self, min_momentum: float | None = None,
                 min_momentum_ratio: float | None = None, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9) -> None:
        super().__init__(min_momentum, min_momentum_ratio, by_epoch, warmup, warmup_iters,
                         warmup_ratio)

    def get_momentum(self, trainer: Trainer, base_momentum: float) -> float:
        done, total = progress_of(trainer, self.by_epoch)
        return annealing_cos(base_momentum, self.target_momentum(base_momentum), done / total)


@HOOKS.register_module()
class LinearAnnealingMomentumUpdaterHook(_AnnealingMomentumUpdaterHook):
    """``policy='LinearAnnealing'``: from the initial momentum to ``min_momentum`` (or
    ``min_momentum_ratio`` x initial momentum) along a line over the run."""

    def __init__(self, min_momentum: float | None = None,
                 min_momentum_ratio: float | None = None, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9) -> None:
        super().__init__(min_momentum, min_momentum_ratio, by_epoch, warmup, warmup_iters,
                         warmup_ratio)

    def get_momentum(self, trainer: Trainer, base_momentum: float) -> float:
        done, total = progress_of(trainer, self.by_epoch)
        return annealing_linear(base_momentum, self.target_momentum(base_momentum),
                                done / total)


@HOOKS.register_module()
class CyclicMomentumUpdaterHook(MomentumUpdaterHook):
    """``policy='cyclic'``, the companion of the cyclic LR: ``cyclic_times`` cycles over the run
    (by iteration), each going from the initial momentum to ``target_ratio[0]`` x momentum over
    ``step_ratio_up`` of the cycle (down, while the lr goes up), then to ``target_ratio[1]`` x
    momentum; ``gamma`` shrinks the swing cycle after cycle."""

    def __init__(self, by_epoch: bool = False,
                 target_ratio: float | Sequence[float] = (0.85 / 0.95, 1.0),
                 cyclic_times: int = 1, step_ratio_up: float = 0.4, anneal_strategy: str = "cos",
                 gamma: float = 1.0, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9) -> None:
        check_cyclic(self.config_key, by_epoch, cyclic_times, step_ratio_up)
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio)
        self.target_ratio = cyclic_targets(self.config_key, target_ratio)
        self.cyclic_times, self.step_ratio_up, self.gamma = cyclic_times, step_ratio_up, gamma
        self.anneal = annealing_function(anneal_strategy, self.config_key)
        self.iters_per_cycle = self.up_iters = 0  # from the run's length, in before_run

    def before_run(self, trainer: Trainer) -> None:
        super().before_run(trainer)
        self.iters_per_cycle, self.up_iters = cyclic_lengths(
            self.config_key, trainer.max_iters, self.cyclic_times, self.step_ratio_up)

    def get_momentum(self, trainer: Trainer, base_momentum: float) -> float:
        return cyclic_value(base_momentum, trainer.iter, self.iters_per_cycle, self.up_iters,
                            self.target_ratio, self.gamma, self.anneal)


def one_cycle_momentum_phases(max_iters: int, pct_start: float,
                              three_phase: bool) -> list[tuple[float, str, str]]:
    """(last iteration, start key, end key) of each phase, the keys naming the group's
    ``max_momentum`` and ``base_momentum``: down while the one-cycle lr rises, then back up."""
    fall_end = float(pct_start * max_iters) - 1
    if three_phase:
        return [(fall_end, "max_momentum", "base_momentum"),
                (float(2 * pct_start * max_iters) - 2, "base_momentum", "max_momentum"),
                (max_iters - 1, "max_momentum", "max_momentum")]
    return [(fall_end, "max_momentum", "base_momentum"),
            (max_iters - 1, "base_momentum", "max_momentum")]


@HOOKS.register_module()
class OneCycleMomentumUpdaterHook(MomentumUpdaterHook):
    """``policy='OneCycle'``, the companion of the one-cycle LR (by iteration): from
    ``max_momentum`` down to ``base_momentum`` over ``pct_start`` of the run, then back up
    (``three_phase``: back up by ``2 * pct_start``, then flat). Each is one number or one per
    parameter group, kept in the groups (``base_momentum``, ``max_momentum``); the optimizer's own
    momentum is not used."""

    def __init__(self, base_momentum: float | Sequence[float] = 0.85,
                 max_momentum: float | Sequence[float] = 0.95, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", three_phase: bool = False, by_epoch: bool = False,
                 warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9) -> None:
        check_pct_start(self.config_key, by_epoch, pct_start)
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio)
        self.base_momentum_cfg, self.max_momentum_cfg = base_momentum, max_momentum
        self.pct_start, self.three_phase = pct_start, three_phase
        self.anneal = annealing_function(anneal_strategy, self.config_key)
        self.phases: list[tuple[float, str, str]] = []  # from the run's length, in before_run

    def before_run(self, trainer: Trainer) -> None:
        check_has_momentum(trainer)
        check_schedule_fits(self.config_key, trainer, self.by_epoch)
        optimizer = trainer.optimizer
        lows = per_group(self.config_key, "base_momentum", self.base_momentum_cfg, optimizer)
        highs = per_group(self.config_key, "max_momentum", self.max_momentum_cfg, optimizer)
        for group, low, high in zip(optimizer.param_groups, lows, highs, strict=True):
            group["base_momentum"], group["max_momentum"] = low, high
        set_momentum(trainer, highs)
        self.phases = one_cycle_momentum_phases(trainer.max_iters, self.pct_start,
                                                self.three_phase)

    def momentum_of_group(self, trainer: Trainer, group: Mapping[str, Any]) -> float:
        """The scheduled momentum of ``group``, between its ``base_momentum`` and
        ``max_momentum``."""
        start = 0.0
        for i, (end, start_key, end_key) in enumerate(self.phases):
            if trainer.iter <= end or i == len(self.phases) - 1:
                return self.anneal(group[start_key], group[end_key],
                                   (trainer.iter - start) / (end - start))
            start = end
        raise AssertionError("the last phase always answers")

    def regular_momentum(self, trainer: Trainer) -> list[float]:
        return [self.momentum_of_group(trainer, g) for g in trainer.optimizer.param_groups]


# policy name in lower case -> hook class name, for the built-in policies
MOMENTUM_POLICIES = {
    cls.__name__.removesuffix("MomentumUpdaterHook").lower(): cls.__name__
    for cls in (StepMomentumUpdaterHook, CosineAnnealingMomentumUpdaterHook,
                LinearAnnealingMomentumUpdaterHook, CyclicMomentumUpdaterHook,
                OneCycleMomentumUpdaterHook)}


def build_momentum_hook(momentum_config: Mapping[str, Any] | Hook) -> MomentumUpdaterHook:
    """The momentum hook a ``momentum_config=dict(policy=..., ...)`` describes (or
    ``momentum_config`` itself when it is a hook)."""
    return build_policy_hook(momentum_config, "MomentumUpdaterHook", "momentum_config")

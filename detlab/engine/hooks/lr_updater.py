"""Learning-rate schedules (``lr_config``): mmcv 1.7's LR updater hooks and MMDetection's YOLOX.

``lr_config=dict(policy='step', ...)`` builds ``StepLrUpdaterHook`` by mmcv's rule: a policy
written all in lower case gets a capital first letter (``str.title``), any other spelling is kept
(``'CosineAnnealing'`` -> ``CosineAnnealingLrUpdaterHook``, ``'YOLOX'`` -> ``YOLOXLrUpdaterHook``).
detlab also finds a policy whatever its case (``'onecycle'``), and takes a hook class as policy.

Each hook sets the lr of every parameter group from that group's ``initial_lr`` (its lr when the
run began, so that groups with paramwise multipliers keep their ratios) along a schedule counted in
epochs (``by_epoch=True``) or iterations, preceded by a warmup counted in iterations
(``warmup_iters``, or epochs with ``warmup_by_epoch=True``):

- ``by_epoch=True``: the scheduled lr is set in ``before_train_epoch`` and warmup iterations
  overwrite it in ``before_train_iter``. An iteration-based run (``IterBasedRunner``) never calls
  ``before_train_epoch``, so there such a hook never changes the lr, as in mmcv; it says so in the
  log.
- ``by_epoch=False``: the lr is set in every ``before_train_iter``.

The hooks keep nothing a resumed run would miss: the lr is a function of the trainer's counters
and of the groups' ``initial_lr``, which the optimizer's state carries; what a policy prepares in
``before_run`` it prepares again from the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from detlab.config import ConfigError, did_you_mean
from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    import torch

    from detlab.engine.trainer import Trainer

WARMUPS = ("constant", "linear", "exp")
ANNEALINGS = ("cos", "linear")


# ---- formulas shared with the momentum hooks -------------------------------------------------


def annealing_cos(start: float, end: float, factor: float, weight: float = 1.0) -> float:
    """Half a cosine from ``weight * start + (1 - weight) * end`` (``factor`` 0) down to ``end``
    (``factor`` 1)."""
    return end + 0.5 * weight * (start - end) * (math.cos(math.pi * factor) + 1)


def annealing_linear(start: float, end: float, factor: float) -> float:
    """A straight line from ``start`` (``factor`` 0) to ``end`` (``factor`` 1)."""
    return start + (end - start) * factor


def annealing_function(strategy: str, key: str) -> Callable[[float, float, float], float]:
    """The function of ``anneal_strategy`` (``'cos'`` or ``'linear'``)."""
    if strategy not in ANNEALINGS:
        raise ConfigError(f"{key}.anneal_strategy must be 'cos' or 'linear', got {strategy!r}")
    return annealing_cos if strategy == "cos" else annealing_linear


def warmup_factor(warmup: str, cur_iter: int, warmup_iters: int, ratio: float) -> float:
    """What warmup multiplies the lr by (and divides the momentum by) at ``cur_iter``:
    ``ratio`` throughout (``'constant'``), from ``ratio`` up to 1 along a line (``'linear'``)
    or a geometric progression (``'exp'``)."""
    if warmup == "constant":
        return ratio
    if warmup == "linear":
        return 1 - (1 - cur_iter / warmup_iters) * (1 - ratio)
    return ratio ** (1 - cur_iter / warmup_iters)


def check_warmup(key: str, warmup: str | None, warmup_iters: int, ratio: float) -> None:
    """Reject a warmup mmcv rejects, naming the key of ``key`` (``lr_config``)."""
    if warmup is None:
        return
    if warmup not in WARMUPS:
        hint = did_you_mean(str(warmup), WARMUPS)
        raise ConfigError(f"{key}.warmup must be 'constant', 'linear', 'exp' or None, got "
                          f"{warmup!r}.{hint}")
    if not isinstance(warmup_iters, int) or isinstance(warmup_iters, bool) or warmup_iters <= 0:
        raise ConfigError(f"{key}.warmup_iters must be a positive int when warmup={warmup!r}, "
                          f"got {warmup_iters!r}")
    if not 0 < ratio <= 1.0:
        raise ConfigError(f"{key}.warmup_ratio must be in (0, 1], got {ratio!r}")


def update_at_iter(by_epoch: bool, warmup: str | None, cur_iter: int, warmup_iters: int,
                   regular: Callable[[], list[float]],
                   warm: Callable[[], list[float]]) -> list[float] | None:
    """The values ``before_train_iter`` sets, by mmcv's rules, or None to leave them be. A
    schedule by iteration sets its value each iteration; one by epoch was set at the start of
    the epoch, and only warmup iterations (and the first one after them) change it."""
    if warmup is not None and cur_iter < warmup_iters:
        return warm()
    if not by_epoch or (warmup is not None and cur_iter == warmup_iters):
        return regular()
    return None


def step_exponent(progress: int, step: int | Sequence[int]) -> int:
    """How many decays happened by ``progress``: every ``step`` (an int), or the index of the
    first milestone of ``step`` not reached yet (a list)."""
    if isinstance(step, int):
        return progress // step
    return next((i for i, milestone in enumerate(step) if progress < milestone), len(step))


def check_steps(key: str, step: Any) -> int | list[int]:
    """``step`` as a positive int or an increasing list of positive ints."""
    def positive(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    if positive(step):
        return step
    steps = list(step) if isinstance(step, (list, tuple)) else []
    if not steps or not all(positive(s) for s in steps):
        raise ConfigError(f"{key}.step must be a positive int or a list of them, got {step!r}")
    if steps != sorted(steps):
        raise ConfigError(f"{key}.step must be increasing, got {step!r}")
    return steps


def check_target(key: str, name: str, absolute: float | None, ratio: float | None) -> None:
    """Check that exactly one of ``min_{name}`` and ``min_{name}_ratio`` is given."""
    if (absolute is None) == (ratio is None):
        raise ConfigError(f"{key} needs exactly one of min_{name} and min_{name}_ratio, got "
                          f"min_{name}={absolute!r} and min_{name}_ratio={ratio!r}")


def cyclic_targets(key: str, target_ratio: float | Sequence[float]) -> tuple[float, float]:
    """``target_ratio`` as (peak ratio, final ratio): a single number r means (r, r / 1e5)."""
    if isinstance(target_ratio, (int, float)) and not isinstance(target_ratio, bool):
        return float(target_ratio), target_ratio / 1e5
    ratios = list(target_ratio) if isinstance(target_ratio, (list, tuple)) else []
    if len(ratios) == 1:
        return ratios[0], ratios[0] / 1e5
    if len(ratios) != 2:
        raise ConfigError(f"{key}.target_ratio must be a number or a pair of numbers, got "
                          f"{target_ratio!r}")
    return ratios[0], ratios[1]


def cyclic_value(base: float, cur_iter: int, iters_per_cycle: int, up_iters: int,
                 targets: tuple[float, float], gamma: float,
                 anneal: Callable[[float, float, float], float]) -> float:
    """A cyclic schedule at ``cur_iter``: within each cycle, from ``base`` to the peak
    (``targets[0]`` x base) over ``up_iters``, then to ``targets[1]`` x base; the peak's distance
    from base shrinks by ``gamma`` each cycle."""
    position, cycle = cur_iter % iters_per_cycle, cur_iter // iters_per_cycle
    scale = gamma**cycle
    peak = 1 - scale + targets[0] * scale
    if position < up_iters:
        return anneal(base, base * peak, position / up_iters)
    return anneal(base * peak, base * targets[1],
                  (position - up_iters) / (iters_per_cycle - up_iters))


def cyclic_lengths(key: str, max_iters: int, cyclic_times: int,
                   step_ratio_up: float) -> tuple[int, int]:
    """(iterations of a cycle, iterations of its rising part) for a run of ``max_iters``."""
    iters_per_cycle = max_iters // cyclic_times
    if iters_per_cycle < 1:
        raise ConfigError(f"{key}.cyclic_times={cyclic_times} is more cycles than the run's "
                          f"{max_iters} iterations")
    return iters_per_cycle, int(step_ratio_up * iters_per_cycle)


def check_cyclic(key: str, by_epoch: bool, cyclic_times: int, step_ratio_up: float) -> None:
    """Reject the cyclic settings mmcv rejects (and a cycle count that is not a positive int)."""
    if by_epoch:
        raise ConfigError(f"{key}.by_epoch must be False for a cyclic schedule (as in mmcv)")
    if not isinstance(cyclic_times, int) or cyclic_times < 1:
        raise ConfigError(f"{key}.cyclic_times must be a positive int, got {cyclic_times!r}")
    if not 0 <= step_ratio_up < 1.0:
        raise ConfigError(f"{key}.step_ratio_up must be in [0, 1), got {step_ratio_up!r}")


def check_pct_start(key: str, by_epoch: bool, pct_start: float) -> None:
    """Reject the one-cycle settings mmcv rejects."""
    if by_epoch:
        raise ConfigError(f"{key}.by_epoch must be False for a one-cycle schedule (as in mmcv)")
    if not 0 <= pct_start <= 1:
        raise ConfigError(f"{key}.pct_start must be in [0, 1], got {pct_start!r}")


def per_group(key: str, name: str, value: float | Sequence[float] | Mapping[str, Any],
              optimizer: torch.optim.Optimizer) -> list[float]:
    """A value of each parameter group: one number for all, a list of one per group, or (as
    mmcv) a dict keyed by the optimizer's class name."""
    groups = len(optimizer.param_groups)
    if isinstance(value, Mapping):
        kind = type(optimizer).__name__
        if kind not in value:
            raise ConfigError(f"{key}.{name} is a dict without the optimizer's name {kind!r}: "
                              f"{dict(value)!r}")
        value = value[kind]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value] * groups
    values = list(value)
    if len(values) != groups:
        raise ConfigError(f"{key}.{name} has {len(values)} values for the optimizer's {groups} "
                          f"parameter groups")
    return values


def progress_of(trainer: Trainer, by_epoch: bool) -> tuple[int, int]:
    """(done, total): epochs or iterations."""
    if by_epoch:
        return trainer.epoch, trainer.max_epochs
    return trainer.iter, trainer.max_iters


def check_schedule_fits(key: str, trainer: Trainer, by_epoch: bool) -> bool:
    """Whether a schedule applies in this run; warns when it does not (by epoch in an
    iteration-based run, as mmcv); refuses ``warmup_by_epoch`` there (mmcv fails on it)."""
    if trainer.by_epoch or not by_epoch:
        return True
    trainer.logger.warning(
        "%s.by_epoch=True in an iteration-based run: its schedule changes at the start of each "
        "epoch, which an IterBasedRunner never announces, so (as in mmcv) it leaves the "
        "optimizer's values as they are. Set %s.by_epoch=False to schedule by iteration.",
        key, key)
    return False


# ---- the base class --------------------------------------------------------------------------


def set_lr(trainer: Trainer, lrs: Sequence[float]) -> None:
    """Give each parameter group its lr."""
    for group, lr in zip(trainer.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


class LrUpdaterHook(Hook):
    """Sets each parameter group's lr from its ``initial_lr``: a policy's schedule by epoch (or
    iteration), preceded by a warmup by iteration (``'constant'``, ``'linear'`` or ``'exp'``
    from ``warmup_ratio`` x lr up to the lr over ``warmup_iters``).

    A policy defines :meth:`get_lr`."""

    priority = "VERY_HIGH"
    config_key = "lr_config"

    def __init__(self, by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        check_warmup(self.config_key, warmup, warmup_iters, warmup_ratio)
        self.by_epoch = by_epoch
        self.warmup = warmup
        self.warmup_iters = warmup_iters  # epochs when warmup_by_epoch
        self.warmup_ratio = warmup_ratio
        self.warmup_by_epoch = warmup_by_epoch
        self.base_lr: list[float] = []  # each group's initial lr, read in before_run

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        """The scheduled lr (before warmup) of a group whose initial lr is ``base_lr``."""
        raise NotImplementedError(f"{type(self).__name__} must define get_lr")

    def warmup_length(self, trainer: Trainer) -> int:
        """Warmup iterations (``warmup_iters`` epochs of the trainer's loader when
        ``warmup_by_epoch``)."""
        if self.warmup_by_epoch:
            return self.warmup_iters * trainer.iters_per_epoch
        return self.warmup_iters

    def regular_lr(self, trainer: Trainer) -> list[float]:
        """Each group's scheduled lr now, without warmup."""
        return [self.get_lr(trainer, base_lr) for base_lr in self.base_lr]

    def warmup_lr(self, trainer: Trainer, cur_iter: int) -> list[float]:
        """Each group's lr at warmup iteration ``cur_iter``."""
        factor = warmup_factor(self.warmup, cur_iter, self.warmup_length(trainer),
                               self.warmup_ratio)
        return [lr * factor for lr in self.regular_lr(trainer)]

    def check_run(self, trainer: Trainer) -> bool:
        """Refuse what cannot work in this run; False when the schedule does not apply."""
        if self.warmup_by_epoch and not trainer.by_epoch:
            raise ConfigError(f"{self.config_key}.warmup_by_epoch=True needs an epoch-based run "
                              f"(mmcv's IterBasedRunner fails on it); give warmup_iters in "
                              f"iterations and set warmup_by_epoch=False")
        return check_schedule_fits(self.config_key, trainer, self.by_epoch)

    def before_run(self, trainer: Trainer) -> None:
        self.check_run(trainer)
        # setdefault: a resumed optimizer brings the initial lr of the first run
        for group in trainer.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lr = [group["initial_lr"] for group in trainer.optimizer.param_groups]

    def before_train_epoch(self, trainer: Trainer) -> None:
        if self.by_epoch:
            set_lr(trainer, self.regular_lr(trainer))

    def before_train_iter(self, trainer: Trainer) -> None:
        if self.by_epoch and not trainer.by_epoch:
            return  # no epoch starts to set the schedule; warmup has nothing to scale either
        lrs = update_at_iter(self.by_epoch, self.warmup, trainer.iter,
                             self.warmup_length(trainer), lambda: self.regular_lr(trainer),
                             lambda: self.warmup_lr(trainer, trainer.iter))
        if lrs is not None:
            set_lr(trainer, lrs)


# ---- the policies ----------------------------------------------------------------------------


@HOOKS.register_module()
class FixedLrUpdaterHook(LrUpdaterHook):
    """``policy='fixed'``: the initial lr throughout (after warmup)."""

    def __init__(self, by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        return base_lr


@HOOKS.register_module()
class StepLrUpdaterHook(LrUpdaterHook):
    """``policy='step'``: the lr times ``gamma`` at each epoch (or iteration) of ``step`` (an
    int means every ``step``), never below ``min_lr``."""

    def __init__(self, step: int | list[int], gamma: float = 0.1, min_lr: float | None = None,
                 by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        self.step = check_steps(self.config_key, step)
        self.gamma, self.min_lr = gamma, min_lr

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, _ = progress_of(trainer, self.by_epoch)
        lr = base_lr * self.gamma ** step_exponent(done, self.step)
        return max(lr, self.min_lr) if self.min_lr is not None else lr


@HOOKS.register_module()
class ExpLrUpdaterHook(LrUpdaterHook):
    """``policy='exp'``: the lr times ``gamma`` every epoch (or iteration)."""

    def __init__(self, gamma: float, by_epoch: bool = True, warmup: str | None = None,
                 warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        self.gamma = gamma

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, _ = progress_of(trainer, self.by_epoch)
        return base_lr * self.gamma**done


@HOOKS.register_module()
class PolyLrUpdaterHook(LrUpdaterHook):
    """``policy='poly'``: from the initial lr to ``min_lr`` as ``(1 - done / total) ** power``."""

    def __init__(self, power: float = 1.0, min_lr: float = 0.0, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        self.power, self.min_lr = power, min_lr

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, total = progress_of(trainer, self.by_epoch)
        coeff = (1 - done / total) ** self.power
        return (base_lr - self.min_lr) * coeff + self.min_lr


@HOOKS.register_module()
class InvLrUpdaterHook(LrUpdaterHook):
    """``policy='inv'``: the initial lr times ``(1 + gamma * done) ** -power``."""

    def __init__(self, gamma: float, power: float = 1.0, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 warmup_by_epoch: bool = False) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        self.gamma, self.power = gamma, power

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, _ = progress_of(trainer, self.by_epoch)
        return base_lr * (1 + self.gamma * done) ** (-self.power)


class _AnnealingLrUpdaterHook(LrUpdaterHook):
    """The lr target of the annealing policies: ``min_lr``, or ``min_lr_ratio`` x initial lr."""

    def __init__(self, min_lr: float | None, min_lr_ratio: float | None, by_epoch: bool,
                 warmup: str | None, warmup_iters: int, warmup_ratio: float,
                 warmup_by_epoch: bool) -> None:
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        check_target(self.config_key, "lr", min_lr, min_lr_ratio)
        self.min_lr, self.min_lr_ratio = min_lr, min_lr_ratio

    def target_lr(self, base_lr: float) -> float:
        """Where the annealing ends for a group whose initial lr is ``base_lr``."""
        return base_lr * self.min_lr_ratio if self.min_lr_ratio is not None else self.min_lr


@HOOKS.register_module()
class CosineAnnealingLrUpdaterHook(_AnnealingLrUpdaterHook):
    """``policy='CosineAnnealing'``: from the initial lr down to ``min_lr`` (or
    ``min_lr_ratio`` x initial lr) along half a cosine over the run."""

    def __init__(self, min_lr: float | None = None, min_lr_ratio: float | None = None,
                 by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(min_lr, min_lr_ratio, by_epoch, warmup, warmup_iters, warmup_ratio,
                         warmup_by_epoch)

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, total = progress_of(trainer, self.by_epoch)
        return annealing_cos(base_lr, self.target_lr(base_lr), done / total)


@HOOKS.register_module()
class FlatCosineAnnealingLrUpdaterHook(_AnnealingLrUpdaterHook):
    """``policy='FlatCosineAnnealing'``: the initial lr for the first ``start_percent`` of the
    run, then half a cosine down to ``min_lr`` (or ``min_lr_ratio`` x initial lr)."""

    def __init__(self, start_percent: float = 0.75, min_lr: float | None = None,
                 min_lr_ratio: float | None = None, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 warmup_by_epoch: bool = False) -> None:
        super().__init__(min_lr, min_lr_ratio, by_epoch, warmup, warmup_iters, warmup_ratio,
                         warmup_by_epoch)
        if not 0 <= start_percent <= 1:
            raise ConfigError(f"lr_config.start_percent must be in [0, 1], got {start_percent!r}")
        self.start_percent = start_percent

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, total = progress_of(trainer, self.by_epoch)
        start = round(total * self.start_percent)
        if done < start:
            return base_lr
        return annealing_cos(base_lr, self.target_lr(base_lr), (done - start) / (total - start))


@HOOKS.register_module()
class CosineRestartLrUpdaterHook(_AnnealingLrUpdaterHook):
    """``policy='CosineRestart'``: one cosine descent per period of ``periods`` (epochs or
    iterations), each starting from ``restart_weights[i]`` of the way between ``min_lr`` (or
    ``min_lr_ratio`` x initial lr) and the initial lr."""

    def __init__(self, periods: Sequence[int], restart_weights: Sequence[float] = (1,),
                 min_lr: float | None = None, min_lr_ratio: float | None = None,
                 by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(min_lr, min_lr_ratio, by_epoch, warmup, warmup_iters, warmup_ratio,
                         warmup_by_epoch)
        if len(periods) != len(restart_weights):
            raise ConfigError(f"lr_config.periods ({len(periods)}) and restart_weights "
                              f"({len(restart_weights)}) must have the same length")
        self.periods, self.restart_weights = list(periods), list(restart_weights)
        self.cumulative_periods = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]

    def before_run(self, trainer: Trainer) -> None:
        super().before_run(trainer)
        _, total = progress_of(trainer, self.by_epoch)
        unit = "epochs" if self.by_epoch else "iterations"
        applies = trainer.by_epoch or not self.by_epoch
        if applies and total > self.cumulative_periods[-1]:
            raise ConfigError(f"lr_config.periods add up to {self.cumulative_periods[-1]} {unit}, "
                              f"fewer than the run's {total}; lengthen them")

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, _ = progress_of(trainer, self.by_epoch)
        idx = next(i for i, end in enumerate(self.cumulative_periods) if done < end)
        restart = 0 if idx == 0 else self.cumulative_periods[idx - 1]
        alpha = min((done - restart) / self.periods[idx], 1)
        return annealing_cos(base_lr, self.target_lr(base_lr), alpha, self.restart_weights[idx])


@HOOKS.register_module()
class LinearAnnealingLrUpdaterHook(_AnnealingLrUpdaterHook):
    """``policy='LinearAnnealing'``: from the initial lr down to ``min_lr`` (or
    ``min_lr_ratio`` x initial lr) along a line over the run."""

    def __init__(self, min_lr: float | None = None, min_lr_ratio: float | None = None,
                 by_epoch: bool = True, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        super().__init__(min_lr, min_lr_ratio, by_epoch, warmup, warmup_iters, warmup_ratio,
                         warmup_by_epoch)

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        done, total = progress_of(trainer, self.by_epoch)
        return annealing_linear(base_lr, self.target_lr(base_lr), done / total)


@HOOKS.register_module()
class CyclicLrUpdaterHook(LrUpdaterHook):
    """``policy='cyclic'``: ``cyclic_times`` cycles over the run (by iteration), each rising
    from the initial lr to ``target_ratio[0]`` x lr over ``step_ratio_up`` of the cycle, then
    falling to ``target_ratio[1]`` x lr (``anneal_strategy`` 'cos' or 'linear'); ``gamma``
    shrinks the peak's height cycle after cycle."""

    def __init__(self, by_epoch: bool = False, target_ratio: float | Sequence[float] = (10, 1e-4),
                 cyclic_times: int = 1, step_ratio_up: float = 0.4, anneal_strategy: str = "cos",
                 gamma: float = 1.0, warmup: str | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.1, warmup_by_epoch: bool = False) -> None:
        check_cyclic(self.config_key, by_epoch, cyclic_times, step_ratio_up)
        if not 0 < gamma <= 1:
            raise ConfigError(f"lr_config.gamma must be in (0, 1], got {gamma!r}")
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        self.target_ratio = cyclic_targets(self.config_key, target_ratio)
        self.cyclic_times, self.step_ratio_up, self.gamma = cyclic_times, step_ratio_up, gamma
        self.anneal = annealing_function(anneal_strategy, self.config_key)
        self.iters_per_cycle = self.up_iters = 0  # from the run's length, in before_run

    def before_run(self, trainer: Trainer) -> None:
        super().before_run(trainer)
        self.iters_per_cycle, self.up_iters = cyclic_lengths(
            self.config_key, trainer.max_iters, self.cyclic_times, self.step_ratio_up)

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        return cyclic_value(base_lr, trainer.iter, self.iters_per_cycle, self.up_iters,
                            self.target_ratio, self.gamma, self.anneal)


def one_cycle_phases(total_steps: int, pct_start: float, three_phase: bool, div_factor: float,
                     final_div_factor: float) -> list[tuple[float, float, float]]:
    """(last iteration, start factor, end factor) of each phase; factors multiply
    ``max_lr / div_factor``."""
    rise_end = float(pct_start * total_steps) - 1
    if three_phase:
        return [(rise_end, 1, div_factor), (float(2 * pct_start * total_steps) - 2, div_factor, 1),
                (total_steps - 1, 1, 1 / final_div_factor)]
    return [(rise_end, 1, div_factor), (total_steps - 1, div_factor, 1 / final_div_factor)]


@HOOKS.register_module()
class OneCycleLrUpdaterHook(LrUpdaterHook):
    """``policy='OneCycle'`` (by iteration): from ``max_lr / div_factor`` up to ``max_lr`` over
    ``pct_start`` of ``total_steps`` (default: the run), then down to
    ``max_lr / div_factor / final_div_factor``; ``three_phase`` comes back down to the start
    first, symmetrically. ``max_lr`` is one number or one per parameter group; the optimizer's
    own lr is not used."""

    def __init__(self, max_lr: float | Sequence[float], total_steps: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", div_factor: float = 25,
                 final_div_factor: float = 1e4, three_phase: bool = False, by_epoch: bool = False,
                 warmup: str | None = None, warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 warmup_by_epoch: bool = False) -> None:
        check_pct_start(self.config_key, by_epoch, pct_start)
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ConfigError(f"lr_config.total_steps must be a positive int or None, got "
                              f"{total_steps!r}")
        super().__init__(by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch)
        self.max_lr, self.total_steps, self.pct_start = max_lr, total_steps, pct_start
        self.anneal = annealing_function(anneal_strategy, self.config_key)
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        self.three_phase = three_phase
        self.phases: list[tuple[float, float, float]] = []  # from the run's length, in before_run

    def before_run(self, trainer: Trainer) -> None:
        self.check_run(trainer)
        total_steps = self.total_steps if self.total_steps is not None else trainer.max_iters
        if total_steps < trainer.max_iters:
            raise ConfigError(f"lr_config.total_steps={total_steps} is shorter than the run's "
                              f"{trainer.max_iters} iterations")
        max_lrs = per_group(self.config_key, "max_lr", self.max_lr, trainer.optimizer)
        self.base_lr = [lr / self.div_factor for lr in max_lrs]
        for group, lr in zip(trainer.optimizer.param_groups, self.base_lr, strict=True):
            group.setdefault("initial_lr", lr)
        self.phases = one_cycle_phases(total_steps, self.pct_start, self.three_phase,
                                       self.div_factor, self.final_div_factor)

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        start = 0.0
        for end, start_factor, end_factor in self.phases:
            if trainer.iter <= end:
                return self.anneal(base_lr * start_factor, base_lr * end_factor,
                                   (trainer.iter - start) / (end - start))
            start = end
        raise ConfigError(f"iteration {trainer.iter} is past lr_config.total_steps")


@HOOKS.register_module()
class YOLOXLrUpdaterHook(_AnnealingLrUpdaterHook):
    """``policy='YOLOX'`` (MMDetection 2.x): a quadratic warmup from 0, half a cosine from the
    initial lr to ``min_lr`` (or ``min_lr_ratio`` x initial lr) ending ``num_last_epochs``
    before the end, then that lr to the end.

    As MMDetection's hook: any ``warmup`` other than None means the quadratic one, lr x
    ``warmup_ratio`` x ((iter + 1) / warmup iterations)**2, which scales the initial lr rather
    than the scheduled one; progress counts from 1; and the last epochs and the warmup are
    counted in iterations even when ``by_epoch=True``."""

    def __init__(self, num_last_epochs: int, min_lr: float | None = None,
                 min_lr_ratio: float | None = None, by_epoch: bool = True,
                 warmup: str | None = None, warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 warmup_by_epoch: bool = False) -> None:
        super().__init__(min_lr, min_lr_ratio, by_epoch, warmup, warmup_iters, warmup_ratio,
                         warmup_by_epoch)
        self.num_last_epochs = num_last_epochs

    def warmup_lr(self, trainer: Trainer, cur_iter: int) -> list[float]:
        factor = self.warmup_ratio * pow((cur_iter + 1) / float(self.warmup_length(trainer)), 2)
        return [lr * factor for lr in self.base_lr]

    def get_lr(self, trainer: Trainer, base_lr: float) -> float:
        last_iters = trainer.iters_per_epoch * self.num_last_epochs
        warmup_iters = self.warmup_length(trainer)
        done, total = progress_of(trainer, self.by_epoch)
        done += 1
        target = self.target_lr(base_lr)
        if done >= total - last_iters:
            return target
        return annealing_cos(base_lr, target, (done - warmup_iters) /
                             (total - warmup_iters - last_iters))


# ---- lr_config -> hook -----------------------------------------------------------------------

_BUILT_IN = (FixedLrUpdaterHook, StepLrUpdaterHook, ExpLrUpdaterHook, PolyLrUpdaterHook,
             InvLrUpdaterHook, CosineAnnealingLrUpdaterHook, FlatCosineAnnealingLrUpdaterHook,
             CosineRestartLrUpdaterHook, CyclicLrUpdaterHook, OneCycleLrUpdaterHook,
             LinearAnnealingLrUpdaterHook, YOLOXLrUpdaterHook)
# policy name in lower case -> hook class name, for the built-in policies
LR_POLICIES = {cls.__name__.removesuffix("LrUpdaterHook").lower(): cls.__name__
               for cls in _BUILT_IN}


def mmcv_hook_name(policy: str, suffix: str) -> str:
    """The hook mmcv's runner builds for ``policy``: an all-lower-case policy gets a capital
    first letter (``str.title``), other spellings are kept."""
    return (policy.title() if policy == policy.lower() else policy) + suffix


def _spelling(prefix: str) -> str:
    """How configs write the policy of a hook named ``prefix + suffix``."""
    return prefix.lower() if prefix.title() == prefix else prefix


def known_policies(suffix: str) -> dict[str, str]:
    """Policy as configs write it -> hook name, for every hook registered under ``...suffix``."""
    return {_spelling(name.removesuffix(suffix)): name for name in HOOKS.list()
            if name.endswith(suffix) and name != suffix}


def _policy_hook(policy: str, suffix: str, key: str) -> str:
    name = mmcv_hook_name(policy, suffix)
    if name in HOOKS:
        return name
    policies = known_policies(suffix)
    by_lower = {hook.lower(): hook for hook in policies.values()}
    if (policy + suffix).lower() in by_lower:
        return by_lower[(policy + suffix).lower()]
    raise ConfigError(f"{key}.policy {policy!r} is not known (no hook {name} is registered)."
                      f"{did_you_mean(policy, policies)} Known policies: "
                      f"{', '.join(policies)}.")


def build_policy_hook(config: Mapping[str, Any] | Hook, suffix: str, key: str) -> Hook:
    """The hook of ``config``: ``dict(policy=NAME, ...)`` -> ``{Name}{suffix}`` (mmcv's rule),
    a hook class as policy, ``dict(type=HOOK_NAME, ...)``, or an already built hook."""
    if not isinstance(config, Mapping):
        return config
    cfg = dict(config)
    policy = cfg.pop("policy", None)
    if policy is None:
        if "type" not in cfg:
            examples = ", ".join(f"policy={p!r}" for p in list(known_policies(suffix))[:3])
            raise ConfigError(f"{key} needs a policy ({examples} ...)")
        return HOOKS.build(cfg, _path=key)
    hook_type = _policy_hook(policy, suffix, key) if isinstance(policy, str) else policy
    if cfg.get("type", hook_type) != hook_type:
        raise ConfigError(f"{key} has policy={policy!r} and type={cfg['type']!r}, which differ; "
                          f"keep one of them")
    return HOOKS.build(dict(cfg, type=hook_type), _path=key)


def build_lr_hook(lr_config: Mapping[str, Any] | Hook,
                  default_by_epoch: bool = True) -> LrUpdaterHook:
    """The LR hook an ``lr_config=dict(policy=..., ...)`` describes (or ``lr_config`` itself
    when it is a hook). ``default_by_epoch=False`` is for an iteration-based run, where mmcv's
    ``IterBasedRunner`` makes ``by_epoch`` default to False."""
    if isinstance(lr_config, Mapping) and not default_by_epoch:
        lr_config = dict(lr_config)
        lr_config.setdefault("by_epoch", False)
    return build_policy_hook(lr_config, "LrUpdaterHook", "lr_config")

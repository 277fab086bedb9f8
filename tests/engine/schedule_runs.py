"""Short training runs without a model, for the LR and momentum hooks: stand-ins for mmcv 1.7's
runners and for detlab's trainer, calling the hooks at the moments each calls them, and recording
every parameter group's lr and momentum at every iteration (after the ``before_train_iter`` hooks,
where the optimizer step would read them)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

ITERS_PER_EPOCH = 5
MAX_EPOCHS = 4  # an epoch-based run: 20 iterations
MAX_ITERS = 23  # an iteration-based run: 4 epochs and 3 iterations
LRS = (0.02, 0.002, 0.04)  # three parameter groups, as paramwise lr multipliers make
SGD_MOMENTA = (0.9, 0.8, 0.95)
ADAM_BETAS = ((0.9, 0.999), (0.85, 0.99), (0.95, 0.999))
LOGGER = logging.getLogger("detlab.tests.schedules")


def make_optimizer(kind: str = "SGD") -> torch.optim.Optimizer:
    """An optimizer of three one-parameter groups with their own lr and momentum (or betas)."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in LRS]
    if kind == "SGD":
        groups = [dict(params=[p], lr=lr, momentum=m)
                  for p, lr, m in zip(params, LRS, SGD_MOMENTA, strict=True)]
        return torch.optim.SGD(groups, lr=LRS[0], momentum=0.9)
    groups = [dict(params=[p], lr=lr, betas=b)
              for p, lr, b in zip(params, LRS, ADAM_BETAS, strict=True)]
    return torch.optim.Adam(groups, lr=LRS[0])


def momenta(optimizer: torch.optim.Optimizer) -> list[float]:
    return [g["betas"][0] if "betas" in g else g["momentum"] for g in optimizer.param_groups]


@dataclass
class Run:
    """How long a run is: epoch-based (``max_epochs``) or iteration-based (``max_iters``)."""

    by_epoch: bool
    max_epochs: int = MAX_EPOCHS
    max_iters: int = MAX_ITERS
    iters_per_epoch: int = ITERS_PER_EPOCH

    @property
    def total_iters(self) -> int:
        return self.max_epochs * self.iters_per_epoch if self.by_epoch else self.max_iters


def stand_in(run: Run, optimizer: torch.optim.Optimizer, mmcv: bool) -> SimpleNamespace:
    """What hooks read of a runner (mmcv) or trainer (detlab). mmcv's IterBasedRunner has no
    ``max_epochs``; detlab's trainer counts the epochs its iterations span."""
    if run.by_epoch:
        max_epochs = run.max_epochs
    else:
        max_epochs = None if mmcv else -(-run.max_iters // run.iters_per_epoch)
    return SimpleNamespace(
        optimizer=optimizer, epoch=0, iter=0, inner_iter=0, by_epoch=run.by_epoch,
        max_epochs=max_epochs, max_iters=run.total_iters, iters_per_epoch=run.iters_per_epoch,
        data_loader=[None] * run.iters_per_epoch, logger=LOGGER)


def _epoch_of_iter(run: Run, it: int, mmcv: bool) -> int:
    """The runner's epoch while iteration ``it`` runs in an iteration-based run. mmcv's
    IterBasedRunner reads its loader's epoch before taking the batch, so an epoch's first
    iteration still shows the previous epoch; detlab's trainer counts it in the new one."""
    if mmcv:
        return max(it - 1, 0) // run.iters_per_epoch
    return it // run.iters_per_epoch


def drive(hooks: list[Any], optimizer: torch.optim.Optimizer, run: Run, mmcv: bool,
          start: int = 0, stop: int | None = None) -> list[tuple[list[float], list[float]]]:
    """Run iterations ``start`` to ``stop`` (an epoch boundary for an epoch-based run; a resumed
    run starts past 0) calling ``hooks`` (in priority order) as the runner does; the lr and
    momentum of each group at each iteration."""
    stop = run.total_iters if stop is None else stop
    runner = stand_in(run, optimizer, mmcv)
    runner.iter = start
    call = lambda moment: [getattr(hook, moment)(runner) for hook in hooks]  # noqa: E731
    call("before_run")
    if not run.by_epoch:
        call("before_epoch")  # the only epoch moment of an iteration-based run
    records = []
    for it in range(start, stop):
        runner.iter = it
        runner.inner_iter = it % run.iters_per_epoch
        if run.by_epoch:
            runner.epoch = it // run.iters_per_epoch
            if runner.inner_iter == 0:
                call("before_train_epoch")
        else:
            runner.epoch = _epoch_of_iter(run, it, mmcv)
        call("before_train_iter")
        records.append(([g["lr"] for g in optimizer.param_groups], momenta(optimizer)))
        call("after_train_iter")
        if run.by_epoch and runner.inner_iter == run.iters_per_epoch - 1:
            call("after_train_epoch")
    return records


def drive_resumed(make_hooks: Any, optimizer_kind: str, run: Run, resume_at: int,
                  mmcv: bool = False) -> list[tuple[list[float], list[float]]]:
    """A run stopped after ``resume_at`` iterations and resumed with new hooks and a new
    optimizer that loads the saved optimizer state, as a checkpoint brings it back."""
    optimizer = make_optimizer(optimizer_kind)
    first = drive(make_hooks(), optimizer, run, mmcv, stop=resume_at)
    saved = copy.deepcopy(optimizer.state_dict())
    resumed = make_optimizer(optimizer_kind)
    resumed.load_state_dict(saved)
    return first + drive(make_hooks(), resumed, run, mmcv, start=resume_at)


def mmcv_hook(register: str, config: dict[str, Any]) -> Any:
    """The hook mmcv's runner makes of ``lr_config`` / ``momentum_config`` (``register`` is
    ``'register_lr_hook'`` or ``'register_momentum_hook'``), by its own code."""
    from mmcv.runner import BaseRunner

    made = []
    stand_in_runner = SimpleNamespace(register_hook=lambda hook, priority: made.append(hook))
    getattr(BaseRunner, register)(stand_in_runner, copy.deepcopy(config))
    return made[0]


def flat(records: list[tuple[list[float], list[float]]], which: int) -> list[float]:
    """Every lr (``which=0``) or momentum (1) of every group at every iteration, in one list."""
    return [value for record in records for value in record[which]]

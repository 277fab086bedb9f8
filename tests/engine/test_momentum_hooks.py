"""Momentum schedules of momentum_config: every iteration's momentum (SGD's ``momentum``, Adam's
``betas[0]``) of every parameter group equals that of mmcv 1.7's own hooks (run on a stand-in
runner) for a table of settings, alone and next to the LR hook they go with."""

import logging

import pytest
import torch
from schedule_runs import (
    ADAM_BETAS,
    ITERS_PER_EPOCH,
    SGD_MOMENTA,
    Run,
    drive,
    drive_resumed,
    flat,
    make_optimizer,
    mmcv_hook,
    stand_in,
)

from detlab.config import ConfigError
from detlab.engine.hooks import build_lr_hook
from detlab.engine.hooks.momentum_updater import (
    MOMENTUM_POLICIES,
    CyclicMomentumUpdaterHook,
    MomentumUpdaterHook,
    build_momentum_hook,
)
from detlab.registry import HOOKS

# ``u``: the schedule's unit in these short runs (1 by epoch, ITERS_PER_EPOCH by iteration)
POLICIES = {
    "step": [lambda u: dict(step=[2 * u, 3 * u]),
             lambda u: dict(step=u, gamma=0.8, min_momentum=0.6)],
    "CosineAnnealing": [lambda u: dict(min_momentum_ratio=0.5), lambda u: dict(min_momentum=0.7)],
    "LinearAnnealing": [lambda u: dict(min_momentum_ratio=0.5), lambda u: dict(min_momentum=0.7)],
}
ITER_POLICIES = {  # mmcv refuses by_epoch=True for them
    "cyclic": [lambda u: {},
               lambda u: dict(target_ratio=(0.8, 1.1), cyclic_times=2, step_ratio_up=0.3,
                              anneal_strategy="linear", gamma=0.5)],
    "OneCycle": [lambda u: {},
                 lambda u: dict(base_momentum=[0.8, 0.85, 0.7], max_momentum=0.95,
                                pct_start=0.25, anneal_strategy="linear", three_phase=True)],
}
WARMUPS = {
    "no-warmup": {},
    "constant": dict(warmup="constant", warmup_iters=7, warmup_ratio=0.9),
    "linear": dict(warmup="linear", warmup_iters=7, warmup_ratio=0.9),
    "exp": dict(warmup="exp", warmup_iters=7, warmup_ratio=0.8),
}


def _settings():
    rows = []
    for table, by_epochs in ((POLICIES, (True, False)), (ITER_POLICIES, (False,))):
        for policy, variants in table.items():
            for v, kwargs in enumerate(variants):
                for warmup, warmup_cfg in WARMUPS.items():
                    for by_epoch in by_epochs:
                        for run_by_epoch in (True, False):
                            for optimizer in ("SGD", "Adam"):
                                unit = 1 if by_epoch else ITERS_PER_EPOCH
                                cfg = dict(policy=policy, by_epoch=by_epoch, **kwargs(unit),
                                           **warmup_cfg)
                                run = "epoch-run" if run_by_epoch else "iter-run"
                                sched = "by-epoch" if by_epoch else "by-iter"
                                rows.append(pytest.param(
                                    cfg, run_by_epoch, optimizer,
                                    id=f"{policy}{v}-{warmup}-{sched}-{run}-{optimizer}"))
    return rows


SETTINGS = _settings()


def test_the_table_covers_every_built_in_policy():
    assert {p.values[0]["policy"].lower() for p in SETTINGS} == set(MOMENTUM_POLICIES)
    assert len(SETTINGS) == 256


@pytest.mark.parametrize("momentum_config,run_by_epoch,optimizer", SETTINGS)
def test_momentum_equals_mmcv_at_every_iteration(momentum_config, run_by_epoch, optimizer):
    pytest.importorskip("mmcv.runner")
    run = Run(by_epoch=run_by_epoch)
    mmcv_optimizer, our_optimizer = make_optimizer(optimizer), make_optimizer(optimizer)
    reference = drive([mmcv_hook("register_momentum_hook", momentum_config)], mmcv_optimizer,
                      run, mmcv=True)
    ours = drive([build_momentum_hook(momentum_config)], our_optimizer, run, mmcv=False)
    assert len(ours) == run.total_iters
    assert flat(ours, 1) == pytest.approx(flat(reference, 1), rel=1e-12, abs=0)
    assert flat(ours, 0) == flat(reference, 0)  # the lr untouched
    if optimizer == "Adam":  # betas[1] untouched
        assert [g["betas"][1] for g in our_optimizer.param_groups] == \
            [g["betas"][1] for g in mmcv_optimizer.param_groups]


# the pairs configs use (mmdet3d's cyclic schedules, one-cycle), lr hook first as by priority
PAIRS = [
    pytest.param(dict(policy="cyclic", target_ratio=(10, 1e-4), cyclic_times=1,
                      step_ratio_up=0.4),
                 dict(policy="cyclic", target_ratio=(0.85 / 0.95, 1), cyclic_times=1,
                      step_ratio_up=0.4), "Adam", id="cyclic-adamw"),
    pytest.param(dict(policy="OneCycle", max_lr=0.1, pct_start=0.4, div_factor=10),
                 dict(policy="OneCycle", base_momentum=0.85, max_momentum=0.95, pct_start=0.4),
                 "SGD", id="onecycle-sgd"),
    pytest.param(dict(policy="CosineAnnealing", min_lr_ratio=0.01, warmup="linear",
                      warmup_iters=7, by_epoch=False),
                 dict(policy="CosineAnnealing", min_momentum_ratio=0.85 / 0.95, warmup="linear",
                      warmup_iters=7, by_epoch=False), "Adam", id="cosine-warmup"),
]


@pytest.mark.parametrize("lr_config,momentum_config,optimizer", PAIRS)
@pytest.mark.parametrize("run_by_epoch", [True, False], ids=["epoch-run", "iter-run"])
def test_lr_and_momentum_together_equal_mmcv(lr_config, momentum_config, optimizer,
                                             run_by_epoch):
    pytest.importorskip("mmcv.runner")
    run = Run(by_epoch=run_by_epoch)
    reference = drive([mmcv_hook("register_lr_hook", lr_config),
                       mmcv_hook("register_momentum_hook", momentum_config)],
                      make_optimizer(optimizer), run, mmcv=True)
    ours = drive([build_lr_hook(lr_config), build_momentum_hook(momentum_config)],
                 make_optimizer(optimizer), run, mmcv=False)
    for which in (0, 1):
        assert flat(ours, which) == pytest.approx(flat(reference, which), rel=1e-12, abs=0)


RESUMED = [
    pytest.param(dict(policy="step", step=[2, 3], warmup="linear", warmup_iters=7), True, 10,
                 "SGD", id="step-epoch-run"),
    pytest.param(dict(policy="cyclic", cyclic_times=2, gamma=0.5), False, 8, "Adam",
                 id="cyclic-iter-run"),
    pytest.param(dict(policy="OneCycle", base_momentum=[0.8, 0.85, 0.7], three_phase=True),
                 False, 11, "SGD", id="onecycle-iter-run"),
    pytest.param(dict(policy="OneCycle"), True, 10, "Adam", id="onecycle-epoch-run"),
]


@pytest.mark.parametrize("momentum_config,run_by_epoch,resume_at,optimizer", RESUMED)
def test_resumed_run_gets_the_same_momenta(momentum_config, run_by_epoch, resume_at,
                                           optimizer):
    run = Run(by_epoch=run_by_epoch)
    whole = drive([build_momentum_hook(momentum_config)], make_optimizer(optimizer), run,
                  mmcv=False)
    resumed = drive_resumed(lambda: [build_momentum_hook(momentum_config)], optimizer, run,
                            resume_at)
    assert flat(resumed, 1) == pytest.approx(flat(whole, 1), rel=1e-12, abs=0)


def test_initial_momentum_of_each_group():
    for kind, expected in (("SGD", list(SGD_MOMENTA)), ("Adam", [b[0] for b in ADAM_BETAS])):
        hook = build_momentum_hook(dict(policy="step", step=[1]))
        optimizer = make_optimizer(kind)
        hook.before_run(stand_in(Run(by_epoch=True), optimizer, mmcv=False))
        assert hook.base_momentum == expected
        assert [g["initial_momentum"] for g in optimizer.param_groups] == expected
    for group in optimizer.param_groups:  # a resumed optimizer keeps its initial momentum
        group["betas"] = (0.5, group["betas"][1])
    hook.before_run(stand_in(Run(by_epoch=True), optimizer, mmcv=False))
    assert hook.base_momentum == expected
    assert [g["betas"][1] for g in optimizer.param_groups] == [b[1] for b in ADAM_BETAS]


def test_by_epoch_schedule_in_an_iteration_based_run_leaves_the_momentum(caplog):
    config = dict(policy="step", step=[1], warmup="linear", warmup_iters=3)
    with caplog.at_level(logging.WARNING):
        records = drive([build_momentum_hook(config)], make_optimizer(), Run(by_epoch=False),
                        mmcv=False)
    assert all(momenta == list(SGD_MOMENTA) for _, momenta in records)
    assert "momentum_config.by_epoch=True in an iteration-based run" in caplog.text


def test_building():
    assert type(build_momentum_hook(dict(policy="cyclic"))) is CyclicMomentumUpdaterHook
    assert type(build_momentum_hook(dict(policy="Cyclic"))) is CyclicMomentumUpdaterHook
    assert type(build_momentum_hook(dict(type="CyclicMomentumUpdaterHook"))) is \
        CyclicMomentumUpdaterHook
    assert type(build_momentum_hook(dict(policy=CyclicMomentumUpdaterHook))) is \
        CyclicMomentumUpdaterHook
    hook = build_momentum_hook(dict(policy="onecycle"))
    assert build_momentum_hook(hook) is hook and type(hook).__name__ == \
        "OneCycleMomentumUpdaterHook"
    assert all(key == key.lower() for key in MOMENTUM_POLICIES)
    for name in MOMENTUM_POLICIES.values():
        cls = HOOKS.get(name)
        assert issubclass(cls, MomentumUpdaterHook) and cls.priority == "HIGH"


def test_momentum_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'cyclic'") as err:
        build_momentum_hook(dict(policy="cyclc"))
    assert "Known policies: " in str(err.value) and "OneCycle" in str(err.value)
    with pytest.raises(ConfigError, match="momentum_config needs a policy"):
        build_momentum_hook(dict(step=[1]))
    with pytest.raises(ConfigError, match="momentum_config.warmup must be"):
        build_momentum_hook(dict(policy="step", step=[1], warmup="cosine"))
    with pytest.raises(ConfigError, match="exactly one of min_momentum and min_momentum_ratio"):
        build_momentum_hook(dict(policy="CosineAnnealing"))
    with pytest.raises(ConfigError, match="momentum_config.by_epoch must be False"):
        build_momentum_hook(dict(policy="OneCycle", by_epoch=True))
    with pytest.raises(TypeError, match="does not accept 'min_lr'"):
        build_momentum_hook(dict(policy="CosineAnnealing", min_lr=0.1))
    adagrad = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    for config in (dict(policy="step", step=[1]), dict(policy="OneCycle")):
        with pytest.raises(ConfigError, match="Adagrad has neither 'momentum' nor 'betas'"):
            build_momentum_hook(config).before_run(stand_in(Run(by_epoch=True), adagrad,
                                                            mmcv=False))
    hook = build_momentum_hook(dict(policy="OneCycle", max_momentum=[0.9, 0.95]))
    with pytest.raises(ConfigError, match="max_momentum has 2 values for the optimizer's 3"):
        hook.before_run(stand_in(Run(by_epoch=True), make_optimizer(), mmcv=False))

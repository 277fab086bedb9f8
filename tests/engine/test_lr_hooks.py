"""LR schedules of lr_config: every iteration's lr of every parameter group equals that of mmcv
1.7's own hooks (run on a stand-in runner) for a table of settings; YOLOX's equals MMDetection
2.28's formula; a resumed run gets the lrs of the run that never stopped."""

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from schedule_runs import (
    ITERS_PER_EPOCH,
    LRS,
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
from detlab.engine.hooks import LR_POLICIES, build_lr_hook
from detlab.engine.hooks.base import Hook
from detlab.engine.hooks.lr_updater import (
    CosineAnnealingLrUpdaterHook,
    LrUpdaterHook,
    StepLrUpdaterHook,
)
from detlab.registry import HOOKS

# ---- the table of settings -------------------------------------------------------------------
# Each policy with a few argument sets. ``u`` is the schedule's unit in this file's short runs:
# 1 for a schedule by epoch (4 epochs), ITERS_PER_EPOCH for one by iteration (20 or 23).
POLICIES = {
    "fixed": [lambda u: {}],
    "step": [lambda u: dict(step=[2 * u, 3 * u]),
             lambda u: dict(step=u, gamma=0.5, min_lr=0.004)],
    "exp": [lambda u: dict(gamma=0.8)],
    "poly": [lambda u: dict(power=0.9, min_lr=1e-4), lambda u: {}],
    "inv": [lambda u: dict(gamma=0.1, power=0.75)],
    "CosineAnnealing": [lambda u: dict(min_lr_ratio=0.01), lambda u: dict(min_lr=1e-4)],
    "FlatCosineAnnealing": [lambda u: dict(start_percent=0.5, min_lr_ratio=0.1),
                            lambda u: dict(min_lr=1e-4)],
    "CosineRestart": [lambda u: dict(periods=[2 * u, 3 * u], restart_weights=[1, 0.5],
                                     min_lr_ratio=0.1),
                      lambda u: dict(periods=[5 * u], min_lr=1e-4)],
    "LinearAnnealing": [lambda u: dict(min_lr_ratio=0.05), lambda u: dict(min_lr=1e-4)],
}
# by iteration only (mmcv refuses by_epoch=True for them)
ITER_POLICIES = {
    "cyclic": [lambda u: {},
               lambda u: dict(target_ratio=(5, 1e-3), cyclic_times=2, step_ratio_up=0.3,
                              anneal_strategy="linear", gamma=0.5),
               lambda u: dict(target_ratio=4.0, cyclic_times=3)],
    "OneCycle": [lambda u: dict(max_lr=0.1),
                 lambda u: dict(max_lr=[0.1, 0.01, 0.2], total_steps=30, pct_start=0.25,
                                anneal_strategy="linear", div_factor=10, final_div_factor=100,
                                three_phase=True),
                 lambda u: dict(max_lr=0.05, three_phase=True)],
}
WARMUPS = {
    "no-warmup": {},
    "constant": dict(warmup="constant", warmup_iters=7, warmup_ratio=0.1),
    "linear": dict(warmup="linear", warmup_iters=7, warmup_ratio=0.1),
    "exp": dict(warmup="exp", warmup_iters=7, warmup_ratio=0.1),
    "linear-by-epoch": dict(warmup="linear", warmup_iters=1, warmup_ratio=0.001,
                            warmup_by_epoch=True),
}


def _settings():
    rows = []
    for table, by_epochs in ((POLICIES, (True, False)), (ITER_POLICIES, (False,))):
        for policy, variants in table.items():
            for v, kwargs in enumerate(variants):
                for warmup, warmup_cfg in WARMUPS.items():
                    for by_epoch in by_epochs:
                        for run_by_epoch in (True, False):
                            if warmup_cfg.get("warmup_by_epoch") and not run_by_epoch:
                                continue  # mmcv fails on it; see test_warmup_by_epoch_...
                            unit = 1 if by_epoch else ITERS_PER_EPOCH
                            cfg = dict(policy=policy, by_epoch=by_epoch, **kwargs(unit),
                                       **warmup_cfg)
                            run = "epoch-run" if run_by_epoch else "iter-run"
                            sched = "by-epoch" if by_epoch else "by-iter"
                            rows.append(pytest.param(cfg, run_by_epoch,
                                                     id=f"{policy}{v}-{warmup}-{sched}-{run}"))
    return rows


SETTINGS = _settings()


def test_the_table_covers_every_built_in_policy():
    written = {p.values[0]["policy"].lower() for p in SETTINGS}
    assert written == set(LR_POLICIES) - {"yolox"}  # YOLOX is MMDetection's, tested below
    assert len(SETTINGS) == 324


@pytest.mark.parametrize("lr_config,run_by_epoch", SETTINGS)
def test_lr_equals_mmcv_at_every_iteration(lr_config, run_by_epoch):
    pytest.importorskip("mmcv.runner")
    run = Run(by_epoch=run_by_epoch)
    reference = drive([mmcv_hook("register_lr_hook", lr_config)], make_optimizer(), run,
                      mmcv=True)
    ours = drive([build_lr_hook(lr_config)], make_optimizer(), run, mmcv=False)
    assert len(ours) == run.total_iters
    assert flat(ours, 0) == pytest.approx(flat(reference, 0), rel=1e-12, abs=0)


# ---- YOLOX: MMDetection's, not mmcv's --------------------------------------------------------


def _mmdet_yolox_reference():
    """MMDetection 2.28's ``YOLOXLrUpdaterHook`` (mmdet/core/hook/yolox_lrupdater_hook.py), whose
    wheel is not installed: a subclass of mmcv's cosine hook that replaces two formulas, written
    out here from MMDetection's source. Warmup (any warmup type): initial lr x warmup_ratio x
    ((iter + 1) / warmup_iters) ** 2. Schedule: with last = len(data_loader) x num_last_epochs
    and p = (epoch or iter) + 1, the target lr once p >= total - last, else cosine from the
    initial lr to the target at (p - warmup_iters) / (total - warmup_iters - last)."""
    from mmcv.runner.hooks.lr_updater import CosineAnnealingLrUpdaterHook as MmcvCosine

    class MmdetYOLOX(MmcvCosine):
        def __init__(self, num_last_epochs, **kwargs):
            self.num_last_epochs = num_last_epochs
            super().__init__(**kwargs)

        def get_warmup_lr(self, cur_iters):
            k = self.warmup_ratio * ((cur_iters + 1) / float(self.warmup_iters)) ** 2
            return [lr * k for lr in self.base_lr]

        def get_lr(self, runner, base_lr):
            last = len(runner.data_loader) * self.num_last_epochs
            p, total = ((runner.epoch, runner.max_epochs) if self.by_epoch
                        else (runner.iter, runner.max_iters))
            p += 1
            target = base_lr * self.min_lr_ratio if self.min_lr_ratio is not None \
                else self.min_lr
            if p >= total - last:
                return target
            cos_out = math.cos(math.pi * (p - self.warmup_iters) /
                               (total - self.warmup_iters - last)) + 1
            return target + 0.5 * (base_lr - target) * cos_out

    return MmdetYOLOX


# MMDetection's configs/yolox/yolox_s_8x8_300e_coco.py (2.x), shortened, and variations
YOLOX_CONFIG = dict(policy="YOLOX", warmup="exp", by_epoch=False, warmup_by_epoch=True,
                    warmup_ratio=1, warmup_iters=1, num_last_epochs=1, min_lr_ratio=0.05)
YOLOX_SETTINGS = [
    pytest.param(YOLOX_CONFIG, True, id="mmdet-config"),
    pytest.param(dict(YOLOX_CONFIG, by_epoch=True), True, id="by-epoch"),
    pytest.param(dict(YOLOX_CONFIG, warmup=None), True, id="no-warmup"),
    pytest.param(dict(YOLOX_CONFIG, min_lr_ratio=None, min_lr=1e-4, warmup_ratio=0.5,
                      warmup="linear"), True, id="min-lr"),
    pytest.param(dict(YOLOX_CONFIG, warmup_by_epoch=False, warmup_iters=7), True,
                 id="warmup-iters"),
    pytest.param(dict(YOLOX_CONFIG, warmup_by_epoch=False, warmup_iters=7), False,
                 id="iter-run"),
]


@pytest.mark.parametrize("lr_config,run_by_epoch", YOLOX_SETTINGS)
def test_yolox_equals_mmdetection_formula(lr_config, run_by_epoch):
    pytest.importorskip("mmcv.runner")
    run = Run(by_epoch=run_by_epoch)
    kwargs = {k: v for k, v in lr_config.items() if k != "policy"}
    reference = drive([_mmdet_yolox_reference()(**kwargs)], make_optimizer(), run, mmcv=True)
    ours = drive([build_lr_hook(lr_config)], make_optimizer(), run, mmcv=False)
    assert flat(ours, 0) == pytest.approx(flat(reference, 0), rel=1e-12, abs=0)


def test_yolox_by_hand():
    """The MMDetection config's numbers at a few iterations, 4 epochs of 5 iterations."""
    ours = flat(drive([build_lr_hook(YOLOX_CONFIG)], make_optimizer(), Run(by_epoch=True),
                      mmcv=False), 0)[::3]  # first group: initial lr 0.02
    assert ours[0] == pytest.approx(0.02 * (1 / 5) ** 2)  # warmup: (iter + 1) / 5, squared
    assert ours[3] == pytest.approx(0.02 * (4 / 5) ** 2)
    # iteration 5: p = 6, cosine over (6 - 5) / (20 - 5 - 5)
    assert ours[5] == pytest.approx(0.001 + 0.5 * 0.019 * (math.cos(math.pi * 0.1) + 1))
    assert ours[14:] == pytest.approx([0.001] * 6)  # p >= 15: the last epoch at the minimum


# ---- resuming --------------------------------------------------------------------------------

RESUMED = [
    pytest.param(dict(policy="step", step=[2, 3], warmup="linear", warmup_iters=7),
                 True, 10, id="step-epoch-run"),
    pytest.param(dict(policy="CosineAnnealing", min_lr_ratio=0.1, warmup="exp",
                      warmup_iters=1, warmup_by_epoch=True), True, 5, id="cosine-warmup-epochs"),
    pytest.param(dict(policy="cyclic", cyclic_times=2, gamma=0.5, warmup="linear",
                      warmup_iters=3), False, 8, id="cyclic-iter-run"),
    pytest.param(dict(policy="OneCycle", max_lr=0.1, three_phase=True), False, 11,
                 id="onecycle-iter-run"),
    pytest.param(dict(policy="OneCycle", max_lr=0.1), True, 10, id="onecycle-epoch-run"),
    pytest.param(YOLOX_CONFIG, True, 15, id="yolox"),
]


@pytest.mark.parametrize("lr_config,run_by_epoch,resume_at", RESUMED)
def test_resumed_run_gets_the_same_lrs(lr_config, run_by_epoch, resume_at):
    run = Run(by_epoch=run_by_epoch)
    whole = drive([build_lr_hook(lr_config)], make_optimizer(), run, mmcv=False)
    resumed = drive_resumed(lambda: [build_lr_hook(lr_config)], "SGD", run, resume_at)
    assert flat(resumed, 0) == pytest.approx(flat(whole, 0), rel=1e-12, abs=0)


def test_initial_lr_is_kept_by_a_resumed_optimizer():
    hook = build_lr_hook(dict(policy="fixed"))
    optimizer = make_optimizer()
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = group["lr"], 123.0  # as a checkpoint brings them
    hook.before_run(stand_in(Run(by_epoch=True), optimizer, mmcv=False))
    assert hook.base_lr == list(LRS)


def test_before_run_twice_builds_the_same_schedule():
    for config in (dict(policy="OneCycle", max_lr=0.1), dict(policy="cyclic"),
                   dict(policy="step", step=[1], warmup="linear", warmup_iters=1,
                        warmup_by_epoch=True)):
        hook, optimizer = build_lr_hook(config), make_optimizer()
        trainer = stand_in(Run(by_epoch=False if "step" not in config else True), optimizer,
                           mmcv=False)
        hook.before_run(trainer)
        state = dict(vars(hook))
        hook.before_run(trainer)
        assert vars(hook) == state


# ---- mmcv's behaviour in iteration-based runs ------------------------------------------------


def test_by_epoch_schedule_in_an_iteration_based_run_leaves_the_lr(caplog):
    """mmcv's IterBasedRunner never calls before_train_epoch: a by-epoch schedule (even its
    warmup) never changes the lr there. detlab does the same and says so."""
    config = dict(policy="step", step=[1], warmup="linear", warmup_iters=3)
    with caplog.at_level(logging.WARNING):
        records = drive([build_lr_hook(config)], make_optimizer(), Run(by_epoch=False),
                        mmcv=False)
    assert all(lrs == list(LRS) for lrs, _ in records)
    assert "lr_config.by_epoch=True in an iteration-based run" in caplog.text


def test_default_by_epoch_of_an_iteration_based_run():
    assert build_lr_hook(dict(policy="step", step=[5]), default_by_epoch=False).by_epoch is False
    assert build_lr_hook(dict(policy="step", step=[5], by_epoch=True),
                         default_by_epoch=False).by_epoch is True
    assert build_lr_hook(dict(policy="step", step=[5])).by_epoch is True


def test_warmup_by_epoch_in_an_iteration_based_run_is_refused():
    config = dict(policy="step", step=[50], by_epoch=False, warmup="linear", warmup_iters=1,
                  warmup_by_epoch=True)
    with pytest.raises(ConfigError, match="warmup_by_epoch=True needs an epoch-based run"):
        drive([build_lr_hook(config)], make_optimizer(), Run(by_epoch=False), mmcv=False)
    pytest.importorskip("mmcv.runner")
    with pytest.raises(AssertionError):  # mmcv fails too, less clearly
        drive([mmcv_hook("register_lr_hook", config)], make_optimizer(), Run(by_epoch=False),
              mmcv=True)


def test_cosine_restart_periods_shorter_than_the_run():
    config = dict(policy="CosineRestart", periods=[2, 1], restart_weights=[1, 1],
                  min_lr=0.0)
    with pytest.raises(ConfigError, match="add up to 3 epochs, fewer than the run's 4"):
        drive([build_lr_hook(config)], make_optimizer(), Run(by_epoch=True), mmcv=False)
    pytest.importorskip("mmcv.runner")
    with pytest.raises(ValueError, match="exceeds cumulative_periods"):  # mmcv, at epoch 3
        drive([mmcv_hook("register_lr_hook", config)], make_optimizer(), Run(by_epoch=True),
              mmcv=True)


# ---- by hand, from MMDetection's rules -------------------------------------------------------


def _trainer(lr=0.02, groups=1, iters_per_epoch=100, max_epochs=12):
    params = [[torch.nn.Parameter(torch.zeros(1))] for _ in range(groups)]
    optimizer = torch.optim.SGD([dict(params=p, lr=lr * (i + 1)) for i, p in enumerate(params)],
                                lr=lr)
    return SimpleNamespace(optimizer=optimizer, epoch=0, iter=0, iters_per_epoch=iters_per_epoch,
                           max_epochs=max_epochs, max_iters=max_epochs * iters_per_epoch,
                           by_epoch=True, logger=logging.getLogger("test"))


def _lr_at(hook, trainer, epoch, inner):
    """The lr at iteration ``inner`` of ``epoch``, the epoch's start having been announced."""
    trainer.epoch, trainer.iter = epoch, epoch * trainer.iters_per_epoch + inner
    hook.before_train_epoch(trainer)
    hook.before_train_iter(trainer)
    return [g["lr"] for g in trainer.optimizer.param_groups]


def test_step_with_linear_warmup_as_schedule_1x():
    hook = build_lr_hook(dict(policy="step", warmup="linear", warmup_iters=500,
                              warmup_ratio=0.001, step=[8, 11]))
    trainer = _trainer(lr=0.02, groups=2, iters_per_epoch=100)
    hook.before_run(trainer)
    assert _lr_at(hook, trainer, 0, 0) == pytest.approx([0.02 * 0.001, 0.04 * 0.001])
    # linear: factor = 1 - (1 - i / 500) * (1 - 0.001)
    assert _lr_at(hook, trainer, 2, 50)[0] == pytest.approx(0.02 * (1 - 0.5 * 0.999))
    assert _lr_at(hook, trainer, 4, 99)[0] == pytest.approx(0.02 * (1 - (1 / 500) * 0.999))
    assert _lr_at(hook, trainer, 5, 0) == pytest.approx([0.02, 0.04])
    assert _lr_at(hook, trainer, 7, 99)[0] == pytest.approx(0.02)
    assert _lr_at(hook, trainer, 8, 0) == pytest.approx([0.002, 0.004])
    assert _lr_at(hook, trainer, 11, 5)[0] == pytest.approx(0.0002)


@pytest.mark.parametrize("warmup,expected", [
    ("constant", 0.1),
    ("exp", 0.1 ** (1 - 20 / 40)),
])
def test_constant_and_exp_warmup(warmup, expected):
    hook = build_lr_hook(dict(policy="step", warmup=warmup, warmup_iters=40, warmup_ratio=0.1,
                              step=3))
    trainer = _trainer(lr=1.0)
    hook.before_run(trainer)
    assert _lr_at(hook, trainer, 0, 20)[0] == pytest.approx(expected)
    assert _lr_at(hook, trainer, 0, 40)[0] == pytest.approx(1.0)
    assert _lr_at(hook, trainer, 6, 0)[0] == pytest.approx(0.01)  # every 3 epochs, x0.1


def test_cosine_and_fixed():
    trainer = _trainer(lr=1.0, max_epochs=10)
    cosine = build_lr_hook(dict(policy="CosineAnnealing", min_lr_ratio=0.1))
    cosine.before_run(trainer)
    assert _lr_at(cosine, trainer, 5, 0)[0] == pytest.approx(0.1 + 0.9 * (1 + math.cos(
        math.pi / 2)) / 2)
    fixed = build_lr_hook(dict(policy="fixed", warmup="linear", warmup_iters=10,
                               warmup_ratio=0.5))
    fixed.before_run(trainer)
    assert _lr_at(fixed, trainer, 3, 0)[0] == pytest.approx(1.0)


def test_warmup_by_epoch():
    hook = build_lr_hook(dict(policy="step", step=[5], warmup="linear", warmup_iters=2,
                              warmup_by_epoch=True, warmup_ratio=0.0 + 1e-3))
    trainer = _trainer(lr=1.0, iters_per_epoch=10)
    hook.before_run(trainer)
    assert hook.warmup_length(trainer) == 20 and hook.warmup_iters == 2
    assert _lr_at(hook, trainer, 1, 0)[0] == pytest.approx(1 - 0.5 * (1 - 1e-3))


# ---- building from lr_config -----------------------------------------------------------------


def test_policy_names_follow_mmcv():
    assert type(build_lr_hook(dict(policy="step", step=[1]))) is StepLrUpdaterHook
    assert type(build_lr_hook(dict(policy="Step", step=[1]))) is StepLrUpdaterHook
    cosine = dict(min_lr=0.0)
    assert type(build_lr_hook(dict(policy="CosineAnnealing", **cosine))) is \
        CosineAnnealingLrUpdaterHook
    # mmcv would look for 'Cosineannealing'; detlab finds the policy whatever its case
    assert type(build_lr_hook(dict(policy="cosineannealing", **cosine))) is \
        CosineAnnealingLrUpdaterHook
    assert type(build_lr_hook(dict(policy="yolox", num_last_epochs=1, min_lr_ratio=0.05))) \
        .__name__ == "YOLOXLrUpdaterHook"
    assert type(build_lr_hook(dict(policy="onecycle", max_lr=0.1))).__name__ == \
        "OneCycleLrUpdaterHook"


def test_lr_policies_table():
    assert all(key == key.lower() for key in LR_POLICIES)
    assert LR_POLICIES["step"] == "StepLrUpdaterHook"
    assert LR_POLICIES["cosineannealing"] == "CosineAnnealingLrUpdaterHook"
    for name in LR_POLICIES.values():
        assert issubclass(HOOKS.get(name), LrUpdaterHook)


def test_type_class_and_built_hook():
    hook = build_lr_hook(dict(type="StepLrUpdaterHook", step=[1]))
    assert type(hook) is StepLrUpdaterHook and hook.step == [1]
    assert build_lr_hook(hook) is hook
    assert type(build_lr_hook(dict(policy=CosineAnnealingLrUpdaterHook, min_lr=0.0))) is \
        CosineAnnealingLrUpdaterHook

    class MyLrUpdaterHook(LrUpdaterHook):
        def get_lr(self, trainer, base_lr):
            return base_lr / 2

    assert isinstance(build_lr_hook(dict(policy=MyLrUpdaterHook)), MyLrUpdaterHook)
    with pytest.raises(ConfigError, match="policy='step' and type='FixedLrUpdaterHook'"):
        build_lr_hook(dict(policy="step", type="FixedLrUpdaterHook", step=[1]))


def test_lr_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'step'") as err:
        build_lr_hook(dict(policy="stepp", step=[1]))
    assert "Known policies: " in str(err.value) and "CosineAnnealing" in str(err.value)
    assert "StepLrUpdaterHook" not in str(err.value).split("Known policies")[1]
    with pytest.raises(ConfigError, match="Did you mean 'CosineAnnealing'"):
        build_lr_hook(dict(policy="CosineAnealing", min_lr=0.0))
    with pytest.raises(ConfigError, match="warmup must be .* Did you mean 'linear'"):
        build_lr_hook(dict(policy="step", step=[1], warmup="linaer"))
    with pytest.raises(ConfigError, match="warmup_iters must be a positive int"):
        build_lr_hook(dict(policy="step", step=[1], warmup="linear"))
    with pytest.raises(ConfigError, match="warmup_ratio must be in"):
        build_lr_hook(dict(policy="step", step=[1], warmup="linear", warmup_iters=5,
                           warmup_ratio=0))
    with pytest.raises(ConfigError, match="positive int"):
        build_lr_hook(dict(policy="step", step=[0]))
    with pytest.raises(ConfigError, match="increasing"):
        build_lr_hook(dict(policy="step", step=[11, 8]))
    with pytest.raises(TypeError, match="does not accept 'stepp'"):
        build_lr_hook(dict(policy="step", stepp=[1]))
    with pytest.raises(ConfigError, match="lr_config needs a policy"):
        build_lr_hook(dict(step=[1]))
    with pytest.raises(ConfigError, match="exactly one of min_lr and min_lr_ratio"):
        build_lr_hook(dict(policy="CosineAnnealing"))
    with pytest.raises(ConfigError, match="by_epoch must be False for a cyclic"):
        build_lr_hook(dict(policy="cyclic", by_epoch=True))
    with pytest.raises(ConfigError, match="anneal_strategy must be 'cos' or 'linear'"):
        build_lr_hook(dict(policy="OneCycle", max_lr=0.1, anneal_strategy="cosine"))


def test_run_dependent_errors():
    short = build_lr_hook(dict(policy="OneCycle", max_lr=0.1, total_steps=10))
    with pytest.raises(ConfigError, match="total_steps=10 is shorter than the run's 20"):
        short.before_run(stand_in(Run(by_epoch=True), make_optimizer(), mmcv=False))
    two = build_lr_hook(dict(policy="OneCycle", max_lr=[0.1, 0.2]))
    with pytest.raises(ConfigError, match="max_lr has 2 values for the optimizer's 3"):
        two.before_run(stand_in(Run(by_epoch=True), make_optimizer(), mmcv=False))
    many = build_lr_hook(dict(policy="cyclic", cyclic_times=30))
    with pytest.raises(ConfigError, match="cyclic_times=30 is more cycles"):
        many.before_run(stand_in(Run(by_epoch=True), make_optimizer(), mmcv=False))


def test_every_lr_hook_is_a_hook_of_high_priority():
    for name in LR_POLICIES.values():
        cls = HOOKS.get(name)
        assert issubclass(cls, Hook) and cls.priority == "VERY_HIGH"


# ---- in detlab's trainer ---------------------------------------------------------------------


class _Batch:
    def to(self, device, non_blocking=False):
        return self

    def __len__(self):
        return 1


class _Model(torch.nn.Module):
    def loss(self, batch):
        return {"loss": torch.zeros(())}


class _Recorder(Hook):
    """Reads the optimizer where the optimizer hook (priority ABOVE_NORMAL) would step."""

    priority = "NORMAL"

    def __init__(self):
        self.records = []

    def before_train_iter(self, trainer):
        groups = trainer.optimizer.param_groups
        self.records.append(([g["lr"] for g in groups],
                             [g["betas"][0] if "betas" in g else g["momentum"] for g in groups]))


TRAINER_RUNS = [
    pytest.param(dict(policy="step", step=[2, 3], warmup="linear", warmup_iters=7),
                 dict(policy="CosineAnnealing", min_momentum_ratio=0.5, warmup="exp",
                      warmup_iters=3), True, id="epoch-run"),
    pytest.param(dict(policy="cyclic", cyclic_times=2, warmup="exp", warmup_iters=4),
                 dict(policy="cyclic", cyclic_times=2), False, id="iter-run"),
    pytest.param(dict(policy="CosineAnnealing", min_lr=0.0, by_epoch=True),
                 dict(policy="step", step=[1]), False, id="by-epoch-in-iter-run"),
]


@pytest.mark.parametrize("lr_config,momentum_config,run_by_epoch", TRAINER_RUNS)
def test_in_detlabs_trainer_as_in_mmcvs_runner(tmp_path, lr_config, momentum_config,
                                               run_by_epoch):
    pytest.importorskip("mmcv.runner")
    from detlab.engine.hooks.momentum_updater import build_momentum_hook
    from detlab.engine.trainer import Trainer

    run = Run(by_epoch=run_by_epoch)
    length = dict(max_epochs=run.max_epochs) if run_by_epoch else dict(max_iters=run.max_iters)
    trainer = Trainer(model=_Model(), optimizer=make_optimizer("Adam"),
                      data_loader=[_Batch()] * ITERS_PER_EPOCH, work_dir=str(tmp_path),
                      logger=logging.getLogger("test"), device=torch.device("cpu"),
                      progress=False, **length)
    recorder = _Recorder()
    for hook in (build_lr_hook(lr_config), build_momentum_hook(momentum_config), recorder):
        trainer.register_hook(hook)
    trainer.run()
    reference = drive([mmcv_hook("register_lr_hook", lr_config),
                       mmcv_hook("register_momentum_hook", momentum_config)],
                      make_optimizer("Adam"), run, mmcv=True)
    assert len(recorder.records) == run.total_iters
    for which in (0, 1):
        assert flat(recorder.records, which) == pytest.approx(flat(reference, which),
                                                              rel=1e-12, abs=0)


# ---- detlab.tutorial.lr_schedule: the hooks on a stand-in trainer ----------------------------


@pytest.mark.parametrize("runner,lr_config,momentum_config", [
    pytest.param(dict(type="EpochBasedRunner", max_epochs=4),
                 dict(policy="step", step=[2, 3], warmup="linear", warmup_iters=7), None,
                 id="epochs"),
    pytest.param(dict(type="IterBasedRunner", max_iters=23),
                 dict(policy="cyclic", cyclic_times=2), dict(policy="cyclic", cyclic_times=2),
                 id="iterations"),
])
def test_tutorial_lr_schedule_equals_mmcv(runner, lr_config, momentum_config):
    pytest.importorskip("mmcv.runner")
    from detlab.tutorial import lr_schedule

    cfg = dict(optimizer=dict(type="SGD", lr=LRS[0], momentum=0.9), lr_config=lr_config,
               runner=runner)
    hooks = [mmcv_hook("register_lr_hook", dict(lr_config, by_epoch=lr_config.get(
        "by_epoch", runner["type"] == "EpochBasedRunner")))]
    if momentum_config:
        cfg["momentum_config"] = momentum_config
        hooks.append(mmcv_hook("register_momentum_hook", momentum_config))
    table = lr_schedule(cfg, ITERS_PER_EPOCH)
    run = Run(by_epoch=runner["type"] == "EpochBasedRunner")
    reference = drive(hooks, make_optimizer(), run, mmcv=True)
    assert list(table["iter"]) == list(range(run.total_iters))
    assert list(table["lr"]) == pytest.approx([lrs[0] for lrs, _ in reference], rel=1e-12)
    if momentum_config:
        assert list(table["momentum"]) == pytest.approx([0.9 * m[0] / SGD_MOMENTA[0]
                                                         for _, m in reference], rel=1e-12)
    else:
        assert "momentum" not in table

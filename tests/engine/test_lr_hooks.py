"""LR schedules of lr_config, checked against values computed by hand from MMDetection's rules."""

import math
from types import SimpleNamespace

import pytest
import torch

from detlab.config import ConfigError
from detlab.engine.hooks import build_lr_hook


def _trainer(lr=0.02, groups=1, iters_per_epoch=100, max_epochs=12):
    params = [[torch.nn.Parameter(torch.zeros(1))] for _ in range(groups)]
    optimizer = torch.optim.SGD([dict(params=p, lr=lr * (i + 1)) for i, p in enumerate(params)],
                                lr=lr)
    return SimpleNamespace(optimizer=optimizer, epoch=0, iter=0, iters_per_epoch=iters_per_epoch,
                           max_epochs=max_epochs, max_iters=max_epochs * iters_per_epoch)


def _lr_at(hook, trainer, epoch, inner):
    trainer.epoch, trainer.iter = epoch, epoch * trainer.iters_per_epoch + inner
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
    assert hook.warmup_iters == 20
    assert _lr_at(hook, trainer, 1, 0)[0] == pytest.approx(1 - 0.5 * (1 - 1e-3))


def test_lr_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'step'"):
        build_lr_hook(dict(policy="stepp", step=[1]))
    with pytest.raises(ConfigError, match="warmup must be"):
        build_lr_hook(dict(policy="step", step=[1], warmup="linaer"))
    with pytest.raises(ConfigError, match="positive int"):
        build_lr_hook(dict(policy="step", step=[0]))
    with pytest.raises(TypeError, match="does not accept 'stepp'"):
        build_lr_hook(dict(policy="step", stepp=[1]))

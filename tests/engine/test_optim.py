"""Optimizers from configs, and paramwise_cfg against mmengine's optimizer constructor."""

import pytest
import torch
from torch import nn

from detlab.config import ConfigError
from detlab.engine.optim import build_optimizer


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8, bias=False)
        self.neck = nn.Conv2d(8, 8, 1)
        self.head = nn.Sequential(nn.GroupNorm(2, 8), nn.Linear(8, 4))
        self.backbone[0].weight.requires_grad_(False)


def _settings(optimizer, trainable_only=False):
    """{id(param): (lr, weight_decay)} for the parameters in the optimizer."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad or not trainable_only:
                out[id(p)] = (pytest.approx(group["lr"]),
                              pytest.approx(group.get("weight_decay", 0)))
    return out


def test_plain_optimizer_takes_every_parameter():
    model = Toy()
    opt = build_optimizer(model, dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


# mmengine reorders the decay rules and skips unset ones, so a norm layer's bias takes
# bias_decay_mult there when norm_decay_mult is unset; MMDetection 2.x (mmcv 1.x) gives it
# norm_decay_mult (default 1). The cases below set what makes the two agree; the difference has
# its own test.
PARAMWISE = [
    dict(norm_decay_mult=0.0),
    dict(bias_lr_mult=2.0, bias_decay_mult=0.0, norm_decay_mult=1.0),
    dict(dwconv_decay_mult=0.5, norm_decay_mult=0.1, bias_lr_mult=3.0),
    dict(custom_keys={"backbone": dict(lr_mult=0.1), "backbone.1": dict(decay_mult=0.0),
                      "head": dict(lr_mult=10.0, decay_mult=2.0)}, bias_lr_mult=2.0),
]


@pytest.mark.parametrize("paramwise_cfg", PARAMWISE)
def test_paramwise_cfg_matches_mmengine(paramwise_cfg):
    constructors = pytest.importorskip("mmengine.optim")
    model = Toy()
    ours = build_optimizer(model, dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4,
                                       paramwise_cfg=paramwise_cfg))
    reference = constructors.DefaultOptimWrapperConstructor(
        dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.02, momentum=0.9,
                                                 weight_decay=1e-4)),
        paramwise_cfg)(model).optimizer
    # MMDetection 2.x (mmcv) keeps frozen parameters in the optimizer, so that a hook can unfreeze
    # them later; mmengine leaves them out. Compare the trainable ones, and count the rest.
    assert _settings(ours, trainable_only=True) == _settings(reference)
    assert len(_settings(ours)) == len(list(model.parameters()))
    # one group per distinct setting, not one per parameter
    assert len(ours.param_groups) == len({(g["lr"], g["weight_decay"]) for g in ours.param_groups})


def test_decay_rules_follow_mmdetection_2():
    class WithDepthwiseBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, groups=4)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)

    model = WithDepthwiseBias()
    opt = build_optimizer(model, dict(type="SGD", lr=0.1, weight_decay=1.0, paramwise_cfg=dict(
        bias_decay_mult=0.0, dwconv_decay_mult=0.5, bias_lr_mult=2.0)))
    got = {name: _settings(opt)[id(p)] for name, p in model.named_parameters()}
    assert got == {
        "dw.weight": (0.1, 0.5), "dw.bias": (0.2, 0.5),  # depthwise rule before the bias rule
        "bn.weight": (0.1, 1.0), "bn.bias": (0.1, 1.0),  # norm: norm_decay_mult (unset: 1)
        "fc.weight": (0.1, 1.0), "fc.bias": (0.2, 0.0)}


def test_decay_mult_needs_weight_decay():
    with pytest.raises(ConfigError, match="norm_decay_mult.*set optimizer.weight_decay"):
        build_optimizer(Toy(), dict(type="SGD", lr=0.1, paramwise_cfg=dict(norm_decay_mult=0.)))


def test_adam_without_weight_decay_and_custom_keys():
    model = Toy()
    opt = build_optimizer(model, dict(type="Adam", lr=1e-3, paramwise_cfg=dict(
        custom_keys={"head": dict(lr_mult=0.5)})))
    head_ids = {id(p) for p in model.head.parameters()}
    for group in opt.param_groups:
        expected = 5e-4 if id(group["params"][0]) in head_ids else 1e-3
        assert group["lr"] == pytest.approx(expected)


def test_shared_parameter():
    model = Toy()
    model.tied = nn.Conv2d(8, 8, 1)
    model.tied.weight = model.neck.weight  # one parameter in two modules
    with pytest.raises(ConfigError, match="bypass_duplicate"):
        build_optimizer(model, dict(type="SGD", lr=0.1, paramwise_cfg=dict(bias_lr_mult=2.0)))
    opt = build_optimizer(model, dict(type="SGD", lr=0.1, paramwise_cfg=dict(
        bias_lr_mult=2.0, bypass_duplicate=True)))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="paramwise_cfg has no key 'norm_decay'.*norm_decay_mult"):
        build_optimizer(Toy(), dict(type="SGD", lr=0.1, paramwise_cfg=dict(norm_decay=0.0)))
    with pytest.raises(KeyError, match="Did you mean 'SGD'"):
        build_optimizer(Toy(), dict(type="SDG", lr=0.1))
    with pytest.raises(TypeError, match=r"SGD does not accept 'momentom'.*optimizer\.momentom"):
        build_optimizer(Toy(), dict(type="SGD", lr=0.1, momentom=0.9))

"""Optimizers from configs; paramwise_cfg against mmcv 1.7 (MMDetection 2.28) and mmengine;
MMDetection's layer-wise lr decay and its tutorial's custom optimizer and constructor."""

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


# ---- mmcv 1.7 (what MMDetection 2.28 builds with) as the reference -------------------------
# mmcv here has no compiled ops, and its constructor recognises deformable convolutions by
# isinstance against mmcv.ops' classes: the reference gets stand-ins with mmcv.ops' names and
# parameters, and detlab recognises them by those names.


class DeformConv2d(nn.Module):
    """Stands in for mmcv.ops.DeformConv2d: a weight, no bias."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))


class DeformConv2dPack(DeformConv2d):
    def __init__(self, cin, cout):
        super().__init__(cin, cout)
        self.conv_offset = nn.Conv2d(cin, 18, 3, padding=1)


class ModulatedDeformConv2d(nn.Module):
    """Stands in for mmcv.ops.ModulatedDeformConv2d: a weight and a bias."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    def __init__(self, cin, cout):
        super().__init__(cin, cout)
        self.conv_offset = nn.Conv2d(cin, 27, 3, padding=1)


class DcnToy(Toy):
    """Toy with deformable convs, a conv named conv_offset outside one, a 1-channel conv (which
    mmcv counts as depthwise) and a parameter of the model itself."""

    def __init__(self):
        super().__init__()
        self.dcn = nn.Sequential(DeformConv2dPack(8, 8), nn.BatchNorm2d(8))
        self.mdcn = ModulatedDeformConv2dPack(8, 8)
        self.plain = nn.Module()
        self.plain.conv_offset = nn.Conv2d(8, 18, 3)
        self.gray = nn.Conv2d(1, 4, 3)
        self.temperature = nn.Parameter(torch.ones(1))


class SharedToy(Toy):
    """One conv registered under two parents: mmcv visits its parameters twice."""

    def __init__(self):
        super().__init__()
        shared = nn.Conv2d(8, 8, 1)
        self.branch1 = nn.Sequential(shared, nn.ReLU())
        self.branch2 = nn.Sequential(nn.ReLU(), shared)


@pytest.fixture
def mmcv_constructor(monkeypatch):
    """mmcv 1.7's DefaultOptimizerConstructor, seeing the stand-in deformable convs."""
    import sys
    import types

    default_constructor = pytest.importorskip("mmcv.runner.optimizer.default_constructor")
    ops = types.ModuleType("mmcv.ops")
    ops.DeformConv2d, ops.ModulatedDeformConv2d = DeformConv2d, ModulatedDeformConv2d
    monkeypatch.setitem(sys.modules, "mmcv.ops", ops)
    monkeypatch.setattr(default_constructor, "check_ops_exist", lambda: True)
    return default_constructor.DefaultOptimizerConstructor


SGD = dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4)
ADAM = dict(type="Adam", lr=1e-3)
MMCV_CASES = [
    (SGD, dict(norm_decay_mult=0.0)),
    (SGD, dict(bias_lr_mult=2.0, bias_decay_mult=0.0)),  # norm biases: norm_decay_mult (1)
    (SGD, dict(dcn_offset_lr_mult=0.1)),
    (SGD, dict(dcn_offset_lr_mult=0.1, bias_lr_mult=2.0, bias_decay_mult=0.5,
               dwconv_decay_mult=0.0, norm_decay_mult=0.0)),
    (SGD, dict(custom_keys={"mdcn": dict(lr_mult=0.5), "backbone.1": dict(decay_mult=0.0),
                            ".temperature": dict(lr_mult=3.0), "conv_offset": dict(lr_mult=0.2)},
               dcn_offset_lr_mult=0.1, bias_lr_mult=2.0)),
    (SGD, dict(custom_keys={"head": dict(lr_mult=10.0, decay_mult=2.0),
                            "head.1": dict(lr_mult=0.1)}, norm_decay_mult=0.0,
               bypass_duplicate=True)),
    (ADAM, dict(bias_lr_mult=2.0, dcn_offset_lr_mult=0.1)),
]


@pytest.mark.parametrize(("optimizer_cfg", "paramwise_cfg"), MMCV_CASES)
def test_paramwise_cfg_matches_mmcv(mmcv_constructor, optimizer_cfg, paramwise_cfg):
    torch.manual_seed(0)
    model = DcnToy()
    ours = build_optimizer(model, dict(optimizer_cfg, paramwise_cfg=paramwise_cfg))
    reference = mmcv_constructor(dict(optimizer_cfg), paramwise_cfg)(model)
    # every parameter, frozen ones included (both keep them, with the base settings)
    assert _settings(ours) == _settings(reference)
    assert len(_settings(ours)) == len(list(model.parameters()))


def test_dcn_offset_lr_mult_reaches_the_offsets_of_deformable_convs(mmcv_constructor):
    model = DcnToy()
    paramwise_cfg = dict(dcn_offset_lr_mult=0.1, bias_lr_mult=2.0, bias_decay_mult=0.0)
    ours = build_optimizer(model, dict(type="SGD", lr=1.0, weight_decay=1.0,
                                       paramwise_cfg=paramwise_cfg))
    reference = mmcv_constructor(dict(type="SGD", lr=1.0, weight_decay=1.0), paramwise_cfg)(model)
    expected = {
        "dcn.0.weight": (1.0, 1.0),
        "dcn.0.conv_offset.weight": (0.1, 1.0), "dcn.0.conv_offset.bias": (0.1, 1.0),
        "mdcn.weight": (1.0, 1.0), "mdcn.bias": (2.0, 0.0),  # the DCN's own bias is a bias
        "mdcn.conv_offset.weight": (0.1, 1.0), "mdcn.conv_offset.bias": (0.1, 1.0),
        "plain.conv_offset.weight": (1.0, 1.0), "plain.conv_offset.bias": (2.0, 0.0),
    }
    for settings in (_settings(ours), _settings(reference)):
        got = {name: settings[id(p)] for name, p in model.named_parameters() if name in expected}
        assert got == expected


def test_bypass_duplicate_matches_mmcv(mmcv_constructor):
    model = SharedToy()
    paramwise_cfg = dict(bias_lr_mult=2.0, bypass_duplicate=True)
    with pytest.warns(UserWarning, match="duplicate"):  # mmcv warns for each skipped parameter
        reference = mmcv_constructor(dict(SGD), paramwise_cfg)(model)
    ours = build_optimizer(model, dict(SGD, paramwise_cfg=paramwise_cfg))
    assert _settings(ours) == _settings(reference)
    assert sum(len(g["params"]) for g in ours.param_groups) == len(list(model.parameters()))
    # without bypass_duplicate mmcv hands torch a parameter twice; detlab says what to set
    with pytest.raises(ValueError, match="more than one parameter group"):
        mmcv_constructor(dict(SGD), dict(bias_lr_mult=2.0))(model)
    with pytest.raises(ConfigError, match=r"branch2\.1\.weight is shared.*bypass_duplicate=True"):
        build_optimizer(model, dict(SGD, paramwise_cfg=dict(bias_lr_mult=2.0)))


# ---- an optimizer and a constructor of one's own, as MMDetection's tutorial registers them ---


@pytest.fixture
def scratch_registries(monkeypatch):
    """OPTIMIZERS and OPTIMIZER_BUILDERS as they are, restored after the test."""
    from detlab.registry import OPTIMIZER_BUILDERS, OPTIMIZERS

    for registry in (OPTIMIZERS, OPTIMIZER_BUILDERS):
        registry.list()  # the built-ins first
        monkeypatch.setattr(registry, "_modules", dict(registry._modules))
    return OPTIMIZERS, OPTIMIZER_BUILDERS


def test_custom_optimizer_as_in_mmdetection_tutorial(scratch_registries):
    OPTIMIZERS, _ = scratch_registries
    from torch.optim import Optimizer

    @OPTIMIZERS.register_module()
    class MyOptimizer(Optimizer):
        def __init__(self, params, a, b, c):
            super().__init__(params, dict(a=a, b=b, c=c))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["a"] * group["b"] * group["c"])

    model = nn.Linear(3, 1)
    optimizer = build_optimizer(model, dict(type="MyOptimizer", a=0.5, b=2.0, c=0.1))
    assert isinstance(optimizer, MyOptimizer)
    assert optimizer.defaults == dict(a=0.5, b=2.0, c=0.1)
    before = model.weight.detach().clone()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.testing.assert_close(model.weight, before - 0.1 * torch.ones(1, 3))


def test_custom_constructor_as_in_mmdetection_tutorial(scratch_registries):
    OPTIMIZERS, OPTIMIZER_BUILDERS = scratch_registries
    from detlab.registry import build_from_cfg

    @OPTIMIZER_BUILDERS.register_module()
    class MyOptimizerConstructor:
        def __init__(self, optimizer_cfg, paramwise_cfg=None):
            self.optimizer_cfg, self.head_lr_mult = optimizer_cfg, paramwise_cfg["head_lr_mult"]

        def __call__(self, model):
            lr = self.optimizer_cfg["lr"]
            params = [dict(params=model.backbone.parameters()),
                      dict(params=model.head.parameters(), lr=lr * self.head_lr_mult)]
            return build_from_cfg(dict(self.optimizer_cfg, params=params), OPTIMIZERS)

    model = Toy()
    optimizer = build_optimizer(model, dict(type="SGD", lr=0.1, momentum=0.9,
                                            constructor="MyOptimizerConstructor",
                                            paramwise_cfg=dict(head_lr_mult=10.0)))
    assert isinstance(optimizer, torch.optim.SGD)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(1.0)]
    assert optimizer.param_groups[1]["params"] == list(model.head.parameters())
    with pytest.raises(KeyError, match="Did you mean 'MyOptimizerConstructor'"):
        build_optimizer(model, dict(type="SGD", lr=0.1, constructor="MyOptimizerConstrutor"))


# ---- LearningRateDecayOptimizerConstructor (MMDetection 2.28, ConvNeXt) --------------------


class Block(nn.Module):
    """A ConvNeXt block with MMClassification's parameter names."""

    def __init__(self, c):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pointwise_conv1 = nn.Linear(c, 2 * c)
        self.pointwise_conv2 = nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.ones(c))


class TinyConvNeXt(nn.Module):
    """Stands in for mmcls' ConvNeXt: downsample_layers.N, stages.N.M, norm3."""

    def __init__(self, depths=(1, 1, 7, 1)):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, 4, 4, 4), nn.LayerNorm(4))]
            + [nn.Sequential(nn.LayerNorm(4), nn.Conv2d(4, 4, 2, 2)) for _ in range(3)])
        self.stages = nn.ModuleList([nn.Sequential(*[Block(4) for _ in range(d)])
                                     for d in depths])
        self.norm3 = nn.LayerNorm(4)


class ConvNeXtDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyConvNeXt()
        self.neck = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)
        self.backbone.stages[0][0].gamma.requires_grad_(False)


# MMDetection 2.28's rules for num_layers=6, written out by module: layer_wise numbers the stem
# 0, stage 0 1, stage 1 and its downsampling 2, downsampling 2 3, stage 2 3 + block // 3,
# stage 3 and its downsampling num_layers; stage_wise numbers downsampling 0, stage s s + 1;
# everything else is num_layers + 1.
LAYER_WISE = {"backbone.downsample_layers.0": 0, "backbone.stages.0.0": 1,
              "backbone.downsample_layers.1": 2, "backbone.stages.1.0": 2,
              "backbone.downsample_layers.2": 3, "backbone.stages.2.0": 3,
              "backbone.stages.2.1": 3, "backbone.stages.2.2": 3, "backbone.stages.2.3": 4,
              "backbone.stages.2.4": 4, "backbone.stages.2.5": 4, "backbone.stages.2.6": 5,
              "backbone.downsample_layers.3": 6, "backbone.stages.3.0": 6,
              "backbone.norm3": 7, "neck": 7, "head": 7}
STAGE_WISE = {"backbone.downsample_layers": 0, "backbone.stages.0": 1, "backbone.stages.1": 2,
              "backbone.stages.2": 3, "backbone.stages.3": 4, "backbone.norm3": 7, "neck": 7,
              "head": 7}


def _layer_of(name, table):
    return next(layer for prefix, layer in table.items() if name.startswith(prefix + "."))


@pytest.mark.parametrize(("decay_type", "table"), [("layer_wise", LAYER_WISE),
                                                    ("stage_wise", STAGE_WISE)])
def test_learning_rate_decay_follows_mmdetection(decay_type, table):
    model = ConvNeXtDetector()
    optimizer = build_optimizer(model, dict(
        type="AdamW", lr=1e-3, weight_decay=0.05,
        constructor="LearningRateDecayOptimizerConstructor",
        paramwise_cfg=dict(decay_rate=0.8, decay_type=decay_type, num_layers=6)))
    got = {name: (group["lr"], group["weight_decay"]) for group in optimizer.param_groups
           for name in group["param_names"]}
    expected = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # MMDetection leaves frozen parameters out
        scale = 0.8 ** (6 + 2 - _layer_of(name, table) - 1)
        no_decay = p.ndim == 1 or name.endswith(".bias")
        expected[name] = (pytest.approx(1e-3 * scale), 0.0 if no_decay else 0.05)
    assert got == expected
    assert "backbone.stages.0.0.gamma" not in got
    by_name = {name: p for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        assert group["params"] == [by_name[n] for n in group["param_names"]]
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])


@pytest.mark.parametrize(("paramwise_cfg", "message"), [
    (dict(decay_rate=0.8, num_layers=6, decay_type="layerwise"),
     r"decay_type must be one of 'layer_wise', 'stage_wise'.*Did you mean 'layer_wise'"),
    (dict(decay_rate=0.8, decay_type="layer_wise"), r"needs optimizer\.paramwise_cfg\.num_layers"),
    (dict(decay_rate=0.8, num_layers=6, norm_decay_mult=0.0), r"has no key 'norm_decay_mult'"),
])
def test_learning_rate_decay_config_errors(paramwise_cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(ConvNeXtDetector(), dict(
            type="AdamW", lr=1e-3, constructor="LearningRateDecayOptimizerConstructor",
            paramwise_cfg=paramwise_cfg))


def test_learning_rate_decay_needs_a_convnext():
    with pytest.raises(ConfigError, match=r"model\.backbone is Sequential.*ConvNeXt"):
        build_optimizer(Toy(), dict(
            type="AdamW", lr=1e-3, constructor="LearningRateDecayOptimizerConstructor",
            paramwise_cfg=dict(decay_rate=0.8, num_layers=6)))

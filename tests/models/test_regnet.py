"""RegNet: MMDetection's RegNet state_dict, parameter count and outputs (named and dict archs,
caffe style, avg_down, GN, dcn, plugins), its options, open-mmlab weights and shipped configs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_resnet import _randomize_bn, offline_hub  # noqa: F401
from torch import nn

from detlab.checkpoint import openmmlab_weights_url
from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import RegNet
from detlab.models.backbones.regnet import ARCH_SETTINGS, regnet_stages
from detlab.models.init import is_pretrained

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["regnet/retinanet_regnetx-3.2GF_fpn_1x_coco.py",
           "regnet/mask_rcnn_regnetx-3.2GF_fpn_1x_coco.py"]
# a small design: widths 16 / 32 / 64, three stages
SMALL = dict(w0=16, wa=12.0, wm=2.0, group_w=8, depth=6, bot_mul=1.0)
THREE = dict(strides=(2, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mmdet_regnet(**args) -> nn.Module:
    import_mmdet()
    from mmdet.models.backbones import RegNet as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(**args)


def _randomize(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere (deformable offsets small)
        for name, param in model.named_parameters():
            scale = 0.01 if "conv_offset" in name else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    _randomize_bn(model)


def test_small_design_stages():
    assert regnet_stages(SMALL) == ([16, 32, 64], [1, 2, 3], [8, 8, 8])


@pytest.mark.parametrize("args", [
    dict(arch="regnetx_400mf", frozen_stages=1),
    dict(arch=SMALL, style="caffe", avg_down=True, **dict(THREE, out_indices=(1, 2))),
    dict(arch=dict(SMALL, bot_mul=0.5, group_w=4), stem_channels=8,
         norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
         **dict(THREE, out_indices=(0, 2))),
    dict(arch=SMALL, dcn=dict(type="DCNv2", deform_groups=1, fallback_on_stride=False),
         stage_with_dcn=(False, True, True),
         plugins=[dict(cfg=dict(type="ContextBlock", ratio=1. / 4),
                       stages=(False, True, True), position="after_conv3")], **THREE),
], ids=["400mf", "dict-caffe-avgdown", "gn-botmul", "dcnv2-plugins"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    reference = _mmdet_regnet(**args)
    ours = RegNet(**args)
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    _randomize(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    assert ours.out_channels == [a.shape[1] for a in expected]


def test_named_archs_match_mmdetection():
    reference = _mmdet_regnet(arch="regnetx_400mf")
    assert ARCH_SETTINGS == reference.arch_settings
    for name in ARCH_SETTINGS:
        with torch.device("meta"):
            ours = RegNet(arch=name)
        widths, blocks, groups = regnet_stages(ARCH_SETTINGS[name])
        assert ours.stage_widths == widths and ours.stage_blocks == blocks
        assert [len(stage) for stage in ours.stages()] == blocks
        assert ours.layer1[0].conv2.groups == widths[0] // groups[0]
    assert RegNet(arch="regnetx_3.2gf").out_channels == [96, 192, 432, 1008]


def test_options():
    model = RegNet(arch=SMALL, frozen_stages=2, norm_eval=True, **THREE,
                   init_cfg=dict(type="Pretrained", checkpoint="open-mmlab://regnetx_400mf"))
    assert is_pretrained(model.init_cfg)  # loads only in init_weights(), nothing at build
    for module in (model.conv1, model.bn1, model.layer1, model.layer2):
        assert all(not p.requires_grad for p in module.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    model.train()
    assert not model.layer2.training and model.layer3[0].conv2.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.all(model.layer1[0].bn3.weight == 0)  # zero_init_residual
    assert model.norm1 is model.bn1

    checkpointed = RegNet(arch=SMALL, with_cp=True, norm_eval=False, **THREE).train()
    checkpointed(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    assert checkpointed.layer1[0].conv1.weight.grad is not None

    built = build_model(dict(type="RegNet", arch=SMALL, **THREE))
    assert isinstance(built, RegNet) and built.feat_dim == 64


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="regnetx_400mf"):
        RegNet(arch="regnetx_1gf")
    with pytest.raises(ConfigError, match="group_w"):
        RegNet(arch=dict(w0=16, wa=12.0, wm=2.0, depth=6))
    with pytest.raises(ConfigError, match="one entry per stage"):
        RegNet(arch=SMALL)  # three stages, four strides
    with pytest.raises(ConfigError, match="w0"):
        RegNet(arch=dict(SMALL, w0=12), **THREE)
    with pytest.raises(ConfigError, match="init_cfg or pretrained"):
        RegNet(arch=SMALL, pretrained="x.pth", init_cfg=dict(type="Pretrained", checkpoint="y"),
               **THREE)


def test_open_mmlab_weights_load_in_init_weights(offline_hub):  # noqa: F811
    """``open-mmlab://regnetx_400mf`` (here random weights put in the hub cache under its
    name) loads by name in ``init_weights``, offline."""
    torch.manual_seed(0)
    source = RegNet(arch="regnetx_400mf")
    _randomize_bn(source)
    url = openmmlab_weights_url("open-mmlab://regnetx_400mf")
    offline_hub.mkdir(parents=True)
    torch.save(source.state_dict(), offline_hub / os.path.basename(url))
    model = RegNet(arch="regnetx_400mf",
                   init_cfg=dict(type="Pretrained", checkpoint="open-mmlab://regnetx_400mf"))
    model.init_weights()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[name], msg=name)


@pytest.mark.parametrize("config", CONFIGS)
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()

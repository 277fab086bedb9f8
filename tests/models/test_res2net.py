"""Res2Net against MMDetection 2.28: same state_dict names / shapes, trainable parameters and
stage outputs with MMDetection's weights loaded strictly; its options; the shipped config.
(The zoo's Res2Net rows are checked by ``test_zoo.py``.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_resnet import _randomize_bn
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import Res2Net

REPO = Path(__file__).resolve().parents[2]
CONFIG = "res2net/faster_rcnn_r2_101_fpn_2x_coco.py"
THREE_STAGES = dict(depth=50, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                    out_indices=(0, 1, 2))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mmdet_res2net(**args) -> nn.Module:
    import_mmdet()
    from mmdet.models.backbones import Res2Net as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(**args)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("args", [
    dict(scales=4, base_width=26, frozen_stages=1, **THREE_STAGES),
    dict(scales=3, base_width=14, base_channels=32, stem_channels=32,
         **dict(THREE_STAGES, out_indices=(1, 2), dilations=(1, 1, 2))),
    dict(scales=4, base_width=26, dcn=dict(type="DCNv2", deform_groups=1,
                                           fallback_on_stride=False),
         stage_with_dcn=(False, True, True), **THREE_STAGES),
], ids=["26w4s", "narrow-dilated", "dcnv2"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    reference = _mmdet_res2net(**{k: (dict(v) if isinstance(v, dict) else v)
                                  for k, v in args.items()})
    ours = Res2Net(**args)
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            scale = 0.01 if "conv_offset" in name else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    _randomize_bn(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_options_and_errors():
    model = build_model(dict(type="Res2Net", frozen_stages=1, **THREE_STAGES))
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(not p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    model.train()
    assert not model.layer1.training and model.layer2.training
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.all(model.layer1[0].bn3.weight == 0)  # zero_init_residual
    assert model.out_channels == [256, 512, 1024]
    gn = Res2Net(norm_cfg=dict(type="GN", num_groups=2), **THREE_STAGES)
    assert "layer1.0.gn1.weight" in gn.state_dict() and "layer1.0.bns.0.weight" in gn.state_dict()
    with pytest.raises(ConfigError, match="Res2Net depth"):
        Res2Net(depth=18)
    with pytest.raises(ConfigError, match="scales"):
        Res2Net(depth=50, scales=1)
    with pytest.raises(ConfigError, match="plugins"):
        Res2Net(depth=50, plugins=[dict(cfg=dict(type="ContextBlock"), position="after_conv3")])

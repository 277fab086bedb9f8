"""ResNeSt against MMDetection 2.28: same state_dict names / shapes, trainable parameters and
stage outputs with MMDetection's weights loaded strictly (radix 2 and 1, grouped, without
avg_down_stride); its options; the shipped config. (The zoo's ResNeSt rows are checked by
``test_zoo.py``.)"""

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
from detlab.models.backbones import ResNeSt

REPO = Path(__file__).resolve().parents[2]
CONFIG = "resnest/faster_rcnn_s50_fpn_syncbn-backbone+head_mstrain-range_1x_coco.py"
THREE_STAGES = dict(depth=50, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                    out_indices=(0, 1, 2), stem_channels=32, base_channels=32)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CONFIG)
    theirs = Config.fromfile(mmdet_config_dir() / CONFIG)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("args", [
    dict(radix=2, reduction_factor=4, frozen_stages=1, **THREE_STAGES),
    dict(radix=1, avg_down_stride=False, **dict(THREE_STAGES, out_indices=(1, 2),
                                                 dilations=(1, 1, 2))),
    dict(radix=2, groups=2, base_width=16, reduction_factor=2, **THREE_STAGES),
], ids=["radix2", "radix1-no-avd-dilated", "grouped"])
def test_same_state_dict_and_outputs_as_mmdetection(args):
    import_mmdet()
    from mmdet.models.backbones import ResNeSt as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    ours = ResNeSt(**args)
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    _randomize_bn(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_options_and_errors():
    model = build_model(dict(type="ResNeSt", frozen_stages=1, norm_eval=False, **THREE_STAGES))
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(not p.requires_grad for p in model.layer1.parameters())
    assert all(p.requires_grad for p in model.layer2.parameters())
    model.train()
    assert not model.layer1.training and model.layer2[0].conv2.bn0.training
    assert torch.all(model.layer2[0].bn3.weight == 0)  # zero_init_residual
    assert model.out_channels == [128, 256, 512]
    assert isinstance(model.layer2[0].avd_layer, nn.AvgPool2d)
    assert not hasattr(model.layer1[0], "avd_layer")  # stride 1: no pooling
    gn = ResNeSt(norm_cfg=dict(type="GN", num_groups=2), **THREE_STAGES)
    keys = gn.state_dict()
    assert "layer1.0.gn1.weight" in keys and "layer1.0.conv2.gn0.weight" in keys
    gn.load_state_dict(keys, strict=True)
    with pytest.raises(ConfigError, match="ResNeSt depth"):
        ResNeSt(depth=34)
    with pytest.raises(ConfigError, match="dcn"):
        ResNeSt(depth=50, dcn=dict(type="DCN"))
    with pytest.raises(ConfigError, match="radix"):
        ResNeSt(depth=50, radix=0)

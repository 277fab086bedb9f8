"""HRNet and HRFPN against MMDetection 2.28: same state_dict names / shapes, trainable
parameters and outputs with MMDetection's weights loaded strictly; an HRNet FCOS end to end; the
shipped configs. (The zoo's HRNet rows are checked by ``test_zoo.py``.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import build_pair, compare_detections, compare_losses, compare_outputs
from test_resnet import _randomize_bn
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import HRNet
from detlab.models.necks import HRFPN
from detlab.viz.assigners import small_model_overrides

pytestmark = pytest.mark.usefixtures("one_math_thread")
REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["hrnet/faster_rcnn_hrnetv2p_w32_1x_coco.py",
           "hrnet/fcos_hrnetv2p_w32_gn-head_4x4_1x_coco.py"]


def _extra(stage1_block: str = "BOTTLENECK", modules: int = 1) -> dict:
    """A narrow HRNet: every stage's shape kept, one or two blocks per branch; stage 4's
    Bottlenecks (expansion 4) keep stage 3's widths, as MMDetection needs."""
    return dict(
        stage1=dict(num_modules=1, num_branches=1, block=stage1_block, num_blocks=(2,),
                    num_channels=(8,)),
        stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 2),
                    num_channels=(16, 32)),
        stage3=dict(num_modules=modules, num_branches=3, block="BASIC",
                    num_blocks=(1, 1, 1), num_channels=(16, 32, 64)),
        stage4=dict(num_modules=modules, num_branches=4, block="BOTTLENECK",
                    num_blocks=(1, 1, 1, 1), num_channels=(4, 8, 16, 32)))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mmdet(name: str, **args) -> nn.Module:
    import_mmdet()
    from mmdet.models import backbones, necks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(backbones, name, None) and getattr(backbones, name)(**args) \
            or getattr(necks, name)(**args)


def _randomize(model: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    _randomize_bn(model)


@pytest.mark.parametrize("config", CONFIGS)
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("args", [
    dict(extra=_extra()),
    dict(extra=_extra("BASIC", modules=2), multiscale_output=False),
    dict(extra=_extra(), norm_cfg=dict(type="GN", num_groups=2), in_channels=1),
], ids=["bottleneck-stem", "basic-single-scale", "gn"])
def test_backbone_same_state_dict_and_outputs_as_mmdetection(args):
    reference = _mmdet("HRNet", **args)
    ours = HRNet(**args)
    assert _shapes(ours) == _shapes(reference)
    assert _trainable(ours) == _trainable(reference)
    _randomize(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval(), reference.eval()
    x = torch.randn(2, args.get("in_channels", 3), 64, 96,
                    generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert len(got) == len(expected) == len(ours.out_channels)
    for a, b, c in zip(expected, got, ours.out_channels, strict=True):
        assert b.shape[1] == c
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args", [
    dict(in_channels=[4, 8, 16, 32], out_channels=16),
    dict(in_channels=[4, 8, 16], out_channels=8, num_outs=4, pooling_type="MAX", stride=2),
], ids=["avg", "max-stride2"])
def test_hrfpn_same_state_dict_and_outputs_as_mmdetection(args):
    reference = _mmdet("HRFPN", **args)
    ours = HRFPN(**args)
    assert _shapes(ours) == _shapes(reference)
    _randomize(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, c, 32 // 2**i, 48 // 2**i, generator=gen)
              for i, c in enumerate(args["in_channels"])]
    with torch.no_grad():
        expected, got = reference(inputs), ours(inputs)
    assert len(got) == len(expected) == ours.num_outs
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_options_and_errors():
    model = HRNet(extra=_extra(), with_cp=True, zero_init_residual=True)
    assert torch.all(model.layer1[0].bn3.weight == 0)
    assert torch.all(model.stage2[0].branches[0][0].bn2.weight == 0)
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    sum(o.sum() for o in model(x)).backward()  # through the checkpointed blocks
    assert all(p.grad is not None for p in model.parameters())
    assert model.out_channels == [16, 32, 64, 128]
    bad = _extra()
    del bad["stage3"]
    with pytest.raises(ConfigError, match="extra.stage3"):
        HRNet(extra=bad)
    bad = _extra()
    bad["stage2"] = dict(bad["stage2"], num_blocks=(1,))
    with pytest.raises(ConfigError, match="num_branches"):
        HRNet(extra=bad)
    with pytest.raises(ConfigError, match="block"):
        HRNet(extra=dict(_extra(), stage4=dict(_extra()["stage4"], block="BASICS")))
    with pytest.raises(ConfigError, match="pooling_type"):
        HRFPN([4, 8], 8, pooling_type="SUM")
    with pytest.raises(ValueError, match="2 input maps"):
        HRFPN([4, 8], 8)([torch.zeros(1, 4, 8, 8)])


FCOS_HRNET = CONFIGS[1]


@pytest.fixture(scope="module")
def fcos_pair():
    """The HRNet FCOS shrunk as the shipped-config tests shrink it (narrow HRNet, 32 channels),
    MMDetection's weights in detlab's."""
    options = small_model_overrides(Config.fromfile(REPO / "configs" / FCOS_HRNET), channels=32,
                                    num_classes=6)
    options["model.bbox_head.stacked_convs"] = 2
    return build_pair(FCOS_HRNET, "conv_cls", options=options)


def test_fcos_hrnet_matches_mmdetection(fcos_pair):
    compare_outputs(*fcos_pair)
    losses = compare_losses(*fcos_pair)
    assert all(v > 0 for v in losses.values())
    empty = compare_losses(*fcos_pair, empty=True)
    assert empty["loss_cls"] > 0 and empty["loss_bbox"] == 0
    compare_detections(*fcos_pair)


def test_registered_for_configs():
    model = build_model(dict(type="HRFPN", in_channels=[4, 8], out_channels=8, num_outs=2))
    assert isinstance(model, HRFPN)

"""NAS-FCOS against MMDetection 2.28: the searched pyramid (NASFCOS_FPN) alone on odd-sized
maps, and, with MMDetection's weights loaded strictly into a small NAS-FCOS built from the
NASFCOSHead zoo config, the same head outputs, losses (also with empty ground truth) and
detections; the head's towers and init.

The batch and the comparisons are FCOS's (``test_fcos.py``). (The two zoo NAS-FCOS configs'
parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import (
    SMALL,
    build_pair,
    compare_detections,
    compare_losses,
    compare_outputs,
)
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models.heads.nasfcos_head import NASFCOSHead
from detlab.models.necks.nasfcos_fpn import NASFCOS_FPN

REPO = Path(__file__).resolve().parents[2]
NAS_FCOS = "nas_fcos/nas_fcos_nashead_r50_caffe_fpn_gn-head_4x4_1x_coco.py"
DCN_NECK = dict(in_channels=[8, 16, 32, 64], out_channels=16, num_outs=5,
                norm_cfg=dict(type="BN"), conv_cfg=dict(type="DCNv2", deform_groups=2))


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / NAS_FCOS)
    theirs = Config.fromfile(mmdet_config_dir() / NAS_FCOS)
    assert mine.to_dict() == theirs.to_dict()


def _shake_offsets(model: nn.Module, seed: int = 0) -> None:
    """Non-zero offsets (and masks) in every deformable conv, so that they sample off-grid."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            offset = getattr(module, "conv_offset", None)
            if isinstance(offset, nn.Conv2d):
                offset.weight.copy_(torch.randn(offset.weight.shape, generator=gen) * 0.05)
                offset.bias.copy_(torch.randn(offset.bias.shape, generator=gen) * 0.5)


def test_neck_matches_mmdetection():
    """Odd sizes: the cells pad before max-pooling, the outputs resize bilinearly."""
    import_mmdet()
    from mmdet.models.necks import NASFCOS_FPN as Reference

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**DCN_NECK)
    _shake_offsets(reference)
    ours = NASFCOS_FPN(**DCN_NECK)
    ours.load_state_dict(reference.state_dict(), strict=True)
    h, w = 70, 45
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(2, c, -(-h // s), -(-w // s), generator=gen)
              for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32], strict=True)]
    for mode in ("train", "eval"):
        getattr(reference, mode)(), getattr(ours, mode)()
        with torch.no_grad():
            expected, actual = reference(inputs), ours(inputs)
        assert len(actual) == len(expected) == 5
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_neck_errors_name_the_key():
    with pytest.raises(ConfigError, match="init_cfg"):
        NASFCOS_FPN(**DCN_NECK, init_cfg=dict(type="Caffe2Xavier", layer="Conv2d"))
    with pytest.raises(ConfigError, match="three backbone levels"):
        NASFCOS_FPN([8, 16, 32], 16, num_outs=5, start_level=1)


def test_head_towers_and_init():
    head = NASFCOSHead(3, 8, feat_channels=8, strides=(8, 16),
                       regress_ranges=((-1, 64), (64, 1e8)),
                       norm_cfg=dict(type="GN", num_groups=4))
    kinds = [type(layer.conv).__name__ for layer in head.cls_convs]
    assert kinds == ["ModulatedDeformConv2dPack", "Conv2d", "ModulatedDeformConv2dPack",
                     "Conv2d"]
    assert [layer.conv.kernel_size for layer in head.reg_convs] == [(3, 3), (3, 3), (3, 3),
                                                                    (1, 1)]
    assert [layer.conv.bias is not None for layer in head.cls_convs] == [True, False, True,
                                                                         False]
    assert head.cls_convs[0].conv.deform_groups == 2
    head.init_weights()
    assert all(torch.all(layer.conv.conv_offset.weight == 0) for layer in head.cls_convs[::2])
    assert head.conv_reg.weight.std() < 0.02 and head.cls_convs[1].conv.weight.std() > 0.05


@pytest.fixture(scope="module")
def nas_fcos_pair():
    """The small NAS-FCOS with plain convs in the neck's cells (its deformable ones are
    compared above; MMDetection's stand-in for mmcv's deformable conv is slow)."""
    reference, ours = build_pair(NAS_FCOS, "conv_cls", options={**SMALL,
                                                               "model.neck.conv_cfg": None})
    _shake_offsets(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.slow
def test_head_outputs_match_mmdetection(nas_fcos_pair):
    compare_outputs(*nas_fcos_pair)


@pytest.mark.slow
def test_losses_match_mmdetection(nas_fcos_pair):
    losses = compare_losses(*nas_fcos_pair)
    assert all(v > 0 for v in losses.values())


@pytest.mark.slow
def test_empty_ground_truth_losses_match_mmdetection(nas_fcos_pair):
    losses = compare_losses(*nas_fcos_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0


@pytest.mark.slow
def test_detections_match_mmdetection(nas_fcos_pair):
    compare_detections(*nas_fcos_pair)

"""NAS-FPN's RetinaNets against MMDetection 2.28: RetinaSepBNHead (tower convs shared across
levels, a norm layer per level), the NASFPN neck and its merging cells, and the two zoo
configs of ``nas_fpn/``. With MMDetection's weights loaded strictly into small models built
from those configs: the same head outputs, losses (also with empty ground truth) and detections.

The batch and the comparisons are FCOS's (``test_fcos.py``), the RetinaNet classifier's
calibration is ``test_zoo.py``'s. (The zoo rows' parameter counts and state_dict keys are
checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import HEIGHT, WIDTH, _loss_inputs, compare_detections, mmdet_losses
from test_zoo import _randomize
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import RetinaSepBNHead
from detlab.models.necks import NASFPN
from detlab.models.necks.merge_cells import (
    ConcatCell,
    GlobalPoolingCell,
    SumCell,
    resize_like_mmcv,
)
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
NASFPN_CONFIG = "nas_fpn/retinanet_r50_nasfpn_crop640_50e_coco.py"
FPN_CONFIG = "nas_fpn/retinanet_r50_fpn_crop640_50e_coco.py"
# a small model: the same overrides on MMDetection's config and on detlab's
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.bbox_head.num_classes": 6, "model.bbox_head.in_channels": 32,
         "model.bbox_head.feat_channels": 32, "model.bbox_head.stacked_convs": 2}
SMALL_NASFPN = {**SMALL, "model.neck.stack_times": 2}


@pytest.mark.parametrize("config", [NASFPN_CONFIG, FPN_CONFIG])
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


# ---- the head's layers -----------------------------------------------------------------------

def _head(**kwargs) -> RetinaSepBNHead:
    args = dict(num_classes=3, num_ins=3, in_channels=8, feat_channels=8, stacked_convs=2,
                norm_cfg=dict(type="BN", requires_grad=True),
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                      scales_per_octave=1, ratios=[1.0], strides=[8, 16, 32]))
    return RetinaSepBNHead(**{**args, **kwargs})


def test_convs_are_shared_and_norms_are_per_level():
    head = _head()
    for towers in (head.cls_convs, head.reg_convs):
        assert len(towers) == 3 and all(len(t) == 2 for t in towers)
        for i in range(2):
            assert all(towers[level][i].conv is towers[0][i].conv for level in range(3))
            assert len({id(towers[level][i].bn) for level in range(3)}) == 3
            assert towers[0][i].conv.bias is None  # a norm follows: no bias ('auto')
    keys = set(head.state_dict())
    assert {"cls_convs.2.1.conv.weight", "reg_convs.1.0.bn.running_var"} <= keys
    unique = sum(p.numel() for p in head.parameters())
    conv = 8 * 8 * 9
    norms = 2 * 2 * 3 * 2 * 8  # towers x convs x levels x (weight, bias) x channels
    predictors = (8 * 3 * 9 + 3) + (8 * 4 * 9 + 4)
    assert unique == 2 * 2 * conv + norms + predictors


def test_init_is_mmdetections_fixed_init():
    head = _head()
    weight = head.cls_convs[1][0].conv.weight
    assert abs(float(weight.detach().std()) - 0.01) < 0.003
    torch.testing.assert_close(head.retina_cls.bias,
                               torch.full_like(head.retina_cls.bias, -4.59512), atol=1e-4,
                               rtol=0)
    assert torch.all(head.cls_convs[2][1].bn.weight == 1)
    with pytest.raises(ConfigError, match="init_cfg"):
        _head(init_cfg=dict(type="Normal", layer="Conv2d", std=0.01))


def test_more_levels_than_num_ins_are_refused():
    head = _head(num_ins=2, anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                                  scales_per_octave=1, ratios=[1.0],
                                                  strides=[8, 16, 32]))
    with pytest.raises(ValueError, match="num_ins"):
        head([torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 2, 2)])


def test_head_is_mmdetections_with_gn():
    """Separate GroupNorms, mmdet's own head on the same features (besides the BN of the
    configs)."""
    import_mmdet()
    from mmdet.models.dense_heads import RetinaSepBNHead as Reference

    args = dict(num_classes=3, num_ins=3, in_channels=8, feat_channels=8, stacked_convs=2,
                norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                      scales_per_octave=1, ratios=[1.0], strides=[8, 16, 32]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    ours = RetinaSepBNHead(**args)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours) == count(reference)
    feats = [torch.randn(2, 8, s, s, generator=gen) for s in (16, 8, 4)]
    with torch.no_grad():
        for a, e in zip(ours(feats), reference(feats), strict=True):
            for x, y in zip(a, e, strict=True):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


# ---- the merging cells and the neck ----------------------------------------------------------

@pytest.mark.parametrize("size", [(5, 7), (2, 3), (1, 1), (8, 4), (10, 14)])
def test_resize_is_mmcvs(size):
    import_mmdet()
    from mmcv.ops.merge_cells import SumCell as Reference

    x = torch.randn(1, 2, 5, 7)
    cell = Reference(2, 2, with_out_conv=False)
    torch.testing.assert_close(resize_like_mmcv(x, size, "nearest"), cell._resize(x, size))


def test_cells_merge_as_mmcv():
    import_mmdet()
    from mmcv.ops.merge_cells import ConcatCell as RefConcat
    from mmcv.ops.merge_cells import GlobalPoolingCell as RefGP
    from mmcv.ops.merge_cells import SumCell as RefSum

    gen = torch.Generator().manual_seed(0)
    norm = dict(type="BN", requires_grad=True)
    for ours, reference in ((SumCell(4, 4, out_norm_cfg=norm), RefSum(4, 4, out_norm_cfg=norm)),
                            (GlobalPoolingCell(4, 4, out_norm_cfg=norm),
                             RefGP(4, 4, out_norm_cfg=norm)),
                            (GlobalPoolingCell(with_out_conv=False),
                             RefGP(with_out_conv=False)),
                            (ConcatCell(4, 4, with_input1_conv=True, with_input2_conv=True,
                                        upsample_mode="bilinear"),
                             RefConcat(4, 4, with_input1_conv=True, with_input2_conv=True,
                                       upsample_mode="bilinear"))):
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in reference.state_dict().items()}
        ours.load_state_dict(reference.state_dict(), strict=True)
        ours.eval(), reference.eval()
        x1, x2 = torch.randn(2, 4, 3, 5, generator=gen), torch.randn(2, 4, 6, 10, generator=gen)
        for size in (None, (6, 10), (3, 5), (2, 4)):
            torch.testing.assert_close(ours(x1, x2, out_size=size),
                                       reference(x1, x2, out_size=size))


def test_neck_is_mmdetections_at_odd_sizes():
    import_mmdet()
    from mmdet.models.necks import NASFPN as Reference

    args = dict(in_channels=[4, 8, 16, 32], out_channels=8, num_outs=5, stack_times=2,
                start_level=1, norm_cfg=dict(type="BN", requires_grad=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    ours = NASFPN(**args, add_extra_convs="on_input")
    assert list(ours.state_dict()) == list(reference.state_dict())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    ours.load_state_dict(reference.state_dict(), strict=True)
    for mode in (True, False):  # batch statistics, then running ones
        ours.train(mode), reference.train(mode)
        inputs = [torch.randn(2, c, 44 // s, 60 // s, generator=gen)
                  for c, s in zip((4, 8, 16, 32), (1, 2, 4, 8), strict=True)]
        got, expected = ours(inputs), reference(inputs)
        assert [tuple(p.shape[-2:]) for p in got] == [(22, 30), (11, 15), (5, 7), (2, 3), (1, 1)]
        for a, e in zip(got, expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_neck_init_and_errors():
    neck = NASFPN([8, 16], 8, num_outs=5, stack_times=1)
    conv = neck.fpn_stages[0]["sum_44_4"].out_conv.conv
    bound = (3 / (8 * 9)) ** 0.5  # He-uniform, fan-in, a=1 (Caffe2Xavier)
    largest = float(conv.weight.detach().abs().max())
    assert bound / 2 < largest <= bound
    assert torch.all(conv.bias == 0)
    with pytest.raises(ConfigError, match="num_outs"):
        NASFPN([8, 16], 8, num_outs=4, stack_times=1)
    with pytest.raises(ConfigError, match="end_level"):
        NASFPN([8, 16, 32], 8, num_outs=5, stack_times=1, end_level=1)


# ---- MMDetection's small RetinaNets, their weights in detlab's -------------------------------

def _pair(config: str, options: dict):
    """(MMDetection's model of ``config``, detlab's with its weights loaded strictly), both
    with ``options`` applied, BatchNorms varied and the classifier calibrated, in eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(config)
    mm_cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    calibration = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    _randomize(reference, calibration)
    with torch.no_grad():  # logits ~ N(-3.9, 1): enough detections above score_thr to compare
        reference.bbox_head.retina_cls.bias.add_(2.0)
    cfg = Config.fromfile(REPO / "configs" / config)
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module")
def sepbn_pair():
    """The NAS-FPN RetinaNet (FPN + RetinaSepBNHead, the other config, differs only in the
    neck: FPN's own tests and the per-level norms of ``test_head_is_mmdetections_with_gn``
    cover it)."""
    return _pair(NASFPN_CONFIG, SMALL_NASFPN)


@pytest.mark.slow
def test_head_outputs_match_mmdetection(sepbn_pair):
    reference, ours = sepbn_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "empty"])
def test_losses_match_mmdetection(sepbn_pair, empty):
    """Training mode (BatchNorms on batch statistics, in the backbone, neck and head)."""
    reference, ours = sepbn_pair
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert (float(actual["loss_bbox"].detach()) == 0) == empty


@pytest.mark.slow
def test_detections_match_mmdetection(sepbn_pair):
    compare_detections(*sepbn_pair)


def test_every_parameter_gets_a_gradient_through_the_shared_convs():
    head = _head()
    feats = [torch.randn(1, 8, s, s) for s in (8, 4, 2)]
    cls_scores, bbox_preds = head(feats)
    (sum(c.sum() for c in cls_scores) + sum(b.sum() for b in bbox_preds)).backward()
    assert all(p.grad is not None for p in head.parameters())
    one_level = head.cls_convs[0][0].conv.weight.grad.clone()
    head.zero_grad()
    F.relu(head.forward_single(feats[0], 0)[0]).sum().backward()
    assert not torch.equal(one_level, head.cls_convs[0][0].conv.weight.grad)
    assert isinstance(head.cls_convs[1][0].bn, nn.BatchNorm2d)

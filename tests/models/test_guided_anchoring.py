"""Guided Anchoring RetinaNet against MMDetection 2.28: with MMDetection's weights loaded
strictly into a small GA-RetinaNet built from the same zoo config, the same head outputs (train
and eval mode), losses -- location, shape, classification, box -- with and without ground
truth, and detections; the location targets' regions; configuration errors.

MMDetection's test-time ``MaskedConv2d`` computes only the kept locations through mmcv's
compiled ``masked_im2col`` op, which the reference's mmcv stand-in lacks; these tests give it
the conv of every location zeroed elsewhere (the same values), and compare detections image by
image, as the op takes one image at a time. The batch is FCOS's (``test_fcos.py``). (The zoo's
GA-RetinaNet configs' parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import (
    HEIGHT,
    NUM_CLASSES,
    SMALL,
    WIDTH,
    _loss_inputs,
    metas_and_targets,
    mmdet_losses,
    randomize,
)

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import GARetinaHead
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
GA = "guided_anchoring/ga_retinanet_r50_caffe_fpn_1x_coco.py"
KEYS = {"loss_cls", "loss_bbox", "loss_shape", "loss_loc"}
TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5,
                               min_pos_iou=0.0, ignore_iof_thr=-1),
                 ga_assigner=dict(type="ApproxMaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                                  min_pos_iou=0.4, ignore_iof_thr=-1),
                 allowed_border=-1, pos_weight=-1, center_ratio=0.2, ignore_ratio=0.5)


def test_detlab_config_is_mmdetections():
    for config in (GA, "retinanet/retinanet_r50_caffe_fpn_1x_coco.py"):
        mine = Config.fromfile(REPO / "configs" / config)
        theirs = Config.fromfile(mmdet_config_dir() / config)
        assert mine.to_dict() == theirs.to_dict()


def test_config_is_mmdetections_model():
    with torch.device("meta"):
        model = build_model(Config.fromfile(REPO / "configs" / GA).model)
    assert type(model.bbox_head) is GARetinaHead
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 37_324_919


def _small_head(**kwargs) -> GARetinaHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1,
                approx_anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                             scales_per_octave=1, ratios=[0.5, 1.0, 2.0],
                                             strides=[8, 16, 32]),
                square_anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], scales=[4],
                                             strides=[8, 16, 32]),
                deform_groups=1, loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                train_cfg=TRAIN_CFG)
    return GARetinaHead(**{**args, **kwargs})


def test_location_targets_are_mmdetections():
    import_mmdet()
    from mmcv import Config as MMConfig
    from mmdet.models.dense_heads import GARetinaHead as Reference

    head = _small_head()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(3, 8, feat_channels=8, stacked_convs=1, deform_groups=1,
                              approx_anchor_generator=dict(type="AnchorGenerator",
                                                           octave_base_scale=4,
                                                           scales_per_octave=1,
                                                           ratios=[0.5, 1.0, 2.0],
                                                           strides=[8, 16, 32]),
                              square_anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                                           scales=[4], strides=[8, 16, 32]),
                              loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                              train_cfg=MMConfig(TRAIN_CFG))
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + torch.rand(12, 2, generator=gen) ** 2 * 250 + 4], 1)
    boxes_per_image = [boxes[:8], boxes[8:], boxes[:0]]
    sizes = [(32, 40), (16, 20), (8, 10)]
    expected = reference.ga_loc_targets(boxes_per_image, sizes)
    gts = [GroundTruth(b, torch.zeros(len(b), dtype=torch.long), None) for b in boxes_per_image]
    actual = head.location_targets(gts, sizes, torch.device("cpu"))
    for ours, theirs in zip(actual[:2], expected[:2], strict=True):
        for a, e in zip(ours, theirs, strict=True):
            assert torch.equal(a, e)
    assert actual[2] == expected[2]
    assert any((t == 1).any() for t in actual[0]) and any((w == 0).any() for w in actual[1])


def test_configuration_errors():
    with pytest.raises(ConfigError, match="ga_assigner"):
        _small_head(train_cfg={k: v for k, v in TRAIN_CFG.items() if k != "ga_assigner"})
    with pytest.raises(ConfigError, match="center_ratio"):
        _small_head(train_cfg={k: v for k, v in TRAIN_CFG.items() if k != "center_ratio"})
    with pytest.raises(ConfigError, match="ApproxMaxIoUAssigner"):
        _small_head(train_cfg=dict(TRAIN_CFG, ga_assigner=TRAIN_CFG["assigner"]))
    with pytest.raises(ConfigError, match="octave_base_scale"):
        _small_head(square_anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                                 scales=[8], strides=[8, 16, 32]))
    with pytest.raises(ConfigError, match="ga_sampel"):
        _small_head(train_cfg=dict(TRAIN_CFG, ga_sampel=None))


def test_eval_mode_drops_locations_below_the_threshold():
    head = _small_head(loc_filter_thr=0.5)
    with torch.no_grad():
        head.conv_loc.bias.zero_()  # location probabilities around 0.5
    feats = [torch.randn(2, 8, 64 // s, 64 // s) for s in (8, 16, 32)]
    with torch.no_grad():
        cls_scores, bbox_preds, _, loc_preds = head.eval()(feats)
        full_cls, full_reg = head.train()(feats)[:2]
    for cls, reg, loc, cls_all, reg_all in zip(cls_scores, bbox_preds, loc_preds, full_cls,
                                               full_reg, strict=True):
        kept = loc.sigmoid() >= 0.5  # (B, 1, H, W)
        assert kept.any() and (~kept).any()
        torch.testing.assert_close(cls, cls_all * kept)
        torch.testing.assert_close(reg, reg_all * kept)


# ---- MMDetection's model, its weights in detlab's ------------------------------------------

def _masked_conv_forward(self, x, mask=None):
    """mmcv's MaskedConv2d without its compiled op: the conv of every location, zeroed where
    ``mask`` (one image's ``(1, H, W)``) is not set."""
    out = torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding)
    return out if mask is None else out * mask[None].to(out.dtype)


@pytest.fixture(scope="module")
def ga_pair():
    import_mmdet()
    from mmcv.ops import MaskedConv2d
    from mmdet.models import build_detector
    from mmdet.models.dense_heads import GARetinaHead as ReferenceHead

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MaskedConv2d, "forward", _masked_conv_forward)
        patch.setattr(ReferenceHead, "scales", (), raising=False)  # build_pair's per-level scales
        mm_cfg = load_mmdet_config(GA)
        mm_cfg.merge_from_dict(SMALL)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = build_detector(mm_cfg.model)
        calibration = torch.randn(2, 3, HEIGHT, WIDTH,
                                  generator=torch.Generator().manual_seed(3))
        # calibrate the classifier on every location, then place the location logits so that
        # about half of the locations pass loc_filter_thr
        patch.setattr(MaskedConv2d, "forward", lambda self, x, mask=None:
                      _masked_conv_forward(self, x, None))
        randomize(reference, calibration, reference.bbox_head.retina_cls)
        patch.setattr(MaskedConv2d, "forward", _masked_conv_forward)
        head = reference.eval().bbox_head
        with torch.no_grad():
            logits = torch.cat([p.flatten() for p in head(reference.extract_feat(calibration))[3]])
            head.conv_loc.bias -= logits.median() - torch.logit(torch.tensor(0.01))
        cfg = Config.fromfile(REPO / "configs" / GA)
        cfg.merge_from_dict(SMALL)
        ours = build_model(cfg.model)
        ours.load_state_dict(reference.state_dict(), strict=True)
        yield reference.eval(), ours.eval()


@pytest.mark.slow
def test_head_outputs_match_mmdetection(ga_pair):
    reference, ours = ga_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    for mode, batch in (("train", images), ("eval", images[:1]), ("eval", images[1:])):
        reference.train(mode == "train")
        ours.train(mode == "train")
        with torch.no_grad():
            expected = reference.bbox_head(reference.extract_feat(batch))
            actual = ours(batch)
        assert len(actual) == len(expected) == 4
        for ours_levels, reference_levels in zip(actual, expected, strict=True):
            assert len(ours_levels) == len(reference_levels) == 5
            for a, e in zip(ours_levels, reference_levels, strict=True):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    reference.eval()
    ours.eval()
    kept = torch.cat([(p.sigmoid() >= 0.01).flatten() for p in actual[3]]).float().mean()
    assert 0.2 < kept < 0.8  # both kept and dropped locations compared


def _compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


@pytest.mark.slow
def test_losses_match_mmdetection(ga_pair):
    losses = _compare_losses(*ga_pair)
    assert all(v > 0 for v in losses.values())


@pytest.mark.slow
def test_empty_ground_truth_losses_match_mmdetection(ga_pair):
    losses = _compare_losses(*ga_pair, empty=True)
    assert losses["loss_cls"] > 0 and losses["loss_loc"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_shape"] == 0


@pytest.mark.slow
def test_detections_match_mmdetection(ga_pair):
    reference, ours = ga_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas, targets = metas_and_targets()
    for i in range(2):
        with torch.no_grad():
            expected = reference.simple_test(images[i:i + 1], copy.deepcopy(metas[i:i + 1]),
                                             rescale=True)[0]
        actual = ours.predict(Batch(images[i:i + 1], targets[i:i + 1], metas[i:i + 1]),
                              rescale=True)[0]
        assert sum(len(c) for c in expected) > 30  # enough to mean something
        for a, e in zip(actual.to_mmdet(NUM_CLASSES), expected, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)

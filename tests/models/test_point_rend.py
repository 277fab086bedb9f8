"""PointRend against MMDetection 2.28 / mmcv 1.7: SimpleRoIAlign, the uncertainty point
sampling, CoarseMaskHead and MaskPointHead (outputs, point targets, loss) with the same weights;
a small PointRend with MMDetection's weights loaded strictly gives the same losses and the same
detections and refined masks. (The zoo's point_rend configs' parameter counts and state_dict
keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_mask_rcnn import CLASSES, HEIGHT, WIDTH, _mmdet_losses, _targets
from test_mask_rcnn import _metas as _mask_metas

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.roi_heads.mask_heads import CoarseMaskHead, MaskPointHead
from detlab.models.roi_heads.point_sample import (
    SimpleRoIAlign,
    get_uncertain_point_coords_with_randomness,
)
from detlab.structures import Batch

POINT_REND = "point_rend/point_rend_r50_caffe_fpn_mstrain_1x_coco.py"
REPO = Path(__file__).resolve().parents[2]
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 16,
         "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
         "model.roi_head.bbox_roi_extractor.out_channels": 16,
         "model.roi_head.bbox_head.in_channels": 16,
         "model.roi_head.bbox_head.fc_out_channels": 32,
         "model.roi_head.bbox_head.num_classes": CLASSES,
         "model.roi_head.mask_roi_extractor.out_channels": 16,
         "model.roi_head.mask_head.in_channels": 16,
         "model.roi_head.mask_head.conv_out_channels": 16,
         "model.roi_head.mask_head.fc_out_channels": 32,
         "model.roi_head.mask_head.num_classes": CLASSES,
         "model.roi_head.point_head.in_channels": 16,
         "model.roi_head.point_head.fc_channels": 16,
         "model.roi_head.point_head.num_classes": CLASSES,
         "model.train_cfg.rcnn.sampler.num": 128, "model.test_cfg.rcnn.max_per_img": 30}


def test_detlab_configs_are_mmdetections():
    for config in (POINT_REND, "mask_rcnn/mask_rcnn_r50_caffe_fpn_mstrain_1x_coco.py"):
        mine = Config.fromfile(REPO / "configs" / config)
        theirs = Config.fromfile(mmdet_config_dir() / config)
        assert mine.to_dict() == theirs.to_dict(), config


def _rois(num=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=gen) * 80 - 5
    boxes = torch.cat([xy, xy + torch.rand(num, 2, generator=gen) * 40 + 1], 1)
    index = torch.tensor([0, 0, 0, 1, 1, 1, 1][:num], dtype=torch.float)[:, None]
    return torch.cat([index, boxes], 1)


def test_point_sampling_and_simple_roi_align_match_mmcv():
    import_mmdet()
    from mmcv.ops import SimpleRoIAlign as ReferenceAlign
    from mmdet.models.utils import (
        get_uncertain_point_coords_with_randomness as reference_points,
    )

    feats, rois = torch.randn(2, 4, 20, 24), _rois()
    for aligned in (True, False):
        expected = ReferenceAlign(14, 1 / 4, aligned)(feats, rois)
        torch.testing.assert_close(SimpleRoIAlign(14, 1 / 4, aligned)(feats, rois), expected)
    assert SimpleRoIAlign(7, 1.0)(feats, rois[:0]).shape == (0, 4, 7, 7)
    mask_pred, labels = torch.randn(5, CLASSES, 7, 7), torch.tensor([0, 3, 2, 5, 1])
    torch.manual_seed(3)
    expected = reference_points(mask_pred, labels, 30, 3, 0.75)
    torch.manual_seed(3)
    torch.testing.assert_close(get_uncertain_point_coords_with_randomness(
        mask_pred, labels, 30, 3, 0.75), expected)


def test_coarse_and_point_heads_match_mmdetection():
    import_mmdet()
    from mmcv import Config as MMConfig
    from mmdet.core.mask import BitmapMasks as ReferenceBitmaps
    from mmdet.models.roi_heads.mask_heads import CoarseMaskHead as ReferenceCoarse
    from mmdet.models.roi_heads.mask_heads import MaskPointHead as ReferencePoint

    args = dict(num_fcs=2, in_channels=8, conv_out_channels=8, fc_out_channels=16,
                num_classes=CLASSES)
    torch.manual_seed(0)
    reference = ReferenceCoarse(**args)
    reference.init_weights()
    ours = CoarseMaskHead(**args)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(4, 8, 14, 14)
    torch.testing.assert_close(ours(x), reference(x))

    args = dict(num_fcs=2, in_channels=8, fc_channels=8, num_classes=CLASSES)
    for options in ({}, dict(class_agnostic=True), dict(coarse_pred_each_layer=False)):
        reference = ReferencePoint(**args, **options)
        reference.init_weights()
        ours = MaskPointHead(**args, **options)
        ours.load_state_dict(reference.state_dict(), strict=True)
        fine, coarse = torch.randn(5, 8, 30), torch.randn(5, CLASSES, 30)
        pred = ours(fine, coarse)
        torch.testing.assert_close(pred, reference(fine, coarse))
        targets, labels = torch.rand(5, 30), torch.tensor([0, 3, 2, 5, 1])
        torch.testing.assert_close(ours.loss(pred, targets, labels)["loss_point"],
                                   reference.loss(pred, targets, labels)["loss_point"])
    # point targets: each image's positives read from their ground-truth masks

    class _Result:
        def __init__(self, inds):
            self.pos_assigned_gt_inds = inds

    rois, gen = _rois(), torch.Generator().manual_seed(1)
    points = torch.rand(7, 30, 2, generator=gen)
    bitmaps = (torch.rand(2, 3, 60, 70, generator=gen) > 0.5).numpy().astype(np.uint8)
    results = [_Result(torch.tensor([0, 2, 1])), _Result(torch.tensor([1, 1, 0, 2]))]
    expected = reference.get_targets(rois, points, results,
                                     [ReferenceBitmaps(b, 60, 70) for b in bitmaps],
                                     MMConfig(dict(num_points=30)))
    actual = ours.get_targets(rois, points, results, [torch.from_numpy(b).bool()
                                                      for b in bitmaps], dict(num_points=30))
    torch.testing.assert_close(actual, expected)


# ---- the whole detector ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def point_rend_pair():
    """(MMDetection's small PointRend, detlab's with its weights loaded strictly), weights
    drawn at random, eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    reference_cfg = load_mmdet_config(POINT_REND)
    reference_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(reference_cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "backbone" not in name:
                scale = 0.3 if "fc_cls" in name or "rpn_cls" in name else 0.1
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    cfg = Config.fromfile(REPO / "configs" / POINT_REND)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_detector_losses_match_mmdetection(point_rend_pair):
    reference, ours = point_rend_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = _mask_metas(), _targets()
    torch.manual_seed(11)
    expected = _mmdet_losses(reference, images, metas, targets)
    torch.manual_seed(11)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                                            "loss_bbox", "acc", "loss_mask", "loss_point"}
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert actual["loss_point"] > 0
    sum(v for k, v in actual.items() if k.startswith("loss")).backward()
    ours.zero_grad()


def test_empty_ground_truth_gives_zero_mask_losses(point_rend_pair):
    """Without ground truth MMDetection's PointRend stops (its SimpleRoIAlign concatenates no
    RoI features); detlab's gives zero mask and point losses that still backpropagate, the others as
    MMDetection's Mask R-CNN part computes them."""
    _, ours = point_rend_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    losses = ours.train().loss(Batch(images, _targets(empty=True), _mask_metas()))
    ours.eval()
    assert losses["loss_point"] == 0 and losses["loss_mask"] == 0
    assert losses["loss_point"].requires_grad
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_and_refined_masks_match_mmdetection(point_rend_pair, rescale):
    reference, ours = point_rend_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas = _mask_metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=rescale)
    actual = ours.predict(Batch(images, [{}, {}], metas), rescale=rescale)
    for ours_image, (boxes, masks) in zip(actual, expected, strict=True):
        assert sum(len(c) for c in boxes) > 10
        for label, (a, e) in enumerate(zip(ours_image.to_mmdet(CLASSES), boxes, strict=True)):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
            mine = ours_image.masks[ours_image.labels == label].numpy()
            assert len(mine) == len(masks[label])
            for m, r in zip(mine, masks[label], strict=True):
                np.testing.assert_array_equal(m, r)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="point_head"):
        build_model(dict(type="PointRendRoIHead", bbox_roi_extractor=None, bbox_head=None))
    with pytest.raises(ConfigError, match="norm_cfg"):
        MaskPointHead(num_classes=2, norm_cfg=dict(type="BN1d"))
    with pytest.raises(ConfigError, match="num_points"):
        MaskPointHead(num_classes=2).get_roi_rel_points_train(torch.zeros(1, 2, 7, 7),
                                                              torch.zeros(1).long(), {})


def test_mmdetection_fails_without_ground_truth(point_rend_pair):
    """What the empty-ground-truth test above stands in for: MMDetection's PointRend cannot
    compute its losses on a batch without positives."""
    reference, _ = point_rend_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError):  # mmcv's SimpleRoIAlign: torch.cat of no RoI features
        _mmdet_losses(reference, images, _mask_metas(), _targets(empty=True))

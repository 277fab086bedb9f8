"""Grid R-CNN against MMDetection 2.28: GridHead's heatmaps (fused and unfused) with the same
weights, its grid targets, loss and refined boxes; a small Grid R-CNN with MMDetection's
weights loaded strictly gives the same losses (with and without ground truth; the jitter and
the grid sampling drawn alike) and the same detections. (The zoo's grid_rcnn configs'
parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_faster_rcnn import NUM_CLASSES, SMALL, _images, _metas, _targets

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.roi_heads import GridHead
from detlab.structures import Batch

GRID = "grid_rcnn/grid_rcnn_r50_fpn_gn-head_2x_coco.py"
REPO = Path(__file__).resolve().parents[2]
SMALL_GRID = {**{k: v for k, v in SMALL.items() if "fc_reg" not in k},
              "model.roi_head.grid_roi_extractor.out_channels": 16,
              "model.roi_head.grid_head.in_channels": 16,
              "model.roi_head.grid_head.point_feat_channels": 4,
              "model.roi_head.grid_head.num_convs": 2}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / GRID)
    theirs = Config.fromfile(mmdet_config_dir() / GRID)
    assert mine.to_dict() == theirs.to_dict()


def _head_pair():
    import_mmdet()
    from mmdet.models.roi_heads.mask_heads import GridHead as Reference

    args = dict(grid_points=9, num_convs=2, roi_feat_size=14, in_channels=8,
                point_feat_channels=4, norm_cfg=dict(type="GN", num_groups=36))
    torch.manual_seed(0)
    reference = Reference(**args)
    reference.init_weights()
    ours = GridHead(**args)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


class _Result:  # the fields of a sampling result the grid targets read
    def __init__(self, boxes, gts):
        self.pos_bboxes, self.pos_gt_bboxes = boxes, gts


def test_grid_head_outputs_targets_loss_and_boxes_match_mmdetection():
    from mmcv import Config as MMConfig

    reference, ours = _head_pair()
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters())
    assert ours.sub_regions == reference.sub_regions
    x = torch.randn(6, 8, 14, 14)
    for mode in (True, False):
        reference.train(mode), ours.train(mode)
        expected, actual = reference(x), ours(x)
        for key in ("fused", "unfused"):
            torch.testing.assert_close(actual[key], expected[key])
    # targets: boxes of every size (two too small for any target), gt points near the edges
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(12, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + torch.rand(12, 2, generator=gen) * 50 + 0.5], 1)
    boxes[0, 2:] = boxes[0, :2] + 1.2
    gts = boxes + torch.randn(12, 4, generator=gen) * 6
    results = [_Result(boxes[:5], gts[:5]), _Result(boxes[5:5], gts[5:5]),
               _Result(boxes[5:], gts[5:])]
    for radius in (1, 2):
        expected = reference.get_targets(results, MMConfig(dict(pos_radius=radius)))
        actual = ours.get_targets(results, dict(pos_radius=radius))
        assert actual.shape == (12, 9, 28, 28) and actual.sum() > 0
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    reference.train(), ours.train()
    pred = ours(x[:4].repeat(3, 1, 1, 1))
    torch.testing.assert_close(ours.loss(pred, actual)["loss_grid"],
                               reference.loss(pred, actual)["loss_grid"])
    # boxes from heatmaps
    reference.eval(), ours.eval()
    dets = torch.cat([boxes, torch.rand(12, 1, generator=gen)], 1)
    heatmaps = torch.randn(12, 9, 28, 28, generator=gen) * 3
    meta = dict(img_shape=(50, 60, 3))
    torch.testing.assert_close(ours.get_bboxes(dets, heatmaps, meta),
                               reference.get_bboxes(dets, heatmaps, [meta]))


# ---- the whole detector ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def grid_pair():
    """(MMDetection's small Grid R-CNN, detlab's with its weights loaded strictly), weights
    drawn at random, eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    reference_cfg = load_mmdet_config(GRID)
    reference_cfg.merge_from_dict(SMALL_GRID)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(reference_cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "backbone" not in name and "norm" not in name and "gn" not in name:
                scale = 0.3 if "fc_cls" in name or "rpn_cls" in name else 0.1
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    cfg = Config.fromfile(REPO / "configs" / GRID)
    cfg.merge_from_dict(SMALL_GRID)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "no-boxes"])
def test_detector_losses_match_mmdetection(grid_pair, empty):
    """Both sides draw the RoIs, the jitter and the grid's positives from torch's generator
    in the same order, so the same seed gives the same samples."""
    reference, ours = grid_pair
    images, metas, targets = _images(8), _metas(), _targets(empty=empty)
    torch.manual_seed(21)
    expected = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets])
    torch.manual_seed(21)
    actual = ours.train().loss(Batch(images, targets, metas))
    reference.eval(), ours.eval()
    expected = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in expected.items()}
    keys = {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc"} | (set() if empty
                                                                   else {"loss_grid"})
    assert set(actual) == set(expected) == keys
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    sum(v for k, v in actual.items() if k.startswith("loss")).backward()
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_match_mmdetection(grid_pair, rescale):
    reference, ours = grid_pair
    images, metas = _images(9), _metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=rescale)
    actual = ours.predict(Batch(images, [{}, {}], metas), rescale=rescale)
    assert all(sum(len(c) for c in image) > 10 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="square"):
        GridHead(grid_points=8, norm_cfg=None)
    with pytest.raises(ConfigError, match="num_groups"):
        GridHead(point_feat_channels=5)
    with pytest.raises(ConfigError, match="pos_radius"):
        GridHead(point_feat_channels=4).get_targets([_Result(torch.zeros(0, 4),
                                                             torch.zeros(0, 4))], {})
    with pytest.raises(ConfigError, match="grid_head"):
        build_model(dict(type="GridRoIHead", bbox_roi_extractor=None, bbox_head=None))


def test_flipped_input_gives_the_mirrored_boxes(grid_pair):
    """A test-time flip: the refined boxes of a flipped input (meta flip=True) are those of
    the same input taken as unflipped, mirrored back into the original image."""
    from detlab.structures import flip_boxes

    _, ours = grid_pair
    images, meta = _images(9)[:1], _metas()[0]
    (plain,) = ours.predict(Batch(images, [{}], [meta]))
    (flipped,) = ours.predict(Batch(images, [{}], [dict(meta, flip=True,
                                                        flip_direction="horizontal")]))
    assert len(plain) == len(flipped) > 5
    torch.testing.assert_close(flipped.boxes, flip_boxes(plain.boxes, meta["ori_shape"],
                                                         "horizontal"), rtol=0, atol=1e-3)

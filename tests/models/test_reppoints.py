"""RepPoints against MMDetection 2.28: with MMDetection's weights loaded strictly into a small
RepPoints built from the same zoo config (moment, min-max and partial min-max point sets,
grid points with a MaxIoU or a point assignment of the initial stage, points that start on a
grid), the same head outputs in both modes, losses (and, through the gradient_mul trick and
moment_mul, their gradients), losses without ground truth, and detections; without
MMDetection, the head's layers, point-set boxes and configuration errors.

The batch and the detection comparison are FCOS's (``test_fcos.py``). (The zoo's RepPoints
configs' parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import HEIGHT, WIDTH, _loss_inputs, build_pair, compare_detections, mmdet_losses
from torchvision.ops import deform_conv2d

from detlab.config import Config, ConfigError
from detlab.models.heads.reppoints_head import RepPointsHead, grid_offsets
from detlab.structures import Batch

pytestmark = pytest.mark.usefixtures("one_math_thread")  # see tests/conftest.py
REPO = Path(__file__).resolve().parents[2]
BASE = "reppoints/reppoints_moment_r50_fpn_1x_coco.py"
MOMENT = "reppoints/reppoints_moment_r50_fpn_gn-neck+head_1x_coco.py"
GRID = "reppoints/bbox_r50_grid_fpn_gn-neck+head_1x_coco.py"
GRID_CENTER = "reppoints/bbox_r50_grid_center_fpn_gn-neck+head_1x_coco.py"
MINMAX = "reppoints/reppoints_minmax_r50_fpn_gn-neck+head_1x_coco.py"
PARTIAL = "reppoints/reppoints_partial_minmax_r50_fpn_gn-neck+head_1x_coco.py"
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.bbox_head.num_classes": 6, "model.bbox_head.in_channels": 32,
         "model.bbox_head.feat_channels": 32, "model.bbox_head.point_feat_channels": 32,
         "model.bbox_head.stacked_convs": 2}
LOSS_KEYS = {"loss_cls", "loss_pts_init", "loss_pts_refine"}
# (config, extra overrides): every transform, grid points under both init assigners, points
# that start on a grid instead of at the location, and a sampled (non-focal) classifier
CASES = {
    "moment": (MOMENT, {}),
    "grid": (GRID, {}),
    "grid-center": (GRID_CENTER, {}),
    "minmax": (MINMAX, {}),
    "partial-minmax": (PARTIAL, {}),
    "moment-grid-init-cross-entropy": (BASE, {
        "model.bbox_head.center_init": False,
        "model.bbox_head.loss_cls": dict(_delete_=True, type="CrossEntropyLoss",
                                         use_sigmoid=True, loss_weight=1.0)}),
}


@pytest.mark.parametrize("config", [BASE, MOMENT])
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def mmdet_on_cpu():
    """MMDetection's RepPointsHead asks its point generator for valid flags on the default
    device, 'cuda'; on a CPU machine they are made on the CPU. build_pair randomizes per-level
    scales, which RepPoints has none of."""
    import_mmdet()
    from mmdet.core.anchor.point_generator import MlvlPointGenerator
    from mmdet.models.dense_heads import RepPointsHead as ReferenceHead

    original = MlvlPointGenerator.valid_flags

    def on_cpu(self, featmap_sizes, pad_shape, device="cpu"):
        return original(self, featmap_sizes, pad_shape, device="cpu")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlvlPointGenerator, "valid_flags", on_cpu)
        patch.setattr(ReferenceHead, "scales", (), raising=False)
        yield


@pytest.fixture(scope="module", params=list(CASES))
def reppoints_pair(request, mmdet_on_cpu):
    from mmcv import Config as ReferenceConfig

    config, extra = CASES[request.param]
    merge = ReferenceConfig.merge_from_dict
    with pytest.MonkeyPatch.context() as patch:  # mmcv pops _delete_ from the options it gets
        patch.setattr(ReferenceConfig, "merge_from_dict",
                      lambda cfg, options, **kw: merge(cfg, copy.deepcopy(options), **kw))
        reference, ours = build_pair(config, "reppoints_cls_out", {**SMALL, **extra})
    if hasattr(reference.bbox_head, "moment_transfer"):  # a learnt transfer, not the zeros
        with torch.no_grad():
            reference.bbox_head.moment_transfer.copy_(torch.tensor([0.3, -0.2]))
            ours.bbox_head.moment_transfer.copy_(torch.tensor([0.3, -0.2]))
    return request.param, reference, ours


def test_head_outputs_match_mmdetection(reppoints_pair):
    """Eval mode: MMDetection's (scores, boxes of the refined points); train mode: its
    (scores, initial points, refined points) -- detlab's raw outputs in both modes."""
    name, reference, ours = reppoints_pair
    assert ours.bbox_head.use_grid_points == name.startswith("grid")
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        evaluated = reference.bbox_head(reference.extract_feat(images))
        trained = reference.train().bbox_head(reference.extract_feat(images))
        reference.eval()
        actual = ours(images)
    assert len(actual) == len(trained) == 3 and len(evaluated) == 2
    for ours_levels, reference_levels in zip(actual, trained, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    for pts, boxes in zip(actual[2], evaluated[1], strict=True):
        with torch.no_grad():
            torch.testing.assert_close(ours.bbox_head.points_to_boxes(pts), boxes, rtol=1e-5,
                                       atol=1e-5)


def compare_losses(reference, ours, empty=False, backward=False):
    images, targets, metas = _loss_inputs(empty)
    for model in (reference, ours):
        model.zero_grad(set_to_none=True)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    if backward:
        sum(expected.values()).backward()
        sum(actual.values()).backward()
    return actual


def differentiable_deform_conv(conv, x, offset):
    """mmcv's DeformConv2d through torchvision's differentiable deform_conv2d: the test-time
    stand-in for mmcv's extension has no backward (the forwards agree, see
    test_deform_conv.py)."""
    return deform_conv2d(x, offset, conv.weight, stride=conv.stride, padding=conv.padding,
                         dilation=conv.dilation)


def test_losses_and_gradients_match_mmdetection(reppoints_pair):
    """The same losses, and the same gradients reach every parameter of the head: the
    deformable convs pass only gradient_mul of theirs to the initial points, moment_transfer
    gets moment_mul of its own."""
    from mmcv.ops import DeformConv2d as ReferenceDeformConv

    _, reference, ours = reppoints_pair
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReferenceDeformConv, "forward", differentiable_deform_conv)
        losses = compare_losses(reference, ours, backward=True)
    assert all(v > 0 for v in losses.values())
    theirs = dict(reference.bbox_head.named_parameters())
    compared = 0
    for name, param in ours.bbox_head.named_parameters():
        expected = theirs[name].grad
        assert param.grad is not None and expected is not None, name
        torch.testing.assert_close(param.grad, expected, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
        compared += 1
    assert compared >= 10
    if ours.bbox_head.transform_method == "moment":
        assert ours.bbox_head.moment_transfer.grad.abs().sum() > 0


def test_empty_ground_truth_losses_match_mmdetection(reppoints_pair):
    _, reference, ours = reppoints_pair
    losses = compare_losses(reference, ours, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_pts_init"] == 0 and losses["loss_pts_refine"] == 0


def test_detections_match_mmdetection(reppoints_pair):
    _, reference, ours = reppoints_pair
    compare_detections(reference, ours)


# ---- without MMDetection -----------------------------------------------------------------

TRAIN_CFG = dict(init=dict(assigner=dict(type="PointAssigner", scale=4, pos_num=1),
                           allowed_border=-1, pos_weight=-1, debug=False),
                 refine=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5,
                                           neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
                             allowed_border=-1, pos_weight=-1, debug=False))
TEST_CFG = dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=10)


def _head(**kwargs) -> RepPointsHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, point_feat_channels=8,
                stacked_convs=1, point_strides=[8, 16], train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return RepPointsHead(**{**args, **kwargs})


def test_layers_and_parameter_names():
    head = _head()
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "moment_transfer": (2,),
        "cls_convs.0.conv.weight": (8, 8, 3, 3), "cls_convs.0.conv.bias": (8,),
        "reg_convs.0.conv.weight": (8, 8, 3, 3), "reg_convs.0.conv.bias": (8,),
        "reppoints_cls_conv.weight": (8, 8, 3, 3),
        "reppoints_cls_out.weight": (3, 8, 1, 1), "reppoints_cls_out.bias": (3,),
        "reppoints_pts_init_conv.weight": (8, 8, 3, 3), "reppoints_pts_init_conv.bias": (8,),
        "reppoints_pts_init_out.weight": (18, 8, 1, 1), "reppoints_pts_init_out.bias": (18,),
        "reppoints_pts_refine_conv.weight": (8, 8, 3, 3),
        "reppoints_pts_refine_out.weight": (18, 8, 1, 1),
        "reppoints_pts_refine_out.bias": (18,)}
    grid = _head(use_grid_points=True, transform_method="minmax")
    assert not hasattr(grid, "moment_transfer")
    assert grid.reppoints_pts_init_out.weight.shape == (4, 8, 1, 1)
    cls, init, refine = grid([torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)])
    assert [tuple(p.shape) for p in refine] == [(2, 18, 8, 8), (2, 18, 4, 4)]


def test_offsets_and_point_set_boxes():
    # the taps of a 3x3 kernel, (y, x), row by row
    assert grid_offsets(3).view(-1, 2).tolist() == [
        [-1, -1], [-1, 0], [-1, 1], [0, -1], [0, 0], [0, 1], [1, -1], [1, 0], [1, 1]]
    xy = torch.tensor([[0.0, 0.0], [4.0, 2.0], [2.0, 6.0], [1.0, 1.0], [10.0, -3.0]])
    pts = xy.reshape(1, -1)
    torch.testing.assert_close(_head(transform_method="minmax").points_to_boxes(
        pts, y_first=False), torch.tensor([[0.0, -3.0, 10.0, 6.0]]))
    # the first four points only
    torch.testing.assert_close(_head(transform_method="partial_minmax").points_to_boxes(
        pts, y_first=False), torch.tensor([[0.0, 0.0, 4.0, 6.0]]))
    moment = _head(num_points=9).points_to_boxes(pts.flip(1), y_first=True)  # (y, x) pairs
    mean, std = xy.mean(0), xy.std(0)
    torch.testing.assert_close(moment, torch.cat([mean - std, mean + std])[None])


def test_empty_ground_truth_gives_classification_loss_only():
    head = _head()
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    meta = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    losses = head.loss(head(feats), [empty, empty], [meta, meta])
    assert losses["loss_cls"] > 0
    assert losses["loss_pts_init"] == 0 and losses["loss_pts_refine"] == 0
    box = dict(boxes=torch.tensor([[4.0, 6.0, 40.0, 36.0]]), labels=torch.tensor([2]))
    losses = head.loss(head(feats), [box, empty], [meta, meta])
    assert all(v > 0 for v in losses.values())


def test_decoding_is_in_strides_from_the_point_and_clipped():
    head = _head(transform_method="minmax", test_cfg=dict(TEST_CFG, score_thr=0.5))
    cls = [torch.full((1, 3, 8, 8), -10.0), torch.full((1, 3, 4, 4), -10.0)]
    cls[1][0, 2, 1, 2] = 10.0  # level 1 (stride 16), the point (32, 16)
    pts = [torch.zeros(1, 18, 8, 8), torch.zeros(1, 18, 4, 4)]
    pts[1][0, 0::2, 1, 2] = torch.tensor([-0.5, 2.0] + [0.0] * 7)  # y offsets
    pts[1][0, 1::2, 1, 2] = torch.tensor([-1.0, 3.0] + [0.0] * 7)  # x offsets
    meta = dict(img_shape=(60, 70, 3), pad_shape=(64, 64, 3), ori_shape=(60, 70, 3),
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None)
    (result,) = head.predict((cls, pts, pts), [meta])
    assert result.labels.tolist() == [2]
    torch.testing.assert_close(result.boxes, torch.tensor([[16.0, 8.0, 70.0, 48.0]]))


def test_configuration_errors():
    with pytest.raises(ConfigError, match="num_points must be an odd square"):
        _head(num_points=4)
    with pytest.raises(ConfigError, match="transform_method must be one of"):
        _head(transform_method="mean")
    with pytest.raises(ConfigError, match="needs refine="):
        _head(train_cfg=dict(init=TRAIN_CFG["init"]))
    with pytest.raises(ConfigError, match="model.train_cfg.init has no key 'assigners'"):
        _head(train_cfg=dict(TRAIN_CFG, init=dict(assigners=None)))
    with pytest.raises(ConfigError, match="has no key 'assigner'"):  # not the one-stage keys
        _head(train_cfg=dict(TRAIN_CFG, assigner=dict(type="PointAssigner")))
    head = _head(train_cfg=None)
    with pytest.raises(ConfigError, match="no train_cfg"):
        head.loss(head([torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]), [{}], [{}])

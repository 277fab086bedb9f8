"""Registry-wide: every model component detlab registers builds from a small config, runs, and
(for modules with parameters) passes gradients to every trainable parameter."""

import numpy as np
import pytest
import torch
from torch import nn

from detlab.registry import MODELS
from detlab.structures import Batch

TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                               min_pos_iou=0, ignore_iof_thr=-1),
                 allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=10)
HEAD = dict(type="RetinaHead", num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
            anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0], strides=[8, 16]),
            train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
DETECTOR = dict(backbone=dict(type="ResNet", depth=18, num_stages=3, strides=(1, 2, 2),
                              dilations=(1, 1, 1), out_indices=(1, 2), frozen_stages=-1),
                neck=dict(type="FPN", in_channels=[128, 256], out_channels=8, num_outs=2),
                bbox_head={k: v for k, v in HEAD.items() if not k.endswith("_cfg")},
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)

YOLO_HEAD = dict(num_classes=2, in_channels=[8, 8], out_channels=[8, 8], featmap_strides=[16, 8],
                 anchor_generator=dict(type="YOLOAnchorGenerator", strides=[16, 8],
                                       base_sizes=[[(30, 40), (20, 10)], [(8, 8), (12, 6)]]),
                 train_cfg=dict(assigner=dict(type="GridAssigner", pos_iou_thr=0.5,
                                              neg_iou_thr=0.5, min_pos_iou=0)),
                 test_cfg=dict(conf_thr=0.005, score_thr=0.01, max_per_img=100,
                               nms=dict(type="nms", iou_threshold=0.45)))


YOLOF_HEAD = dict(num_classes=2, in_channels=8, num_cls_convs=1, num_reg_convs=1,
                  anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], scales=[1, 2, 4],
                                        strides=[8]),
                  train_cfg=dict(assigner=dict(type="UniformAssigner", pos_ignore_thr=0.15,
                                               neg_ignore_thr=0.7),
                                 allowed_border=-1, pos_weight=-1, debug=False),
                  test_cfg=TEST_CFG)


FSAF_HEAD = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                 reg_decoded_bbox=True,
                 anchor_generator=dict(type="AnchorGenerator", octave_base_scale=1,
                                       scales_per_octave=1, ratios=[1.0], strides=[8, 16]),
                 bbox_coder=dict(type="TBLRBBoxCoder", normalizer=4.0),
                 loss_cls=dict(type="FocalLoss", use_sigmoid=True, reduction="none"),
                 loss_bbox=dict(type="IoULoss", eps=1e-6, reduction="none"),
                 train_cfg=dict(TRAIN_CFG, assigner=dict(type="CenterRegionAssigner",
                                                         pos_scale=0.5, neg_scale=0.8,
                                                         min_pos_iof=0.01)),
                 test_cfg=TEST_CFG)
DDOD_HEAD = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                 norm_cfg=dict(type="GN", num_groups=4),
                 anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                       scales_per_octave=1, strides=[8, 16]),
                 loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                 loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                 train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9, alpha=0.8),
                                reg_assigner=dict(type="ATSSAssigner", topk=9, alpha=0.5)),
                 test_cfg=TEST_CFG)


CENTERNET_HEAD = dict(in_channel=8, feat_channel=8, num_classes=2,
                      test_cfg=dict(topk=10, local_maximum_kernel=3, max_per_img=10))


def _batch(size: int = 32) -> Batch:
    meta = dict(img_shape=(size, size, 3), pad_shape=(size, size, 3), ori_shape=(size, size, 3),
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None)
    target = dict(boxes=torch.tensor([[2.0, 3.0, 20.0, 22.0]]), labels=torch.tensor([1]))
    return Batch(torch.randn(2, 3, size, size), [target, target], [meta, meta])


def _boxes(n: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * 20
    return torch.cat([xy, xy + torch.rand(n, 2) * 10 + 1], dim=1)


def _backward_through(module: nn.Module, output) -> None:
    tensors = [output] if isinstance(output, torch.Tensor) else list(output)
    sum(t.float().sum() for t in tensors).backward()


def run_resnet(module):
    _backward_through(module, module(torch.randn(2, 3, 32, 32)))


def run_fpn(module):
    _backward_through(module, module([torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8)]))


def run_dyhead(module):
    _backward_through(module, module([torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8),
                                      torch.randn(2, 16, 4, 4)]))


def run_head(module):
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert losses["loss_bbox"] > 0  # the regression branch gets a gradient too
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_detector(module):
    batch = _batch()
    losses = module.loss(batch)
    assert losses["loss_bbox"] > 0
    sum(losses.values()).backward()
    assert len(module.eval().predict(batch)) == 2


def run_classification_loss(module):
    pred = torch.randn(6, 3, requires_grad=True)
    module(pred, torch.tensor([0, 1, 2, 3, 3, 1]), avg_factor=2).backward()
    assert pred.grad.abs().sum() > 0


def run_regression_loss(module):
    pred = _boxes(5).requires_grad_(True)
    module(pred, _boxes(5), torch.ones(5, 4), avg_factor=5).backward()
    assert pred.grad.abs().sum() > 0


def run_anchor_generator(obj):
    anchors = obj.grid_priors([(4, 4), (2, 2)])
    flags = obj.valid_flags([(4, 4), (2, 2)], (32, 32))
    assert [len(a) for a in anchors] == [len(f) for f in flags] == [32, 8]


def run_coder(obj):
    priors, gts = _boxes(4), _boxes(4)
    torch.testing.assert_close(obj.decode(priors, obj.encode(priors, gts)), gts, atol=1e-4,
                               rtol=1e-4)


def run_assigner(obj):
    result = obj.assign(_boxes(20), _boxes(3), gt_labels=torch.tensor([0, 1, 0]))
    assert result.gt_inds.shape == (20,)


def run_sampler(obj):
    from detlab.models import MaxIoUAssigner

    boxes, gts = _boxes(20), _boxes(2)
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(boxes, gts)
    sample = obj.sample(assign, boxes, gts)
    assert len(sample.pos_inds) + len(sample.neg_inds) <= 20


def run_iou(obj):
    assert obj(_boxes(3), _boxes(4)).shape == (3, 4)


def run_soft_target_loss(module):
    """Losses whose target is a score per class: Varifocal (IoU-weighted one-hot), GHMC
    (binary targets, with label weights), KD (the teacher's logits)."""
    pred = torch.randn(6, 3, requires_grad=True)
    target = (torch.rand(6, 3) > 0.6).float() * torch.rand(6, 3)
    if type(module).__name__ == "GHMC":
        module(pred, (target > 0).float(), torch.ones(6, 3)).backward()
    elif type(module).__name__ == "KnowledgeDistillationKLDivLoss":
        module(pred, torch.randn(6, 3), avg_factor=6).backward()
    else:
        module(pred, target, avg_factor=2).backward()
    assert pred.grad.abs().sum() > 0


def run_quality_focal_loss(module):
    pred = torch.randn(6, 3, requires_grad=True)
    labels, quality = torch.tensor([0, 1, 2, 3, 3, 1]), torch.rand(6)
    module(pred, (labels, quality), avg_factor=2).backward()
    assert pred.grad.abs().sum() > 0


def run_distribution_focal_loss(module):
    pred = torch.randn(8, 17, requires_grad=True)  # (boxes x 4 sides, reg_max + 1 bins)
    module(pred, torch.rand(8) * 15.9, avg_factor=2).backward()
    assert pred.grad.abs().sum() > 0


def run_gaussian_focal_loss(module):
    pred = torch.rand(2, 3, 8, 8).clamp(0.01, 0.99).requires_grad_(True)  # a heatmap
    target = torch.zeros(2, 3, 8, 8)
    target[:, 1, 3, 4] = 1.0
    target[:, 1, 2:5, 3:6] = torch.maximum(target[:, 1, 2:5, 3:6], torch.full((3, 3), 0.5))
    module(pred, target, avg_factor=2).backward()
    assert pred.grad.abs().sum() > 0


def run_prior_generator(obj):
    sizes = [(4, 4), (2, 2), (1, 1)][:obj.num_levels]
    priors = obj.grid_priors(sizes)
    flags = obj.valid_flags(sizes, (32, 32))
    expected = [h * w * n for (h, w), n in zip(sizes, obj.num_base_priors, strict=True)]
    assert [len(p) for p in priors] == [len(f) for f in flags] == expected


def run_point_coder(obj):
    gts = _boxes(4)
    points = (gts[:, :2] + gts[:, 2:]) / 2  # inside their boxes
    torch.testing.assert_close(obj.decode(points, obj.encode(points, gts)), gts, atol=1e-4,
                               rtol=1e-4)


def run_yolo_coder(obj):
    priors = _boxes(4)
    # boxes whose centers lie within a stride of the priors' (the coder clamps beyond that)
    centers = (priors[:, :2] + priors[:, 2:]) / 2 + torch.rand(4, 2) * 6 - 3
    half = (priors[:, 2:] - priors[:, :2]) * (torch.rand(4, 2) + 0.5) / 2
    gts = torch.cat([centers - half, centers + half], dim=1)
    deltas = obj.encode(priors, gts, 32)
    torch.testing.assert_close(obj.decode(priors, deltas, 32), gts, atol=1e-3, rtol=1e-3)


def run_legacy_coder(obj):
    """MMDetection's legacy coder counts a box's size with +1: decoding an encoding gives the
    box grown by half a pixel on each side."""
    priors, gts = _boxes(4), _boxes(4)
    grown = gts + torch.tensor([-0.5, -0.5, 0.5, 0.5])
    torch.testing.assert_close(obj.decode(priors, obj.encode(priors, gts)), grown, atol=1e-4,
                               rtol=1e-4)


def run_assigner_with_predictions(obj):
    """Every assigner through the one interface, given what the heads give: per-level counts,
    probabilities and decoded boxes (points with strides for the point-based ones)."""
    name = type(obj).__name__
    boxes = _boxes(20)
    priors = boxes
    if name in ("SimOTAAssigner", "PointAssigner"):
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        priors = torch.cat([centers, torch.full((20, 2), 8.0)], dim=1)
    extra = {}
    if name == "GridAssigner":
        extra["responsible_flags"] = torch.rand(20) > 0.5
    if name == "ApproxMaxIoUAssigner":
        extra["approxs"] = boxes.repeat_interleave(3, dim=0) + torch.randn(60, 4) * 0.5
    result = obj.assign(priors, _boxes(3), gt_labels=torch.tensor([0, 1, 0]),
                        num_level_priors=[16, 4], pred_scores=torch.rand(20, 2),
                        pred_bboxes=_boxes(20), **extra)
    assert result.gt_inds.shape == (20,)
    assert int((result.gt_inds >= 0).sum()) == 20 or name == "UniformAssigner"



SABL_HEAD = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                 approx_anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                              scales_per_octave=1, ratios=[0.5, 1.0, 2.0],
                                              strides=[8, 16]),
                 square_anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], scales=[4],
                                              strides=[8, 16]),
                 train_cfg=dict(TRAIN_CFG, assigner=dict(type="ApproxMaxIoUAssigner",
                                                         pos_iou_thr=0.5, neg_iou_thr=0.4,
                                                         min_pos_iou=0, ignore_iof_thr=-1)),
                 test_cfg=TEST_CFG)
GA_RETINA_HEAD = dict(
    num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
    approx_anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                 scales_per_octave=1, ratios=[0.5, 1.0, 2.0], strides=[8, 16]),
    square_anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], scales=[4],
                                 strides=[8, 16]),
    loss_cls=dict(type="FocalLoss", use_sigmoid=True),
    train_cfg=dict(TRAIN_CFG, ga_assigner=dict(type="ApproxMaxIoUAssigner", pos_iou_thr=0.5,
                                               neg_iou_thr=0.4, min_pos_iou=0,
                                               ignore_iof_thr=-1),
                   center_ratio=0.2, ignore_ratio=0.5),
    test_cfg=TEST_CFG)

# name -> (small config, how to run it)
PAA_ASSIGNER = dict(type="MaxIoUAssigner", pos_iou_thr=0.1, neg_iou_thr=0.1, min_pos_iou=0,
                    ignore_iof_thr=-1)

REPPOINTS_HEAD = dict(num_classes=2, in_channels=8, feat_channels=8, point_feat_channels=8,
                      stacked_convs=1, point_strides=[8, 16], test_cfg=TEST_CFG,
                      train_cfg=dict(init=dict(assigner=dict(type="PointAssigner", scale=4,
                                                             pos_num=1), pos_weight=-1),
                                     refine=dict(assigner=PAA_ASSIGNER, pos_weight=-1)))

LD_GFL_HEAD = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1, reg_max=4,
                   norm_cfg=dict(type="GN", num_groups=4),
                   anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                         octave_base_scale=4, scales_per_octave=1,
                                         strides=[8, 16]))

PISA_TRAIN_CFG = dict(isr=dict(k=2.0, bias=0.0), carl=dict(k=1.0, bias=0.2))

LAD_HEAD = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                norm_cfg=dict(type="GN", num_groups=4),
                anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                      scales_per_octave=1, strides=[8, 16]),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                loss_bbox=dict(type="GIoULoss", loss_weight=1.3))


RPN_HEAD = dict(in_channels=8, feat_channels=8,
                anchor_generator=dict(type="AnchorGenerator", scales=[2], ratios=[0.5, 1.0],
                                      strides=[8, 16]),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0))
RPN_TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3,
                                   min_pos_iou=0.3, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=32, pos_fraction=0.5, neg_pos_ub=-1,
                                  add_gt_as_proposals=False),
                     allowed_border=0, pos_weight=-1, debug=False)
RPN_TEST_CFG = dict(nms_pre=50, max_per_img=20, nms=dict(type="nms", iou_threshold=0.7),
                    min_bbox_size=0)


def run_rpn_head(module):
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"} and losses["loss_rpn_bbox"] > 0
    sum(losses.values()).backward()
    proposals = module.proposals_by_feat(*raw, batch.metas)
    assert len(proposals) == 2 and all(p.shape[1] == 5 for p in proposals)
    assert len(module.predict(raw, batch.metas)) == 2


def run_rpn_detector(module):
    batch = _batch()
    losses = module.loss(batch)
    assert losses["loss_rpn_bbox"] > 0
    sum(losses.values()).backward()
    results = module.eval().predict(batch)
    assert len(results) == 2 and all((r.labels == 0).all() for r in results)


# ---- Faster R-CNN ------------------------------------------------------------------------

MASK_HEAD = dict(num_convs=1, in_channels=8, conv_out_channels=8, num_classes=2)
ROI_EXTRACTOR = dict(roi_layer=dict(type="RoIAlign", output_size=4, sampling_ratio=0),
                     out_channels=8, featmap_strides=[8, 16])
BBOX_HEAD = dict(in_channels=8, fc_out_channels=8, roi_feat_size=4, num_classes=2)
ROI_HEAD = dict(type="StandardRoIHead",
                bbox_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
                bbox_head=dict(BBOX_HEAD, type="Shared2FCBBoxHead"))
RCNN_TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5,
                                    min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=16, pos_fraction=0.25,
                                   neg_pos_ub=-1, add_gt_as_proposals=True),
                      pos_weight=-1, debug=False)
RCNN_TEST_CFG = dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=10)
MASK_IOU_HEAD = dict(num_convs=2, num_fcs=1, roi_feat_size=4, in_channels=8,
                     conv_out_channels=8, fc_out_channels=8, num_classes=2)
MS_ROI_HEAD = dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                   mask_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
                   mask_head=dict(MASK_HEAD, type="FCNMaskHead"),
                   mask_iou_head=dict(MASK_IOU_HEAD, type="MaskIoUHead"))
MS_RCNN_TRAIN_CFG = dict(RCNN_TRAIN_CFG, mask_size=8, mask_thr_binary=0.5)
GRID_HEAD = dict(grid_points=9, num_convs=2, roi_feat_size=4, in_channels=8,
                 point_feat_channels=4, norm_cfg=dict(type="GN", num_groups=9))
GRID_ROI_HEAD = dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                     bbox_head=dict(BBOX_HEAD, type="Shared2FCBBoxHead", with_reg=False),
                     grid_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
                     grid_head=dict(GRID_HEAD, type="GridHead"))
GRID_RCNN_TRAIN_CFG = dict(RCNN_TRAIN_CFG, pos_radius=1, max_num_grid=192)
COARSE_MASK_HEAD = dict(num_fcs=1, in_channels=8, conv_out_channels=8, fc_out_channels=8,
                        roi_feat_size=4, num_classes=2)
POINT_HEAD = dict(num_fcs=1, in_channels=8, fc_channels=8, num_classes=2)
POINT_REND_ROI_HEAD = dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                           mask_roi_extractor=dict(type="GenericRoIExtractor",
                                                   aggregation="concat", out_channels=8,
                                                   roi_layer=dict(type="SimpleRoIAlign",
                                                                  output_size=4),
                                                   featmap_strides=[8]),
                           mask_head=dict(COARSE_MASK_HEAD, type="CoarseMaskHead"),
                           point_head=dict(POINT_HEAD, type="MaskPointHead"))
POINT_REND_TRAIN_CFG = dict(RCNN_TRAIN_CFG, mask_size=2, num_points=4, oversample_ratio=3,
                            importance_sample_ratio=0.75)
POINT_REND_TEST_CFG = dict(RCNN_TEST_CFG, mask_thr_binary=0.5, subdivision_steps=2,
                           subdivision_num_points=16, scale_factor=2)


def run_roi_extractor(module):
    feats = [torch.randn(2, 8, 4, 4, requires_grad=True), torch.randn(2, 8, 2, 2)]
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0]]), _boxes(3)], dim=1)
    out = module(feats, rois)
    assert out.shape == (3, 8, 4, 4)
    out.sum().backward()
    assert feats[0].grad.abs().sum() > 0


def run_bbox_head(module):
    cls_score, bbox_pred = module(torch.randn(5, 8, 4, 4))
    labels = torch.tensor([0, 1, 2, 2, 1])  # 2: background
    weights = torch.ones(5, 4) * (labels < 2)[:, None]
    rois = torch.cat([torch.zeros(5, 1), _boxes(5)], dim=1)
    losses = module.loss(cls_score, bbox_pred, rois, labels, torch.ones(5), torch.randn(5, 4),
                         weights)
    assert losses["loss_bbox"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    dets, det_labels = module.get_bboxes(rois, cls_score.detach(), bbox_pred.detach(),
                                         dict(img_shape=(32, 32, 3)), cfg=RCNN_TEST_CFG)
    assert dets.shape[1] == 5 and len(dets) == len(det_labels)


def run_roi_head(module):
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _batch()
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert losses["loss_bbox"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert len(module.eval().predict(feats, proposals, batch.metas)) == 2


def run_detector_with_proposals(module):
    batch = _batch()
    for target in batch.targets:
        target["proposals"] = torch.cat([_boxes(10), torch.rand(10, 1)], dim=1)
    losses = module.loss(batch)
    assert losses["loss_bbox"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert len(module.eval().predict(batch)) == 2


def run_two_stage_detector(module):
    batch = _batch()
    losses = module.loss(batch)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "acc"} <= set(losses)
    assert losses["loss_bbox"] > 0 and losses["loss_rpn_bbox"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert len(module.eval().predict(batch)) == 2



CRPN_ANCHORS = dict(type="AnchorGenerator", scales=[2], ratios=[1.0], strides=[8, 16])
CRPN_STAGES = [
    dict(type="StageCascadeRPNHead", in_channels=8, feat_channels=8,
         anchor_generator=CRPN_ANCHORS, adapt_cfg=dict(type="dilation", dilation=3),
         bridged_feature=True, sampling=False, with_cls=False, reg_decoded_bbox=True,
         loss_bbox=dict(type="IoULoss", mode="linear", loss_weight=10.0)),
    dict(type="StageCascadeRPNHead", in_channels=8, feat_channels=8,
         anchor_generator=CRPN_ANCHORS, adapt_cfg=dict(type="offset"), bridged_feature=False,
         sampling=True, with_cls=True, reg_decoded_bbox=True,
         loss_bbox=dict(type="IoULoss", mode="linear", loss_weight=10.0))]
CRPN_TRAIN_CFG = [dict(assigner=dict(type="RegionAssigner", center_ratio=0.2, ignore_ratio=0.5),
                       allowed_border=-1, pos_weight=-1, debug=False),
                  dict(RPN_TRAIN_CFG, allowed_border=-1)]


def run_region_assigner(obj):
    from detlab.models.anchors import AnchorGenerator

    generator = AnchorGenerator(strides=[8, 16], ratios=[1.0], scales=[2])
    anchors = generator.grid_priors([(4, 4), (2, 2)])
    result = obj.assign(torch.cat(anchors), torch.tensor([[2.0, 3.0, 20.0, 22.0]]),
                        num_level_priors=[16, 4], featmap_sizes=[(4, 4), (2, 2)],
                        anchor_scale=2, anchor_strides=[8, 16],
                        valid_flags=torch.ones(20, dtype=torch.bool), img_shape=(32, 32, 3))
    assert result.gt_inds.shape == (20,) and (result.gt_inds > 0).any()


def run_cascade_rpn_head(module):
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _batch()
    losses = module.loss_by_feats(feats, batch.targets, batch.metas)
    assert set(losses) == {"s0.loss_rpn_reg", "s1.loss_rpn_cls", "s1.loss_rpn_reg"}
    assert losses["s1.loss_rpn_reg"] > 0
    sum(losses.values()).backward()
    assert len(module.proposals(feats, batch.metas)) == 2


def run_stage_cascade_rpn_head(module):
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _batch()
    priors = module.get_priors(feats, batch.metas)
    anchors = priors.priors.expand(2, -1, -1)
    from detlab.models.heads.cascade_rpn_head import anchor_offsets

    offsets = anchor_offsets(anchors, module.anchor_strides, [(4, 4), (2, 2)])
    _, cls_scores, bbox_preds = module(feats, offsets)
    gts = module.ground_truths(batch.targets, batch.metas, 2, torch.device("cpu"))
    losses = module.stage_loss(anchors, priors.valid, cls_scores, bbox_preds, gts, batch.metas)
    sum(losses.values()).backward()
    refined = module.refine_anchors(anchors, bbox_preds, batch.metas)
    assert len(module.proposals_from_anchors(refined, cls_scores, bbox_preds, batch.metas)) == 2


GA_RPN_HEAD = dict(
    in_channels=8, feat_channels=8,
    approx_anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                 scales_per_octave=1, ratios=[0.5, 1.0, 2.0], strides=[8, 16]),
    square_anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], scales=[4],
                                 strides=[8, 16]),
    train_cfg=dict(RPN_TRAIN_CFG, allowed_border=-1,
                   ga_assigner=dict(type="ApproxMaxIoUAssigner", pos_iou_thr=0.7,
                                    neg_iou_thr=0.3, min_pos_iou=0.3, ignore_iof_thr=-1),
                   ga_sampler=dict(type="RandomSampler", num=32, pos_fraction=0.5,
                                   neg_pos_ub=-1, add_gt_as_proposals=False),
                   center_ratio=0.2, ignore_ratio=0.5),
    test_cfg=dict(RPN_TEST_CFG, nms_post=20))


def run_ga_rpn_head(module):
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _batch()
    losses = module.loss_by_feats(feats, batch.targets, batch.metas)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_anchor_shape",
                           "loss_anchor_loc"} and losses["loss_rpn_bbox"] > 0
    sum(losses.values()).backward()
    assert len(module.eval().proposals(feats, batch.metas)) == 2


DOUBLE_BBOX_HEAD = dict(in_channels=8, roi_feat_size=4, num_classes=2, num_convs=1, num_fcs=1,
                        conv_out_channels=8, fc_out_channels=8)


def run_double_bbox_head(module):
    x = torch.randn(5, 8, 4, 4)
    cls_score, bbox_pred = module(x, x * 1.5)
    labels = torch.tensor([0, 1, 2, 2, 1])  # 2: background
    weights = torch.ones(5, 4) * (labels < 2)[:, None]
    rois = torch.cat([torch.zeros(5, 1), _boxes(5)], dim=1)
    losses = module.loss(cls_score, bbox_pred, rois, labels, torch.ones(5), torch.randn(5, 4),
                         weights)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()


HTC_SEMANTIC_HEAD = dict(type="FusedSemanticHead", num_ins=2, fusion_level=0, num_convs=1,
                         in_channels=8, conv_out_channels=8, num_classes=3)
HTC_ROI_HEAD = dict(
    num_stages=2, stage_loss_weights=[1, 0.5],
    bbox_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
    bbox_head=dict(BBOX_HEAD, type="Shared2FCBBoxHead", reg_class_agnostic=True),
    mask_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
    mask_head=[dict(MASK_HEAD, type="HTCMaskHead", with_conv_res=False),
               dict(MASK_HEAD, type="HTCMaskHead")],
    semantic_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor", featmap_strides=[8]),
    semantic_head=HTC_SEMANTIC_HEAD)
SCNET_ROI_HEAD = dict(
    num_stages=2, stage_loss_weights=[1, 0.5],
    bbox_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
    bbox_head=dict(BBOX_HEAD, type="SCNetBBoxHead", num_shared_fcs=2, reg_class_agnostic=True),
    mask_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
    mask_head=dict(MASK_HEAD, type="SCNetMaskHead", num_convs=2),
    semantic_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor", featmap_strides=[8]),
    semantic_head=dict(HTC_SEMANTIC_HEAD, type="SCNetSemanticHead", num_convs=2),
    glbctx_head=dict(type="GlobalContextHead", num_convs=2, in_channels=8, conv_out_channels=8,
                     num_classes=2, conv_to_res=True),
    feat_relay_head=dict(type="FeatureRelayHead", in_channels=8, out_conv_channels=8,
                         roi_feat_size=4, scale_factor=1))

COMPONENTS = {
    "ResNet": (dict(depth=18, frozen_stages=-1), run_resnet),
    "FPN": (dict(in_channels=[4, 8], out_channels=8, num_outs=4, add_extra_convs="on_input"),
            run_fpn),
    "RetinaHead": ({k: v for k, v in HEAD.items() if k != "type"}, run_head),
    "RetinaNet": (DETECTOR, run_detector),
    "SingleStageDetector": (DETECTOR, run_detector),
    "FocalLoss": (dict(), run_classification_loss),
    "L1Loss": (dict(), run_regression_loss),
    "SmoothL1Loss": (dict(beta=0.5), run_regression_loss),
    "GIoULoss": (dict(), run_regression_loss),
    "AnchorGenerator": (dict(strides=[8, 16], ratios=[0.5, 2.0], scales=[4.0]),
                        run_anchor_generator),
    "DeltaXYWHBBoxCoder": (dict(target_stds=(0.1, 0.1, 0.2, 0.2)), run_coder),
    "MaxIoUAssigner": (dict(pos_iou_thr=0.5, neg_iou_thr=0.4), run_assigner),
    "PseudoSampler": (dict(), run_sampler),
    "BboxOverlaps2D": (dict(), run_iou),
    # losses
    "CrossEntropyLoss": (dict(use_sigmoid=True), run_classification_loss),
    "IoULoss": (dict(), run_regression_loss),
    "BoundedIoULoss": (dict(), run_regression_loss),
    "DIoULoss": (dict(), run_regression_loss),
    "CIoULoss": (dict(), run_regression_loss),
    "BalancedL1Loss": (dict(), run_regression_loss),
    "MSELoss": (dict(), run_regression_loss),
    "GHMR": (dict(), run_regression_loss),
    "GHMC": (dict(), run_soft_target_loss),
    "VarifocalLoss": (dict(), run_soft_target_loss),
    "KnowledgeDistillationKLDivLoss": (dict(), run_soft_target_loss),
    "QualityFocalLoss": (dict(), run_quality_focal_loss),
    "DistributionFocalLoss": (dict(), run_distribution_focal_loss),
    "GaussianFocalLoss": (dict(), run_gaussian_focal_loss),
    # prior generators
    "MlvlPointGenerator": (dict(strides=[8, 16]), run_prior_generator),
    "LegacyAnchorGenerator": (dict(strides=[8, 16], ratios=[0.5, 2.0], scales=[4.0]),
                              run_prior_generator),
    "SSDAnchorGenerator": (dict(strides=[8, 16], ratios=[[2], [2, 3]], input_size=32,
                                min_sizes=[8, 16], max_sizes=[16, 32]), run_prior_generator),
    "LegacySSDAnchorGenerator": (dict(strides=[8, 16, 32], ratios=[[2], [2, 3], [2]],
                                      input_size=300, basesize_ratio_range=(0.2, 0.9)),
                                 run_prior_generator),
    "YOLOAnchorGenerator": (dict(strides=[8, 16], base_sizes=[[(10, 13), (16, 30)],
                                                              [(30, 61), (62, 45)]]),
                            run_prior_generator),
    # coders
    "TBLRBBoxCoder": (dict(), run_coder),
    "DistancePointBBoxCoder": (dict(clip_border=False), run_point_coder),
    "YOLOBBoxCoder": (dict(), run_yolo_coder),
    "LegacyDeltaXYWHBBoxCoder": (dict(), run_legacy_coder),
    # assigners and samplers
    "ATSSAssigner": (dict(topk=9), run_assigner_with_predictions),
    "SimOTAAssigner": (dict(center_radius=2.5), run_assigner_with_predictions),
    "TaskAlignedAssigner": (dict(topk=13), run_assigner_with_predictions),
    "CenterRegionAssigner": (dict(pos_scale=0.2, neg_scale=0.5, min_pos_iof=0.01),
                             run_assigner_with_predictions),
    "UniformAssigner": (dict(pos_ignore_thr=0.15, neg_ignore_thr=0.7),
                        run_assigner_with_predictions),
    "GridAssigner": (dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0),
                     run_assigner_with_predictions),
    "ApproxMaxIoUAssigner": (dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0),
                             run_assigner_with_predictions),
    "PointAssigner": (dict(scale=4, pos_num=3), run_assigner_with_predictions),
    "RandomSampler": (dict(num=8, pos_fraction=0.5, add_gt_as_proposals=False), run_sampler),
    # GFL
    "GFLHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1, reg_max=4,
                     norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                     anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                           octave_base_scale=4, scales_per_octave=1,
                                           strides=[8, 16]),
                     train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9)),
                     test_cfg=TEST_CFG), run_head),
    "GFL": (dict(DETECTOR, bbox_head=dict(type="GFLHead", num_classes=2, in_channels=8,
                                          feat_channels=8, stacked_convs=1, reg_max=4,
                                          norm_cfg=dict(type="GN", num_groups=4),
                                          anchor_generator=dict(type="AnchorGenerator",
                                                                ratios=[1.0],
                                                                octave_base_scale=4,
                                                                scales_per_octave=1,
                                                                strides=[8, 16])),
                 train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9))),
            run_detector),
    # FCOS
    "FCOSHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                      strides=[8, 16], regress_ranges=[(-1, 16), (16, 1e8)],
                      center_sampling=True, norm_on_bbox=True, centerness_on_reg=True,
                      norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                      loss_bbox=dict(type="GIoULoss", loss_weight=1.0), test_cfg=TEST_CFG),
                 run_head),
    "FCOS": (dict(DETECTOR, bbox_head=dict(type="FCOSHead", num_classes=2, in_channels=8,
                                           feat_channels=8, stacked_convs=1, strides=[8, 16],
                                           regress_ranges=[(-1, 16), (16, 1e8)],
                                           norm_cfg=dict(type="GN", num_groups=4))),
             run_detector),
    # ATSS
    "ATSSHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                      norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                      anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                            octave_base_scale=4, scales_per_octave=1,
                                            strides=[8, 16]),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_stds=(0.1, 0.1, 0.2, 0.2)),
                      loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                      loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                      train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9)),
                      test_cfg=TEST_CFG), run_head),
    "ATSS": (dict(DETECTOR, bbox_head=dict(type="ATSSHead", num_classes=2, in_channels=8,
                                           feat_channels=8, stacked_convs=1,
                                           norm_cfg=dict(type="GN", num_groups=4),
                                           anchor_generator=dict(type="AnchorGenerator",
                                                                 ratios=[1.0],
                                                                 octave_base_scale=4,
                                                                 scales_per_octave=1,
                                                                 strides=[8, 16]),
                                           loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                                           loss_bbox=dict(type="GIoULoss", loss_weight=2.0)),
                  train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9))),
             run_detector),
    # TOOD
    "TOODHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=2,
                      norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                      anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                            octave_base_scale=4, scales_per_octave=1,
                                            strides=[8, 16]),
                      loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, activated=True),
                      loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                      train_cfg=dict(TRAIN_CFG, initial_epoch=4,
                                     initial_assigner=dict(type="ATSSAssigner", topk=9),
                                     assigner=dict(type="TaskAlignedAssigner", topk=13),
                                     alpha=1, beta=6),
                      test_cfg=TEST_CFG), run_head),
    "TOOD": (dict(DETECTOR,
                  bbox_head=dict(type="TOODHead", num_classes=2, in_channels=8,
                                 feat_channels=8, stacked_convs=2,
                                 norm_cfg=dict(type="GN", num_groups=4),
                                 anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                                       octave_base_scale=4,
                                                       scales_per_octave=1, strides=[8, 16]),
                                 loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True,
                                               activated=True),
                                 loss_bbox=dict(type="GIoULoss", loss_weight=2.0)),
                  train_cfg=dict(TRAIN_CFG, initial_epoch=4,
                                 initial_assigner=dict(type="ATSSAssigner", topk=9),
                                 assigner=dict(type="TaskAlignedAssigner", topk=13),
                                 alpha=1, beta=6)),
             run_detector),
    # FreeAnchor (its losses are the two bag terms, not loss_cls / loss_bbox)
    "FreeAnchorRetinaHead": (dict({k: v for k, v in HEAD.items() if k != "type"},
                                  pre_anchor_topk=5),  # the small maps have 20 anchors
                             lambda module: run_bag_head(module)),
    # FoveaBox
    "FoveaHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                       strides=[8, 16], base_edge_list=[16, 32],
                       scale_ranges=((1, 32), (16, 64)),
                       loss_bbox=dict(type="SmoothL1Loss", beta=0.11), test_cfg=TEST_CFG),
                  run_head),
    "FOVEA": (dict(DETECTOR, bbox_head=dict(type="FoveaHead", num_classes=2, in_channels=8,
                                            feat_channels=8, stacked_convs=1, strides=[8, 16],
                                            base_edge_list=[16, 32],
                                            scale_ranges=((1, 32), (16, 64)),
                                            loss_bbox=dict(type="SmoothL1Loss", beta=0.11))),
              run_detector),
    # YOLOX
    "CSPDarknet": (dict(deepen_factor=0.33, widen_factor=0.125), run_resnet),
    "YOLOXPAFPN": (dict(in_channels=[4, 8], out_channels=8, num_csp_blocks=1), run_fpn),
    "YOLOXHead": (dict(num_classes=2, in_channels=8, feat_channels=8, strides=[8, 16],
                       train_cfg=dict(assigner=dict(type="SimOTAAssigner")),
                       test_cfg=dict(score_thr=0.01, nms=dict(type="nms", iou_threshold=0.65))),
                  lambda module: (setattr(module, "use_l1", True), run_head(module))),
    "YOLOX": (dict(backbone=dict(type="CSPDarknet", deepen_factor=0.33, widen_factor=0.125),
                   neck=dict(type="YOLOXPAFPN", in_channels=[32, 64, 128], out_channels=8,
                             num_csp_blocks=1),
                   bbox_head=dict(type="YOLOXHead", num_classes=2, in_channels=8,
                                  feat_channels=8),
                   train_cfg=dict(assigner=dict(type="SimOTAAssigner")),
                   test_cfg=dict(score_thr=0.01, nms=dict(type="nms", iou_threshold=0.65))),
              run_detector),
    # SSD
    "SSDVGG": (dict(depth=11, out_feature_indices=(12, 24)), run_resnet),
    "SSDNeck": (dict(in_channels=(4, 8), out_channels=(4, 8, 8), level_strides=(2,),
                     level_paddings=(1,)),
                run_fpn),
    "SSDHead": (dict(num_classes=2, in_channels=(8, 8),
                     anchor_generator=dict(type="SSDAnchorGenerator", scale_major=False,
                                           strides=[8, 16], ratios=[[2], [2]],
                                           min_sizes=[8, 16], max_sizes=[16, 32]),
                     train_cfg=dict(TRAIN_CFG, neg_pos_ratio=3, smoothl1_beta=1.0),
                     test_cfg=TEST_CFG), run_head),
    # Ascend (NPU) variants: RetinaHead, SSDHead and MaxIoUAssigner under MMDetection's names
    "AscendRetinaHead": ({k: v for k, v in HEAD.items() if k != "type"}, run_head),
    "AscendSSDHead": (dict(num_classes=2, in_channels=(8, 8),
                           anchor_generator=dict(type="SSDAnchorGenerator", scale_major=False,
                                                 strides=[8, 16], ratios=[[2], [2]],
                                                 min_sizes=[8, 16], max_sizes=[16, 32]),
                           train_cfg=dict(TRAIN_CFG, neg_pos_ratio=3, smoothl1_beta=1.0),
                           test_cfg=TEST_CFG), run_head),
    "AscendMaxIoUAssigner": (dict(pos_iou_thr=0.5, neg_iou_thr=0.4), run_assigner),
    # VFNet
    "VFNetHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                       strides=[8, 16], regress_ranges=[(-1, 16), (16, 1e8)],
                       norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                       anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                             octave_base_scale=4, scales_per_octave=1,
                                             center_offset=0.0, strides=[8, 16]),
                       train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9)),
                       test_cfg=TEST_CFG), run_head),
    "VFNet": (dict(DETECTOR, bbox_head=dict(type="VFNetHead", num_classes=2, in_channels=8,
                                            feat_channels=8, stacked_convs=1, strides=[8, 16],
                                            regress_ranges=[(-1, 16), (16, 1e8)],
                                            norm_cfg=dict(type="GN", num_groups=4),
                                            anchor_generator=dict(type="AnchorGenerator",
                                                                  ratios=[1.0],
                                                                  octave_base_scale=4,
                                                                  scales_per_octave=1,
                                                                  center_offset=0.0,
                                                                  strides=[8, 16])),
                  train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9))),
              run_detector),
    # PAA
    "PAAHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                     norm_cfg=dict(type="GN", num_groups=4),
                     anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                           octave_base_scale=4, scales_per_octave=1,
                                           strides=[8, 16]),
                     bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_stds=(0.1, 0.1, 0.2, 0.2)),
                     loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                     loss_bbox=dict(type="GIoULoss", loss_weight=1.3),
                     train_cfg=dict(TRAIN_CFG, assigner=PAA_ASSIGNER), test_cfg=TEST_CFG),
                run_head),
    "PAA": (dict(DETECTOR, bbox_head=dict(type="PAAHead", num_classes=2, in_channels=8,
                                          feat_channels=8, stacked_convs=1,
                                          norm_cfg=dict(type="GN", num_groups=4),
                                          anchor_generator=dict(type="AnchorGenerator",
                                                                ratios=[1.0],
                                                                octave_base_scale=4,
                                                                scales_per_octave=1,
                                                                strides=[8, 16]),
                                          loss_cls=dict(type="FocalLoss", use_sigmoid=True),
                                          loss_bbox=dict(type="GIoULoss", loss_weight=1.3)),
                 train_cfg=dict(TRAIN_CFG, assigner=PAA_ASSIGNER)),
            run_detector),
    # YOLOv3
    "Darknet": (dict(out_indices=(4, 5)), run_resnet),
    "YOLOV3Neck": (dict(num_scales=2, in_channels=[8, 4], out_channels=[4, 2]), run_fpn),
    "YOLOV3Head": (YOLO_HEAD, lambda module: run_yolo_head(module)),
    "YOLOV3": (dict(backbone=dict(type="Darknet", out_indices=(4, 5)),
                    neck=dict(type="YOLOV3Neck", num_scales=2, in_channels=[1024, 512],
                              out_channels=[8, 8]),
                    bbox_head=dict(type="YOLOV3Head", **{k: v for k, v in YOLO_HEAD.items()
                                                         if not k.endswith("_cfg")}),
                    train_cfg=YOLO_HEAD["train_cfg"], test_cfg=YOLO_HEAD["test_cfg"]),
               lambda module: run_yolo_detector(module)),
    # MobileNetV2 (SSDlite, YOLOv3-MobileNetV2)
    "MobileNetV2": (dict(widen_factor=0.25, out_indices=(6, 7)), run_resnet),
    # ResNeXt
    "ResNeXt": (dict(depth=50, groups=4, base_width=4, num_stages=2, strides=(1, 2),
                     dilations=(1, 1), out_indices=(0, 1), frozen_stages=-1), run_resnet),
    "ResNetV1d": (dict(depth=18, num_stages=2, strides=(1, 2), dilations=(1, 1),
                       out_indices=(0, 1), frozen_stages=-1), run_resnet),
    # YOLOF
    "DilatedEncoder": (dict(in_channels=8, out_channels=8, block_mid_channels=4,
                            num_residual_blocks=2, block_dilations=[2, 4]), run_fpn),
    "YOLOFHead": (YOLOF_HEAD, lambda module: run_one_level_head(module)),
    "YOLOF": (dict(backbone=dict(type="ResNet", depth=18, num_stages=2, strides=(1, 2),
                                 dilations=(1, 1), out_indices=(1,), frozen_stages=-1),
                   neck=dict(type="DilatedEncoder", in_channels=128, out_channels=8,
                             block_mid_channels=4, num_residual_blocks=1, block_dilations=[2]),
                   bbox_head=dict(type="YOLOFHead", **{k: v for k, v in YOLOF_HEAD.items()
                                                      if not k.endswith("_cfg")}),
                   train_cfg=YOLOF_HEAD["train_cfg"], test_cfg=TEST_CFG),
              run_detector),
    # AutoAssign (losses loss_pos / loss_neg / loss_center)
    "AutoAssignHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
                            strides=[8, 16], norm_cfg=dict(type="GN", num_groups=4),
                            loss_bbox=dict(type="GIoULoss", loss_weight=5.0),
                            test_cfg=TEST_CFG),
                       lambda module: run_autoassign(module)),
    "AutoAssign": (dict(DETECTOR, bbox_head=dict(type="AutoAssignHead", num_classes=2,
                                                 in_channels=8, feat_channels=8,
                                                 stacked_convs=1, strides=[8, 16],
                                                 norm_cfg=dict(type="GN", num_groups=4)),
                        train_cfg=None),
                   lambda module: run_autoassign(module)),
    # EfficientNet
    "EfficientNet": (dict(arch="b0", out_indices=(2, 3)), run_resnet),
    # FSAF
    "FSAFHead": (FSAF_HEAD, run_head),
    "FSAF": (dict(DETECTOR, bbox_head=dict({k: v for k, v in FSAF_HEAD.items()
                                            if k not in ("train_cfg", "test_cfg")},
                                           type="FSAFHead"),
                  train_cfg=FSAF_HEAD["train_cfg"]), run_detector),
    # DDOD
    "DDODHead": (DDOD_HEAD, run_head),
    "DDOD": (dict(DETECTOR, bbox_head=dict({k: v for k, v in DDOD_HEAD.items()
                                            if k not in ("train_cfg", "test_cfg")},
                                           type="DDODHead"),
                  train_cfg=DDOD_HEAD["train_cfg"]), run_detector),
    # NAS-FPN: RetinaSepBNHead, NASFPN
    "RetinaSepBNHead": (dict({k: v for k, v in HEAD.items() if k != "type"}, num_ins=2,
                             norm_cfg=dict(type="BN", requires_grad=True)), run_head),
    "NASFPN": (dict(in_channels=[4, 8], out_channels=8, num_outs=5, stack_times=1,
                    norm_cfg=dict(type="BN", requires_grad=True)), run_fpn),
    # CenterNet
    "CTResNetNeck": (dict(in_channel=8, num_deconv_filters=(8, 4), num_deconv_kernels=(4, 4)),
                     run_fpn),
    "CenterNetHead": (CENTERNET_HEAD, lambda module: run_one_level_head(module)),
    "CenterNet": (dict(backbone=dict(type="ResNet", depth=18, num_stages=2, strides=(1, 2),
                                     dilations=(1, 1), out_indices=(1,), frozen_stages=-1),
                       neck=dict(type="CTResNetNeck", in_channel=128, num_deconv_filters=(8,),
                                 num_deconv_kernels=(4,)),
                       bbox_head=dict(type="CenterNetHead", in_channel=8, feat_channel=8,
                                      num_classes=2),
                       test_cfg=CENTERNET_HEAD["test_cfg"]),
                  lambda module: run_one_level_detector(module)),
    # NAS-FCOS
    "NASFCOS_FPN": (dict(in_channels=[4, 8, 8, 8], out_channels=8, num_outs=4,
                         norm_cfg=dict(type="BN"), conv_cfg=dict(type="DCNv2", deform_groups=2)),
                    lambda module: run_nasfcos_fpn(module)),
    "NASFCOSHead": (dict(num_classes=2, in_channels=8, feat_channels=8, strides=[8, 16],
                         regress_ranges=[(-1, 16), (16, 1e8)],
                         norm_cfg=dict(type="GN", num_groups=4), test_cfg=TEST_CFG), run_head),
    "NASFCOS": (dict(backbone=dict(type="ResNet", depth=18, frozen_stages=-1),
                     neck=dict(type="NASFCOS_FPN", in_channels=[64, 128, 256, 512],
                               out_channels=8, num_outs=3, norm_cfg=dict(type="BN"),
                               conv_cfg=dict(type="DCNv2", deform_groups=2)),
                     bbox_head=dict(type="NASFCOSHead", num_classes=2, in_channels=8,
                                    feat_channels=8, strides=[8, 16, 32],
                                    regress_ranges=[(-1, 16), (16, 32), (32, 1e8)],
                                    norm_cfg=dict(type="GN", num_groups=4)),
                     test_cfg=TEST_CFG),
                run_detector),
    # RepPoints
    "RepPointsHead": (REPPOINTS_HEAD, lambda module: run_reppoints(module)),
    "RepPointsDetector": (dict(DETECTOR, bbox_head=dict({k: v for k, v in REPPOINTS_HEAD.items()
                                                         if not k.endswith("_cfg")},
                                                        type="RepPointsHead"),
                               train_cfg=REPPOINTS_HEAD["train_cfg"]),
                          lambda module: run_reppoints(module)),
    # SABL RetinaNet
    "SABLRetinaHead": (SABL_HEAD, lambda module: run_sabl_head(module)),
    "BucketingBBoxCoder": (dict(num_buckets=14, scale_factor=3.0),
                           lambda coder: run_bucketing_coder(coder)),
    # LD (knowledge distillation): the head takes the teacher's regression maps
    "LDHead": (dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1, reg_max=4,
                    norm_cfg=dict(type="GN", num_groups=4),
                    anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                          octave_base_scale=4, scales_per_octave=1,
                                          strides=[8, 16]),
                    train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9)),
                    test_cfg=TEST_CFG), lambda module: run_ld_head(module)),
    "KnowledgeDistillationSingleStageDetector": (
        dict(DETECTOR, bbox_head=dict(LD_GFL_HEAD, type="LDHead"),
             train_cfg=dict(TRAIN_CFG, assigner=dict(type="ATSSAssigner", topk=9)),
             teacher_config=dict(model=dict(DETECTOR, type="GFL",
                                            bbox_head=dict(LD_GFL_HEAD, type="GFLHead"),
                                            train_cfg=None))),
        lambda module: run_kd_detector(module)),
    # LAD (label assignment distillation): the head learns on a teacher's PAA assignment
    "LADHead": (dict(LAD_HEAD, train_cfg=dict(TRAIN_CFG, assigner=PAA_ASSIGNER),
                     test_cfg=TEST_CFG), run_head),
    "LAD": (dict(DETECTOR, bbox_head=dict(LAD_HEAD, type="LADHead"),
                 teacher_backbone=DETECTOR["backbone"], teacher_neck=DETECTOR["neck"],
                 teacher_bbox_head=dict(LAD_HEAD, type="LADHead"), teacher_ckpt=None,
                 train_cfg=dict(TRAIN_CFG, assigner=PAA_ASSIGNER)),
            lambda module: run_kd_detector(module)),
    # PISA: ISR-P reweighting and the CARL loss on RetinaNet's and SSD's heads
    "PISARetinaHead": (dict({k: v for k, v in HEAD.items() if k != "type"},
                            train_cfg=dict(TRAIN_CFG, **PISA_TRAIN_CFG)), run_head),
    "PISASSDHead": (dict(num_classes=2, in_channels=(8, 8),
                         anchor_generator=dict(type="SSDAnchorGenerator", scale_major=False,
                                               strides=[8, 16], ratios=[[2], [2]],
                                               min_sizes=[8, 16], max_sizes=[16, 32]),
                         train_cfg=dict(TRAIN_CFG, neg_pos_ratio=3, smoothl1_beta=1.0,
                                        **PISA_TRAIN_CFG),
                         test_cfg=TEST_CFG), run_head),
    # Guided Anchoring RetinaNet
    "GARetinaHead": (GA_RETINA_HEAD, lambda module: run_ga_head(module)),
    # RPN
    "RPNHead": (dict(RPN_HEAD, train_cfg=RPN_TRAIN_CFG, test_cfg=RPN_TEST_CFG), run_rpn_head),
    "RPN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                 rpn_head=dict(RPN_HEAD, type="RPNHead"),
                 train_cfg=dict(rpn=RPN_TRAIN_CFG), test_cfg=dict(rpn=RPN_TEST_CFG)),
            run_rpn_detector),
    # Faster R-CNN: RoI extractor, box heads, StandardRoIHead, two-stage detectors
    "SingleRoIExtractor": (ROI_EXTRACTOR, lambda module: run_roi_extractor(module)),
    "BBoxHead": (dict(in_channels=8, roi_feat_size=4, num_classes=2, with_avg_pool=True),
                 lambda module: run_bbox_head(module)),
    "ConvFCBBoxHead": (dict(BBOX_HEAD, num_shared_convs=1, num_cls_fcs=1, num_reg_convs=1,
                            num_reg_fcs=1, conv_out_channels=8),
                       lambda module: run_bbox_head(module)),
    "Shared2FCBBoxHead": (BBOX_HEAD, lambda module: run_bbox_head(module)),
    "Shared4Conv1FCBBoxHead": (dict(BBOX_HEAD, conv_out_channels=8,
                                    norm_cfg=dict(type="GN", num_groups=4)),
                               lambda module: run_bbox_head(module)),
    "StandardRoIHead": (dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                             train_cfg=RCNN_TRAIN_CFG, test_cfg=RCNN_TEST_CFG),
                        lambda module: run_roi_head(module)),
    "TwoStageDetector": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                              roi_head=ROI_HEAD, train_cfg=dict(rcnn=RCNN_TRAIN_CFG),
                              test_cfg=dict(rcnn=RCNN_TEST_CFG)),
                         lambda module: run_detector_with_proposals(module)),
    "FasterRCNN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                        rpn_head=dict(RPN_HEAD, type="RPNHead"), roi_head=ROI_HEAD,
                        train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                       rcnn=RCNN_TRAIN_CFG),
                        test_cfg=dict(rpn=RPN_TEST_CFG, rcnn=RCNN_TEST_CFG)),
                   lambda module: run_two_stage_detector(module)),
    "SeesawLoss": (dict(num_classes=2), lambda module: run_seesaw_loss(module)),
    "DoubleConvFCBBoxHead": (DOUBLE_BBOX_HEAD, lambda module: run_double_bbox_head(module)),
    "DoubleHeadRoIHead": (dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                               reg_roi_scale_factor=1.3,
                               bbox_head=dict(DOUBLE_BBOX_HEAD, type="DoubleConvFCBBoxHead"),
                               train_cfg=RCNN_TRAIN_CFG, test_cfg=RCNN_TEST_CFG),
                          lambda module: run_roi_head(module)),
    "GenericRoIExtractor": (dict(ROI_EXTRACTOR, aggregation="sum",
                                 pre_cfg=dict(type="ConvModule", in_channels=8, out_channels=8,
                                              kernel_size=3, padding=1, inplace=False),
                                 post_cfg=dict(type="ConvModule", in_channels=8,
                                               out_channels=8, kernel_size=1)),
                            lambda module: run_roi_extractor(module)),
    "OHEMSampler": (dict(num=8, pos_fraction=0.25,
                         context=MODELS.build(dict(ROI_HEAD, train_cfg=None, test_cfg=None))),
                    lambda obj: run_ohem_sampler(obj)),
    "FastRCNN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"], roi_head=ROI_HEAD,
                      train_cfg=dict(rcnn=RCNN_TRAIN_CFG), test_cfg=dict(rcnn=RCNN_TEST_CFG)),
                 lambda module: run_detector_with_proposals(module)),
    "ResLayer": (dict(depth=18, stage=1, style="caffe"),
                 lambda module: _backward_through(module, module(torch.randn(3, 64, 8, 8)))),
    # Mask R-CNN: FCNMaskHead, MaskRCNN (RoI features 4 x 4 -> masks 8 x 8)
    "FCNMaskHead": (MASK_HEAD, lambda module: run_mask_head(module)),
    "MaskRCNN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                      rpn_head=dict(RPN_HEAD, type="RPNHead"),
                      roi_head=dict(ROI_HEAD, mask_roi_extractor=dict(
                          ROI_EXTRACTOR, type="SingleRoIExtractor"),
                          mask_head=dict(MASK_HEAD, type="FCNMaskHead")),
                      train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                     rcnn=dict(RCNN_TRAIN_CFG, mask_size=8)),
                      test_cfg=dict(rpn=RPN_TEST_CFG,
                                    rcnn=dict(RCNN_TEST_CFG, mask_thr_binary=0.5))),
                 lambda module: run_mask_rcnn(module)),
    # Cascade RPN
    "RegionAssigner": (dict(center_ratio=0.2, ignore_ratio=0.5), run_region_assigner),
    "StageCascadeRPNHead": (dict({k: v for k, v in CRPN_STAGES[1].items() if k != "type"},
                                 train_cfg=CRPN_TRAIN_CFG[1], test_cfg=RPN_TEST_CFG),
                            run_stage_cascade_rpn_head),
    "CascadeRPNHead": (dict(num_stages=2, stages=CRPN_STAGES, train_cfg=CRPN_TRAIN_CFG,
                            test_cfg=RPN_TEST_CFG), run_cascade_rpn_head),
    # Guided-anchoring RPN
    "GARPNHead": (GA_RPN_HEAD, run_ga_rpn_head),
    # Mask Scoring R-CNN: MaskIoUHead (4 x 4 RoI features, 8 x 8 masks), its RoI head, detector
    "MaskIoUHead": (MASK_IOU_HEAD, lambda module: run_mask_iou_head(module)),
    "MaskScoringRoIHead": (dict(MS_ROI_HEAD, train_cfg=MS_RCNN_TRAIN_CFG,
                                test_cfg=dict(RCNN_TEST_CFG, mask_thr_binary=0.5)),
                           lambda module: run_mask_scoring_roi_head(module)),
    "MaskScoringRCNN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                             rpn_head=dict(RPN_HEAD, type="RPNHead"),
                             roi_head=dict(MS_ROI_HEAD, type="MaskScoringRoIHead"),
                             train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                            rcnn=MS_RCNN_TRAIN_CFG),
                             test_cfg=dict(rpn=RPN_TEST_CFG,
                                           rcnn=dict(RCNN_TEST_CFG, mask_thr_binary=0.5))),
                        lambda module: run_mask_scoring_rcnn(module)),
    # Grid R-CNN: GridHead (4 x 4 RoI features, 9 points of 4 channels), its RoI head, detector
    "GridHead": (GRID_HEAD, lambda module: run_grid_head(module)),
    "GridRoIHead": (dict(GRID_ROI_HEAD, train_cfg=GRID_RCNN_TRAIN_CFG, test_cfg=RCNN_TEST_CFG),
                    lambda module: run_grid_roi_head(module)),
    "GridRCNN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                      rpn_head=dict(RPN_HEAD, type="RPNHead"),
                      roi_head=dict(GRID_ROI_HEAD, type="GridRoIHead"),
                      train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                     rcnn=GRID_RCNN_TRAIN_CFG),
                      test_cfg=dict(rpn=RPN_TEST_CFG, rcnn=RCNN_TEST_CFG)),
                 lambda module: run_grid_rcnn(module)),
    # PointRend: CoarseMaskHead (2 x 2 masks), MaskPointHead, PointRendRoIHead, PointRend
    "CoarseMaskHead": (COARSE_MASK_HEAD, lambda module: run_coarse_mask_head(module)),
    "MaskPointHead": (POINT_HEAD, lambda module: run_mask_point_head(module)),
    "PointRendRoIHead": (dict(POINT_REND_ROI_HEAD, train_cfg=POINT_REND_TRAIN_CFG,
                              test_cfg=POINT_REND_TEST_CFG),
                         lambda module: run_point_rend_roi_head(module)),
    "PointRend": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                       rpn_head=dict(RPN_HEAD, type="RPNHead"),
                       roi_head=dict(POINT_REND_ROI_HEAD, type="PointRendRoIHead"),
                       train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                      rcnn=POINT_REND_TRAIN_CFG),
                       test_cfg=dict(rpn=RPN_TEST_CFG, rcnn=POINT_REND_TEST_CFG)),
                  lambda module: run_mask_rcnn(module)),
    # Cascade R-CNN: CascadeRoIHead (two stages, masks), CascadeRCNN
    "CascadeRoIHead": (dict(num_stages=2, stage_loss_weights=[1, 0.5],
                            bbox_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
                            bbox_head=[dict(BBOX_HEAD, type="Shared2FCBBoxHead",
                                            reg_class_agnostic=True),
                                       dict(BBOX_HEAD, type="Shared2FCBBoxHead")],
                            mask_roi_extractor=dict(ROI_EXTRACTOR, type="SingleRoIExtractor"),
                            mask_head=dict(MASK_HEAD, type="FCNMaskHead"),
                            train_cfg=[dict(RCNN_TRAIN_CFG, mask_size=8)] * 2,
                            test_cfg=dict(RCNN_TEST_CFG, mask_thr_binary=0.5)),
                       lambda module: run_cascade_roi_head(module)),
    "CascadeRCNN": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                         rpn_head=dict(RPN_HEAD, type="RPNHead"),
                         roi_head=dict(type="CascadeRoIHead", num_stages=2,
                                       stage_loss_weights=[1, 0.5],
                                       bbox_roi_extractor=dict(ROI_EXTRACTOR,
                                                               type="SingleRoIExtractor"),
                                       bbox_head=dict(BBOX_HEAD, type="Shared2FCBBoxHead",
                                                      reg_class_agnostic=True)),
                         train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                        rcnn=[RCNN_TRAIN_CFG] * 2),
                         test_cfg=dict(rpn=RPN_TEST_CFG, rcnn=RCNN_TEST_CFG)),
                    lambda module: run_cascade_rcnn(module)),
    # Libra R-CNN: BFP, balanced samplers; Dynamic R-CNN; PISA R-CNN (ScoreHLRSampler)
    "BFP": (dict(in_channels=8, num_levels=3, refine_level=1, refine_type="conv"),
            lambda module: run_bfp(module)),
    "CombinedSampler": (dict(num=8, pos_fraction=0.25, add_gt_as_proposals=False,
                             pos_sampler=dict(type="InstanceBalancedPosSampler"),
                             neg_sampler=dict(type="IoUBalancedNegSampler", floor_thr=-1,
                                              floor_fraction=0, num_bins=3)), run_sampler),
    "InstanceBalancedPosSampler": (dict(num=8, pos_fraction=0.5, add_gt_as_proposals=False),
                                   run_sampler),
    "IoUBalancedNegSampler": (dict(num=8, pos_fraction=0.25, floor_thr=0.1, floor_fraction=0.5,
                                   add_gt_as_proposals=False), run_sampler),
    "ScoreHLRSampler": (dict(num=8, pos_fraction=0.25,
                             context=MODELS.build(dict(ROI_HEAD, train_cfg=None, test_cfg=None))),
                        lambda obj: run_score_hlr_sampler(obj)),
    "DynamicRoIHead": (dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                            bbox_head=dict(ROI_HEAD["bbox_head"], loss_bbox=dict(
                                type="SmoothL1Loss", beta=1.0, loss_weight=1.0)),
                            train_cfg=dict(RCNN_TRAIN_CFG, dynamic_rcnn=dict(
                                iou_topk=5, beta_topk=2, update_iter_interval=1,
                                initial_iou=0.4, initial_beta=1.0)),
                            test_cfg=RCNN_TEST_CFG),
                       lambda module: run_roi_head(module)),
    "PISARoIHead": (dict({k: v for k, v in ROI_HEAD.items() if k != "type"},
                         train_cfg=dict(RCNN_TRAIN_CFG, sampler=dict(
                             type="ScoreHLRSampler", num=16, pos_fraction=0.25, k=0.5, bias=0.0,
                             score_thr=0.0), isr=dict(k=2, bias=0), carl=dict(k=1, bias=0.2)),
                         test_cfg=RCNN_TEST_CFG),
                    lambda module: run_roi_head(module)),
    # plugins (ResNet plugins=, BFP's refine, GRoIE's post_cfg)
    "ContextBlock": (dict(in_channels=8, ratio=0.5, fusion_types=("channel_add", "channel_mul")),
                     lambda module: run_plugin(module)),
    "GeneralizedAttention": (dict(in_channels=8, num_heads=2, attention_type="1111"),
                             lambda module: run_plugin(module)),
    "NonLocal2d": (dict(in_channels=8), lambda module: run_plugin(module)),
    "DropBlock": (dict(drop_prob=0.5, block_size=3, warmup_iters=0),
                  lambda module: run_plugin(module)),
    # SABL R-CNN's side-aware box head (M2)
    "SABLHead": (dict(num_classes=2, cls_in_channels=8, reg_in_channels=8, roi_feat_size=4,
                      cls_out_channels=8, reg_offset_out_channels=8, reg_cls_out_channels=8,
                      bbox_coder=dict(type="BucketingBBoxCoder", num_buckets=8,
                                      scale_factor=1.7)),
                 lambda module: run_sabl_bbox_head(module)),
    # TridentNet (M2): a ResNet-50 C4 whose third stage runs three weight-sharing branches
    "TridentResNet": (dict(depth=50, num_branch=3, test_branch_idx=1, trident_dilations=(1, 2, 3),
                      num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                      out_indices=(2,), frozen_stages=-1, style="caffe"),
                      run_resnet),
    "TridentRoIHead": (dict({k: v for k, v in ROI_HEAD.items() if k != "type"}, num_branch=3,
                            test_branch_idx=1, train_cfg=RCNN_TRAIN_CFG,
                            test_cfg=RCNN_TEST_CFG),
                       lambda module: run_roi_head(module)),
    "TridentFasterRCNN": (dict(
        backbone=dict(type="TridentResNet", depth=50, num_branch=3, test_branch_idx=1,
                      trident_dilations=(1, 2, 3), num_stages=3, strides=(1, 2, 2),
                      dilations=(1, 1, 1), out_indices=(2,), frozen_stages=-1, style="caffe"),
        rpn_head=dict(RPN_HEAD, type="RPNHead", in_channels=1024, anchor_generator=dict(
            RPN_HEAD["anchor_generator"], scales=[1], strides=[16])),
        roi_head=dict(ROI_HEAD, type="TridentRoIHead", num_branch=3, test_branch_idx=1,
                      bbox_roi_extractor=dict(ROI_HEAD["bbox_roi_extractor"], out_channels=1024,
                                              featmap_strides=[16]),
                      bbox_head=dict(ROI_HEAD["bbox_head"], in_channels=1024)),
        train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG, rcnn=RCNN_TRAIN_CFG),
        test_cfg=dict(rpn=RPN_TEST_CFG, rcnn=RCNN_TEST_CFG)),
        lambda module: run_two_stage_detector(module)),
    # (M2 end)
    # Hybrid Task Cascade (M1): HTCMaskHead, FusedSemanticHead, HybridTaskCascadeRoIHead (two
    # stages, semantic branch, interleaved, mask information flow), HybridTaskCascade
    "HTCMaskHead": (dict(MASK_HEAD, with_conv_res=True), lambda module: run_htc_mask_head(module)),
    "FusedSemanticHead": ({k: v for k, v in HTC_SEMANTIC_HEAD.items() if k != "type"},
                          lambda module: run_fused_semantic_head(module)),
    "HybridTaskCascadeRoIHead": (dict(HTC_ROI_HEAD,
                                      train_cfg=[dict(RCNN_TRAIN_CFG, mask_size=8)] * 2,
                                      test_cfg=dict(RCNN_TEST_CFG, mask_thr_binary=0.5)),
                                 lambda module: run_htc_roi_head(module)),
    "HybridTaskCascade": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                               rpn_head=dict(RPN_HEAD, type="RPNHead"),
                               roi_head=dict(HTC_ROI_HEAD, type="HybridTaskCascadeRoIHead"),
                               train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                              rcnn=[dict(RCNN_TRAIN_CFG, mask_size=8)] * 2),
                               test_cfg=dict(rpn=RPN_TEST_CFG,
                                             rcnn=dict(RCNN_TEST_CFG, mask_thr_binary=0.5))),
                          lambda module: run_htc(module)),
    # SCNet (M1): SCNetBBoxHead, SCNetMaskHead, SCNetSemanticHead, GlobalContextHead,
    # FeatureRelayHead, SCNetRoIHead (two stages, every branch), SCNet
    "SCNetBBoxHead": (dict(BBOX_HEAD, num_shared_fcs=2, fc_out_channels=8),
                      lambda module: run_scnet_bbox_head(module)),
    "SCNetMaskHead": (dict(MASK_HEAD, num_convs=2, conv_to_res=True),
                      lambda module: run_mask_head(module)),
    "SCNetSemanticHead": (dict({k: v for k, v in HTC_SEMANTIC_HEAD.items() if k != "type"},
                               num_convs=2, conv_to_res=True),
                          lambda module: run_fused_semantic_head(module)),
    "GlobalContextHead": (dict(num_convs=2, in_channels=8, conv_out_channels=8, num_classes=2,
                               conv_to_res=True), lambda module: run_glbctx_head(module)),
    "FeatureRelayHead": (dict(in_channels=8, out_conv_channels=4, roi_feat_size=2,
                              scale_factor=2), lambda module: run_feat_relay_head(module)),
    "SCNetRoIHead": (dict(SCNET_ROI_HEAD, train_cfg=[dict(RCNN_TRAIN_CFG, mask_size=8)] * 2,
                          test_cfg=dict(RCNN_TEST_CFG, mask_thr_binary=0.5)),
                     lambda module: run_scnet_roi_head(module)),
    "SCNet": (dict(backbone=DETECTOR["backbone"], neck=DETECTOR["neck"],
                   rpn_head=dict(RPN_HEAD, type="RPNHead"),
                   roi_head=dict(SCNET_ROI_HEAD, type="SCNetRoIHead"),
                   train_cfg=dict(rpn=RPN_TRAIN_CFG, rpn_proposal=RPN_TEST_CFG,
                                  rcnn=[dict(RCNN_TRAIN_CFG, mask_size=8)] * 2),
                   test_cfg=dict(rpn=RPN_TEST_CFG,
                                 rcnn=dict(RCNN_TEST_CFG, mask_thr_binary=0.5))),
              lambda module: run_scnet(module)),
    # Res2Net
    "Res2Net": (dict(depth=50, scales=2, base_width=8, base_channels=8, stem_channels=8,
                     num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(0, 1)),
                run_resnet),
    # RegNet (a three-stage design: widths 16 / 32 / 64, groups of 8 channels)
    "RegNet": (dict(arch=dict(w0=16, wa=12.0, wm=2.0, group_w=8, depth=6, bot_mul=1.0),
                    strides=(2, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2),
                    frozen_stages=-1), run_resnet),
    # PAFPN
    "PAFPN": (dict(in_channels=[4, 8], out_channels=8, num_outs=3, add_extra_convs="on_output"),
              run_fpn),
    # HRNet (four stages, one block per branch) and HRFPN
    "HRNet": (dict(extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,),
                    num_channels=(4,)),
        stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1),
                    num_channels=(4, 8)),
        stage3=dict(num_modules=1, num_branches=3, block="BASIC", num_blocks=(1, 1, 1),
                    num_channels=(4, 8, 16)),
        stage4=dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1),
                    num_channels=(4, 8, 16, 32)))), run_resnet),
    "HRFPN": (dict(in_channels=[4, 8], out_channels=8, num_outs=3), run_fpn),
    # ResNeSt
    "ResNeSt": (dict(depth=50, num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(0, 1),
                     stem_channels=8, base_channels=8, radix=2, reduction_factor=4),
                run_resnet),
    # SwinTransformer (two stages, 3x3 windows: shifted windows and padding on a 32x32 input)
    "SwinTransformer": (dict(embed_dims=8, depths=(2, 2), num_heads=(1, 2), strides=(4, 2),
                             window_size=3, out_indices=(0, 1), use_abs_pos_embed=True,
                             pretrain_img_size=32), run_resnet),
    # DyHead (two blocks over three levels; its GN has 16 groups)
    "DyHead": (dict(in_channels=16, out_channels=16, num_blocks=2), run_dyhead),
    # FPG (two bottom-up pathways over three levels; a top-down one would leave the
    # same_up transitions MMDetection builds for it unused)
    "FPG": (dict(in_channels=[4, 8], out_channels=8, num_outs=3, stack_times=2,
                 paths=["bu", "bu"],
                 across_down_trans=dict(type="interpolation_conv", kernel_size=3)), run_fpn),
    # FPN_CARAFE (CARAFE upsampling, one extra level)
    "FPN_CARAFE": (dict(in_channels=[4, 8], out_channels=8, num_outs=3,
                        upsample_cfg=dict(type="carafe", up_kernel=3, compressed_channels=4)),
                   run_fpn),
    # ChannelMapper (two extra levels)
    "ChannelMapper": (dict(in_channels=[4, 8], out_channels=8, num_outs=4), run_fpn),
    # PyramidVisionTransformer / V2 (8-wide embeddings, one or two layers per stage)
    "PyramidVisionTransformer": (dict(embed_dims=8, num_layers=[1, 2, 1, 1],
                                      num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2],
                                      pretrain_img_size=32, drop_path_rate=0.0), run_resnet),
    "PyramidVisionTransformerV2": (dict(embed_dims=8, num_layers=[1, 1, 1, 1],
                                        num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2]),
                                   run_resnet),
}


def _detlab_components():
    return sorted(name for name, obj in MODELS.module_dict.items()
                  if getattr(obj, "__module__", "").startswith("detlab.models"))


def test_every_registered_component_is_covered():
    assert _detlab_components() == sorted(COMPONENTS)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_builds_runs_and_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    cfg, run = COMPONENTS[name]
    obj = MODELS.build(dict(type=name, **cfg))
    if isinstance(obj, nn.Module):
        obj.train()
    run(obj)
    if isinstance(obj, nn.Module):
        missing = [n for n, p in obj.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}: no gradient for {missing}"
        assert all(torch.isfinite(p.grad).all() for p in obj.parameters() if p.grad is not None)


def run_bag_head(module):
    """FreeAnchor's head: both bag losses positive, a gradient to both branches."""
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_positive_bag", "loss_negative_bag"}
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_yolo_head(module):
    """YOLOv3's head: levels coarsest first, the four losses positive."""
    raw = module([torch.randn(2, 8, 2, 2), torch.randn(2, 8, 4, 4)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_cls", "loss_conf", "loss_xy", "loss_wh"}
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_yolo_detector(module):
    batch = _batch()
    losses = module.loss(batch)
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.eval().predict(batch)) == 2


def run_one_level_head(module):
    """A one-level head (YOLOF, CenterNet): every loss positive with an object, detections."""
    raw = module([torch.randn(2, 8, 4, 4)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_autoassign(module):
    """AutoAssign's head or detector: its three losses positive, a gradient to the center
    prior too, detections."""
    batch = _batch()
    if hasattr(module, "backbone"):
        losses = module.loss(batch)
    else:
        raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
        losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_pos", "loss_neg", "loss_center"}
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    if hasattr(module, "backbone"):
        assert len(module.eval().predict(batch)) == 2
    else:
        assert len(module.predict(raw, batch.metas)) == 2


def run_one_level_detector(module):
    """A detector of a one-level head whose losses are not loss_cls / loss_bbox (CenterNet)."""
    batch = _batch()
    losses = module.loss(batch)
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.eval().predict(batch)) == 2


def run_nasfcos_fpn(module):
    """NAS-FCOS's pyramid reads backbone levels 1..3 (of four) and adds one extra level."""
    inputs = [torch.randn(2, c, 32 // 2 ** i, 32 // 2 ** i) for i, c in enumerate([4, 8, 8, 8])]
    outputs = module(inputs)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    _backward_through(module, outputs)


def run_reppoints(module):
    """RepPoints' head or detector: the three losses positive (so moment_transfer, which only
    the point losses reach, gets a gradient), detections."""
    batch = _batch()
    if hasattr(module, "bbox_head"):
        losses = module.loss(batch)
    else:
        raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
        losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_cls", "loss_pts_init", "loss_pts_refine"}
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    if hasattr(module, "bbox_head"):
        assert len(module.eval().predict(batch)) == 2
    else:
        assert len(module.predict(raw, batch.metas)) == 2


def run_sabl_head(module):
    """SABL's head: the three losses positive, a gradient to all three branches, detections."""
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_cls", "loss_bbox_cls", "loss_bbox_reg"}
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_bucketing_coder(coder):
    """The bucketing coder decodes its own targets (one-hot buckets, exact offsets)."""
    priors = _boxes(4)
    gts = priors + torch.randn(4, 4) * 0.5
    offsets, _, labels, _ = coder.encode(priors, gts)
    boxes, confidence = coder.decode(priors, (labels * 20.0, offsets))
    torch.testing.assert_close(boxes, gts, atol=1e-3, rtol=1e-4)
    assert confidence.shape == (4,)



def run_ld_head(module):
    """LD's head: the distillation loss against another head's maps (here: random ones)."""
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    soft = [torch.randn_like(m) for m in raw[1]]
    losses = module.loss(raw, batch.targets, batch.metas, soft_targets=soft)
    assert losses["loss_bbox"] > 0 and losses["loss_ld"] > 0
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_kd_detector(module):
    """A distillation detector: the student's losses (the teacher's maps as soft targets), no
    gradient into the teacher, which is not among the student's parameters."""
    run_detector(module)
    teacher = module.teacher_model
    assert all(p.grad is None for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in module.parameters()}


def run_ga_head(module):
    """Guided Anchoring's head: the four losses positive, a gradient to every branch (the
    feature adaptions' offset convs through the deformable convs), detections."""
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_shape", "loss_loc"}
    assert all(v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2



def _with_masks(batch):
    """``batch`` with a mask per box: the box's left half."""
    for target in batch.targets:
        masks = torch.zeros(len(target["boxes"]), *batch.images.shape[-2:], dtype=torch.bool)
        for mask, (x1, y1, x2, y2) in zip(masks, target["boxes"].int().tolist(), strict=True):
            mask[y1:y2, x1:(x1 + x2) // 2 + 1] = True
        target["masks"] = masks
    return batch


def run_mask_head(module):
    """FCNMaskHead: 8 x 8 logits of 4 x 4 RoI features, the loss, masks pasted into the
    image."""
    pred = module(torch.randn(3, 8, 4, 4))
    assert pred.shape == (3, 2, 8, 8)
    labels = torch.tensor([0, 1, 1])
    losses = module.loss(pred, (torch.rand(3, 8, 8) > 0.5).float(), labels)
    assert losses["loss_mask"] > 0
    losses["loss_mask"].backward()
    masks = module.predict_masks(pred.detach(), _boxes(3), labels, dict(mask_thr_binary=0.5),
                                 (32, 32), np.ones(4, np.float32), rescale=True)
    assert masks.shape == (3, 32, 32) and masks.dtype == torch.bool


def run_mask_rcnn(module):
    """Mask R-CNN: the RPN, box and mask losses; detections with masks of the image's size."""
    batch = _with_masks(_batch())
    losses = module.loss(batch)
    assert losses["loss_mask"] > 0 and losses["loss_bbox"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    results = module.eval().predict(batch)
    assert len(results) == 2
    assert all(r.masks is not None and r.masks.shape == (len(r), 32, 32) for r in results)


def run_ohem_sampler(obj):
    from detlab.models import MaxIoUAssigner

    boxes, gts = _boxes(20), _boxes(2)
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(
        boxes, gts, gt_labels=torch.tensor([0, 1]))
    sample = obj.sample(assign, boxes, gts, torch.tensor([0, 1]),
                        feats=[torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)])
    assert 0 < len(sample.pos_inds) + len(sample.neg_inds) <= 8


def run_seesaw_loss(module):
    pred = torch.randn(6, 4, requires_grad=True)  # 2 classes, then the objectness pair
    losses = module(pred, torch.tensor([0, 1, 2, 2, 1, 0]), avg_factor=6)
    sum(losses.values()).backward()
    assert pred.grad.abs().sum() > 0 and module.cum_samples.tolist() == [2.0, 2.0, 2.0]


def run_cascade_roi_head(module):
    """Cascade R-CNN's RoI head: every stage's losses (s0. ..., s1. ...), detections with
    masks."""
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _with_masks(_batch())
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert {"s0.loss_cls", "s0.acc", "s1.loss_bbox", "s1.loss_mask"} <= set(losses)
    assert losses["s0.loss_bbox"] > 0 and losses["s1.loss_mask"] > 0
    sum(v for k, v in losses.items() if "loss" in k).backward()
    results = module.eval().predict(feats, proposals, batch.metas)
    assert len(results) == 2 and all(r.masks is not None for r in results)


def run_cascade_rcnn(module):
    batch = _batch()
    losses = module.loss(batch)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "s0.loss_cls", "s1.loss_bbox"} <= set(losses)
    assert losses["s0.loss_bbox"] > 0 and losses["loss_rpn_bbox"] > 0
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert len(module.eval().predict(batch)) == 2


def run_mask_iou_head(module):
    """MaskIoUHead: an IoU per class of 4 x 4 features and 8 x 8 mask logits, the loss, the
    mask scores."""
    pred = module(torch.randn(3, 8, 4, 4), torch.randn(3, 8, 8))
    assert pred.shape == (3, 2)
    labels = torch.tensor([0, 1, 1])
    losses = module.loss(pred[torch.arange(3), labels], torch.tensor([0.5, 0.0, 0.9]))
    assert losses["loss_mask_iou"] > 0
    losses["loss_mask_iou"].backward()
    dets = torch.cat([_boxes(3), torch.rand(3, 1)], dim=1)
    assert module.get_mask_scores(pred.detach(), dets, labels).shape == (3,)


def run_mask_scoring_roi_head(module):
    """MaskScoringRoIHead: box, mask and mask IoU losses; detections with mask scores."""
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _with_masks(_batch())
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert {"loss_mask", "loss_mask_iou"} <= set(losses) and losses["loss_mask"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    results = module.eval().predict(feats, proposals, batch.metas)
    assert all(r.mask_scores is not None and len(r.mask_scores) == len(r) for r in results)


def run_mask_scoring_rcnn(module):
    """Mask Scoring R-CNN: Mask R-CNN's run, and a mask score per detection."""
    run_mask_rcnn(module)
    results = module.eval().predict(_with_masks(_batch()))
    assert all(r.mask_scores is not None and len(r.mask_scores) == len(r) for r in results)


def run_bfp(module):
    feats = [torch.randn(2, 8, 8, 8, requires_grad=True), torch.randn(2, 8, 4, 4),
             torch.randn(2, 8, 2, 2)]
    out = module(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    _backward_through(module, out)


def run_score_hlr_sampler(obj):
    from detlab.models import MaxIoUAssigner

    boxes, gts = _boxes(20), _boxes(2)
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(
        boxes, gts, gt_labels=torch.tensor([0, 1]))
    sample, weights = obj.sample(assign, boxes, gts, torch.tensor([0, 1]),
                                 feats=[torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)])
    assert 0 < len(sample.pos_inds) + len(sample.neg_inds) <= 8
    assert weights is None or len(weights) == len(sample.neg_inds)


def run_plugin(module):
    x = torch.randn(2, 8, 6, 5, requires_grad=True)  # DropBlock has no parameters
    out = module(x)
    assert out.shape == x.shape
    _backward_through(module, out)


def run_grid_head(module):
    """GridHead: fused and unfused 8 x 8 heatmaps of 4 x 4 RoI features, targets and loss,
    boxes from the heatmaps."""
    pred = module(torch.randn(3, 8, 4, 4))
    assert pred["fused"].shape == pred["unfused"].shape == (3, 9, 8, 8)

    class _Result:
        pos_bboxes = pos_gt_bboxes = torch.tensor([[2.0, 3, 20, 25], [5, 5, 30, 18],
                                                   [0, 0, 12, 12]])

    targets = module.get_targets([_Result()], dict(pos_radius=1))
    losses = module.loss(pred, targets)
    assert targets.sum() > 0 and losses["loss_grid"] > 0
    losses["loss_grid"].backward()
    dets = torch.cat([_Result.pos_bboxes, torch.rand(3, 1)], dim=1)
    assert module.get_bboxes(dets, pred["fused"].detach()).shape == (3, 5)


def run_grid_roi_head(module):
    """GridRoIHead: classification and grid losses; refined detections."""
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _batch()
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert losses["loss_grid"] > 0 and "loss_bbox" not in losses
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert len(module.eval().predict(feats, proposals, batch.metas)) == 2


def run_grid_rcnn(module):
    """Grid R-CNN: RPN, classification and grid losses; detections."""
    batch = _batch()
    losses = module.loss(batch)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_grid"} <= set(losses)
    assert losses["loss_grid"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert len(module.eval().predict(batch)) == 2


def run_coarse_mask_head(module):
    """CoarseMaskHead: 2 x 2 logits of 4 x 4 RoI features and their loss."""
    pred = module(torch.randn(3, 8, 4, 4))
    assert pred.shape == (3, 2, 2, 2)
    losses = module.loss(pred, (torch.rand(3, 2, 2) > 0.5).float(), torch.tensor([0, 1, 1]))
    assert losses["loss_mask"] > 0
    losses["loss_mask"].backward()


def run_mask_point_head(module):
    """MaskPointHead: point logits, their loss, uncertain points for training and testing."""
    coarse = torch.randn(3, 2, 5)
    pred = module(torch.randn(3, 8, 5), coarse)
    labels = torch.tensor([0, 1, 1])
    losses = module.loss(pred, torch.rand(3, 5), labels)
    assert pred.shape == (3, 2, 5) and losses["loss_point"] > 0
    losses["loss_point"].backward()
    masks = torch.randn(3, 2, 4, 4)
    points = module.get_roi_rel_points_train(masks, labels, dict(
        num_points=6, oversample_ratio=2, importance_sample_ratio=0.5))
    cells, centers = module.get_roi_rel_points_test(masks, labels,
                                                    dict(subdivision_num_points=5))
    assert points.shape == (3, 6, 2) and cells.shape == (3, 5) and centers.shape == (3, 5, 2)


def run_point_rend_roi_head(module):
    """PointRendRoIHead: box, coarse mask and point losses; refined masks at test time."""
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _with_masks(_batch())
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert losses["loss_mask"] > 0 and losses["loss_point"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    results = module.eval().predict(feats, proposals, batch.metas)
    assert all(r.masks is not None and len(r.masks) == len(r) for r in results)


def run_sabl_bbox_head(module):
    """SABL's R-CNN box head: bucket targets of shifted RoIs, the three losses positive, the
    detections rescored by the buckets' confidence."""
    cls_score, bbox_pred = module(torch.randn(5, 8, 4, 4))
    rois = torch.cat([torch.zeros(5, 1), _boxes(5)], dim=1)
    offsets, offset_weights, buckets, bucket_weights = module.bbox_coder.encode(
        rois[:, 1:], rois[:, 1:] + 2)
    losses = module.loss(cls_score, bbox_pred, rois, torch.tensor([0, 1, 2, 2, 1]),
                         torch.ones(5), (buckets, offsets), (bucket_weights, offset_weights))
    assert all(losses[k] > 0 for k in ("loss_cls", "loss_bbox_cls", "loss_bbox_reg"))
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    dets, labels = module.get_bboxes(rois, cls_score.detach(), [p.detach() for p in bbox_pred],
                                     dict(img_shape=(32, 32, 3)), cfg=RCNN_TEST_CFG)
    assert dets.shape[1] == 5 and len(dets) == len(labels)


def _with_semantic_maps(batch):
    """``batch`` with masks and a ``semantic_seg`` map (3 classes, some pixels 255)."""
    batch = _with_masks(batch)
    for target in batch.targets:
        seg = torch.randint(0, 4, batch.images.shape[-2:])
        target["semantic_seg"] = torch.where(seg == 3, 255, seg)
    return batch


def run_htc_mask_head(module):
    """HTCMaskHead: logits and features, the previous stage's features through conv_res."""
    x = torch.randn(3, 8, 4, 4)
    pred, feat = module(x)
    assert pred.shape == (3, 2, 8, 8) and feat.shape == (3, 8, 4, 4)
    logits = module(x, feat, return_feat=False)
    _backward_through(module, [logits, module(x, return_logits=False)])


def run_fused_semantic_head(module):
    """FusedSemanticHead: logits and features at the fused level's size, the loss."""
    pred, feat = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    assert pred.shape == (2, 3, 4, 4) and feat.shape == (2, 8, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    (module.loss(pred, labels) + feat.sum()).backward()


def run_htc_roi_head(module):
    """HTC's RoI head: the semantic loss, every stage's losses, detections with masks."""
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _with_semantic_maps(_batch())
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert {"loss_semantic_seg", "s0.loss_cls", "s0.loss_mask", "s1.loss_mask"} <= set(losses)
    assert losses["s0.loss_bbox"] > 0 and losses["s1.loss_mask"] > 0
    sum(v for k, v in losses.items() if "loss" in k).backward()
    results = module.eval().predict(feats, proposals, batch.metas)
    assert len(results) == 2 and all(r.masks is not None for r in results)


def run_htc(module):
    batch = _with_semantic_maps(_batch())
    losses = module.loss(batch)
    assert {"loss_rpn_cls", "loss_semantic_seg", "s0.loss_cls", "s1.loss_mask"} <= set(losses)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert len(module.eval().predict(batch)) == 2


def run_scnet_bbox_head(module):
    """SCNetBBoxHead: scores, deltas and the shared fc features."""
    cls_score, bbox_pred, shared = module(torch.randn(3, 8, 4, 4), return_shared_feat=True)
    assert cls_score.shape == (3, 3) and bbox_pred.shape == (3, 8) and shared.shape == (3, 8)
    _backward_through(module, [cls_score, bbox_pred])


def run_glbctx_head(module):
    """GlobalContextHead: class logits and a pooled context per image, the BCE loss."""
    pred, context = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    assert pred.shape == (2, 2) and context.shape == (2, 8, 1, 1)
    loss = module.loss(pred, [torch.tensor([0, 0, 1]), torch.tensor([], dtype=torch.long)])
    (loss + context.sum()).backward()


def run_feat_relay_head(module):
    """FeatureRelayHead: fc features -> upsampled maps; None for no RoI."""
    out = module(torch.randn(3, 8))
    assert out.shape == (3, 4, 4, 4)
    assert module(torch.zeros(0, 8)) is None
    out.sum().backward()


def run_scnet_roi_head(module):
    """SCNet's RoI head: semantic, global-context, box and mask losses, detections with
    masks."""
    feats = [torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)]
    batch = _with_semantic_maps(_batch())
    proposals = [torch.cat([_boxes(10), torch.rand(10, 1)], dim=1) for _ in range(2)]
    losses = module.loss(feats, proposals, batch.targets, batch.metas)
    assert {"loss_semantic_seg", "loss_glbctx", "s1.loss_bbox", "loss_mask"} <= set(losses)
    assert losses["s0.loss_bbox"] > 0 and losses["loss_mask"] > 0
    sum(v for k, v in losses.items() if "loss" in k).backward()
    results = module.eval().predict(feats, proposals, batch.metas)
    assert len(results) == 2 and all(r.masks is not None for r in results)


def run_scnet(module):
    batch = _with_semantic_maps(_batch())
    losses = module.loss(batch)
    assert {"loss_rpn_cls", "loss_semantic_seg", "loss_glbctx", "loss_mask"} <= set(losses)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert len(module.eval().predict(batch)) == 2

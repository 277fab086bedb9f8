"""RetinaHead: targets, loss (empty ground truth included), post-processing, init, errors."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from detlab.config import ConfigError
from detlab.models import RetinaHead
from detlab.models.assigners import bbox_overlaps
from detlab.models.heads.postprocess import levels_to_rows

NUM_CLASSES = 3
STRIDES = (8, 16, 32)
EPS = torch.finfo(torch.float32).eps
TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                               min_pos_iou=0, ignore_iof_thr=-1),
                 allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)


def _head(**kwargs) -> RetinaHead:
    torch.manual_seed(0)
    args = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=2,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                      scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                      strides=list(STRIDES)),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return RetinaHead(**{**args, **kwargs})


def _feats(batch: int = 2, height: int = 64, width: int = 64) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(batch, 8, height // s, width // s) for s in STRIDES]


def _meta(height: int = 64, width: int = 64, **extra) -> dict:
    meta = dict(img_shape=(height, width, 3), pad_shape=(height, width, 3),
                ori_shape=(height, width, 3), scale_factor=np.ones(4, np.float32), flip=False,
                flip_direction=None, img_id=7, filename="x.jpg")
    return {**meta, **extra}


def _target(boxes=(), labels=(), ignore=None) -> dict:
    target = dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                  labels=torch.tensor(labels, dtype=torch.long))
    if ignore is not None:
        target["boxes_ignore"] = torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4)
    return target


BOXES = [[4.0, 6.0, 40.0, 36.0], [30.0, 20.0, 62.0, 60.0]]


def test_layers_and_parameter_names():
    head = _head(stacked_convs=4, feat_channels=16, in_channels=16)
    names = set(head.state_dict())
    assert {"cls_convs.3.conv.weight", "reg_convs.0.conv.bias", "retina_cls.weight",
            "retina_reg.bias"} <= names
    assert head.retina_cls.out_channels == 9 * NUM_CLASSES and head.retina_reg.out_channels == 36
    cls, reg = head([torch.zeros(1, 16, 8, 8), torch.zeros(1, 16, 4, 4),
                     torch.zeros(1, 16, 2, 2)])
    assert [tuple(c.shape) for c in cls] == [(1, 27, 8, 8), (1, 27, 4, 4), (1, 27, 2, 2)]
    assert [tuple(r.shape) for r in reg] == [(1, 36, 8, 8), (1, 36, 4, 4), (1, 36, 2, 2)]


def test_group_norm_in_the_towers():
    head = _head(norm_cfg=dict(type="GN", num_groups=4, requires_grad=True))
    assert isinstance(head.cls_convs[0].gn, nn.GroupNorm) and head.cls_convs[0].conv.bias is None
    assert "reg_convs.1.gn.weight" in head.state_dict()


def test_init_follows_mmdetection():
    head = _head(feat_channels=64, in_channels=64)
    head.retina_cls.bias.data.zero_()
    head.init_weights()
    prior = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(head.retina_cls.bias, torch.full_like(head.retina_cls.bias, prior))
    assert torch.all(head.retina_reg.bias == 0) and torch.all(head.cls_convs[0].conv.bias == 0)
    assert abs(float(head.cls_convs[0].conv.weight.detach().std()) - 0.01) < 0.002


def test_empty_ground_truth_gives_classification_loss_only():
    head = _head()
    raw = head(_feats(batch=1))
    losses = head.loss(raw, [_target()], [_meta()])
    assert losses["loss_cls"].item() > 0
    assert losses["loss_bbox"].item() == 0.0
    sum(losses.values()).backward()
    assert head.retina_cls.weight.grad.abs().sum() > 0

    one = head.loss(head(_feats(batch=1)), [_target(BOXES[:1], [1])], [_meta()])
    assert one["loss_cls"].item() > 0 and one["loss_bbox"].item() > 0


def test_loss_is_mmdetection_formula():
    """Focal loss over all valid anchors + L1 over positives, divided by the positives of the
    batch, an image without any counting as 1."""
    head = _head()
    raw = head(_feats())
    targets = [_target(BOXES, [0, 2]), _target()]
    metas = [_meta(), _meta()]
    priors = head.get_priors(raw[0], metas)
    anchors = priors.priors
    t = head.get_targets(priors, targets, metas)
    assert t.num_pos[0] > 0 and t.num_pos[1] == 0
    assert t.avg_factor == t.num_pos[0] + 1
    losses = head.loss(raw, targets, metas)

    cls = levels_to_rows(raw[0], NUM_CLASSES).reshape(-1, NUM_CLASSES)
    one_hot = nn.functional.one_hot(t.labels.reshape(-1), NUM_CLASSES + 1)[:, :NUM_CLASSES]
    focal = sigmoid_focal_loss(cls, one_hot.float(), alpha=0.25, gamma=2.0, reduction="none")
    expected_cls = (focal * t.label_weights.reshape(-1, 1)).sum() / (t.avg_factor + EPS)
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    reg = levels_to_rows(raw[1], 4).reshape(-1, 4)
    bbox_targets = t.bbox_targets.reshape(-1, 4)
    pos = t.bbox_weights.reshape(-1, 4)[:, 0] > 0
    assert torch.equal(pos, t.labels.reshape(-1) < NUM_CLASSES)
    expected_bbox = (reg[pos] - bbox_targets[pos]).abs().sum() / (t.avg_factor + EPS)
    torch.testing.assert_close(losses["loss_bbox"], expected_bbox)
    # the targets are the encoded ground truth of each positive's label
    decoded = head.bbox_coder.decode(anchors.repeat(2, 1)[pos], bbox_targets[pos])
    gt_of_label = {0: BOXES[0], 2: BOXES[1]}
    expected = torch.tensor([gt_of_label[int(k)] for k in t.labels.reshape(-1)[pos]])
    torch.testing.assert_close(decoded, expected, atol=1e-4, rtol=1e-5)


def test_batch_loss_combines_per_image_sums():
    head = _head()
    raw = head(_feats())
    targets, metas = [_target(BOXES, [0, 2]), _target(BOXES[1:], [1])], [_meta(), _meta()]
    both = head.loss(raw, targets, metas)
    singles = [head.loss(([c[i:i + 1] for c in raw[0]], [r[i:i + 1] for r in raw[1]]),
                         targets[i:i + 1], metas[i:i + 1]) for i in range(2)]
    priors = head.get_priors(raw[0], metas)
    factors = [head.get_targets(replace(priors, valid=priors.valid[i:i + 1]), targets[i:i + 1],
                                metas[i:i + 1]).avg_factor for i in range(2)]
    for key in ("loss_cls", "loss_bbox"):
        summed = sum(s[key] * (f + EPS) for s, f in zip(singles, factors, strict=True))
        torch.testing.assert_close(both[key] * (sum(factors) + EPS), summed)


def test_ignored_boxes_padding_and_borders():
    head = _head(train_cfg={**TRAIN_CFG, "assigner": {**TRAIN_CFG["assigner"],
                                                      "ignore_iof_thr": 0.5}})
    raw = head(_feats(batch=2, height=64, width=96))
    metas = [_meta(64, 96), _meta(40, 56, pad_shape=(64, 64, 3))]
    targets = [_target(BOXES[:1], [0], ignore=[[60.0, 0.0, 96.0, 64.0]]), _target()]
    priors = head.get_priors(raw[0], metas)
    anchors = priors.priors
    t = head.get_targets(priors, targets, metas)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    iof = bbox_overlaps(anchors, targets[0]["boxes_ignore"], mode="iof")[:, 0]
    assert (iof > 0.5).sum() > 10
    assert torch.all(t.label_weights[0][iof > 0.5] == 0)
    iou = bbox_overlaps(anchors, targets[0]["boxes"])[:, 0]
    decided = (iof <= 0.5) & ((iou < 0.4) | (iou >= 0.5))  # not in the 0.4-0.5 gray zone
    assert torch.all(t.label_weights[0][decided] == 1)
    # the second image is padded to 64x64 within a 64x96 batch: anchors of grid cells beyond
    # its pad_shape are neither positive nor negative
    beyond = centers[:, 0] > 63.5  # grid cells from x = 64 on
    assert torch.all(t.label_weights[1][beyond] == 0)
    assert torch.all(t.label_weights[1][~beyond] == 1)

    bordered = _head(train_cfg={**TRAIN_CFG, "allowed_border": 0})
    tb = bordered.get_targets(priors, [_target(), _target()], metas)
    crossing = (anchors[:, 0] < 0) | (anchors[:, 1] < 0)
    assert torch.all(tb.label_weights[0][crossing] == 0)


def test_pos_weight():
    head = _head(train_cfg={**TRAIN_CFG, "pos_weight": 3.0})
    raw = head(_feats(batch=1))
    t = head.get_targets(head.get_priors(raw[0], [_meta()]), [_target(BOXES, [0, 1])], [_meta()])
    pos = t.labels[0] < NUM_CLASSES
    assert pos.any() and torch.all(t.label_weights[0][pos] == 3.0)


def test_decoded_regression_with_giou():
    head = _head(reg_decoded_bbox=True, loss_bbox=dict(type="GIoULoss", loss_weight=2.0))
    raw = head(_feats(batch=1))
    losses = head.loss(raw, [_target(BOXES, [0, 1])], [_meta()])
    assert 0 < losses["loss_bbox"].item() < 4.0
    empty = head.loss(raw, [_target()], [_meta()])
    assert empty["loss_bbox"].item() == 0.0


def _raw_with_hits(head, hits, height=64, width=64):
    """Raw outputs scoring -10 everywhere except ``hits``: (level, row, col, anchor, class,
    logit); zero deltas, so detections are the anchors themselves."""
    cls = [torch.full((1, 9 * NUM_CLASSES, height // s, width // s), -10.0) for s in STRIDES]
    reg = [torch.zeros(1, 36, height // s, width // s) for s in STRIDES]
    for level, row, col, anchor, label, logit in hits:
        cls[level][0, anchor * NUM_CLASSES + label, row, col] = logit
    return cls, reg


def test_predict_decodes_filters_and_suppresses():
    head = _head()
    hits = [(0, 3, 4, 4, 1, 3.0), (0, 3, 4, 3, 1, 2.0),  # same place, 40 vs 32 px: NMS
            (0, 3, 4, 3, 2, 1.0),  # same box, other class: kept
            (1, 1, 2, 4, 0, -1.0), (2, 1, 1, 4, 0, -4.0)]  # the last one is under score_thr
    raw = _raw_with_hits(head, hits)
    result = head.predict(raw, [_meta()])[0]
    anchors = head.prior_generator.grid_priors([(8, 8), (4, 4), (2, 2)])
    expected_boxes = [anchors[0].reshape(8, 8, 9, 4)[3, 4, 4],
                      anchors[0].reshape(8, 8, 9, 4)[3, 4, 3],
                      anchors[1].reshape(4, 4, 9, 4)[1, 2, 4]]
    assert result.labels.tolist() == [1, 2, 0]
    torch.testing.assert_close(result.scores, torch.tensor([3.0, 1.0, -1.0]).sigmoid())
    torch.testing.assert_close(result.boxes, torch.stack(expected_boxes).clamp(0, 64))
    assert result.meta == dict(img_id=7, filename="x.jpg", ori_shape=(64, 64, 3))

    capped = _head(test_cfg={**TEST_CFG, "max_per_img": 2}).predict(raw, [_meta()])[0]
    assert capped.labels.tolist() == [1, 2]
    agnostic = _head(test_cfg={**TEST_CFG, "nms": dict(type="nms", iou_threshold=0.5,
                                                       class_agnostic=True)})
    assert agnostic.predict(raw, [_meta()])[0].labels.tolist() == [1, 0]
    few = _head(test_cfg={**TEST_CFG, "nms_pre": 1}).predict(raw, [_meta()])[0]
    assert few.labels.tolist() == [1, 0]  # one candidate per level


def test_predict_rescales_and_unflips():
    head = _head()
    raw = _raw_with_hits(head, [(0, 1, 5, 4, 1, 3.0)])
    plain = head.predict(raw, [_meta()], rescale=False)[0]
    meta = _meta(flip=True, flip_direction="horizontal",
                 scale_factor=np.array([2.0, 4.0, 2.0, 4.0], np.float32))
    result = head.predict(raw, [meta])[0]
    x1, y1, x2, y2 = plain.boxes[0].tolist()
    torch.testing.assert_close(result.boxes[0], torch.tensor([(64 - x2) / 2, y1 / 4,
                                                              (64 - x1) / 2, y2 / 4]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0), "num_classes"),
    (dict(anchor_generator=dict(type="FocalLoss")), "anchor_generator.*prior generator"),
    (dict(test_cfg={**TEST_CFG, "nms_pree": 10}), "nms_pre"),
    (dict(test_cfg={**TEST_CFG, "nms": dict(type="softnms", iou_threshold=0.5)}),
     "Did you mean 'soft_nms'"),
    (dict(test_cfg={**TEST_CFG, "nms": dict(type="nms", iou_threshold=0.5, sigma=0.5)}),
     "no key 'sigma' for type 'nms'"),
    (dict(test_cfg={**TEST_CFG, "nms": dict(type="soft_nms", method="gauss")}), "gaussian"),
    (dict(train_cfg=dict(allowed_border=-1)), "assigner"),
])
def test_configuration_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _head(**kwargs)


def test_input_errors():
    head = _head()
    raw = head(_feats(batch=1))
    with pytest.raises(ValueError, match=r"image 7 .*labels must be in 0..2"):
        head.loss(raw, [_target(BOXES[:1], [3])], [_meta()])
    with pytest.raises(ValueError, match="3 levels"):
        head(_feats(batch=1)[:2])
    untrained = _head(train_cfg=None)
    with pytest.raises(ConfigError, match="train_cfg"):
        untrained.loss(raw, [_target()], [_meta()])
    with pytest.raises(ConfigError, match="test_cfg"):
        _head(test_cfg=None).predict(raw, [_meta()])

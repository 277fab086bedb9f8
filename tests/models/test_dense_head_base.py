"""The shared pieces of dense heads: the one post-processing function (hand-made inputs, and
MMDetection's ``get_bboxes`` on the same maps), soft-NMS against mmcv's kernel written out box by
box, the assigner interface, and a new anchor-free head written in a few lines on the bases."""

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models import RetinaHead
from detlab.models.assigners import MaxIoUAssigner
from detlab.models.heads.anchor_free_head import AnchorFreeHead
from detlab.models.heads.nms import batched_soft_nms, multiclass_nms
from detlab.models.heads.postprocess import dense_postprocess, levels_to_rows
from detlab.models.init import initialize
from detlab.registry import MODELS

NUM_CLASSES = 3
F32 = np.float32
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)
TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                               min_pos_iou=0, ignore_iof_thr=-1),
                 allowed_border=-1, pos_weight=-1, debug=False)


def _meta(height=64, width=64, scale=1.0, **extra):
    meta = dict(img_shape=(height, width, 3), pad_shape=(height, width, 3),
                ori_shape=(round(height / scale), round(width / scale), 3),
                scale_factor=np.full(4, scale, np.float32), flip=False, flip_direction=None,
                img_id=0, filename="x.jpg")
    return {**meta, **extra}


# ---- the one post-processing function on hand-made inputs -----------------------------------

def _shift(priors, preds, max_shape):
    """A decoder for hand-made cases: the box is the prior moved by the prediction."""
    return priors + preds


def _level(probs, boxes, factors=None):
    """One level of one image with one prior per cell in a 1 x N row: class probabilities
    ``(N, C)`` -> logit map ``(C, 1, N)``; priors ``(N, 4)``; zero box outputs ``(4, 1, N)``;
    score factors ``(N,)`` -> logit map ``(1, 1, N)``."""
    probs = torch.tensor(probs, dtype=torch.float32)
    logits = torch.logit(probs).T[:, None, :]
    preds = torch.zeros(4, 1, len(probs))
    factor_map = None if factors is None else torch.logit(torch.tensor(factors))[None, None]
    return logits, preds, torch.tensor(boxes, dtype=torch.float32), factor_map


def _run(levels, cfg, meta=None, **kwargs):
    cls, preds, priors, factors = zip(*levels, strict=True)
    factors = None if factors[0] is None else factors
    return dense_postprocess(cls, preds, priors, meta or _meta(), cfg, decode=_shift,
                             score_factors=factors, **kwargs)


def _apart(n, y=0.0):
    """``n`` disjoint 10-pixel boxes in a row, so that NMS keeps every one."""
    return [[20.0 * i, y, 20.0 * i + 10, y + 10] for i in range(n)]


def test_score_thr_and_nms_pre_per_level():
    level0 = _level([[0.2, 0.9, 0.1], [0.35, 0.1, 0.1], [0.6, 0.1, 0.7]], _apart(3))
    level1 = _level([[0.1, 0.1, 0.4], [0.8, 0.25, 0.1]], _apart(2, y=30.0))
    cfg = dict(TEST_CFG, score_thr=0.3)
    result = _run([level0, level1], cfg)
    expected = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.4, 0.35])
    torch.testing.assert_close(result.scores, expected)
    assert result.labels.tolist() == [1, 0, 2, 0, 2, 0]
    # nms_pre: the best 2 (prior, class) pairs of each level, before NMS
    few = _run([level0, level1], dict(cfg, nms_pre=2))
    torch.testing.assert_close(few.scores, torch.tensor([0.9, 0.8, 0.7, 0.4]))
    # MMDetection slices [:nms_pre]: -1 drops the worst pair of each level
    minus = _run([level0, level1], dict(cfg, nms_pre=-1))
    torch.testing.assert_close(minus.scores, torch.tensor([0.9, 0.8, 0.7, 0.6]))


def test_score_factors_multiply_after_the_topk():
    """score_thr and nms_pre look at the class scores alone; the factor multiplies the kept
    ones (MMDetection's BaseDenseHead, FCOS's centerness)."""
    level = _level([[0.9, 0.0, 0.0], [0.8, 0.0, 0.0], [0.7, 0.0, 0.0], [0.2, 0.0, 0.0]],
                   _apart(4), factors=[0.1, 0.9, 0.99, 0.99])
    result = _run([level], dict(TEST_CFG, score_thr=0.5, nms_pre=2))
    # the third pair has the best product (0.69) but not a top-2 class score; the first
    # one's product (0.09) is under score_thr and still kept
    torch.testing.assert_close(result.scores, torch.tensor([0.8 * 0.9, 0.9 * 0.1]))
    torch.testing.assert_close(result.boxes, torch.tensor([_apart(4)[1], _apart(4)[0]]))


def test_score_factors_reorder_before_nms():
    boxes = [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]]  # IoU 0.82: one survives
    level = _level([[0.9, 0.0, 0.0], [0.8, 0.0, 0.0]], boxes, factors=[0.5, 0.9])
    result = _run([level], TEST_CFG)
    assert result.boxes.tolist() == [boxes[1]]
    torch.testing.assert_close(result.scores, torch.tensor([0.8 * 0.9]))


def test_min_bbox_size_counts_input_pixels_then_boxes_are_rescaled():
    boxes = [[0.0, 0.0, 4.0, 30.0], [20.0, 0.0, 30.0, 30.0], [40.0, 0.0, 46.0, 5.0]]
    level = _level([[0.9, 0.0, 0.0], [0.8, 0.0, 0.0], [0.7, 0.0, 0.0]], boxes)
    meta = _meta(scale=0.5)  # the input is half the original: the 4-pixel box is 8 pixels there
    result = _run([level], dict(TEST_CFG, min_bbox_size=5), meta=meta)
    torch.testing.assert_close(result.boxes, torch.tensor([boxes[1]]) / 0.5)
    assert len(_run([level], TEST_CFG, meta=meta)) == 3  # 0 keeps every box
    plain = _run([level], dict(TEST_CFG, min_bbox_size=5), meta=meta, rescale=False)
    torch.testing.assert_close(plain.boxes, torch.tensor([boxes[1]]))


def test_max_per_img_and_softmax_without_background():
    probs = torch.tensor([[0.1, 0.6, 0.1, 0.2], [0.5, 0.1, 0.1, 0.3], [0.1, 0.1, 0.3, 0.5]])
    logits = probs.log().T[:, None, :]  # softmax gives the probabilities back
    level = (logits, torch.zeros(4, 1, 3), torch.tensor(_apart(3)), None)
    result = _run([level], dict(TEST_CFG, score_thr=0.25), use_sigmoid=False)
    assert result.labels.tolist() == [1, 0, 2]  # the background column (0.5) is no class
    torch.testing.assert_close(result.scores, torch.tensor([0.6, 0.5, 0.3]))
    capped = _run([level], dict(TEST_CFG, score_thr=0.25, max_per_img=2), use_sigmoid=False)
    assert capped.labels.tolist() == [1, 0]


def test_empty_levels_give_an_empty_result():
    level = _level([[0.01, 0.01, 0.01]], _apart(1))
    for nms_cfg in (dict(type="nms", iou_threshold=0.5), dict(type="soft_nms")):
        result = _run([level], dict(TEST_CFG, nms=nms_cfg))
        assert len(result) == 0 and result.boxes.shape == (0, 4)


# ---- soft-NMS: mmcv's kernel written out box by box -------------------------------------------

SOFT_METHODS = {"naive": 0, "linear": 1, "gaussian": 2}


def reference_softnms_kernel(boxes, scores, dets, iou_threshold, sigma, min_score, method,
                             offset):
    """mmcv 1.7's ``softnms_cpu`` (``mmcv/ops/csrc/pytorch/cpu/nms.cpp``) one box at a time, in
    float32: pick the best remaining box (the first of equal scores), swap it to the front,
    multiply the scores of the rest by the weight of their IoU with it, and drop a box whose
    score fell under ``min_score`` by moving the last box into its place. Writes the picked
    boxes and scores into ``dets`` and returns their indices, as the compiled op does.

    ``std::exp`` on a float is taken as the correctly rounded ``exp`` (glibc's ``expf``
    agrees but for the last bit of rare inputs)."""
    num = boxes.shape[0]
    if num == 0:
        return torch.zeros(0, dtype=torch.long)
    x1, y1, x2, y2 = (list(boxes[:, k].numpy().astype(F32)) for k in range(4))
    sc = list(scores.numpy().astype(F32))
    off = F32(offset)
    areas = [(x2[k] - x1[k] + off) * (y2[k] - y1[k] + off) for k in range(num)]
    inds = list(range(num))
    arrays = (x1, y1, x2, y2, sc, areas, inds)
    thr, sig, low = F32(iou_threshold), F32(sigma), F32(min_score)
    i = 0
    while i < num:
        best = i
        for pos in range(i + 1, num):
            if sc[best] < sc[pos]:
                best = pos
        for a in arrays:
            a[i], a[best] = a[best], a[i]
        dets[i] = torch.tensor([x1[i], y1[i], x2[i], y2[i], sc[i]])
        pos = i + 1
        while pos < num:
            w = max(F32(0), min(x2[i], x2[pos]) - max(x1[i], x1[pos]) + off)
            h = max(F32(0), min(y2[i], y2[pos]) - max(y1[i], y1[pos]) + off)
            inter = w * h
            with np.errstate(invalid="ignore"):  # two empty boxes: 0 / 0, NaN as in C
                ovr = inter / (areas[i] + areas[pos] - inter)
            weight = F32(1)
            if method == 0 and ovr >= thr:
                weight = F32(0)
            elif method == 1 and ovr >= thr:
                weight = F32(1) - ovr
            elif method == 2:
                weight = F32(math.exp(float(-(ovr * ovr) / sig)))
            sc[pos] = sc[pos] * weight
            if sc[pos] < low:
                for a in arrays:
                    a[pos] = a[num - 1]
                num -= 1
                pos -= 1
            pos += 1
        i += 1
    return torch.tensor(inds[:num], dtype=torch.long)


def reference_soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5, min_score=1e-3,
                       method="linear"):
    """mmcv's ``soft_nms`` wrapper around the kernel: (dets (k, 5), indices (k,))."""
    dets = torch.zeros(len(boxes), 5)
    inds = reference_softnms_kernel(boxes, scores, dets, iou_threshold, sigma, min_score,
                                    SOFT_METHODS[method], 0)
    return dets[:len(inds)], inds


def reference_batched_soft_nms(boxes, scores, labels, split_thr=10000, **soft):
    """mmcv's ``batched_nms`` for ``type='soft_nms'``, class-wise: boxes shifted by
    ``label * (max coordinate + 1)``; one soft-NMS under ``split_thr`` boxes, else one per class
    and the kept boxes sorted by their scores."""
    offsets = labels.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if len(boxes) < split_thr:
        dets, keep = reference_soft_nms(shifted, scores, **soft)
        return keep, dets[:, -1]
    kept = torch.zeros(len(boxes), dtype=torch.bool)
    after = torch.zeros(len(boxes))
    for label in torch.unique(labels):
        mask = (labels == label).nonzero().view(-1)
        dets, keep = reference_soft_nms(shifted[mask], scores[mask], **soft)
        kept[mask[keep]] = True
        after[mask[keep]] = dets[:, -1]
    keep = kept.nonzero().view(-1)
    order = torch.sort(after[keep], descending=True, stable=True).indices
    return keep[order], after[keep][order]


def _random_case(seed, ties=False):
    gen = torch.Generator().manual_seed(seed)
    num = int(torch.randint(1, 50, (1,), generator=gen))
    xy = torch.rand(num, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + torch.rand(num, 2, generator=gen) * 30 + 1], dim=1)
    scores = torch.rand(num, generator=gen)
    labels = torch.randint(0, 3, (num,), generator=gen)
    if ties:  # equal scores and boxes (the kernel's order decides); empty boxes (NaN IoUs)
        scores = (scores * 4).round() / 4 + 0.05
        boxes = boxes.round()
        boxes[::5, 2] = boxes[::5, 0]
    return boxes, scores, labels


def _same(a, b):
    """Bit for bit, NaN included (two empty boxes have a 0 / 0 IoU in mmcv's kernel too)."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["linear", "gaussian", "naive"])
@pytest.mark.parametrize("split_thr", [10000, 1])
def test_soft_nms_is_mmcvs(method, split_thr):
    """Kept boxes, their order and their decayed scores equal the box-by-box kernel's, bit for
    bit, on random boxes of 3 classes (ties included): in one pass over all classes shifted
    apart (under split_thr) and class by class (over it)."""
    for seed in range(12):
        for min_score, thr in ((1e-3, 0.3), (0.2, 0.5)):
            boxes, scores, labels = _random_case(seed, ties=seed % 2 == 0)
            soft = dict(iou_threshold=thr, sigma=0.5, min_score=min_score, method=method)
            ref_keep, ref_scores = reference_batched_soft_nms(boxes, scores, labels,
                                                              split_thr=split_thr, **soft)
            keep, kept = batched_soft_nms(boxes, scores, labels, split_thr=split_thr, **soft)
            assert keep.tolist() == ref_keep.tolist(), (seed, min_score)
            _same(kept, ref_scores)


def test_soft_nms_single_class_and_early_stop():
    for seed in range(8):
        boxes, scores, labels = _random_case(seed, ties=seed % 2 == 1)
        dets, ref_keep = reference_soft_nms(boxes, scores, 0.3, 0.5, 1e-3, "gaussian")
        keep, kept = batched_soft_nms(boxes, scores, labels, method="gaussian",
                                      class_agnostic=True)
        assert keep.tolist() == ref_keep.tolist()
        _same(kept, dets[:, 4])
        # max_num stops early: boxes come in falling score order, the first ones are the same
        first, first_scores = batched_soft_nms(boxes, scores, labels, max_num=5)
        full, full_scores = batched_soft_nms(boxes, scores, labels)
        assert first.tolist() == full[:5].tolist()
        _same(first_scores, full_scores[:5])


def test_soft_nms_from_test_cfg():
    boxes, scores, labels = _random_case(3)
    cfg = dict(type="soft_nms", iou_threshold=0.5, method="gaussian", sigma=0.3, min_score=0.05)
    keep, kept = multiclass_nms(boxes, scores, labels, cfg, max_num=7)
    ref_keep, ref_scores = reference_batched_soft_nms(
        boxes, scores, labels, iou_threshold=0.5, sigma=0.3, min_score=0.05, method="gaussian")
    assert keep.tolist() == ref_keep[:7].tolist()
    _same(kept, ref_scores[:7])
    # through the post-processing: decayed scores, boxes untouched
    probs = torch.full((len(boxes), NUM_CLASSES), 1e-4)
    probs[torch.arange(len(boxes)), labels] = scores.clamp(1e-3, 0.999)
    level = _level(probs.tolist(), boxes.tolist())
    result = _run([level], dict(TEST_CFG, score_thr=0.0, nms=cfg, max_per_img=7))
    decoded = torch.tensor(boxes.tolist())  # the _shift decoder adds zeros
    ref_keep, ref_scores = reference_batched_soft_nms(
        decoded, torch.sigmoid(torch.logit(probs[torch.arange(len(boxes)), labels])), labels,
        iou_threshold=0.5, sigma=0.3, min_score=0.05, method="gaussian")
    assert result.labels.tolist() == labels[ref_keep[:7]].tolist()
    torch.testing.assert_close(result.boxes, decoded[ref_keep[:7]], rtol=0, atol=0)


# ---- a new anchor-free head: its layers, its targets, its loss -- nothing else ---------------

class TinyFCOSHead(AnchorFreeHead):
    """An FCOS-like head: a centerness branch on the regression tower (a score factor at test
    time); each point inside ground-truth boxes learns the smallest of them."""

    def __init__(self, num_classes: int, in_channels: int, strides=(8, 16),
                 train_cfg=None, test_cfg=None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, feat_channels=8,
                         stacked_convs=2, strides=strides,
                         loss_bbox=dict(type="GIoULoss", loss_weight=1.0),
                         norm_cfg=dict(type="GN", num_groups=4, requires_grad=True),
                         train_cfg=train_cfg, test_cfg=test_cfg)
        self.conv_centerness = nn.Conv2d(8, 1, 3, padding=1)
        initialize(self, self.init_cfg, load_pretrained=False)

    def forward_single(self, x, level):
        cls_score, bbox_pred, _, reg_feat = self.forward_features(x)
        distances = bbox_pred.float().clamp(max=8).exp() * self.strides[level]
        return cls_score, distances, self.conv_centerness(reg_feat)

    def targets_per_image(self, points, gt):
        """``(A, 2)`` points -> labels ``(A,)`` (``num_classes``: background) and the xyxy
        box each point learns ``(A, 4)``."""
        boxes = gt.boxes
        if boxes.shape[0] == 0:
            labels = torch.full((len(points),), self.num_classes, dtype=torch.long)
            return labels, points.new_zeros((len(points), 4))
        x, y = points[:, :1], points[:, 1:2]  # (A, 1) against (G,) boxes
        inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        area = torch.where(inside, area, torch.full_like(area, math.inf))  # (A, G)
        smallest, which = area.min(dim=1)
        labels = torch.where(smallest.isfinite(), gt.labels[which], self.num_classes)
        return labels, boxes[which]

    def loss(self, raw, targets, metas):
        cls_scores, bbox_preds, centernesses = raw
        priors = self.get_priors(cls_scores, metas)
        gts = self.ground_truths(targets, metas, len(metas), cls_scores[0].device)
        labels, boxes = (torch.cat(t) for t in zip(
            *[self.targets_per_image(priors.priors, gt) for gt in gts], strict=True))
        points = priors.priors.repeat(len(metas), 1)
        cls = levels_to_rows(cls_scores, self.cls_out_channels).reshape(-1, self.num_classes)
        reg = levels_to_rows(bbox_preds, 4).reshape(-1, 4)
        ctr = levels_to_rows(centernesses, 1).reshape(-1)
        pos = labels < self.num_classes
        num_pos = max(int(pos.sum()), 1)
        distances = self.bbox_coder.encode(points[pos], boxes[pos])
        lr, tb = distances[:, 0::2], distances[:, 1::2]
        centerness = ((lr.min(-1).values / lr.max(-1).values)
                      * (tb.min(-1).values / tb.max(-1).values)).sqrt()
        decoded = self.decode_boxes(points[pos], reg[pos])
        return dict(
            loss_cls=self.loss_cls(cls, labels, avg_factor=num_pos),
            loss_bbox=self.loss_bbox(decoded, boxes[pos], centerness,
                                     avg_factor=max(float(centerness.sum()), 1e-6)),
            loss_centerness=F.binary_cross_entropy_with_logits(ctr[pos], centerness,
                                                               reduction="sum") / num_pos)


def _tiny_feats(batch=2, size=64, strides=(8, 16), seed=1):
    torch.manual_seed(seed)
    return [torch.randn(batch, 8, size // s, size // s) for s in strides]


def _target(boxes=(), labels=()):
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.long))


BOXES = [[4.0, 6.0, 40.0, 36.0], [30.0, 20.0, 62.0, 60.0]]


def test_a_new_anchor_free_head_trains_and_predicts():
    torch.manual_seed(0)
    # untrained scores sit at the 0.01 prior: a threshold under it shows the score factors
    head = TinyFCOSHead(NUM_CLASSES, 8, train_cfg={}, test_cfg=dict(TEST_CFG, score_thr=0.005))
    names = set(head.state_dict())
    assert {"cls_convs.1.conv.weight", "cls_convs.1.gn.bias", "reg_convs.0.gn.weight",
            "conv_cls.weight", "conv_reg.bias", "conv_centerness.weight"} <= names
    assert "cls_convs.0.conv.bias" not in names  # conv_bias='auto' with a norm layer
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01)
    targets = [_target(BOXES, [0, 2]), _target(BOXES[:1], [1])]
    metas = [_meta(), _meta()]
    for _ in range(2):
        optimizer.zero_grad()
        losses = head.loss(head(_tiny_feats()), targets, metas)
        assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
        assert all(v > 0 for v in losses.values())
        sum(losses.values()).backward()
        missing = [n for n, p in head.named_parameters() if p.grad is None
                   or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
        assert not missing
        optimizer.step()
    head.eval()
    with torch.no_grad():
        raw = head(_tiny_feats())
        results = head.predict(raw, metas)
    assert len(results) == 2 and len(results[0]) > 0
    # the centerness is a score factor: every score is a class probability times a sigmoid
    cls_max = max(float(c.sigmoid().max()) for c in raw[0])
    assert float(results[0].scores.max()) < cls_max
    assert results[0].meta == dict(img_id=0, filename="x.jpg", ori_shape=(64, 64, 3))


def test_a_new_anchor_free_head_with_empty_ground_truth():
    head = TinyFCOSHead(NUM_CLASSES, 8, train_cfg={}, test_cfg=TEST_CFG)
    losses = head.loss(head(_tiny_feats(batch=1)), [_target()], [_meta()])
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0
    sum(losses.values()).backward()
    assert head.conv_cls.weight.grad.abs().sum() > 0


def test_anchor_free_head_takes_mmdetections_legacy_predictor_names():
    head = TinyFCOSHead(NUM_CLASSES, 8)
    state = {k.replace("conv_", "fcos_", 1) if k.startswith("conv_") else k: v.clone() + 1
             for k, v in head.state_dict().items()}
    assert "fcos_centerness.weight" in state
    fresh = TinyFCOSHead(NUM_CLASSES, 8)
    fresh.load_state_dict(state, strict=True)  # a plain dict has no version: legacy names
    torch.testing.assert_close(fresh.conv_centerness.weight, head.conv_centerness.weight + 1)
    # a state dict of this version keeps its names
    fresh.load_state_dict(head.state_dict(), strict=True)
    torch.testing.assert_close(fresh.conv_cls.bias, head.conv_cls.bias)


def test_anchor_free_head_errors():
    with pytest.raises(ConfigError, match="conv_bias"):
        AnchorFreeHead(NUM_CLASSES, 8, conv_bias="yes", bbox_coder=dict(
            type="DistancePointBBoxCoder"), loss_bbox=dict(type="GIoULoss"))
    deformable = AnchorFreeHead(NUM_CLASSES, 8, dcn_on_last_conv=True,
                                loss_bbox=dict(type="GIoULoss"))
    assert type(deformable.reg_convs[-1].conv).__name__ == "ModulatedDeformConv2dPack"
    with pytest.raises(NotImplementedError, match="loss"):
        head = AnchorFreeHead(NUM_CLASSES, 8, stacked_convs=1, feat_channels=8,
                              strides=(8, 16), loss_bbox=dict(type="GIoULoss"))
        head.loss(head(_tiny_feats()), [_target(), _target()], [_meta(), _meta()])


# ---- the assigner interface ---------------------------------------------------------------

class RecordingAssigner(MaxIoUAssigner):
    """IoU assignment that keeps what the head handed over."""

    def __init__(self) -> None:
        super().__init__(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0)
        self.calls = []

    def assign(self, priors, gt_bboxes, gt_bboxes_ignore=None, gt_labels=None, *,
               num_level_priors=None, pred_scores=None, pred_bboxes=None):
        self.calls.append(dict(priors=priors, num_level_priors=num_level_priors,
                               pred_scores=pred_scores, pred_bboxes=pred_bboxes,
                               gt_labels=gt_labels))
        return super().assign(priors, gt_bboxes, gt_bboxes_ignore, gt_labels)


def _retina(**kwargs):
    torch.manual_seed(0)
    args = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=1,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                      scales_per_octave=1, ratios=[0.5, 1.0, 2.0],
                                      strides=[8, 16]),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return RetinaHead(**{**args, **kwargs})


def test_assigner_gets_level_counts_and_predictions():
    recorder = RecordingAssigner()
    head = _retina(train_cfg=dict(TRAIN_CFG, assigner=recorder, allowed_border=0))
    raw = head(_tiny_feats())
    metas = [_meta(), _meta(48, 40, pad_shape=(64, 64, 3))]
    head.loss(raw, [_target(BOXES, [0, 2]), _target(BOXES[:1], [1])], metas)
    assert len(recorder.calls) == 2
    priors = head.get_priors(raw[0], metas)
    scores = levels_to_rows(raw[0], NUM_CLASSES).sigmoid()
    for i, call in enumerate(recorder.calls):
        # the anchors inside image i (allowed_border=0), counted per level, as ATSS needs
        inside = priors.valid[i] & (priors.priors[:, :2] >= 0).all(1) \
            & (priors.priors[:, 2] < metas[i]["img_shape"][1]) \
            & (priors.priors[:, 3] < metas[i]["img_shape"][0])
        assert torch.equal(call["priors"], priors.priors[inside])
        assert call["num_level_priors"] == [int(f.sum()) for f in priors.per_level(inside)]
        # detached probabilities and decoded boxes of the same anchors
        assert not call["pred_scores"].requires_grad
        torch.testing.assert_close(call["pred_scores"], scores[i][inside].detach())
        deltas = levels_to_rows(raw[1], 4)[i][inside].detach()
        torch.testing.assert_close(call["pred_bboxes"],
                                   head.bbox_coder.decode(priors.priors[inside], deltas))
        assert call["gt_labels"] is not None  # no sampling: the assigner gets the labels


@pytest.mark.parametrize("assigner", [dict(type="ATSSAssigner", topk=9),  # level counts
                                      dict(type="TaskAlignedAssigner", topk=13)])  # predictions
def test_assigners_that_need_more_drop_in_by_config(assigner):
    if assigner["type"] not in MODELS:
        pytest.skip(f"no {assigner['type']} registered")
    head = _retina(train_cfg=dict(TRAIN_CFG, assigner=assigner))
    losses = head.loss(head(_tiny_feats()), [_target(BOXES, [0, 2]), _target()],
                       [_meta(), _meta()])
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] > 0


class PlainSampler:
    """Keeps every assigned prior, under a name other than PseudoSampler."""

    def sample(self, assign_result, bboxes, gt_bboxes, gt_labels=None):
        return MODELS.build(dict(type="PseudoSampler")).sample(assign_result, bboxes, gt_bboxes)


class SigmoidBCE(nn.Module):
    use_sigmoid = True

    def forward(self, pred, target, weight=None, avg_factor=None):
        one_hot = F.one_hot(target, pred.shape[1] + 1)[:, :-1].float()
        loss = F.binary_cross_entropy_with_logits(pred, one_hot, reduction="none")
        return (loss * weight[:, None]).sum() / avg_factor


def test_sampling_follows_mmdetections_rule():
    """A sampler other than PseudoSampler samples, unless the loss is a focal one; then the
    negatives count in the average and the assigner gets no labels."""
    assert not _retina().sampling
    assert not _retina(train_cfg=dict(TRAIN_CFG, sampler=PlainSampler())).sampling  # focal
    assert not _retina(loss_cls=SigmoidBCE()).sampling  # no sampler
    pseudo = dict(TRAIN_CFG, sampler=dict(type="PseudoSampler"))
    assert not _retina(loss_cls=SigmoidBCE(), train_cfg=pseudo).sampling
    recorder = RecordingAssigner()
    head = _retina(loss_cls=SigmoidBCE(),
                   train_cfg=dict(TRAIN_CFG, sampler=PlainSampler(), assigner=recorder))
    assert head.sampling
    raw = head(_tiny_feats(batch=1))
    priors = head.get_priors(raw[0], [_meta()])
    t = head.get_targets(priors, [_target(BOXES, [0, 2])], [_meta()])
    assert t.avg_factor == t.num_pos[0] + t.num_neg[0]
    head.loss(raw, [_target(BOXES, [0, 2])], [_meta()])
    assert recorder.calls[-1]["gt_labels"] is None


def test_train_and_test_cfg_keys_are_checked():
    with pytest.raises(ConfigError, match="Did you mean 'pos_weight'"):
        _retina(train_cfg=dict(TRAIN_CFG, pos_wieght=2.0))
    with pytest.raises(ConfigError, match="Did you mean 'max_per_img'"):
        _retina(test_cfg=dict(TEST_CFG, max_per_image=2))
    with pytest.raises(ConfigError, match="no assigner"):
        TinyFCOSHead(NUM_CLASSES, 8, train_cfg={}).assign_per_image(
            torch.zeros(1, 2), None)


# ---- MMDetection 2.28's heads as the reference ----------------------------------------------

def _mmdet():
    from reference.mmdet_reference import import_mmdet

    return import_mmdet()


def _random_maps(batch, sizes, channels, seed, scale=1.0, shift=0.0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, h, w, generator=gen) * scale + shift for h, w in sizes]


MMDET_METAS = [_meta(64, 64, scale=1.6, ori_shape=(40, 40, 3)),
               dict(_meta(56, 48, scale=0.8), pad_shape=(64, 64, 3))]


def _assert_same_detections(ours, theirs):
    for result, (dets, labels) in zip(ours, theirs, strict=True):
        assert len(result) > 10, len(result)
        assert torch.equal(result.labels, labels)
        assert torch.equal(result.boxes, dets[:, :4])
        _same(result.scores, dets[:, 4])


@pytest.mark.parametrize("cfg", [
    TEST_CFG, dict(TEST_CFG, nms_pre=20, max_per_img=15, score_thr=0.2),
    dict(TEST_CFG, nms=dict(type="nms", iou_threshold=0.3, class_agnostic=True)),
    dict(TEST_CFG, nms=dict(type="soft_nms", iou_threshold=0.3, method="gaussian"),
         max_per_img=30),
    dict(TEST_CFG, nms=dict(type="soft_nms", iou_threshold=0.4, min_score=0.1), nms_pre=50),
])
def test_fcos_like_predictions_are_mmdetections(cfg, monkeypatch):
    """Same maps (centerness as the score factor) into MMDetection's FCOSHead.get_bboxes and
    into the shared post-processing: the same boxes, scores and labels, bit for bit; mmcv's
    soft-NMS kernel is the box-by-box reference above."""
    _mmdet()
    from mmdet.models.dense_heads import FCOSHead

    mmcv_nms = importlib.import_module("mmcv.ops.nms")  # mmcv.ops.nms is also a function
    monkeypatch.setattr(mmcv_nms.ext_module, "softnms", reference_softnms_kernel, raising=False)
    from mmcv import ConfigDict

    theirs = FCOSHead(num_classes=NUM_CLASSES, in_channels=8, strides=[8, 16],
                      test_cfg=ConfigDict(cfg))
    ours = TinyFCOSHead(NUM_CLASSES, 8, test_cfg=cfg)
    sizes = [(8, 8), (4, 4)]
    cls = _random_maps(2, sizes, NUM_CLASSES, 0, scale=2.0, shift=-2.0)
    dist = [m.exp() * s for m, s in zip(_random_maps(2, sizes, 4, 1, scale=0.5, shift=-0.5),
                                        (8, 16), strict=True)]
    ctr = _random_maps(2, sizes, 1, 2)
    with torch.no_grad():
        expected = theirs.get_bboxes(cls, dist, ctr, img_metas=MMDET_METAS, rescale=True)
    _assert_same_detections(ours.predict((cls, dist, ctr), MMDET_METAS), expected)


class SoftmaxCE(nn.Module):
    use_sigmoid = False


@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_retina_predictions_are_mmdetections(use_sigmoid):
    _mmdet()
    from mmdet.models.dense_heads import RetinaHead as MMDetRetinaHead

    anchors = dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                   ratios=[0.5, 1.0, 2.0], strides=[8, 16])
    cfg = dict(TEST_CFG, nms_pre=200)
    mm_loss = dict(type="FocalLoss", use_sigmoid=True) if use_sigmoid \
        else dict(type="CrossEntropyLoss", use_sigmoid=False)
    from mmcv import ConfigDict

    theirs = MMDetRetinaHead(num_classes=NUM_CLASSES, in_channels=8, anchor_generator=anchors,
                             loss_cls=mm_loss, test_cfg=ConfigDict(cfg))
    ours = _retina(anchor_generator=anchors, test_cfg=cfg,
                   **({} if use_sigmoid else dict(loss_cls=SoftmaxCE())))
    channels = 9 * (NUM_CLASSES if use_sigmoid else NUM_CLASSES + 1)
    cls = _random_maps(2, [(8, 8), (4, 4)], channels, 3, scale=2.0, shift=-2.0)
    deltas = _random_maps(2, [(8, 8), (4, 4)], 36, 4, scale=0.3)
    with torch.no_grad():
        expected = theirs.get_bboxes(cls, deltas, img_metas=MMDET_METAS, rescale=True)
    _assert_same_detections(ours.predict((cls, deltas), MMDET_METAS), expected)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(stacked_convs=0), dict(stacked_convs=1, conv_bias=True),
    dict(norm_cfg=dict(type="GN", num_groups=32, requires_grad=True)),
    dict(feat_channels=64, loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False)),
])
def test_anchor_free_head_parameters_are_mmdetections(kwargs):
    _mmdet()
    from mmdet.models.dense_heads import AnchorFreeHead as MMDetAnchorFreeHead

    class Concrete(MMDetAnchorFreeHead):
        def loss(self, *args, **kwargs):
            raise NotImplementedError

        def get_targets(self, *args, **kwargs):
            raise NotImplementedError

    theirs = Concrete(num_classes=NUM_CLASSES, in_channels=16, **kwargs)
    ours_kwargs = dict(kwargs)
    if "loss_cls" in ours_kwargs:
        ours_kwargs["loss_cls"] = SoftmaxCE()
    ours = AnchorFreeHead(NUM_CLASSES, 16, loss_bbox=dict(type="GIoULoss"), **ours_kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in theirs.state_dict().items()}
    assert [p.requires_grad for p in ours.parameters()] == \
        [p.requires_grad for p in theirs.parameters()]
    assert ours.prior_generator.strides == [(s, s) for s in (4, 8, 16, 32, 64)]
    assert ours.prior_generator.offset == theirs.prior_generator.offset == 0.5

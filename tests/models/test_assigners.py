"""MaxIoUAssigner (against a loop written from MMDetection's rules), overlaps, PseudoSampler."""

import pytest
import torch
from torchvision.ops import box_iou

from detlab.config import ConfigError
from detlab.models import MaxIoUAssigner, PseudoSampler
from detlab.models.assigners import bbox_overlaps


def _boxes(n: int, seed: int, size: float = 100) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * size / 2 + 2], dim=1)


def _reference_assign(overlaps, pos_thr, neg_thr, min_pos_iou, assign_all, low_quality):
    """MMDetection 2.x's assign_wrt_overlaps, one ground truth at a time."""
    num_gts, num_bboxes = overlaps.shape
    gt_inds = torch.full((num_bboxes,), -1, dtype=torch.long)
    max_overlaps, argmax = overlaps.max(dim=0)
    gt_max, gt_argmax = overlaps.max(dim=1)
    lo, hi = (0.0, neg_thr) if isinstance(neg_thr, float) else neg_thr
    gt_inds[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
    pos = max_overlaps >= pos_thr
    gt_inds[pos] = argmax[pos] + 1
    if low_quality:
        for i in range(num_gts):
            if gt_max[i] >= min_pos_iou:
                if assign_all:
                    gt_inds[overlaps[i] == gt_max[i]] = i + 1
                else:
                    gt_inds[gt_argmax[i]] = i + 1
    return gt_inds


def test_overlaps_match_torchvision_and_iof():
    a, b = _boxes(7, 0), _boxes(9, 1)
    torch.testing.assert_close(bbox_overlaps(a, b), box_iou(a, b))
    inner = torch.tensor([[0.0, 0, 10, 10]])
    outer = torch.tensor([[0.0, 0, 20, 20]])
    assert bbox_overlaps(inner, outer, mode="iof").item() == 1.0
    assert bbox_overlaps(outer, inner, mode="iof").item() == 0.25


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("neg_thr", [0.4, (0.1, 0.4)])
@pytest.mark.parametrize("min_pos_iou, assign_all, low_quality", [
    (0.0, True, True), (0.3, True, True), (0.0, False, True), (0.0, True, False)])
def test_vectorized_assignment_matches_reference(seed, neg_thr, min_pos_iou, assign_all,
                                                 low_quality):
    anchors, gts = _boxes(300, seed), _boxes(6, seed + 100)
    # duplicate anchors make ties for the low-quality rule
    anchors = torch.cat([anchors, anchors[:20]])
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=neg_thr, min_pos_iou=min_pos_iou,
                              gt_max_assign_all=assign_all, match_low_quality=low_quality)
    labels = torch.arange(6) % 3
    result = assigner.assign(anchors, gts, gt_labels=labels)
    expected = _reference_assign(box_iou(gts, anchors), 0.5, neg_thr, min_pos_iou, assign_all,
                                 low_quality)
    assert torch.equal(result.gt_inds, expected)
    pos = expected > 0
    assert torch.equal(result.labels[pos], labels[expected[pos] - 1])
    assert torch.all(result.labels[~pos] == -1)


def test_hand_made_case():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 30, 30], [50, 50, 60, 60],
                            [0, 0, 4, 4]])
    gts = torch.tensor([[0.0, 0, 10, 10], [21, 21, 29, 36]])
    result = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3).assign(anchors, gts)
    # 0 and 1 overlap gt 0 enough; 2 is gt 1's best anchor (IoU 0.49, a low-quality match);
    # 3 is background; 4 has IoU 0.16 with gt 0: background too
    assert result.gt_inds.tolist() == [1, 1, 2, 0, 0]
    strict = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3, match_low_quality=False)
    assert strict.assign(anchors, gts).gt_inds.tolist() == [1, 1, -1, 0, 0]
    picky = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3, min_pos_iou=0.6)
    assert picky.assign(anchors, gts).gt_inds.tolist() == [1, 1, -1, 0, 0]


def test_ignored_regions():
    anchors = torch.tensor([[0.0, 0, 10, 10], [40, 40, 50, 50], [45, 45, 70, 70]])
    gts = torch.tensor([[0.0, 0, 10, 10]])
    ignore = torch.tensor([[40.0, 40, 60, 60]])
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.5)
    # anchor 1 lies inside the ignored box (IoF 1), anchor 2 only 36%
    assert assigner.assign(anchors, gts, ignore).gt_inds.tolist() == [1, -1, 0]
    wrt_ignored = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, ignore_iof_thr=0.5,
                                 ignore_wrt_candidates=False)
    # over the ignored box's area: anchor 1 covers 25%, anchor 2 56%
    assert wrt_ignored.assign(anchors, gts, ignore).gt_inds.tolist() == [1, 0, -1]
    off = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)
    assert off.assign(anchors, gts, ignore).gt_inds.tolist() == [1, 0, 0]


def test_no_ground_truth_and_no_anchors():
    assigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4)
    result = assigner.assign(_boxes(5, 0), torch.zeros(0, 4),
                             gt_labels=torch.zeros(0, dtype=torch.long))
    assert result.num_gts == 0 and result.gt_inds.tolist() == [0] * 5
    assert result.labels.tolist() == [-1] * 5 and result.max_overlaps.tolist() == [0.0] * 5
    none = assigner.assign(torch.zeros(0, 4), _boxes(3, 1))
    assert none.num_gts == 3 and none.gt_inds.shape == (0,) and none.labels is None


def test_configuration_errors():
    with pytest.raises(ConfigError, match="neg_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.2, 0.3))
    with pytest.raises(ConfigError, match="dtype"):
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4,
                       iou_calculator=dict(type="BboxOverlaps2D", dtype="fp8"))


def test_pseudo_sampler_keeps_everything():
    anchors = torch.tensor([[0.0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 9, 10]])
    gts = torch.tensor([[0.0, 0, 10, 10]])
    result = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(
        anchors, gts, gt_labels=torch.tensor([2]))
    sample = PseudoSampler().sample(result, anchors, gts)
    assert sample.pos_inds.tolist() == [0, 2] and sample.neg_inds.tolist() == [1]
    assert torch.equal(sample.pos_gt_bboxes, gts[[0, 0]])
    assert sample.pos_gt_labels.tolist() == [2, 2]
    empty = PseudoSampler().sample(
        MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(anchors, torch.zeros(0, 4)),
        anchors, torch.zeros(0, 4))
    assert empty.pos_gt_bboxes.shape == (0, 4) and empty.neg_inds.tolist() == [0, 1, 2]


# ---- the other assigners, against their algorithms written out one box at a time ----------
# (tests/models/test_assigners_mmdet.py compares them with MMDetection's own classes)

from detlab.models.anchors import AnchorGenerator, MlvlPointGenerator  # noqa: E402
from detlab.models.assigners import (  # noqa: E402
    ApproxMaxIoUAssigner,
    ATSSAssigner,
    CenterRegionAssigner,
    GridAssigner,
    PointAssigner,
    SimOTAAssigner,
    TaskAlignedAssigner,
    UniformAssigner,
)

SIZES = [(8, 8), (4, 4), (2, 2)]


def _scene(seed: int, num_gts: int = 5):
    gen = torch.Generator().manual_seed(seed)
    wh = torch.rand(num_gts, 2, generator=gen) * 30 + 4
    xy = torch.rand(num_gts, 2, generator=gen) * (64 - wh)
    return torch.cat([xy, xy + wh], 1), torch.randint(0, 4, (num_gts,), generator=gen)


def _level_anchors():
    levels = AnchorGenerator(strides=[8, 16, 32], ratios=[1.0], scales=[4]).grid_priors(SIZES)
    return torch.cat(levels), [len(level) for level in levels]


def _inside(point, box) -> bool:
    return min(point[0] - box[0], point[1] - box[1], box[2] - point[0], box[3] - point[1]) > 0.01


def _atss_one_by_one(anchors, counts, gts, topk):
    """ATSS as its paper states it, one ground truth at a time."""
    ious = box_iou(anchors, gts)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((len(anchors),), -1.0)
    gt_inds = torch.zeros(len(anchors), dtype=torch.long)
    for j, gt in enumerate(gts):
        dist = (centers - (gt[:2] + gt[2:]) / 2).norm(dim=1)
        candidates, start = [], 0
        for count in counts:  # the topk nearest centers on each level
            candidates += (dist[start:start + count].topk(min(topk, count), largest=False)
                           .indices + start).tolist()
            start += count
        cand_ious = ious[candidates, j]
        threshold = cand_ious.mean() + cand_ious.std()
        for i in candidates:
            if ious[i, j] >= threshold and _inside(centers[i], gt) and ious[i, j] > best[i]:
                best[i], gt_inds[i] = ious[i, j], j + 1  # the earlier ground truth keeps ties
    return gt_inds


@pytest.mark.parametrize("seed", range(4))
def test_atss_follows_its_algorithm(seed):
    anchors, counts = _level_anchors()
    gts, labels = _scene(seed)
    result = ATSSAssigner(topk=9).assign(anchors, gts, gt_labels=labels,
                                         num_level_priors=counts)
    expected = _atss_one_by_one(anchors, counts, gts, 9)
    assert torch.equal(result.gt_inds, expected) and (expected > 0).any()
    pos = expected > 0
    assert torch.equal(result.labels[pos], labels[expected[pos] - 1])
    torch.testing.assert_close(result.max_overlaps[pos],
                               box_iou(anchors, gts)[pos, expected[pos] - 1])
    assert (result.max_overlaps[~pos] == -1e8).all()


def _task_aligned_one_by_one(anchors, gts, labels, scores, boxes, topk, alpha, beta):
    ious = box_iou(boxes, gts)
    metrics = scores[:, labels] ** alpha * ious ** beta
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((len(anchors),), -1.0)
    gt_inds = torch.zeros(len(anchors), dtype=torch.long)
    for j, gt in enumerate(gts):
        for i in metrics[:, j].topk(topk).indices.tolist():
            if metrics[i, j] > 0 and _inside(centers[i], gt) and ious[i, j] > best[i]:
                best[i], gt_inds[i] = ious[i, j], j + 1
    return gt_inds, metrics


@pytest.mark.parametrize("seed", range(4))
def test_task_aligned_follows_its_algorithm(seed):
    anchors, _ = _level_anchors()
    gts, labels = _scene(seed)
    gen = torch.Generator().manual_seed(seed + 50)
    boxes = anchors + torch.randn(anchors.shape, generator=gen) * 3
    scores = torch.rand(len(anchors), 4, generator=gen)
    result = TaskAlignedAssigner(topk=5, alpha=1, beta=6).assign(
        anchors, gts, gt_labels=labels, pred_scores=scores, pred_bboxes=boxes)
    expected, metrics = _task_aligned_one_by_one(anchors, gts, labels, scores, boxes, 5, 1, 6)
    assert torch.equal(result.gt_inds, expected) and (expected > 0).any()
    pos = expected > 0
    torch.testing.assert_close(result.assign_metrics[pos], metrics[pos, expected[pos] - 1])
    assert (result.assign_metrics[~pos] == 0).all()


def _sim_ota_one_by_one(points, gts, labels, scores, boxes, radius=2.5, candidate_topk=10):
    """SimOTA written out: the cost of every (prior, box) pair, then each box's dynamic k."""
    num, num_gts = len(points), len(gts)
    x, y, stride = points[:, 0], points[:, 1], points[:, 2]
    in_box = torch.zeros(num, num_gts, dtype=torch.bool)
    in_center = torch.zeros(num, num_gts, dtype=torch.bool)
    for j, (x1, y1, x2, y2) in enumerate(gts.tolist()):
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        in_box[:, j] = (x > x1) & (x < x2) & (y > y1) & (y < y2)
        in_center[:, j] = ((x - cx).abs() < radius * stride) & ((y - cy).abs() < radius * stride)
    valid = (in_box | in_center).any(1)
    ious = box_iou(boxes[valid], gts)
    probs = scores[valid].sqrt()
    onehot = torch.nn.functional.one_hot(labels, scores.shape[1]).float()
    cls_cost = -(onehot[None] * probs[:, None].log()
                 + (1 - onehot[None]) * (1 - probs[:, None]).log()).sum(-1)
    cost = cls_cost + 3.0 * -torch.log(ious + 1e-7) \
        + 100000.0 * ~(in_box[valid] & in_center[valid])
    taken = torch.zeros_like(cost, dtype=torch.bool)
    for j in range(num_gts):
        k = max(int(ious[:, j].topk(min(candidate_topk, len(ious))).values.sum()), 1)
        taken[cost[:, j].topk(k, largest=False).indices, j] = True
    gt_inds = torch.zeros(num, dtype=torch.long)
    valid_inds = valid.nonzero().squeeze(1)
    for v in range(len(cost)):
        if taken[v].sum() > 1:  # taken by several: the cheapest keeps it
            gt_inds[valid_inds[v]] = cost[v].argmin() + 1
        elif taken[v].any():
            gt_inds[valid_inds[v]] = taken[v].nonzero()[0, 0] + 1
    return gt_inds


@pytest.mark.parametrize("seed", range(4))
def test_sim_ota_follows_its_algorithm(seed):
    points = torch.cat(MlvlPointGenerator([8, 16, 32]).grid_priors(SIZES, with_stride=True))
    gts, labels = _scene(seed)
    gen = torch.Generator().manual_seed(seed + 70)
    wh = torch.rand(len(points), 2, generator=gen) * 30 + 4
    centers = points[:, :2] + torch.randn(len(points), 2, generator=gen) * 4
    boxes = torch.cat([centers - wh / 2, centers + wh / 2], 1)
    scores = torch.rand(len(points), 4, generator=gen) * 0.98 + 0.01
    result = SimOTAAssigner().assign(points, gts, gt_labels=labels, pred_scores=scores,
                                     pred_bboxes=boxes)
    expected = _sim_ota_one_by_one(points, gts, labels, scores, boxes)
    assert torch.equal(result.gt_inds, expected) and (expected > 0).any()
    pos = expected > 0
    torch.testing.assert_close(result.max_overlaps[pos],
                               box_iou(boxes, gts)[pos, expected[pos] - 1])
    assert (result.max_overlaps[~pos] == -100000.0).all()


def _point_one_by_one(points, gts, scale, pos_num):
    """RepPoints' rule as stated: per box, its level's nearest points; a nearer box takes
    a point from a farther one."""
    levels = torch.log2(points[:, 2]).int()
    best = torch.full((len(points),), float("inf"))
    gt_inds = torch.zeros(len(points), dtype=torch.long)
    for j, gt in enumerate(gts):
        wh = (gt[2:] - gt[:2]).clamp(min=1e-6)
        level = int((torch.log2(wh[0] / scale) + torch.log2(wh[1] / scale)) / 2)
        level = min(max(level, int(levels.min())), int(levels.max()))
        on_level = (levels == level).nonzero().squeeze(1)
        dist = ((points[on_level, :2] - (gt[:2] + gt[2:]) / 2) / wh).norm(dim=1)
        values, idx = dist.topk(pos_num, largest=False)
        for d, i in zip(values.tolist(), on_level[idx].tolist(), strict=True):
            if d < best[i]:
                best[i], gt_inds[i] = d, j + 1
    return gt_inds


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pos_num", [1, 3])
def test_point_assigner_follows_its_algorithm(seed, pos_num):
    points = torch.cat(MlvlPointGenerator([8, 16, 32], offset=0.0)
                       .grid_priors(SIZES, with_stride=True))
    gts, labels = _scene(seed, 8)
    result = PointAssigner(scale=4, pos_num=pos_num).assign(points, gts, gt_labels=labels)
    expected = _point_one_by_one(points, gts, 4, pos_num)
    assert torch.equal(result.gt_inds, expected) and (expected > 0).any()
    assert result.max_overlaps is None


def test_grid_assigner_keeps_to_responsible_anchors():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 12], [20, 20, 30, 30], [50, 50, 60, 60]])
    gts = torch.tensor([[0.0, 0, 10, 11], [21, 21, 31, 31]])
    flags = torch.tensor([False, True, True, True])
    result = GridAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3).assign(
        anchors, gts, responsible_flags=flags)
    # anchor 0 overlaps gt 0 best (IoU 0.91) but is not responsible: neither positive nor
    # negative; anchor 1 is; anchor 2 is gt 1's; anchor 3 is background
    assert result.gt_inds.tolist() == [-1, 1, 2, 0]
    assert result.max_overlaps[0] == -1  # not responsible for any box
    with pytest.raises(ValueError, match="GridAssigner needs responsible_flags"):
        GridAssigner(pos_iou_thr=0.5, neg_iou_thr=0.3).assign(anchors, gts)


def test_approx_assigner_takes_the_best_approximation():
    squares = torch.tensor([[0.0, 0, 10, 10], [40, 40, 50, 50]])
    # two approximations per square: a wide and a tall box around the square's center
    approxs = torch.tensor([[-5.0, 2.5, 15, 7.5], [2.5, -5, 7.5, 15],
                            [35, 42.5, 55, 47.5], [42.5, 35, 47.5, 55]])
    gts = torch.tensor([[-5.0, 2.0, 15, 8]])
    result = ApproxMaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(
        squares, gts, gt_labels=torch.tensor([3]), approxs=approxs)
    # the square itself overlaps the box by 0.375, its wide approximation by 0.83
    assert result.gt_inds.tolist() == [1, 0] and result.labels.tolist() == [3, -1]
    torch.testing.assert_close(result.max_overlaps[0], box_iou(approxs[:1], gts)[0, 0])


def test_center_region_assigner_cores_shadows_and_ignored():
    big, small = [0.0, 0, 40, 40], [16.0, 16, 24, 24]  # cores (scale 0.3): 14..26, 18.8..21.2
    gts = torch.tensor([big, small])
    priors = torch.tensor([[19.0, 19, 21, 21],   # in both cores: the smaller box wins
                           [12.0, 12, 18, 18],   # in the big core and the small box's shadow
                           [8.0, 8, 12, 12],     # only in the big box's shadow
                           [60.0, 60, 64, 64],   # nowhere
                           [2.0, 30, 6, 34]])    # center in the ignored box's middle half
    ignore = torch.tensor([[0.0, 24, 8, 40]])
    assigner = CenterRegionAssigner(pos_scale=0.3, neg_scale=0.8)
    result = assigner.assign(priors, gts, ignore, gt_labels=torch.tensor([1, 2]))
    assert result.gt_inds.tolist() == [2, 1, 0, 0, -1]
    assert result.labels.tolist() == [2, 1, -1, -1, -1] and result.max_overlaps is None
    # (prior, label) of the boxes shadowing a prior: the shadows it overlaps (by IoF, the
    # ignored prior 4 too), then the cores it lost
    assert result.extra["shadowed_labels"].tolist() == [[1, 2], [2, 1], [4, 1], [0, 1]]
    # shadowed by a box of its own class, a positive turns negative ...
    same = assigner.assign(priors, gts, ignore, gt_labels=torch.tensor([1, 1]))
    assert same.gt_inds.tolist() == [0, 0, 0, 0, -1]
    # ... unless the foreground dominates: then it stays, and the pair is dropped
    dominant = CenterRegionAssigner(pos_scale=0.3, neg_scale=0.8, foreground_dominate=True)
    kept = dominant.assign(priors, gts, ignore, gt_labels=torch.tensor([1, 1]))
    assert kept.gt_inds.tolist() == [2, 1, 0, 0, -1]
    assert kept.extra["shadowed_labels"].tolist() == [[2, 1], [4, 1]]


def test_uniform_assigner_matches_nearest_predictions_and_anchors():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20],
                            [30, 30, 40, 40], [100, 100, 110, 110]])
    preds = torch.tensor([[30.0, 30, 40, 40], [10, 0, 20, 10], [0, 10, 10, 20],
                          [0, 0, 10, 10], [100, 100, 110, 110]])
    gts = torch.tensor([[0.0, 0, 10, 10]])
    result = UniformAssigner(pos_ignore_thr=0.1, neg_ignore_thr=0.7, match_times=1).assign(
        anchors, gts, gt_labels=torch.tensor([2]), pred_bboxes=preds)
    # the nearest prediction is prior 3's, the nearest anchor prior 0; prior 3's anchor does
    # not overlap the box (IoU 0 < 0.1): ignored; prior 3's prediction overlapping 1.0 > 0.7
    # would be ignored anyway
    assert result.gt_inds.tolist() == [1, 0, 0, -1, 0]
    assert result.extra["pos_idx"].tolist() == [False, True]
    assert result.labels.tolist() == [2, -1, -1, -1, -1]


@pytest.mark.parametrize("assigner, needs", [
    (ATSSAssigner(topk=9), "num_level_priors"),
    (TaskAlignedAssigner(topk=13), "pred_scores"),
    (SimOTAAssigner(), "pred_scores"),
    (UniformAssigner(0.15, 0.7), "pred_bboxes"),
    (ApproxMaxIoUAssigner(0.5, 0.4), "approxs"),
])
def test_missing_inputs_are_named(assigner, needs):
    anchors, _ = _level_anchors()
    gts, labels = _scene(0)
    with pytest.raises(ValueError, match=f"{type(assigner).__name__} needs {needs}.*the head "
                                         f"must pass them"):
        assigner.assign(anchors, gts, None, labels)


@pytest.mark.parametrize("assigner, kwargs", [
    (ATSSAssigner(topk=9), dict(num_level_priors=[64, 16, 4])),
    (TaskAlignedAssigner(topk=13), dict(pred_scores=torch.rand(84, 4),
                                        pred_bboxes=_level_anchors()[0])),
    (CenterRegionAssigner(0.2, 0.5), {}),
    (UniformAssigner(0.15, 0.7), dict(pred_bboxes=_level_anchors()[0])),
    (GridAssigner(0.5, 0.5), dict(responsible_flags=torch.ones(84, dtype=torch.bool))),
])
def test_no_ground_truth_makes_everything_background(assigner, kwargs):
    anchors, _ = _level_anchors()
    result = assigner.assign(anchors, torch.zeros(0, 4), None,
                             torch.zeros(0, dtype=torch.long), **kwargs)
    assert result.num_gts == 0 and (result.gt_inds == 0).all()
    assert (result.labels == -1).all()

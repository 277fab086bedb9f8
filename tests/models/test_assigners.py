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

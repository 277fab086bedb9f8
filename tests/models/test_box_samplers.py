"""RandomSampler's counts and draws, written out from its rules (tests/models/
test_assigners_mmdet.py compares its draws with MMDetection's own sampler)."""

import pytest
import torch

from detlab.config import ConfigError
from detlab.models.assigners import AssignResult, PseudoSampler, RandomSampler


def _assignment(num_pos: int, num_neg: int, num_ignored: int, num_gts: int = 3) -> AssignResult:
    """Positives first (cycling through the ground truths), then negatives, then ignored."""
    gt_inds = torch.cat([torch.arange(num_pos) % num_gts + 1,
                         torch.zeros(num_neg, dtype=torch.long), torch.full((num_ignored,), -1)])
    labels = torch.where(gt_inds > 0, gt_inds + 10, torch.full_like(gt_inds, -1))
    return AssignResult(num_gts, gt_inds, torch.rand(len(gt_inds)), labels)


def _boxes(n: int) -> torch.Tensor:
    xy = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 2)
    return torch.cat([xy, xy + 5], 1)


def _drawn(candidates: torch.Tensor, num: int) -> torch.Tensor:
    """The rule: without replacement, a random permutation's first ``num`` -- sorted."""
    if len(candidates) <= num:
        return candidates
    return candidates[torch.randperm(len(candidates))[:num]].sort().values


@pytest.mark.parametrize("num_pos, num_neg", [(5, 100), (80, 300), (0, 50), (40, 10)])
def test_counts_and_draws(num_pos, num_neg):
    assign = _assignment(num_pos, num_neg, 7)
    boxes, gts = _boxes(len(assign.gt_inds)), _boxes(3) + 100
    sampler = RandomSampler(num=64, pos_fraction=0.25, add_gt_as_proposals=False)
    torch.manual_seed(0)
    sample = sampler.sample(assign, boxes, gts)
    torch.manual_seed(0)  # the same draws, in the same order: positives, then negatives
    pos = _drawn(torch.arange(num_pos), 16)
    neg = _drawn(torch.arange(num_pos, num_pos + num_neg), 64 - len(pos))
    assert torch.equal(sample.pos_inds, pos) and torch.equal(sample.neg_inds, neg)
    assert torch.equal(sample.pos_bboxes, boxes[pos]) and torch.equal(sample.neg_bboxes,
                                                                       boxes[neg])
    assert torch.equal(sample.pos_gt_bboxes, gts[assign.gt_inds[pos] - 1])
    assert torch.equal(sample.pos_gt_labels, assign.labels[pos])
    assert sample.pos_is_gt.sum() == 0 and len(sample.bboxes) == len(pos) + len(neg)


def test_negatives_bounded_by_positives():
    assign = _assignment(4, 200, 0)
    boxes, gts = _boxes(204), _boxes(3)
    sample = RandomSampler(num=128, pos_fraction=0.5, neg_pos_ub=3,
                           add_gt_as_proposals=False).sample(assign, boxes, gts)
    assert len(sample.pos_inds) == 4 and len(sample.neg_inds) == 12
    none = RandomSampler(num=128, pos_fraction=0.5, neg_pos_ub=3, add_gt_as_proposals=False)
    alone = none.sample(_assignment(0, 200, 0), _boxes(200), gts)
    assert len(alone.pos_inds) == 0 and len(alone.neg_inds) == 3  # as if there were one


def test_ground_truths_added_as_proposals():
    assign = _assignment(2, 30, 0)
    boxes, gts = _boxes(32), _boxes(3) + 50
    labels = torch.tensor([7, 8, 9])
    sample = RandomSampler(num=512, pos_fraction=0.25).sample(assign, boxes, gts, labels)
    # the 3 ground truths come first, positives of themselves
    assert sample.pos_inds.tolist() == [0, 1, 2, 3, 4]
    assert sample.pos_is_gt.tolist() == [1, 1, 1, 0, 0]
    assert sample.pos_assigned_gt_inds.tolist() == [0, 1, 2, 0, 1]
    assert torch.equal(sample.pos_bboxes[:3], gts)
    assert sample.pos_gt_labels.tolist() == [7, 8, 9, 11, 12]
    assert sample.neg_inds.tolist() == list(range(5, 35))
    assert len(assign.gt_inds) == 32  # the assignment given is left as it was
    with pytest.raises(ValueError, match="needs gt_labels"):
        RandomSampler(num=8, pos_fraction=0.5).sample(assign, boxes, gts)
    empty = RandomSampler(num=8, pos_fraction=0.5).sample(_assignment(0, 30, 0, 0), boxes,
                                                          torch.zeros(0, 4))
    assert empty.pos_gt_bboxes.shape == (0, 4) and len(empty.neg_inds) == 8


def test_pseudo_sampler_marks_no_ground_truth():
    assign = _assignment(3, 4, 2)
    sample = PseudoSampler().sample(assign, _boxes(9), _boxes(3), torch.tensor([1, 2, 3]))
    assert sample.pos_inds.tolist() == [0, 1, 2] and sample.neg_inds.tolist() == [3, 4, 5, 6]
    assert sample.pos_is_gt.tolist() == [0, 0, 0]


def test_bad_arguments():
    with pytest.raises(ConfigError, match="pos_fraction"):
        RandomSampler(num=8, pos_fraction=1.5)

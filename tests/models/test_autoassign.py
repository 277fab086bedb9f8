"""AutoAssign against MMDetection 2.28: with MMDetection's weights loaded strictly into a small
AutoAssign built from the same zoo config, the same head outputs, losses (also with empty ground
truth and averaged over processes) and detections; the head's losses on hand-made scenes
(tiny boxes with ``force_topk``, duplicated boxes of one class) and their gradients; the init.

The batch and the comparisons are FCOS's (``test_fcos.py``). (The zoo's AutoAssign config's
parameter count and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import _loss_inputs, build_pair, compare_detections, compare_outputs, mmdet_losses

from detlab.config import Config
from detlab.models.heads.autoassign_head import AutoAssignHead
from detlab.models.init import bias_init_with_prob
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
AUTOASSIGN = "autoassign/autoassign_r50_fpn_8x2_1x_coco.py"
LOSS_KEYS = {"loss_pos", "loss_neg", "loss_center"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / AUTOASSIGN)
    theirs = Config.fromfile(mmdet_config_dir() / AUTOASSIGN)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def autoassign_pair():
    """MMDetection's small AutoAssign and detlab's with its weights; the box branch's bias and
    the objectness raised so that boxes have sizes and enough scores pass the threshold."""
    reference, ours = build_pair(AUTOASSIGN, "conv_cls")
    with torch.no_grad():
        reference.bbox_head.conv_reg.bias.uniform_(1.0, 3.0)
        reference.bbox_head.conv_centerness.bias.fill_(3.0)
        reference.bbox_head.center_prior.mean.uniform_(-0.5, 0.5)
        reference.bbox_head.center_prior.sigma.uniform_(0.6, 1.6)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


@pytest.mark.slow
def test_head_outputs_match_mmdetection(autoassign_pair):
    compare_outputs(*autoassign_pair)


@pytest.mark.slow
def test_losses_match_mmdetection(autoassign_pair):
    losses = compare_losses(*autoassign_pair)
    assert all(v > 0 for v in losses.values())


@pytest.mark.slow
def test_empty_ground_truth_losses_match_mmdetection(autoassign_pair):
    losses = compare_losses(*autoassign_pair, empty=True)
    assert losses["loss_neg"] > 0
    assert losses["loss_pos"] == 0 and losses["loss_center"] == 0


@pytest.mark.slow
def test_losses_match_mmdetection_across_processes(autoassign_pair, monkeypatch):
    """The positives' and the negatives' divisors are averaged over processes as MMDetection
    averages them (the same stand-in for the mean in both: three times this process's)."""
    import mmdet.models.dense_heads.autoassign_head as mmdet_autoassign

    from detlab.models.heads import autoassign_head

    calls = []

    def mean_over_processes(tensor):
        calls.append(float(tensor))
        return tensor * 3

    monkeypatch.setattr(mmdet_autoassign, "reduce_mean", mean_over_processes)
    monkeypatch.setattr(autoassign_head, "reduce_mean", mean_over_processes)
    compare_losses(*autoassign_pair)
    assert len(calls) == 4  # the objects and the priors' sum, in each model


@pytest.mark.slow
def test_detections_match_mmdetection(autoassign_pair):
    compare_detections(*autoassign_pair)


# ---- the head alone, on hand-made scenes --------------------------------------------------

STRIDES = (8, 16, 32)
SIZE = 96
NUM_CLASSES = 4


def _heads(**options):
    """MMDetection's AutoAssignHead and detlab's with the same (randomized) weights."""
    import_mmdet()
    from mmdet.models.dense_heads import AutoAssignHead as Reference

    args = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=1,
                strides=STRIDES, norm_cfg=dict(type="GN", num_groups=4),
                loss_bbox=dict(type="GIoULoss", loss_weight=5.0), **options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.rand_like(p) * 0.4 + 0.2 if p.dim() <= 2 else torch.randn_like(p) * 0.1)
        reference.conv_reg.bias.fill_(2.0)
    ours = AutoAssignHead(**args)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _scene():
    """Per image: tiny boxes between the points (no point inside: force_topk's case), two
    same-class boxes over one another, a large box; the second image has none."""
    boxes = torch.tensor([[3.0, 3.0, 6.0, 6.0], [50.0, 41.0, 54.0, 46.0],
                          [10.0, 12.0, 60.0, 70.0], [14.0, 10.0, 66.0, 64.0],
                          [0.0, 30.0, 95.0, 90.0]])
    labels = torch.tensor([1, 3, 2, 2, 0])
    return [boxes, torch.zeros(0, 4)], [labels, torch.zeros(0, dtype=torch.long)]


def _losses_and_gradients(head, feats, call):
    feats = [f.clone().requires_grad_(True) for f in feats]
    losses = call(head, head(feats))
    out = {}
    for key, value in losses.items():
        grads = torch.autograd.grad(value, feats + [head.center_prior.mean,
                                                    head.center_prior.sigma],
                                    retain_graph=True, allow_unused=True)
        out[key] = (value.detach(), [g for g in grads if g is not None])
    return out


@pytest.mark.parametrize("force_topk", [False, True], ids=["inside-only", "force-topk"])
def test_head_losses_and_gradients_match_mmdetection(force_topk):
    reference, ours = _heads(force_topk=force_topk, topk=5)
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 8, SIZE // s, SIZE // s, generator=gen) for s in STRIDES]
    boxes, labels = _scene()
    metas = [dict(img_shape=(SIZE, SIZE, 3), pad_shape=(SIZE, SIZE, 3))] * 2
    expected = _losses_and_gradients(
        reference, feats, lambda head, raw: head.loss(*raw, boxes, labels, metas))
    targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
    actual = _losses_and_gradients(ours, feats,
                                   lambda head, raw: head.loss(raw, targets, metas))
    assert set(actual) == set(expected) == LOSS_KEYS
    for key, (value, grads) in actual.items():
        assert value > 0
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        assert len(grads) == len(expected[key][1])
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)


def test_tiny_boxes_get_points_only_with_force_topk():
    _, ours = _heads(force_topk=True, topk=5)
    points = torch.cat(ours.prior_generator.grid_priors([(SIZE // s, SIZE // s)
                                                         for s in STRIDES]))
    strides = torch.cat([torch.full(((SIZE // s) ** 2,), float(s)) for s in STRIDES])
    boxes, labels = _scene()
    inside = torch.zeros(len(points), len(labels[0]), dtype=torch.bool)
    inside[0, 2:] = True  # the other boxes have points
    prior, widened = ours.center_prior(points, strides, boxes[0], labels[0], inside)
    assert widened[:, :2].sum(0).tolist() == [5, 5]
    assert torch.equal(widened[:, 2:], inside[:, 2:])
    assert torch.all(prior[~widened] == 0) and torch.all(prior[:, :2][widened[:, :2]] > 0)
    ours.center_prior.force_topk = False
    _, unchanged = ours.center_prior(points, strides, boxes[0], labels[0], inside)
    assert torch.equal(unchanged, inside)


def test_init_starts_boxes_and_scores_as_mmdetection():
    head = AutoAssignHead(NUM_CLASSES, 8, feat_channels=8, stacked_convs=1, strides=STRIDES,
                          norm_cfg=dict(type="GN", num_groups=4))
    head.init_weights()
    assert torch.all(head.conv_reg.bias == 4.0)
    torch.testing.assert_close(head.conv_cls.bias,
                               torch.full((NUM_CLASSES,), bias_init_with_prob(0.02)))
    assert head.cls_convs[0].conv.bias is not None  # biased convs before GroupNorm
    assert torch.all(head.center_prior.sigma == 1) and torch.all(head.center_prior.mean == 0)
    points = head.prior_generator.grid_priors([(2, 2), (1, 1), (1, 1)])  # cells' corners
    assert points[0].tolist() == [[0, 0], [8, 0], [0, 8], [8, 8]]

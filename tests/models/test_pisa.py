"""PISA's dense heads against MMDetection 2.28: the shipped configs are MMDetection's; a small
PISA RetinaNet (ResNet-18, 32 channels, from the zoo config) with MMDetection's weights loaded
strictly gives the same head outputs, losses (ISR-P weights, ``loss_carl``; an empty ground
truth too), loss gradients and detections; PISA's SSD head gives the same losses and gradients
on the same raw maps. (The zoo's PISA RetinaNet and SSD rows are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import SMALL, _loss_inputs, compare_detections, mmdet_losses
from test_ssd import ANCHORS, TEST_CFG, TRAIN_CFG, _losses_and_gradients
from torch import nn

from detlab.config import Config
from detlab.models import build_model
from detlab.models.heads import PISASSDHead
from detlab.models.losses import carl_loss, isr_p
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
RETINA = "pisa/pisa_retinanet_r50_fpn_1x_coco.py"
SSD = "pisa/pisa_ssd300_coco.py"
PISA_CFG = dict(isr=dict(k=2.0, bias=0.0), carl=dict(k=1.0, bias=0.2))
LOSS_KEYS = {"loss_cls", "loss_bbox", "loss_carl"}


@pytest.mark.parametrize("config", [RETINA, SSD])
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


# ---- a small PISA RetinaNet --------------------------------------------------------------------

def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm layers, and a classifier calibrated on ``images`` so that each class's
    logits spread around the score threshold (as test_fcos.randomize, without scales)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        cls = model.bbox_head.retina_cls
        cls.bias.zero_()
        logits = torch.cat([level.transpose(0, 1).flatten(1) for level in
                            model.eval().bbox_head(model.extract_feat(images))[0]], dim=1)
        gain = 1.0 / logits.std(dim=1)
        cls.weight.mul_(gain[:, None, None, None])
        cls.bias.copy_(-logits.mean(dim=1) * gain - 3.0)


@pytest.fixture(scope="module")
def retina_pair():
    """(MMDetection's small PISA RetinaNet, detlab's with its weights loaded strictly)."""
    import_mmdet()
    from mmdet.models import build_detector

    options = {k: v for k, v in SMALL.items()}
    mm_cfg = load_mmdet_config(RETINA)
    mm_cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference, torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / RETINA)
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_head_outputs_match_mmdetection(retina_pair):
    reference, ours = retina_pair
    images = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key].reshape(()), rtol=1e-5,
                                   atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(retina_pair):
    losses = _compare_losses(*retina_pair)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(retina_pair):
    losses = _compare_losses(*retina_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_carl"] == 0


def test_head_loss_gradients_match_mmdetection(retina_pair):
    """ISR-P changes weights only; CARL's weights carry gradients into the scores."""
    reference, ours = retina_pair
    images, targets, metas = _loss_inputs()
    with torch.no_grad():
        raw = reference.bbox_head(reference.extract_feat(images))
    boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
    reference.bbox_head.train()
    expected = _losses_and_gradients(
        raw, lambda maps: reference.bbox_head.loss(*maps, boxes, labels, metas))
    actual = _losses_and_gradients(
        raw, lambda maps: ours.bbox_head.loss(tuple(maps), targets, metas))
    reference.bbox_head.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key, (value, grads) in actual.items():
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)


def test_detections_match_mmdetection(retina_pair):
    compare_detections(*retina_pair)


# ---- PISA's SSD head -----------------------------------------------------------------------


def _ssd_heads():
    """MMDetection's PISASSDHead and detlab's (its weights loaded strictly), small."""
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models.dense_heads import PISASSDHead as Reference

    args = dict(num_classes=3, in_channels=(8, 16), anchor_generator=ANCHORS)
    train_cfg = dict(TRAIN_CFG, **PISA_CFG)
    torch.manual_seed(0)
    reference = Reference(**args, train_cfg=ConfigDict(train_cfg), test_cfg=ConfigDict(TEST_CFG))
    ours = PISASSDHead(**args, train_cfg=train_cfg, test_cfg=TEST_CFG)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _ssd_batch(counts):
    gen = torch.Generator().manual_seed(11)
    metas = [dict(img_shape=(32, 32, 3), pad_shape=(32, 32, 3), batch_input_shape=(32, 32),
                  ori_shape=(32, 32, 3), scale_factor=np.ones(4, np.float32), flip=False,
                  flip_direction=None, img_id=i, filename="x.jpg") for i in range(2)]
    targets = []
    for n in counts:
        size = torch.rand(n, 2, generator=gen) * 14 + 6
        corner = torch.rand(n, 2, generator=gen) * (32 - size)
        targets.append(dict(boxes=torch.cat([corner, corner + size], 1),
                            labels=torch.randint(0, 3, (n,), generator=gen)))
    feats = [torch.randn(2, 8, 4, 4, generator=gen), torch.randn(2, 16, 2, 2, generator=gen)]
    return feats, targets, metas


@pytest.mark.parametrize("counts", [(5, 3), (0, 4), (0, 0)], ids=["boxes", "one-empty",
                                                                 "all-empty"])
def test_ssd_head_losses_and_gradients_match_mmdetection(counts):
    reference, ours = _ssd_heads()
    feats, targets, metas = _ssd_batch(counts)
    with torch.no_grad():
        raw = reference(feats)
    boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
    expected = _losses_and_gradients(
        raw, lambda maps: reference.loss(*maps, boxes, labels, metas))
    actual = _losses_and_gradients(raw, lambda maps: ours.loss(tuple(maps), targets, metas))
    assert set(actual) == set(expected) == LOSS_KEYS
    for key, (value, grads) in actual.items():
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)
    if counts == (0, 0):
        assert all(v.item() == 0 for v, _ in actual.values())
    else:
        assert all(v.item() > 0 for v, _ in actual.values())


# ---- the two functions by themselves ---------------------------------------------------------


class _Coder:
    """Deltas are the boxes themselves (decode returns them)."""

    def decode(self, anchors, deltas):
        return deltas


def test_isr_p_ranks_within_objects_then_classes_and_keeps_the_loss_total():
    # one class, two objects: object 0 with IoUs 0.9 and 0.5, object 1 with 0.7
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    pred = torch.tensor([[0.0, 0.0, 9.0, 10.0], [0.0, 0.0, 5.0, 10.0], [0.0, 0.0, 7.0, 10.0]])
    labels = torch.tensor([0, 0, 0, 1])  # the last is background (1 class)
    cls = torch.tensor([[0.5], [0.2], [-0.3], [0.1]])

    def loss(pred, target, reduction_override=None):
        return torch.nn.functional.binary_cross_entropy_with_logits(
            pred[:, 0], target.float(), reduction="none")

    weights = isr_p(cls, torch.cat([pred, target[:1]]), labels, torch.ones(4),
                    torch.cat([target, target[:1]]), torch.zeros(4, 4),
                    [torch.tensor([0, 0, 1])], loss, _Coder(), k=2.0, bias=0.0, num_classes=1)
    # HLR: 0.9 (first of object 0) > 0.7 (first of object 1) > 0.5 -> (3 - rank) / 3
    raw = torch.tensor([3 / 3, 1 / 3, 2 / 3]) ** 2
    per = loss(cls[:3], labels[:3])
    torch.testing.assert_close(weights[:3], raw * per.sum() / (per * raw).sum())
    assert weights[3] == 1.0
    torch.testing.assert_close((weights[:3] * per).sum(), per.sum())


def test_carl_weights_sum_to_the_positives_and_reach_the_scores():
    cls = torch.tensor([[2.0, -1.0], [0.0, 0.0], [1.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 2, 1])  # the middle one is background (2 classes)
    pred, target = torch.ones(3, 4), torch.zeros(3, 4)

    def l1(pred, target, reduction_override=None):
        return (pred - target).abs()

    loss = carl_loss(cls, labels, pred, target, l1, k=1.0, bias=0.2, avg_factor=2.0,
                     sigmoid=True, num_classes=2)
    # every positive has the same regression loss (4 / 2), weights summing to 2 positives
    torch.testing.assert_close(loss, torch.tensor(4.0))
    loss.backward()
    assert cls.grad is not None
    empty = carl_loss(cls, torch.tensor([2, 2, 2]), pred, target, l1, num_classes=2)
    assert empty.item() == 0.0


def test_isr_reweights_the_positives_gradients():
    """ISR-P keeps the positives' classification loss total (hence SSD's loss_cls) but moves
    its gradient towards the prime samples: with ISR-P off (no train_cfg.isr) the same batch
    gives the same loss_cls and another gradient, so the comparisons above exercise it."""
    _, ours = _ssd_heads()
    feats, targets, metas = _ssd_batch((5, 3))
    plain = PISASSDHead(num_classes=3, in_channels=(8, 16), anchor_generator=ANCHORS,
                        train_cfg=dict(TRAIN_CFG, carl=PISA_CFG["carl"]), test_cfg=TEST_CFG)
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        raw = ours(feats)
    with_isr = _losses_and_gradients(raw, lambda maps: ours.loss(tuple(maps), targets, metas))
    without = _losses_and_gradients(raw, lambda maps: plain.loss(tuple(maps), targets, metas))
    torch.testing.assert_close(with_isr["loss_cls"][0], without["loss_cls"][0])
    assert any(not torch.allclose(a, b) for a, b in zip(with_isr["loss_cls"][1],
                                                        without["loss_cls"][1], strict=True))

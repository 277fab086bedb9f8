"""FSAF against MMDetection 2.28: with MMDetection's weights loaded strictly into a small FSAF
built from the same zoo config, the same head outputs, losses (every object trained at its level
of least loss), logged positives and recall, and detections; an empty ground truth; the online
level selection; configuration errors.

The batch and the comparisons are FCOS's (``test_fcos.py``). (The zoo's FSAF configs' parameter
counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import HEIGHT, WIDTH, _loss_inputs, build_pair, compare_detections, mmdet_losses

from detlab.config import Config, ConfigError
from detlab.models.heads.fsaf_head import FSAFHead, positive_recall
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
FSAF = "fsaf/fsaf_r50_fpn_1x_coco.py"
KEYS = {"loss_cls", "loss_bbox", "num_pos", "pos_recall"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / FSAF)
    theirs = Config.fromfile(mmdet_config_dir() / FSAF)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def fsaf_pair():
    import_mmdet()
    from mmdet.models.dense_heads import FSAFHead as ReferenceHead

    # build_pair randomizes per-level scales, which RetinaNet's layers have none of
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReferenceHead, "scales", (), raising=False)
        return build_pair(FSAF, "retina_cls")


def test_head_outputs_match_mmdetection(fsaf_pair):
    reference, ours = fsaf_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert all((b >= 0).all() for b in actual[1])  # ReLU'd distances


def compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == KEYS
    for key in expected:
        # MMDetection's pos_recall has shape (1,)
        value = expected[key].to(actual[key].dtype).reshape(actual[key].shape)
        torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(fsaf_pair):
    losses = compare_losses(*fsaf_pair)
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] > 0 and losses["num_pos"] > 0


def test_empty_ground_truth_losses_match_mmdetection(fsaf_pair):
    losses = compare_losses(*fsaf_pair, empty=True)
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] == 0 and losses["num_pos"] == 0


def test_detections_match_mmdetection(fsaf_pair):
    compare_detections(*fsaf_pair)


# ---- without MMDetection -----------------------------------------------------------------

TRAIN_CFG = dict(assigner=dict(type="CenterRegionAssigner", pos_scale=0.2, neg_scale=0.2,
                               min_pos_iof=0.01),
                 allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)
META = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))


def _small_head(**kwargs) -> FSAFHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1,
                reg_decoded_bbox=True,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=1,
                                      scales_per_octave=1, ratios=[1.0], strides=[8, 16]),
                bbox_coder=dict(type="TBLRBBoxCoder", normalizer=4.0),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True, reduction="none"),
                loss_bbox=dict(type="IoULoss", eps=1e-6, reduction="none"),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return FSAFHead(**{**args, **kwargs})


def test_each_object_keeps_one_level():
    """Objects positive on both levels keep their positives on one of them only."""
    head = _small_head()
    feats = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    target = dict(boxes=torch.tensor([[8.0, 8.0, 56.0, 56.0], [2.0, 30.0, 30.0, 62.0]]),
                  labels=torch.tensor([0, 2]))
    raw = head(feats)
    priors = head.get_priors(raw[0], [META])
    labels, _, _, _, gt_inds, num_gts, _ = head.fsaf_targets(priors, [target], [META])
    per_level = [set(inds[inds >= 0].tolist()) for inds in priors.per_level(gt_inds[0])]
    assert num_gts == 2 and per_level[0] & per_level[1]  # assigned on both levels
    losses = head.loss(raw, [target], [META])
    kept = int(round(float(losses["num_pos"])))
    assert 0 < kept < int((gt_inds >= 0).sum())
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in head.parameters())


def test_empty_ground_truth_divides_by_negatives():
    head = _small_head()
    raw = head([torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)])
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    losses = head.loss(raw, [empty, empty], [META, META])
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] == 0
    assert losses["num_pos"] == 0 and losses["pos_recall"] == 0


def test_positive_recall():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.3], [0.6, 0.7]])
    labels = torch.tensor([0, 1, 0])
    torch.testing.assert_close(positive_recall(scores, labels), torch.tensor(200 / 3))
    torch.testing.assert_close(positive_recall(scores, labels, thresh=0.5), torch.tensor(100 / 3))
    assert positive_recall(scores[:0], labels[:0]) == 0


def test_losses_must_be_element_wise():
    with pytest.raises(ConfigError, match="bbox_head.loss_cls.reduction='none'"):
        _small_head(loss_cls=dict(type="FocalLoss", use_sigmoid=True))
    with pytest.raises(ConfigError, match="bbox_head.loss_bbox.reduction='none'"):
        _small_head(loss_bbox=dict(type="IoULoss"))


def test_softmax_classification():
    """A softmax classifier: one label weight per location, recall over the C + 1 outputs."""
    head = _small_head(loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                     reduction="none"))
    raw = head([torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)])
    target = dict(boxes=torch.tensor([[8.0, 8.0, 56.0, 56.0]]), labels=torch.tensor([2]))
    losses = head.loss(raw, [target], [META])
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] > 0 and losses["num_pos"] > 0

"""ATSS against MMDetection 2.28: with MMDetection's weights loaded strictly into a small ATSS
built from the same zoo config, the same head outputs, losses (also with the divisors averaged
over processes) and detections; an empty ground truth; training on the shapes data.

The comparisons with MMDetection's model are FCOS's (``test_fcos.py``); the batch's second
image is smaller than the batch, so the anchors over its padding are invalid and the assigner's
per-level counts are those of the valid anchors. (The zoo's ATSS configs' parameter counts and
state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from reference.mmdet_reference import mmdet_config_dir
from test_fcos import (
    _loss_inputs,
    build_pair,
    compare_detections,
    compare_losses,
    compare_outputs,
)

from detlab.config import Config, ConfigError
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.models.assigners import PseudoSampler
from detlab.models.heads.atss_head import ATSSHead, anchor_centerness
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
ATSS = "atss/atss_r50_fpn_1x_coco.py"
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)
TRAIN_CFG = dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1,
                 debug=False)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / ATSS)
    theirs = Config.fromfile(mmdet_config_dir() / ATSS)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def atss_pair():
    return build_pair(ATSS, "atss_cls")


def test_head_outputs_match_mmdetection(atss_pair):
    compare_outputs(*atss_pair)


def test_losses_match_mmdetection(atss_pair):
    losses = compare_losses(*atss_pair)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(atss_pair):
    losses = compare_losses(*atss_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0


def test_losses_match_mmdetection_across_processes(atss_pair, monkeypatch):
    """Both divisors go through the mean over processes, as in MMDetection: with the same
    stand-in for it (three times this process's numbers) in both models, the same losses."""
    reference, ours = atss_pair
    import mmdet.models.dense_heads.atss_head as mmdet_atss

    from detlab.models.heads import atss_head

    calls = []

    def mean_over_processes(tensor):
        calls.append(float(tensor))
        return tensor * 3

    monkeypatch.setattr(mmdet_atss, "reduce_mean", mean_over_processes)
    monkeypatch.setattr(atss_head, "reduce_mean", mean_over_processes)
    shared = compare_losses(reference, ours)
    assert len(calls) == 4  # the positives and the centerness sum, in each model
    monkeypatch.undo()
    single = ours.train().loss(Batch(*_loss_inputs()))
    ours.eval()
    for key in ("loss_cls", "loss_bbox", "loss_centerness"):  # every divisor 3 times larger
        torch.testing.assert_close(shared[key] * 3, single[key], rtol=1e-5, atol=1e-6)


def test_detections_match_mmdetection(atss_pair):
    compare_detections(*atss_pair)


# ---- without MMDetection -----------------------------------------------------------------

def _small_head(**kwargs) -> ATSSHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2,
                norm_cfg=dict(type="GN", num_groups=4),
                anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                      scales_per_octave=1, strides=[8, 16]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25),
                loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return ATSSHead(**{**args, **kwargs})


def _feats(batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, 8, 8, 8), torch.randn(batch, 8, 4, 4)]


META = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
EMPTY = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))


def test_empty_ground_truth_gives_classification_loss_only():
    head = _small_head()
    losses = head.loss(head(_feats()), [EMPTY, EMPTY], [META, META])
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0
    sum(losses.values()).backward()
    assert head.atss_cls.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())  # zeros, still in the graph
    box = dict(boxes=torch.tensor([[4.0, 6.0, 40.0, 36.0]]), labels=torch.tensor([2]))
    losses = head.loss(head(_feats()), [box, EMPTY], [META, META])
    assert all(v > 0 for v in losses.values())


def test_never_samples_and_regresses_decoded_boxes():
    sampled = dict(TRAIN_CFG, sampler=dict(type="RandomSampler", num=16, pos_fraction=0.5))
    head = _small_head(loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True),
                       train_cfg=sampled)
    assert not head.sampling and isinstance(head.sampler, PseudoSampler)
    with pytest.raises(ConfigError, match="reg_decoded_bbox"):
        _small_head(reg_decoded_bbox=False)


def test_centerness_of_anchor_centers():
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 0.0, 30.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 20.0], [0.0, 0.0, 40.0, 20.0]])
    # centers (10, 10) and (20, 5): l/r 10/30, t/b 10/10; l/r 20/20, t/b 5/15
    torch.testing.assert_close(anchor_centerness(anchors, boxes),
                               torch.tensor([(1 / 3) ** 0.5, (1 / 3) ** 0.5]))


def test_two_training_steps_on_shapes(shapes_root, tmp_path):
    """ATSS through detlab.train on the shapes data: two iterations, finite losses."""
    model = dict(
        _delete_=True, type="ATSS",
        backbone=dict(type="ResNet", depth=18, out_indices=(1, 2, 3), frozen_stages=-1,
                      norm_eval=False),
        neck=dict(type="FPN", in_channels=[128, 256, 512], out_channels=32, start_level=0,
                  add_extra_convs="on_output", num_outs=3),
        bbox_head=dict(type="ATSSHead", num_classes=3, in_channels=32, feat_channels=32,
                       stacked_convs=2,
                       anchor_generator=dict(type="AnchorGenerator", ratios=[1.0],
                                             octave_base_scale=4, scales_per_octave=1,
                                             strides=[8, 16, 32]),
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                       target_stds=[0.1, 0.1, 0.2, 0.2]),
                       loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0,
                                     alpha=0.25, loss_weight=1.0),
                       loss_bbox=dict(type="GIoULoss", loss_weight=2.0)),
        train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    run = train(tiny_config(shapes_root, epochs=1, model=model), work_dir=str(tmp_path),
                seed=0, progress=False, validate=False)
    steps = [r for r in read_json_log(run.json_log) if r["mode"] == "train"]
    assert len(steps) == 2
    for row in steps:
        assert np.isfinite([row["loss_cls"], row["loss_bbox"], row["loss_centerness"]]).all()
        assert row["loss_bbox"] > 0
        assert row["loss"] == pytest.approx(row["loss_cls"] + row["loss_bbox"]
                                            + row["loss_centerness"], rel=1e-5)

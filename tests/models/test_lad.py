"""LAD (label assignment distillation) against MMDetection 2.28: the shipped config is
MMDetection's; the zoo's LAD configs build with MMDetection's trainable parameters and
state_dict (the teacher outside it); with MMDetection's weights (student and teacher) loaded
strictly into a small LAD, the same head outputs, losses on the teacher's PAA assignment (and
with an empty ground truth) and detections.

The zoo's LAD rows are not in ``zoo/params.json`` (MMDetection cannot build them without
downloading the teacher's checkpoint), so the parameter check here builds both with
``teacher_ckpt=None``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from reference.mmdet_reference import trainable_params as count_trainable
from test_fcos import (
    SMALL,
    _loss_inputs,
    compare_detections,
    compare_outputs,
    mmdet_losses,
    randomize,
)
from test_ld import _returning_self

from detlab.checkpoint import CheckpointNotFoundError
from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
LAD = "lad/lad_r50_paa_r101_fpn_coco_1x.py"
ZOO_LAD = [LAD, "lad/lad_r101_paa_r50_fpn_coco_1x.py"]
LOSS_KEYS = {"loss_cls", "loss_bbox", "loss_iou"}
TEACHER_SMALL = {"model.teacher_backbone.depth": 18,
                 "model.teacher_neck.in_channels": [64, 128, 256, 512],
                 "model.teacher_neck.out_channels": 32, "model.teacher_bbox_head.num_classes": 6,
                 "model.teacher_bbox_head.in_channels": 32,
                 "model.teacher_bbox_head.feat_channels": 32,
                 "model.teacher_bbox_head.stacked_convs": 2, "model.teacher_ckpt": None}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / LAD)
    theirs = Config.fromfile(mmdet_config_dir() / LAD)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("config", ZOO_LAD)
def test_zoo_lad_configs_have_mmdetections_parameters(config):
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(config)
    mm_cfg.model.teacher_ckpt = None
    cfg = Config.fromfile(mmdet_config_dir() / config)
    cfg.model.teacher_ckpt = None
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
        ours = build_model(cfg.model)
    assert count_trainable(ours) == count_trainable(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.teacher_model.state_dict().items()} == \
        {k: v.shape for k, v in reference.teacher_model.state_dict().items()}


def test_teacher_checkpoint_and_head_errors(tmp_path):
    cfg = Config.fromfile(REPO / "configs" / LAD)
    cfg.merge_from_dict(dict(SMALL, **TEACHER_SMALL))
    cfg.model.teacher_ckpt = str(tmp_path / "paa.pth")
    with pytest.raises(CheckpointNotFoundError, match=r"model\.teacher_ckpt=.*paa\.pth"):
        build_model(cfg.model)
    cfg.model.teacher_ckpt = None
    cfg.model.teacher_bbox_head.type = "ATSSHead"
    cfg.model.teacher_bbox_head.pop("topk")
    cfg.model.teacher_bbox_head.pop("score_voting")
    cfg.model.test_cfg.pop("score_voting")
    with pytest.raises(ConfigError, match=r"model\.teacher_bbox_head .*LADHead"):
        build_model(cfg.model)


@pytest.fixture(scope="module")
def lad_pair():
    """build_pair (test_fcos.py) for LAD: the small student and a small teacher, randomized,
    MMDetection's weights loaded strictly into detlab's."""
    pytest.importorskip("sklearn")
    import_mmdet()
    from mmdet.models import build_detector

    options = dict(SMALL, **TEACHER_SMALL)
    mm_cfg = load_mmdet_config(LAD)
    mm_cfg.merge_from_dict(options)
    cfg = Config.fromfile(REPO / "configs" / LAD)
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _returning_self(build_detector(mm_cfg.model))
    ours = build_model(cfg.model)
    randomize(reference, torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(3)),
              reference.bbox_head.atss_cls)
    teacher = ours.teacher_model  # MMDetection's teacher has no extract_feat: randomize ours
    randomize(teacher, torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(8)),
              teacher.bbox_head.atss_cls)
    reference.teacher_model.load_state_dict(teacher.state_dict(), strict=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    assert not ours.teacher_model.training
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_head_outputs_match_mmdetection(lad_pair):
    compare_outputs(*lad_pair)


def test_losses_match_mmdetection(lad_pair):
    losses = _compare_losses(*lad_pair)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(lad_pair):
    losses = _compare_losses(*lad_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_iou"] == 0


def test_detections_match_mmdetection(lad_pair):
    compare_detections(*lad_pair)


def test_the_assignment_is_the_teachers(lad_pair):
    """The student's losses depend on the teacher's outputs (through its assignment), and its
    head alone learns from its own assignment."""
    _, ours = lad_pair
    images, targets, metas = _loss_inputs()
    with torch.no_grad():
        before = ours.train().loss(Batch(images, targets, metas))
        raw = ours(images)
        own = ours.bbox_head.loss(raw, targets, metas)
        teacher = ours.teacher_model
        assignment = teacher.bbox_head.label_assignment(teacher(images), targets, metas)
        given = ours.bbox_head.loss(raw, targets, metas, assignment=assignment)
    ours.eval()
    for key in LOSS_KEYS:
        torch.testing.assert_close(given[key], before[key])
    assert any(not torch.allclose(own[k], given[k]) for k in LOSS_KEYS)

"""LD (localization distillation) against MMDetection 2.28: the shipped config and its teacher's
are MMDetection's; the zoo's LD configs build with MMDetection's trainable parameters and
state_dict (the teacher outside it); with MMDetection's weights (student and teacher) loaded
strictly into a small LD, the same losses (``loss_ld`` included, and with an empty ground
truth) and detections; the teacher's checkpoint is loaded at build, with an error naming
``model.teacher_ckpt``.

The zoo's LD rows are not in ``zoo/params.json`` (MMDetection cannot build them without
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
from test_fcos import SMALL, _loss_inputs, compare_detections, mmdet_losses, randomize

from detlab.checkpoint import CheckpointNotFoundError
from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.detectors.kd_one_stage import KnowledgeDistillationSingleStageDetector
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
LD = "ld/ld_r18_gflv1_r101_fpn_coco_1x.py"
TEACHER = "gfl/gfl_r101_fpn_mstrain_2x_coco.py"
LOSS_KEYS = {"loss_cls", "loss_bbox", "loss_dfl", "loss_ld"}
ZOO_LD = ["ld/ld_r18_gflv1_r101_fpn_coco_1x.py", "ld/ld_r34_gflv1_r101_fpn_coco_1x.py",
          "ld/ld_r50_gflv1_r101_fpn_coco_1x.py", "ld/ld_r101_gflv1_r101dcn_fpn_coco_2x.py"]


@pytest.mark.parametrize("config", [LD, TEACHER, "gfl/gfl_r50_fpn_mstrain_2x_coco.py"])
def test_detlab_configs_are_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


def _mmdet_on_meta(config: str, monkeypatch):
    """MMDetection's model of ``config`` with teacher_ckpt=None (its teacher_config is relative
    to MMDetection's root folder, the configs' parent)."""
    import_mmdet()
    from mmdet.models import build_detector

    cfg = load_mmdet_config(config)
    cfg.model.teacher_ckpt = None
    monkeypatch.chdir(mmdet_config_dir().parent)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return build_detector(cfg.model)


@pytest.mark.parametrize("config", ZOO_LD)
def test_zoo_ld_configs_have_mmdetections_parameters(config, monkeypatch):
    reference = _mmdet_on_meta(config, monkeypatch)
    cfg = Config.fromfile(mmdet_config_dir() / config)
    cfg.model.teacher_ckpt = None
    with torch.device("meta"):
        ours = build_model(cfg.model)
    assert count_trainable(ours) == count_trainable(reference)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    assert not any(k.startswith("teacher") for k in ours.state_dict())
    assert {k: v.shape for k, v in ours.teacher_model.state_dict().items()} == \
        {k: v.shape for k, v in reference.teacher_model.state_dict().items()}


def test_shipped_config_finds_its_teacher_and_names_a_missing_checkpoint(tmp_path, monkeypatch):
    cfg = Config.fromfile(REPO / "configs" / LD)
    monkeypatch.chdir(tmp_path)  # configs/gfl/... is found in detlab's repository
    cfg.model.teacher_ckpt = str(tmp_path / "teacher.pth")
    with torch.device("meta"), pytest.raises(CheckpointNotFoundError,
                                             match=r"model\.teacher_ckpt=.*teacher\.pth"):
        build_model(cfg.model)
    cfg.model.teacher_config = "configs/gfl/no_such_teacher.py"
    with pytest.raises(ConfigError, match=r"model\.teacher_config="):
        build_model(cfg.model)


# ---- a small LD: MMDetection's weights in detlab's -------------------------------------------

def _teacher() -> dict:
    """A small GFL teacher (ResNet-18, 32 channels) as a plain config dict."""
    cfg = Config.fromfile(REPO / "configs" / "gfl" / "gfl_r50_fpn_1x_coco.py")
    cfg.merge_from_dict(SMALL)
    return dict(model=cfg.to_dict()["model"])


def _returning_self(model):
    """MMDetection's KD ``train()`` returns None; make ``model.eval()`` return the model."""
    train = model.train

    def train_returning_self(mode=True):
        train(mode)
        return model

    model.train = train_returning_self
    return model


@pytest.fixture(scope="module")
def ld_pair():
    """build_pair (test_fcos.py) for LD: the small student with a small GFL teacher, both
    randomized in MMDetection's model and loaded strictly into detlab's."""
    import_mmdet()
    from mmdet.models import build_detector

    def options():  # fresh each time: mmcv's merge pops _delete_
        return dict(SMALL, **{"model.teacher_config": dict(_delete_=True, **_teacher()),
                              "model.teacher_ckpt": None})

    mm_cfg = load_mmdet_config(LD)
    mm_cfg.merge_from_dict(options())
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _returning_self(build_detector(mm_cfg.model))
    teacher = reference.teacher_model
    for model, classifier, seed in ((reference, reference.bbox_head.gfl_cls, 3),
                                    (teacher, teacher.bbox_head.gfl_cls, 8)):
        randomize(model, torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(
            seed)), classifier)
    cfg = Config.fromfile(REPO / "configs" / LD)
    cfg.merge_from_dict(options())
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.teacher_model.load_state_dict(teacher.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    assert not ours.teacher_model.training and not reference.teacher_model.training
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(ld_pair):
    losses = _compare_losses(*ld_pair)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(ld_pair):
    losses = _compare_losses(*ld_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == losses["loss_dfl"] == losses["loss_ld"] == 0


def test_detections_match_mmdetection(ld_pair):
    compare_detections(*ld_pair)


# ---- without MMDetection -----------------------------------------------------------------


def _small_ld(**kwargs) -> KnowledgeDistillationSingleStageDetector:
    cfg = Config.fromfile(REPO / "configs" / LD)
    cfg.merge_from_dict(SMALL)
    cfg.model.teacher_config = _teacher()
    cfg.model.teacher_ckpt = None
    cfg.model.update(kwargs)
    return build_model(cfg.model)


def test_the_teacher_stays_outside_the_module_tree_and_in_eval_mode():
    model = _small_ld()
    teacher = model.teacher_model
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert all(m is not teacher for m in model.modules())
    model.train()
    assert model.training and not teacher.training
    model.to(torch.float64)  # the teacher follows the student
    assert next(teacher.parameters()).dtype == torch.float64
    model = _small_ld(eval_teacher=False).train()
    assert model.teacher_model.training


def test_teacher_checkpoint_is_loaded_at_build(tmp_path):
    model = _small_ld()
    path = tmp_path / "teacher.pth"
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v
             for k, v in model.teacher_model.state_dict().items()}
    torch.save(dict(state_dict=state), path)
    loaded = _small_ld(teacher_ckpt=str(path))
    assert all(torch.equal(v, state[k]) for k, v in loaded.teacher_model.state_dict().items())


def test_ld_head_needs_the_teachers_maps():
    model = _small_ld()
    images, targets, metas = _loss_inputs()
    raw = model(images)
    with pytest.raises(ConfigError, match="soft_targets"):
        model.bbox_head.loss(raw, targets, metas)
    with pytest.raises(ValueError, match="not the shape"):
        model.bbox_head.loss(raw, targets, metas, soft_targets=[m[:, :4] for m in raw[1]])
    # against its own distributions the distillation loss vanishes
    losses = model.bbox_head.loss(raw, targets, metas, soft_targets=raw[1])
    assert losses["loss_ld"].abs() < 1e-6 and losses["loss_bbox"] > 0

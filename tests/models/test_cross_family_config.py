"""The cross-family lesson config (ATSS + EfficientNet-b0 + FPN + YOLOXHead + SimOTA) and its
corrected twin: both build with MMDetection's state_dict and trainable count; the first trains
unchanged, as in MMDetection (same outputs and losses for the same weights), and warns once
that YOLOXHead's strides [8, 16, 32] are not those of the maps it reads (16, 32, 32) and that
the neck's last two maps go unread; the corrected one gives no warning."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from reference.mmdet_reference import build_mmdet_model, import_mmdet, trainable_params
from test_fcos import HEIGHT, WIDTH, compare_detections, metas_and_targets
from test_yolox import _losses, _randomize

from detlab.config import Config, ConfigError
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.models import build_model
from detlab.models.detectors.single_stage import FeatureStrideWarning, feature_stride_mismatch
from detlab.structures import Batch
from detlab.viz.strides import stride_table

REPO = Path(__file__).resolve().parents[2]
CROSS = REPO / "configs" / "atss" / "atss_effb0_fpn_yoloxhead_simota_coco.py"
FIXED = REPO / "configs" / "atss" / "atss_effb0_fpn_yoloxhead_simota_true-strides_coco.py"
# MMDetection's trainable parameters of CROSS (num_classes=64 is the count that gives it)
CROSS_PARAMS = 10_080_971
NUM_CLASSES = 6  # test_fcos's metas_and_targets draw labels 0..5
# single-process BN (MMDetection's SyncBN needs a process group in training), no stochastic
# depth (random in training), no checkpoint to download, a narrower neck and head
SMALL = {"model.backbone.norm_cfg": dict(type="BN", requires_grad=True, eps=1e-3,
                                         momentum=0.01),
         "model.backbone.drop_path_rate": 0.0, "model.backbone.init_cfg": None,
         "model.neck.out_channels": 32, "model.bbox_head.in_channels": 32,
         "model.bbox_head.feat_channels": 16, "model.bbox_head.num_classes": NUM_CLASSES}


def _ours(path: Path, options: dict | None = None):
    cfg = Config.fromfile(path)
    cfg.merge_from_dict(options or {})
    return build_model(cfg.model)


@pytest.mark.parametrize("path", [CROSS, FIXED], ids=["as-written", "true-strides"])
def test_state_dict_and_trainable_count_are_mmdetections(path):
    reference = build_mmdet_model(path)  # EfficientNet's drop-path rates refuse 'meta'
    ours = _ours(path)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]
    assert trainable_params(ours) == trainable_params(reference)
    if path == CROSS:
        assert trainable_params(ours) == CROSS_PARAMS


def _small_batch() -> Batch:
    """Two 64 x 96 images with one object each."""
    metas = [dict(img_shape=(64, 96, 3), pad_shape=(64, 96, 3), batch_input_shape=(64, 96),
                  ori_shape=(64, 96, 3), scale_factor=np.ones(4, np.float32), flip=False,
                  flip_direction=None, img_id=i, filename=f"img{i}.jpg") for i in range(2)]
    targets = [dict(boxes=torch.tensor([[8.0, 4.0, 40.0, 30.0]]), labels=torch.tensor([i]),
                    boxes_ignore=torch.zeros(0, 4)) for i in range(2)]
    return Batch(torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)),
                 targets, metas)


def _stride_warnings(model, batch: Batch) -> list[warnings.WarningMessage]:
    """Loss, predict and forward, twice each; the stride warnings they raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model.train().loss(copy.deepcopy(batch))
            model.eval().predict(batch)
            with torch.no_grad():
                model(batch.images)
    return [w for w in caught if issubclass(w.category, FeatureStrideWarning)]


def test_warns_once_naming_the_keys_and_the_real_strides():
    caught = _stride_warnings(_ours(CROSS, SMALL), _small_batch())
    assert len(caught) == 1
    message = str(caught[0].message)
    for text in ("model.bbox_head.strides=[8, 16, 32]", "the 64x96 input",
                 "4x6, 2x3, 2x3, i.e. at strides [16, 32, 32]", "model.neck.num_outs=5",
                 "reads only the first 3",
                 "Set model.bbox_head.strides=[16, 32, 32] and model.neck.num_outs=3."):
        assert text in message, text


def test_corrected_config_gives_no_warning():
    model, batch = _ours(FIXED, SMALL), _small_batch()
    assert _stride_warnings(model, batch) == []
    feats = model.extract_feat(batch.images)
    assert feature_stride_mismatch(model.bbox_head, model.neck, batch.images, feats) is None


@pytest.fixture(scope="module")
def cross_pair():
    """MMDetection's model of the config as written (small overrides), detlab's with its
    weights loaded strictly."""
    import_mmdet()
    from mmdet.models import build_detector
    from reference.mmdet_reference import load_mmdet_config

    mm_cfg = load_mmdet_config(CROSS)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                      generator=torch.Generator().manual_seed(3)))
    ours = _ours(CROSS, SMALL)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.slow
def test_outputs_losses_and_detections_are_mmdetections(cross_pair):
    """The strides are wrong, but wrong the same way: both read the first 3 of the 5 maps
    and lay their points at strides 8, 16, 32."""
    reference, ours = cross_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FeatureStrideWarning)
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 3
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    for empty in (False, True):
        metas, targets = metas_and_targets(empty=empty)
        expected = _losses(reference, images, targets, metas, reference=True)
        actual = _losses(ours, images, targets, metas, reference=False)
        assert set(actual) == set(expected) == {"loss_cls", "loss_bbox", "loss_obj"}
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], torch.as_tensor(value).float(), rtol=1e-5,
                                       atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    compare_detections(reference, ours)


@pytest.mark.slow
def test_trains_unchanged_on_shapes_and_warns_once(shapes_root, tmp_path):
    cfg = Config.fromfile(CROSS)
    model = dict(cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else cfg.model,
                 _delete_=True)
    model["backbone"]["init_cfg"] = None  # no ImageNet checkpoint to download
    model["bbox_head"]["num_classes"] = 3  # the shapes data's classes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(tiny_config(shapes_root, epochs=1, model=model), work_dir=str(tmp_path),
                    seed=0, progress=False, validate=False)
    assert len([w for w in caught if issubclass(w.category, FeatureStrideWarning)]) == 1
    steps = [r for r in read_json_log(run.json_log) if r["mode"] == "train"]
    assert len(steps) == 2
    for row in steps:
        assert np.isfinite([row["loss_cls"], row["loss_bbox"], row["loss_obj"]]).all()


def test_a_head_with_more_levels_than_maps_is_refused():
    with pytest.raises(ConfigError, match="model.neck.num_outs"):
        _ours(FIXED, {**SMALL, "model.bbox_head.strides": [16, 32, 32, 64]})


def test_stride_table_shows_each_map_with_the_head_stride_and_the_real_one():
    model = _ours(CROSS, SMALL).train()
    table = stride_table(model, (64, 96))
    assert model.training and not model._strides_checked  # the warning is still to come
    assert table["map"].tolist() == ["4x6", "2x3", "2x3", "1x2", "1x1"]
    assert table["head_stride"].tolist()[:3] == [8, 16, 32]
    assert table["head_stride"].isna().tolist() == [False, False, False, True, True]
    assert table["real_stride"].tolist()[:4] == [16, 32, 32, 64]
    assert table["agree"].tolist() == [False, False, True, False, False]


def test_the_warning_names_each_heads_stride_key():
    from detlab.models.detectors.single_stage import _stride_key
    from detlab.models.heads import RepPointsHead, RetinaHead, YOLOXHead

    keys = {cls.__name__: _stride_key(cls.__new__(cls))
            for cls in (YOLOXHead, RetinaHead, RepPointsHead)}
    assert keys == {"YOLOXHead": "model.bbox_head.strides",
                    "RetinaHead": "model.bbox_head.anchor_generator.strides",
                    "RepPointsHead": "model.bbox_head.point_strides"}

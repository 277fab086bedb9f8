"""SABL Faster and Cascade R-CNN against MMDetection 2.28: the zoo configs' RoI heads with the
side-aware box head (``SABLHead``: bucket logits and offsets of each side), made small, with
MMDetection's weights loaded strictly, give the same losses (``loss_bbox_cls`` /
``loss_bbox_reg``, with and without ground truth; for Cascade each stage's RoIs refined by
the previous stage's buckets) and the same detections (class scores times the buckets'
localization confidence, then NMS); a small SABL Faster R-CNN detector gives MMDetection's
losses and detections; the shipped config reads as MMDetection's; configuration errors.

The features, proposals, ground truth and comparisons are test_faster_rcnn.py's. (The zoo's
SABL R-CNN configs' parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_faster_rcnn import (
    CHANNELS,
    NUM_CLASSES,
    _images,
    _metas,
    _plain,
    _targets,
    compare_roi_detections,
    compare_roi_losses,
)

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.registry import MODELS
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
SABL_FASTER = "sabl/sabl_faster_rcnn_r50_fpn_1x_coco.py"
SABL_CASCADE = "sabl/sabl_cascade_rcnn_r50_fpn_1x_coco.py"
KEYS = ("loss_cls", "acc", "loss_bbox_cls", "loss_bbox_reg")
SMALL_HEAD = dict(num_classes=NUM_CLASSES, cls_in_channels=CHANNELS, reg_in_channels=CHANNELS,
                  cls_out_channels=32, reg_offset_out_channels=CHANNELS,
                  reg_cls_out_channels=CHANNELS)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / SABL_FASTER)
    theirs = Config.fromfile(mmdet_config_dir() / SABL_FASTER)
    assert mine.to_dict() == theirs.to_dict()


def _randomize(reference: torch.nn.Module) -> None:
    """Spread weights: class scores around the threshold, varied bucket logits."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "backbone" in name:
                continue
            scale = 0.3 if "fc_cls" in name or "rpn_cls" in name or "fc_reg_cls" in name \
                else 0.05 if "fc_reg_offset" in name or "rpn_reg" in name else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


def build_sabl_roi_pair(config: str):
    """(MMDetection's RoI head of the zoo ``config``, small, detlab's with its weights loaded
    strictly), both in eval mode."""
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models.builder import build_head

    model = load_mmdet_config(config).model
    head = _plain(model.roi_head.to_dict())
    head["bbox_roi_extractor"]["out_channels"] = CHANNELS
    stages = head["bbox_head"] if isinstance(head["bbox_head"], list) else [head["bbox_head"]]
    for stage in stages:
        stage.update(SMALL_HEAD)
    rcnn = model.train_cfg.rcnn
    train = [_plain(dict(c)) for c in rcnn] if isinstance(rcnn, list) else _plain(dict(rcnn))
    for cfg in train if isinstance(train, list) else [train]:
        cfg["sampler"] = dict(cfg["sampler"], num=64)
    test = _plain(dict(model.test_cfg.rcnn))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_head(ConfigDict(dict(head, train_cfg=train, test_cfg=test)))
    _randomize(reference)
    ours = MODELS.build(dict(head, train_cfg=copy.deepcopy(train), test_cfg=copy.deepcopy(test)))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module", params=[SABL_FASTER, SABL_CASCADE], ids=["faster", "cascade"])
def sabl_roi_pair(request):
    return request.param, build_sabl_roi_pair(request.param)


def _keys(config: str) -> tuple[str, ...]:
    return KEYS if config == SABL_FASTER else tuple(f"s{i}.{k}" for i in range(3) for k in KEYS)


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "empty"])
def test_roi_head_losses_match_mmdetection(sabl_roi_pair, empty):
    config, (reference, ours) = sabl_roi_pair
    losses = compare_roi_losses(reference, ours, empty=empty, keys=_keys(config))
    for key, value in losses.items():
        if "loss_bbox" in key:
            assert (value > 0) != empty, key


def test_roi_head_detections_match_mmdetection(sabl_roi_pair):
    _, (reference, ours) = sabl_roi_pair
    compare_roi_detections(reference, ours)


def test_localization_confidence_rescores_the_detections():
    """The detections' scores are class probabilities times the buckets' confidence (in
    (0, 1]), one per (RoI, class) when NMS keeps everything."""
    _, ours = build_sabl_roi_pair(SABL_FASTER)
    feats = tuple(torch.randn(1, CHANNELS, 40 // s, 56 // s) for s in (1, 2, 4, 8))
    rois = torch.tensor([[0.0, 4, 4, 30, 30], [0.0, 10, 2, 50, 38]])
    with torch.no_grad():
        outputs = ours._bbox_forward(feats, rois)
    cls_score, bbox_pred = outputs["cls_score"], outputs["bbox_pred"]
    meta = dict(img_shape=(160, 224, 3), scale_factor=np.ones(4, np.float32))
    boxes, confidence = ours.bbox_head.bbox_coder.decode(rois[:, 1:], bbox_pred, (160, 224))
    dets, labels = ours.bbox_head.get_bboxes(rois, cls_score, bbox_pred, meta,
                                             cfg=dict(score_thr=0.0, nms=dict(
                                                 type="nms", iou_threshold=1.0),
                                                 max_per_img=-1))
    probs = cls_score.softmax(1)[:, :-1] * confidence[:, None]
    torch.testing.assert_close(dets[:, 4].sort().values, probs.flatten().sort().values)
    assert ((confidence > 0) & (confidence <= 1)).all()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(reg_class_agnostic=False), "reg_class_agnostic=True"),
    (dict(roi_feat_size=6), "num_buckets"),
    (dict(num_classes=0), "num_classes"),
])
def test_configuration_errors_name_the_key(changes, message):
    cfg = dict(type="SABLHead", **dict(SMALL_HEAD, **changes))
    with pytest.raises(ConfigError, match=message):
        MODELS.build(cfg)


# ---- the whole detector ----------------------------------------------------------------------

SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": CHANNELS,
         "model.rpn_head.in_channels": CHANNELS, "model.rpn_head.feat_channels": CHANNELS,
         "model.roi_head.bbox_roi_extractor.out_channels": CHANNELS,
         **{f"model.roi_head.bbox_head.{k}": v for k, v in SMALL_HEAD.items()},
         "model.train_cfg.rcnn.sampler.num": 128}


@pytest.fixture(scope="module")
def sabl_faster_pair():
    """(MMDetection's small SABL Faster R-CNN, detlab's of the shipped config with its
    weights loaded strictly)."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(SABL_FASTER)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference)
    cfg = Config.fromfile(REPO / "configs" / SABL_FASTER)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "empty"])
def test_detector_losses_match_mmdetection(sabl_faster_pair, empty):
    reference, ours = sabl_faster_pair
    images, metas, targets = _images(8), _metas(), _targets(empty=empty)
    torch.manual_seed(21)
    expected = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets])
    torch.manual_seed(21)
    actual = ours.train().loss(Batch(images, targets, metas))
    reference.eval(), ours.eval()
    expected = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in expected.items()}
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox", *KEYS}
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_detector_detections_match_mmdetection(sabl_faster_pair):
    reference, ours = sabl_faster_pair
    images, metas = _images(9), _metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
        actual = ours.predict(Batch(images, _targets(), metas), rescale=True)
    assert all(sum(len(c) for c in image) > 5 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)

"""Faster R-CNN's second stage against MMDetection 2.28: the StandardRoIHead (RoIAlign
extractors, aligned or not, Shared2FC / Shared4Conv1FC box heads, class-agnostic regression, an IoU
loss on decoded boxes) with MMDetection's weights loaded strictly gives the same losses on
the same proposals and the same detections (NMS and soft-NMS); an empty ground truth; a
small Faster R-CNN (ResNet-18, 16 channels) with MMDetection's weights loaded strictly gives
its RPN and RoI losses and its detections; the shipped config reads as MMDetection's.

Sampling is random: both sides draw their RoIs with ``torch.randperm`` on the CPU generator in
the same order (image after image, positives then negatives), so seeding ``torch`` identically
before each side's loss gives both the same RoIs.

(The zoo's Faster R-CNN configs' parameter counts and state_dict keys are checked by
``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from torch import nn

from detlab.config import Config, ConfigError
from detlab.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
FASTER = "faster_rcnn/faster_rcnn_r50_fpn_1x_coco.py"
NUM_CLASSES = 6
HEIGHT, WIDTH = 160, 224
STRIDES = (4, 8, 16, 32)
CHANNELS = 16


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / FASTER)
    theirs = Config.fromfile(mmdet_config_dir() / FASTER)
    assert mine.to_dict() == theirs.to_dict()


def _roi_head_cfg(bbox_head=None, roi_layer=None, test_nms=None, extractor=None,
                  shared_head=None, sampler=None, roi_head=None):
    """The zoo config's roi_head, train_cfg.rcnn and test_cfg.rcnn, made small."""
    cfg = load_mmdet_config(FASTER).model
    head = copy.deepcopy(cfg.roi_head.to_dict() if hasattr(cfg.roi_head, "to_dict")
                         else dict(cfg.roi_head))
    head["bbox_roi_extractor"]["out_channels"] = CHANNELS
    if roi_layer is not None:
        head["bbox_roi_extractor"]["roi_layer"] = roi_layer
    head["bbox_head"].update(in_channels=CHANNELS, fc_out_channels=32, num_classes=NUM_CLASSES)
    if bbox_head is not None:  # a None drops the key
        head["bbox_head"].update(bbox_head)
        head["bbox_head"] = {k: v for k, v in head["bbox_head"].items() if v is not None}
    if extractor is not None:
        head["bbox_roi_extractor"].update(extractor)
    if shared_head is not None:
        head["shared_head"] = shared_head
    if roi_head is not None:
        head.update(roi_head)
    train = copy.deepcopy(dict(cfg.train_cfg.rcnn))
    train["sampler"] = dict(train["sampler"], num=64, **(sampler or {}))
    test = copy.deepcopy(dict(cfg.test_cfg.rcnn))
    if test_nms is not None:
        test["nms"] = test_nms
    return _plain(head), _plain(train), _plain(test)


def _plain(value):
    if isinstance(value, dict) or hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def build_roi_pair(**options):
    """(MMDetection's StandardRoIHead, detlab's with its weights loaded strictly), both with
    varied weights (a classifier whose scores spread around the threshold)."""
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models.builder import build_head

    head, train, test = _roi_head_cfg(**options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_head(ConfigDict(dict(head, train_cfg=train, test_cfg=test)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            scale = 0.3 if "fc_cls" in name else 0.05 if "fc_reg" in name else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    ours = MODELS.build(dict(head, train_cfg=copy.deepcopy(train), test_cfg=copy.deepcopy(test)))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _feats(seed=2, channels=CHANNELS):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, channels, -(-HEIGHT // s), -(-WIDTH // s), generator=gen)
                 for s in STRIDES)


def _metas():
    return [dict(img_shape=(HEIGHT - 32 * i, WIDTH - 48 * i, 3),
                 pad_shape=(HEIGHT - 32 * i, WIDTH - 48 * i, 3),
                 batch_input_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT // 2, WIDTH // 2, 3),
                 scale_factor=np.full(4, 2.0, np.float32), flip=False, flip_direction=None,
                 img_id=i, filename=f"img{i}.jpg") for i in range(2)]


def _targets(empty=False, seed=3):
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for meta in _metas():
        h, w = meta["img_shape"][:2]
        n = 0 if empty else 6
        size = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6]) + 10
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([w, h]) - size)
        targets.append(dict(boxes=torch.cat([corner, corner + size], 1),
                            labels=torch.randint(0, NUM_CLASSES, (n,), generator=gen),
                            boxes_ignore=torch.zeros(0, 4)))
    return targets


def _proposals(targets, seed=4, num=150):
    """Proposals around the ground truth (jittered) and elsewhere, with scores."""
    gen = torch.Generator().manual_seed(seed)
    proposals = []
    for meta, target in zip(_metas(), targets, strict=True):
        h, w = meta["img_shape"][:2]
        size = torch.rand(num, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7]) + 4
        corner = torch.rand(num, 2, generator=gen) * (torch.tensor([w, h]) - size)
        boxes = torch.cat([corner, corner + size], 1)
        gt = target["boxes"]
        if len(gt):
            near = gt.repeat(8, 1)
            near = near + torch.randn(near.shape, generator=gen) * 6
            boxes = torch.cat([near, boxes])
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        scores = torch.rand(len(boxes), 1, generator=gen)
        proposals.append(torch.cat([boxes, scores], 1))
    return proposals


def compare_roi_losses(reference, ours, empty=False, channels=CHANNELS,
                       keys=("loss_cls", "loss_bbox", "acc")):
    feats, metas, targets = _feats(channels=channels), _metas(), _targets(empty)
    proposals = _proposals(targets)
    torch.manual_seed(11)
    expected = reference.train().forward_train(
        feats, copy.deepcopy(metas), [p.clone() for p in proposals],
        [t["boxes"] for t in targets], [t["labels"] for t in targets])
    torch.manual_seed(11)
    actual = ours.train().loss(feats, proposals, targets, metas)
    reference.eval(), ours.eval()
    assert set(actual) == set(expected) == set(keys)
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    return actual


def compare_roi_detections(reference, ours, rescale=True, channels=CHANNELS):
    feats, metas = _feats(seed=5, channels=channels), _metas()
    proposals = _proposals(_targets(seed=6), seed=7)
    with torch.no_grad():
        expected = reference.simple_test(feats, proposals, copy.deepcopy(metas),
                                         rescale=rescale)
        actual = ours.predict(feats, proposals, metas, rescale=rescale)
    assert all(sum(len(c) for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    return actual


VARIANTS = {
    "shared2fc": dict(),
    "unaligned-agnostic": dict(roi_layer=dict(type="RoIAlign", output_size=7,
                                              sampling_ratio=2, aligned=False),
                               bbox_head=dict(reg_class_agnostic=True, loss_bbox=dict(
                                   type="SmoothL1Loss", beta=1.0, loss_weight=1.0))),
    "shared4conv1fc-gn-giou": dict(bbox_head=dict(
        type="Shared4Conv1FCBBoxHead", conv_out_channels=CHANNELS,
        norm_cfg=dict(type="GN", num_groups=4), reg_decoded_bbox=True,
        loss_bbox=dict(type="GIoULoss", loss_weight=10.0))),
}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def roi_pair(request):
    return build_roi_pair(**VARIANTS[request.param])


def test_roi_head_losses_match_mmdetection(roi_pair):
    losses = compare_roi_losses(*roi_pair)
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] > 0


def test_roi_head_empty_ground_truth_losses_match_mmdetection(roi_pair):
    losses = compare_roi_losses(*roi_pair, empty=True)
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] == 0


def test_roi_head_detections_match_mmdetection(roi_pair):
    compare_roi_detections(*roi_pair)


def test_roi_head_soft_nms_detections_match_mmdetection():
    """The soft_nms config's test settings. MMDetection's soft-NMS is a compiled op the
    stand-in cannot run, so the reference's batched_nms becomes the per-box reference of mmcv's
    algorithm (tests/models/test_dense_head_base.py); the decoding, score threshold and
    max_per_img around it stay MMDetection's."""
    from test_dense_head_base import reference_batched_soft_nms

    reference, ours = build_roi_pair(test_nms=dict(type="soft_nms", iou_threshold=0.5,
                                                    min_score=0.05))
    import mmdet.core.post_processing.bbox_nms as bbox_nms

    def batched_nms(boxes, scores, idxs, nms_cfg, class_agnostic=False):
        soft = {k: v for k, v in nms_cfg.items() if k != "type"}
        keep, kept = reference_batched_soft_nms(boxes, scores, idxs, **soft)
        return torch.cat([boxes[keep], kept[:, None]], -1), keep

    original = bbox_nms.batched_nms
    bbox_nms.batched_nms = batched_nms
    try:
        results = compare_roi_detections(reference, ours)
    finally:
        bbox_nms.batched_nms = original
    assert all(len(r) > 0 for r in results)


def test_c4_shared_head_matches_mmdetection():
    """The C4 models' second stage: one level pooled at 14 x 14, ResNet's stage (ResLayer,
    caffe style) on every RoI, then an averaging BBoxHead (a ResNet-18 stage here)."""
    reference, ours = build_roi_pair(
        extractor=dict(out_channels=64, featmap_strides=[16],
                       roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0)),
        shared_head=dict(type="ResLayer", depth=18, stage=1, stride=2, dilation=1,
                         style="caffe", norm_cfg=dict(type="BN", requires_grad=False),
                         norm_eval=True),
        bbox_head=dict(type="BBoxHead", with_avg_pool=True, roi_feat_size=7, in_channels=128,
                       fc_out_channels=None))
    assert "shared_head.layer2.0.conv1.weight" in ours.state_dict()
    compare_roi_losses(reference, ours, channels=64)
    compare_roi_detections(reference, ours, channels=64)


def test_double_head_matches_mmdetection():
    """Double-Head R-CNN (dh_faster_rcnn): fcs classify the RoIs, convs regress them from the
    RoIs enlarged 1.3 times; MMDetection's losses and detections with its weights."""
    reference, ours = build_roi_pair(
        roi_head=dict(type="DoubleHeadRoIHead", reg_roi_scale_factor=1.3),
        bbox_head=dict(type="DoubleConvFCBBoxHead", num_convs=2, num_fcs=2,
                       conv_out_channels=32, fc_out_channels=32,
                       loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                     loss_weight=2.0),
                       loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=2.0)))
    assert type(ours).__name__ == "DoubleHeadRoIHead"
    compare_roi_losses(reference, ours)
    compare_roi_detections(reference, ours)


def test_seesaw_loss_and_normed_classifier_match_mmdetection():
    """The LVIS Seesaw configs' box head: a NormedLinear classifier of num_classes + 2 columns
    and SeesawLoss (its class-count buffer included); MMDetection's losses, accuracies,
    counts and detections with its weights."""
    reference, ours = build_roi_pair(bbox_head=dict(
        cls_predictor_cfg=dict(type="NormedLinear", tempearture=20),
        loss_cls=dict(type="SeesawLoss", p=0.8, q=2.0, num_classes=NUM_CLASSES,
                      loss_weight=1.0)))
    assert ours.bbox_head.fc_cls.out_features == NUM_CLASSES + 2
    assert "bbox_head.loss_cls.cum_samples" in ours.state_dict()
    for _ in range(2):  # the second time with the counts of the first
        compare_roi_losses(reference, ours, keys=("loss_cls_objectness", "loss_cls_classes",
                                                  "acc_objectness", "acc_classes",
                                                  "loss_bbox"))
        torch.testing.assert_close(ours.bbox_head.loss_cls.cum_samples,
                                   reference.bbox_head.loss_cls.cum_samples)
    assert ours.bbox_head.loss_cls.cum_samples.sum() > 0
    compare_roi_detections(reference, ours)


@pytest.mark.parametrize("norm_over_kernel", [False, True])
def test_normed_conv2d_is_mmdetections(norm_over_kernel):
    """The normalized mask predictor of the Seesaw normed_mask configs."""
    import_mmdet()
    from mmdet.models.utils.normed_predictor import NormedConv2d as Reference

    from detlab.models.utils import build_conv_layer

    torch.manual_seed(0)
    reference = Reference(8, 5, 3, padding=1, tempearture=20,
                          norm_over_kernel=norm_over_kernel)
    ours = build_conv_layer(dict(type="NormedConv2d", tempearture=20,
                                 norm_over_kernel=norm_over_kernel), 8, 5, 3, padding=1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(ours(x), reference(x))


def test_ohem_sampler_matches_mmdetection():
    """OHEM (faster_rcnn_r50_fpn_ohem): the RoIs of the largest classification loss under the
    head's weights, the same as MMDetection's, so the same losses (no random draw involved)."""
    reference, ours = build_roi_pair(sampler=dict(type="OHEMSampler"))
    assert type(ours.bbox_sampler).__name__ == "OHEMSampler" and ours.bbox_sampler.context is ours
    losses = compare_roi_losses(reference, ours)
    assert losses["loss_bbox"] > 0


def test_box_head_is_torchvisions_two_mlp_head():
    """Shared2FCBBoxHead's layers are torchvision's TwoMLPHead + FastRCNNPredictor."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    head = MODELS.build(dict(type="Shared2FCBBoxHead", in_channels=8, fc_out_channels=16,
                             roi_feat_size=7, num_classes=3))
    mlp, predictor = TwoMLPHead(8 * 49, 16), FastRCNNPredictor(16, 4)
    with torch.no_grad():
        mlp.fc6.load_state_dict(head.shared_fcs[0].state_dict())
        mlp.fc7.load_state_dict(head.shared_fcs[1].state_dict())
        predictor.cls_score.load_state_dict(head.fc_cls.state_dict())
        # torchvision regresses background too (first class); MMDetection has no box for it
        predictor.bbox_pred.weight.copy_(torch.cat([torch.zeros(4, 16), head.fc_reg.weight]))
        predictor.bbox_pred.bias.copy_(torch.cat([torch.zeros(4), head.fc_reg.bias]))
    x = torch.randn(5, 8, 7, 7)
    cls_score, bbox_pred = head(x)
    expected_cls, expected_box = predictor(mlp(x))
    torch.testing.assert_close(cls_score, expected_cls)
    torch.testing.assert_close(bbox_pred, expected_box[:, 4:])


def test_level_mapping_is_mmdetections():
    extractor = MODELS.build(dict(type="SingleRoIExtractor", roi_layer=dict(
        type="RoIAlign", output_size=7, sampling_ratio=0), out_channels=4,
        featmap_strides=[4, 8, 16, 32]))
    sizes = torch.tensor([10.0, 111.9, 112.0, 224.0, 447.0, 448.0, 2000.0])
    rois = torch.cat([torch.zeros(7, 1), torch.zeros(7, 2), sizes[:, None].repeat(1, 2)], 1)
    assert extractor.map_roi_levels(rois, 4).tolist() == [0, 0, 1, 2, 2, 3, 3]


def test_configuration_errors():
    with pytest.raises(ConfigError, match="roi_layer.type"):
        MODELS.build(dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlighn",
                                                                    output_size=7),
                          out_channels=4, featmap_strides=[4]))
    with pytest.raises(ConfigError, match="train_cfg.rcnn has no key 'sampeler'"):
        head, train, _ = _roi_head_cfg()
        MODELS.build(dict(head, train_cfg=dict(train, sampeler=train["sampler"])))
    head, _, _ = _roi_head_cfg()
    roi_head = MODELS.build(dict(head, train_cfg=None, test_cfg=None))
    with pytest.raises(ConfigError, match="test_cfg.rcnn"):
        roi_head.eval().predict(_feats(), _proposals(_targets()), _metas())
    assert isinstance(roi_head.bbox_head.shared_fcs, nn.ModuleList)


def test_gn_resnet_state_dict_has_mmdetections_norm_names():
    """ResNet with GN keeps torchvision's attributes (bn1 ...) but saves and loads under
    MMDetection's names (gn1 ...), so the GN zoo configs' checkpoints load strictly."""
    backbone = MODELS.build(dict(type="ResNet", depth=18, norm_cfg=dict(type="GN", num_groups=8)))
    keys = list(backbone.state_dict())
    assert keys[:3] == ["conv1.weight", "gn1.weight", "gn1.bias"]
    assert "layer1.0.gn2.weight" in keys and not any(".bn" in k for k in keys)
    again = MODELS.build(dict(type="ResNet", depth=18, norm_cfg=dict(type="GN", num_groups=8)))
    again.load_state_dict(backbone.state_dict(), strict=True)
    torch.testing.assert_close(again.bn1.weight, backbone.bn1.weight)


# ---- the whole detector: MMDetection's small Faster R-CNN, its weights in detlab's -----------

SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": CHANNELS,
         "model.rpn_head.in_channels": CHANNELS, "model.rpn_head.feat_channels": CHANNELS,
         "model.roi_head.bbox_roi_extractor.out_channels": CHANNELS,
         "model.roi_head.bbox_head.in_channels": CHANNELS,
         "model.roi_head.bbox_head.fc_out_channels": 32,
         "model.roi_head.bbox_head.num_classes": NUM_CLASSES,
         "model.train_cfg.rcnn.sampler.num": 128}


def _randomize_detector(model: nn.Module) -> None:
    """Varied BatchNorm statistics and affines, and wider classifier / regressor weights (so
    that the objectness and the class scores spread instead of sitting at one value)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        for layer, scale in ((model.rpn_head.rpn_cls, 0.5), (model.rpn_head.rpn_reg, 0.05),
                             (model.roi_head.bbox_head.fc_cls, 0.3),
                             (model.roi_head.bbox_head.fc_reg, 0.05)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def faster_pair():
    """(MMDetection's small Faster R-CNN, detlab's with its weights loaded strictly)."""
    import_mmdet()
    from mmdet.models import build_detector

    from detlab.models import build_model

    mm_cfg = load_mmdet_config(FASTER)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize_detector(reference)
    cfg = Config.fromfile(REPO / "configs" / FASTER)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _images(seed):
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "empty"])
def test_faster_rcnn_losses_match_mmdetection(faster_pair, empty):
    """RPN and RoI losses of one batch, both sides seeded alike before sampling."""
    from detlab.structures import Batch

    reference, ours = faster_pair
    images, metas, targets = _images(8), _metas(), _targets(empty=empty)
    torch.manual_seed(21)
    expected = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets])
    torch.manual_seed(21)
    actual = ours.train().loss(Batch(images, targets, metas))
    reference.eval(), ours.eval()
    expected = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in expected.items()}
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                                            "loss_bbox", "acc"}
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    if empty:
        assert actual["loss_rpn_bbox"] == 0 and actual["loss_bbox"] == 0
    else:
        assert all(actual[k] > 0 for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                                           "loss_bbox"))


def test_faster_rcnn_detections_match_mmdetection(faster_pair):
    from detlab.structures import Batch

    reference, ours = faster_pair
    images, metas = _images(9), _metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
        actual = ours.predict(Batch(images, _targets(), metas), rescale=True)
    assert all(sum(len(c) for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)


def test_fast_rcnn_with_given_proposals_matches_mmdetection():
    """Fast R-CNN (no RPN): the proposals come with the data; the same losses and detections
    as MMDetection's FastRCNN with its weights."""
    import_mmdet()
    from mmdet.models import build_detector

    from detlab.models import build_model
    from detlab.structures import Batch

    config = "fast_rcnn/fast_rcnn_r50_fpn_1x_coco.py"
    small = {k: v for k, v in SMALL.items() if "rpn_head" not in k}
    mm_cfg = load_mmdet_config(config)
    mm_cfg.merge_from_dict(small)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    cfg = Config.fromfile(mmdet_config_dir() / config)
    cfg.merge_from_dict(small)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    images, metas, targets = _images(8), _metas(), _targets()
    proposals = [p[:, :4] for p in _proposals(targets)]
    torch.manual_seed(21)
    expected = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets], proposals=[p.clone() for p in proposals])
    torch.manual_seed(21)
    batch = Batch(images, [dict(t, proposals=p) for t, p in zip(targets, proposals,
                                                                 strict=True)], metas)
    actual = ours.train().loss(batch)
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox", "acc"}
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6)
    reference.eval(), ours.eval()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), proposals, rescale=True)
    actual = ours.predict(Batch(images, [{}, {}], metas), proposals=proposals)
    assert all(sum(len(c) for c in image) > 0 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="LoadProposals"):
        ours.predict(Batch(images, [{}, {}], metas))


@pytest.mark.parametrize("aggregation", ["sum", "concat"])
def test_generic_roi_extractor_matches_mmdetection(aggregation):
    """GRoIE's extractor: every level pooled, through a shared pre-conv, summed (or
    concatenated), then a post module, with MMDetection's weights."""
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models.builder import build_roi_extractor

    out_channels = CHANNELS if aggregation == "sum" else CHANNELS * len(STRIDES)
    cfg = dict(type="GenericRoIExtractor", aggregation=aggregation,
               roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=2),
               out_channels=out_channels, featmap_strides=list(STRIDES),
               pre_cfg=dict(type="ConvModule", in_channels=CHANNELS, out_channels=CHANNELS,
                            kernel_size=5, padding=2, inplace=False),
               post_cfg=dict(type="ConvModule", in_channels=out_channels,
                             out_channels=out_channels, kernel_size=1))
    reference = build_roi_extractor(ConfigDict(copy.deepcopy(cfg)))
    ours = MODELS.build(cfg)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    feats = _feats()
    rois = torch.cat([torch.tensor([[0.0]] * 3 + [[1.0]] * 3),
                      _proposals(_targets())[0][:6, :4]], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(feats, rois), reference(feats, rois))
        torch.testing.assert_close(ours(feats, rois, roi_scale_factor=1.5),
                                   reference(feats, rois, roi_scale_factor=1.5))


# ---- deformable RoI pooling (the dpool / mdpool configs) ---------------------------------------

def _reference_deform_roi_pool(feats, rois, offset, size, scale, ratio, gamma):
    """mmcv's deform_roi_pool kernel, element by element, from its definition."""
    import math

    def bilinear(plane, y, x):
        height, width = plane.shape
        if y < -1.0 or y > height or x < -1.0 or x > width:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y_low, x_low = int(y), int(x)
        if y_low >= height - 1:
            y_high = y_low = height - 1
            y = float(y_low)
        else:
            y_high = y_low + 1
        if x_low >= width - 1:
            x_high = x_low = width - 1
            x = float(x_low)
        else:
            x_high = x_low + 1
        ly, lx = y - y_low, x - x_low
        hy, hx = 1 - ly, 1 - lx
        return (hy * hx * plane[y_low, x_low] + hy * lx * plane[y_low, x_high]
                + ly * hx * plane[y_high, x_low] + ly * lx * plane[y_high, x_high])

    out = torch.zeros(len(rois), feats.shape[1], size, size, dtype=torch.float64)
    for n, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sw, sh = x1 * scale - 0.5, y1 * scale - 0.5
        rw, rh = x2 * scale - 0.5 - sw, y2 * scale - 0.5 - sh
        gh = ratio if ratio > 0 else math.ceil(rh / size)
        gw = ratio if ratio > 0 else math.ceil(rw / size)
        for c in range(feats.shape[1]):
            plane = feats[int(b), c].double()
            for ph in range(size):
                for pw in range(size):
                    x0, y0 = sw, sh
                    if offset is not None:
                        x0 += gamma * rw * float(offset[n, 0, ph, pw])
                        y0 += gamma * rh * float(offset[n, 1, ph, pw])
                    total = 0.0
                    for iy in range(gh):
                        y = y0 + ph * rh / size + (iy + 0.5) * (rh / size) / gh
                        for ix in range(gw):
                            x = x0 + pw * rw / size + (ix + 0.5) * (rw / size) / gw
                            total += float(bilinear(plane, y, x))
                    out[n, c, ph, pw] = total / max(gh * gw, 1)
    return out.float()


@pytest.mark.parametrize("ratio", [0, 2])
def test_deform_roi_pool_is_mmcvs_kernel(ratio):
    from torchvision.ops import roi_align

    from detlab.models.roi_heads.deform_roi_pool import deform_roi_pool

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 12, 16, generator=gen)
    rois = torch.tensor([[0, 4.0, 6.0, 40.0, 30.0], [1, -6.0, 2.0, 20.0, 50.0],
                         [1, 30.0, 20.0, 70.0, 47.0], [0, 10.0, 10.0, 10.5, 11.0]])
    offset = torch.randn(4, 2, 3, 3, generator=gen)
    torch.testing.assert_close(deform_roi_pool(feats, rois, None, 3, 0.25, ratio),
                               roi_align(feats, rois, 3, 0.25, ratio, aligned=True))
    torch.testing.assert_close(deform_roi_pool(feats, rois, offset, 3, 0.25, ratio, 0.1),
                               _reference_deform_roi_pool(feats, rois, offset, 3, 0.25, ratio,
                                                          0.1), rtol=1e-5, atol=1e-5)


def test_deform_roi_pool_packs_are_mmcvs():
    """mmcv's parameter names and shapes; untrained, the packs pool as RoIAlign (the
    modulated one at half weight); the offset and mask fcs get gradients."""
    import_mmdet()
    from mmcv.ops import DeformRoIPoolPack as MmcvPack
    from mmcv.ops import ModulatedDeformRoIPoolPack as MmcvModulated
    from torchvision.ops import roi_align

    from detlab.models.roi_heads.deform_roi_pool import (
        DeformRoIPoolPack,
        ModulatedDeformRoIPoolPack,
    )

    feats = torch.randn(1, 4, 10, 10, generator=torch.Generator().manual_seed(1))
    rois = torch.tensor([[0, 2.0, 3.0, 30.0, 25.0], [0, 10.0, 0.0, 38.0, 39.0]])
    plain = roi_align(feats, rois, 3, 0.25, 0, aligned=True)
    for ours, theirs, factor in ((DeformRoIPoolPack(3, 4, 8, 0.25), MmcvPack(3, 4, 8, 0.25), 1),
                                 (ModulatedDeformRoIPoolPack(3, 4, 8, 0.25),
                                  MmcvModulated(3, 4, 8, 0.25), 0.5)):
        assert {k: v.shape for k, v in ours.state_dict().items()} == \
            {k: v.shape for k, v in theirs.state_dict().items()}
        torch.testing.assert_close(ours(feats, rois), plain * factor)
        with torch.no_grad():
            ours.offset_fc[-1].weight.normal_(0, 0.1)
        ours(feats, rois).sum().backward()
        assert ours.offset_fc[0].weight.grad.abs().sum() > 0


# ---- the tutorial's way of writing a new RoI head ------------------------------------------------

def test_subclass_overriding_bbox_forward_trains_and_predicts():
    """MMDetection's tutorial writes a RoI head by subclassing StandardRoIHead and overriding
    ``_bbox_forward(x, rois)`` (its Double-Head pools the RoIs twice, the second time enlarged
    by ``roi_scale_factor``); the subclass trains and predicts through the rest unchanged."""
    from detlab.models.roi_heads import StandardRoIHead

    class TwoScaleRoIHead(StandardRoIHead):
        def __init__(self, reg_roi_scale_factor, **kwargs):
            super().__init__(**kwargs)
            self.reg_roi_scale_factor = reg_roi_scale_factor

        def _bbox_forward(self, x, rois):
            extractor = self.bbox_roi_extractor
            cls_feats = extractor(x[:extractor.num_inputs], rois)
            reg_feats = extractor(x[:extractor.num_inputs], rois,
                                  roi_scale_factor=self.reg_roi_scale_factor)
            if self.with_shared_head:
                cls_feats, reg_feats = self.shared_head(cls_feats), self.shared_head(reg_feats)
            cls_score, _ = self.bbox_head(cls_feats)
            _, bbox_pred = self.bbox_head(reg_feats)
            return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=cls_feats)

    head, train, test = _roi_head_cfg()
    head.pop("type")
    torch.manual_seed(0)
    roi_head = TwoScaleRoIHead(reg_roi_scale_factor=1.3, train_cfg=train, test_cfg=test, **head)
    feats, metas, targets = _feats(), _metas(), _targets()
    losses = roi_head.train().loss(feats, _proposals(targets), targets, metas)
    assert losses["loss_cls"] > 0 and losses["loss_bbox"] > 0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in roi_head.parameters())
    results = roi_head.eval().predict(feats, _proposals(targets), metas)
    assert len(results) == 2 and all(len(r) > 0 for r in results)

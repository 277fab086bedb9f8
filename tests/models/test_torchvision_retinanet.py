"""detlab's RetinaNet against torchvision's ``retinanet_resnet50_fpn`` with copied weights.

torchvision's v1 RetinaNet builds P6/P7 on the P5 *output* with a ReLU before P7, which in
MMDetection's terms is ``add_extra_convs='on_output', relu_before_extra_convs=True``. Its anchors
are rounded to integers and its octave sizes truncated (32, 40, 50 instead of 32, 40.3, 50.8), so
the anchor sets agree within a pixel and both models then decode torchvision's anchors.
"""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import retinanet_resnet50_fpn
from torchvision.models.detection.image_list import ImageList

from detlab.models import build_model
from detlab.structures import Batch

NUM_CLASSES = 5
HEIGHT, WIDTH = 128, 256  # multiples of 128, the coarsest stride, so both place anchors alike
TOWER_GAIN, LOGIT_GAIN, LOGIT_BIAS = 3.0, 5.0, -4.0
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=300)


def _detlab_cfg():
    return dict(
        type="RetinaNet",
        backbone=dict(type="ResNet", depth=50, frozen_stages=-1, norm_eval=True),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256,
                  start_level=1, add_extra_convs="on_output", relu_before_extra_convs=True,
                  num_outs=5),
        bbox_head=dict(type="RetinaHead", num_classes=NUM_CLASSES, in_channels=256,
                       stacked_convs=4, feat_channels=256,
                       anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                             scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                                             strides=[8, 16, 32, 64, 128])),
        test_cfg=TEST_CFG)


def _randomize(tv: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and a head whose scores spread around the threshold,
    so that every part of the computation is exercised."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.25)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
        # std-0.01 towers shrink the signal ~50x per level of depth; scale them to keep the
        # scores varied across locations (not just across classes)
        for tower in (tv.head.classification_head.conv, tv.head.regression_head.conv):
            for block in tower:
                block[0].weight.mul_(TOWER_GAIN)
        cls_logits = tv.head.classification_head.cls_logits
        cls_logits.weight.mul_(LOGIT_GAIN)
        cls_logits.bias.copy_(torch.randn(cls_logits.bias.shape, generator=gen) * 0.3 + LOGIT_BIAS)
        tv.head.regression_head.bbox_reg.weight.mul_(10)


# torchvision's parameter names -> detlab's (MMDetection's)
KEY_RULES = [
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1.conv."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.fpn_convs.\1.conv."),
    (r"^backbone\.fpn\.extra_blocks\.p6\.", "neck.fpn_convs.3.conv."),
    (r"^backbone\.fpn\.extra_blocks\.p7\.", "neck.fpn_convs.4.conv."),
    (r"^head\.classification_head\.conv\.(\d+)\.0\.", r"bbox_head.cls_convs.\1.conv."),
    (r"^head\.classification_head\.cls_logits\.", "bbox_head.retina_cls."),
    (r"^head\.regression_head\.conv\.(\d+)\.0\.", r"bbox_head.reg_convs.\1.conv."),
    (r"^head\.regression_head\.bbox_reg\.", "bbox_head.retina_reg."),
]


def _map_key(key: str) -> str:
    for pattern, replacement in KEY_RULES:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    raise AssertionError(f"unmapped torchvision key {key}")


class FixedAnchors:
    """Precomputed anchors behind the anchor-generator interface the head uses."""

    def __init__(self, per_level: list[torch.Tensor], num_base_priors: int) -> None:
        self.per_level = per_level
        self.num_levels = len(per_level)
        self.num_base_priors = [num_base_priors] * self.num_levels

    def grid_priors(self, featmap_sizes, dtype=torch.float32, device="cpu"):
        return [a.to(device=device, dtype=dtype) for a in self.per_level]

    def valid_flags(self, featmap_sizes, pad_shape, device="cpu"):
        return [torch.ones(len(a), dtype=torch.bool, device=device) for a in self.per_level]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    _randomize(tv)
    tv.eval()
    tv.score_thresh, tv.nms_thresh = TEST_CFG["score_thr"], TEST_CFG["nms"]["iou_threshold"]
    tv.detections_per_img, tv.topk_candidates = TEST_CFG["max_per_img"], TEST_CFG["nms_pre"]
    ours = build_model(_detlab_cfg())
    state = {_map_key(k): v for k, v in tv.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    ours.eval()
    torch.manual_seed(2)
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    return tv, ours, images


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_backbone_fpn_and_head_outputs_match(pair):
    tv, ours, images = pair
    with torch.no_grad():
        tv_body = list(tv.backbone.body(images).values())  # C3, C4, C5
        our_body = ours.backbone(images)[1:]
        for a, b in zip(tv_body, our_body, strict=True):
            assert a.shape == b.shape
            assert _max_diff(a, b) <= 1e-4 * max(1.0, float(a.abs().max()))
        tv_feats = list(tv.backbone(images).values())  # P3-P7
        our_feats = ours.extract_feat(images)
        for a, b in zip(tv_feats, our_feats, strict=True):
            assert a.shape == b.shape
            assert _max_diff(a, b) <= 1e-4 * max(1.0, float(a.abs().max()))
        tv_head = tv.head(tv_feats)
        cls_maps, reg_maps = ours.bbox_head(our_feats)
    from detlab.models.heads.postprocess import levels_to_rows

    assert _max_diff(tv_head["cls_logits"], levels_to_rows(cls_maps, NUM_CLASSES)) < 1e-4
    assert _max_diff(tv_head["bbox_regression"], levels_to_rows(reg_maps, 4)) < 1e-4


def _tv_detections(tv, images):
    with torch.no_grad():
        image_list = ImageList(images, [(HEIGHT, WIDTH)] * len(images))
        feats = list(tv.backbone(images).values())
        head = tv.head(feats)
        anchors = tv.anchor_generator(image_list, feats)
        per_level = [f.shape[2] * f.shape[3] * 9 for f in feats]
        split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return tv.postprocess_detections(split_head, split_anchors, image_list.image_sizes), \
            list(anchors[0].split(per_level))


def _metas(n):
    return [dict(img_shape=(HEIGHT, WIDTH, 3), pad_shape=(HEIGHT, WIDTH, 3),
                 ori_shape=(HEIGHT, WIDTH, 3), scale_factor=np.ones(4, np.float32), flip=False,
                 flip_direction=None, img_id=i, filename=f"{i}.jpg") for i in range(n)]


def test_anchors_agree_within_rounding(pair):
    tv, ours, images = pair
    _, tv_anchors = _tv_detections(tv, images)
    sizes = [(HEIGHT // s, WIDTH // s) for s in (8, 16, 32, 64, 128)]
    our_anchors = ours.bbox_head.prior_generator.grid_priors(sizes)
    for a, b in zip(tv_anchors, our_anchors, strict=True):
        assert a.shape == b.shape
        # torchvision truncates the octave sizes and rounds the corners: under a pixel apart
        assert _max_diff(a, b) < 1.0


def test_same_detections_after_postprocessing(pair):
    tv, ours, images = pair
    tv_dets, tv_anchors = _tv_detections(tv, images)
    generator = ours.bbox_head.prior_generator
    ours.bbox_head.prior_generator = FixedAnchors(tv_anchors, 9)
    try:
        results = ours.predict(Batch(images, [{} for _ in images], _metas(len(images))))
    finally:
        ours.bbox_head.prior_generator = generator
    for ref, res in zip(tv_dets, results, strict=True):
        assert 50 < len(res) < TEST_CFG["max_per_img"]  # the score threshold decides
        assert len(res) == len(ref["boxes"])
        assert torch.equal(res.labels, ref["labels"])
        assert _max_diff(res.scores, ref["scores"]) < 1e-5
        assert _max_diff(res.boxes, ref["boxes"]) < 1e-3

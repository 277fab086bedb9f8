"""SABL RetinaNet against MMDetection 2.28: the bucketing coder's targets and decoded boxes on
random boxes, and, with MMDetection's weights loaded strictly into a small SABL RetinaNet built
from the same zoo config, the same head outputs, losses (with and without ground truth) and
detections; configuration errors.

The batch and the comparisons are FCOS's (``test_fcos.py``). (The zoo's SABL RetinaNet configs'
parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_fcos import HEIGHT, WIDTH, _loss_inputs, build_pair, compare_detections, mmdet_losses

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.bucketing_coder import BucketingBBoxCoder
from detlab.models.heads import SABLRetinaHead
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
SABL = "sabl/sabl_retinanet_r50_fpn_1x_coco.py"
KEYS = {"loss_cls", "loss_bbox_cls", "loss_bbox_reg"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / SABL)
    theirs = Config.fromfile(mmdet_config_dir() / SABL)
    assert mine.to_dict() == theirs.to_dict()


def test_config_is_mmdetections_model():
    with torch.device("meta"):
        model = build_model(Config.fromfile(REPO / "configs" / SABL).model)
    assert type(model.bbox_head) is SABLRetinaHead
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 36_314_248


# ---- the coder -----------------------------------------------------------------------------

def _boxes(gen: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 200
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 120 + 4], dim=1)


@pytest.mark.parametrize("options", [dict(), dict(offset_topk=3, offset_upperbound=0.5,
                                                  cls_ignore_neighbor=False)],
                         ids=["default", "topk3-no-ignore"])
def test_coder_is_mmdetections(options):
    import_mmdet()
    from mmdet.core.bbox.coder import BucketingBBoxCoder as Reference

    gen = torch.Generator().manual_seed(0)
    priors, gts = _boxes(gen, 50), _boxes(gen, 50)
    ours = BucketingBBoxCoder(num_buckets=14, scale_factor=3.0, **options)
    theirs = Reference(num_buckets=14, scale_factor=3.0, **options)
    for a, e in zip(ours.encode(priors, gts), theirs.encode(priors, gts), strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    preds = (torch.randn(50, 28, generator=gen), torch.randn(50, 28, generator=gen) * 0.3)
    for shape in (None, (160, 200, 3)):
        for a, e in zip(ours.decode(priors, preds, shape), theirs.decode(priors, preds, shape),
                        strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_coder_decodes_its_own_targets():
    gen = torch.Generator().manual_seed(1)
    priors = _boxes(gen, 20)
    gts = priors + torch.randn(20, 4, generator=gen) * 4
    coder = BucketingBBoxCoder(num_buckets=14, scale_factor=3.0)
    offsets, _, labels, _ = coder.encode(priors, gts)
    boxes, confidence = coder.decode(priors, (labels * 20.0, offsets))
    torch.testing.assert_close(boxes, gts, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(confidence, torch.ones(20))


def test_configuration_errors():
    with pytest.raises(ConfigError, match="octave_base_scale"):
        SABLRetinaHead(3, 8, square_anchor_generator=dict(
            type="AnchorGenerator", ratios=[1.0], scales=[8], strides=[8, 16, 32, 64, 128]))
    with pytest.raises(ConfigError, match="strides"):
        SABLRetinaHead(3, 8, square_anchor_generator=dict(
            type="AnchorGenerator", ratios=[1.0], scales=[4], strides=[8, 16]))
    with pytest.raises(ConfigError, match="ApproxMaxIoUAssigner"):
        SABLRetinaHead(3, 8, train_cfg=dict(assigner=dict(type="MaxIoUAssigner",
                                                          pos_iou_thr=0.5, neg_iou_thr=0.4)))
    with pytest.raises(ConfigError, match="BucketingBBoxCoder"):
        SABLRetinaHead(3, 8, bbox_coder=dict(type="DeltaXYWHBBoxCoder"))
    with pytest.raises(ConfigError, match="offset_topk"):
        BucketingBBoxCoder(num_buckets=4, scale_factor=3.0, offset_topk=3)


# ---- MMDetection's model, its weights in detlab's ------------------------------------------

@pytest.fixture(scope="module")
def sabl_pair():
    import_mmdet()
    from mmdet.models.dense_heads import SABLRetinaHead as ReferenceHead

    # build_pair randomizes per-level scales, which SABL's layers have none of
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReferenceHead, "scales", (), raising=False)
        return build_pair(SABL, "retina_cls")


@pytest.mark.slow
def test_head_outputs_match_mmdetection(sabl_pair):
    reference, ours = sabl_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls_scores, bbox_preds = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    expected = (cls_scores, [b[0] for b in bbox_preds], [b[1] for b in bbox_preds])
    assert len(actual) == 3
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


@pytest.mark.slow
def test_losses_match_mmdetection(sabl_pair):
    losses = _compare_losses(*sabl_pair)
    assert all(v > 0 for v in losses.values())


@pytest.mark.slow
def test_empty_ground_truth_losses_match_mmdetection(sabl_pair):
    losses = _compare_losses(*sabl_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox_cls"] == 0 and losses["loss_bbox_reg"] == 0


@pytest.mark.slow
def test_detections_match_mmdetection(sabl_pair):
    compare_detections(*sabl_pair)

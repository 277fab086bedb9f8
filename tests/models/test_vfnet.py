"""VFNet against MMDetection 2.28: with MMDetection's weights loaded strictly into a small VFNet
built from the same zoo config, the same head outputs (training and evaluation), losses (also
with the divisors averaged over processes) and detections, with ATSS targets and with FCOS's;
the star-shaped offsets; an empty ground truth.

The helpers are FCOS's (``test_fcos.py``). (The zoo's VFNet configs' parameter counts and
state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import pytest
import torch
from reference.mmdet_reference import mmdet_config_dir
from test_fcos import (
    REPO,
    SMALL,
    _loss_inputs,
    build_pair,
    compare_detections,
    mmdet_losses,
)

from detlab.config import Config, ConfigError
from detlab.models.heads.vfnet_head import VFNetHead, star_offsets
from detlab.structures import Batch

VFNET = "vfnet/vfnet_r50_fpn_1x_coco.py"
HEIGHT, WIDTH = 160, 224
KEYS = {"loss_cls", "loss_bbox", "loss_bbox_rf"}
# FCOS's targets with center sampling, distances normalized by the stride, focal loss, the
# positives counted on this process only
FCOS_TARGETS = {"model.bbox_head.use_atss": False, "model.bbox_head.center_sampling": True,
                "model.bbox_head.bbox_norm_type": "stride", "model.bbox_head.use_vfl": False,
                "model.bbox_head.sync_num_pos": False}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / VFNET)
    theirs = Config.fromfile(mmdet_config_dir() / VFNET)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module", params=["atss", "fcos-targets"])
def vfnet_pair(request):
    options = dict(SMALL, **(FCOS_TARGETS if request.param == "fcos-targets" else {}))
    reference, ours = build_pair(VFNET, "vfnet_cls", options)
    # varied refinement scales too, the same in both
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a, b in zip(reference.bbox_head.scales_refine, ours.bbox_head.scales_refine,
                        strict=True):
            value = float(torch.rand(1, generator=gen)) * 0.6 + 0.5
            a.scale.fill_(value)
            b.scale.fill_(value)
    return request.param, reference, ours


def test_head_outputs_match_mmdetection(vfnet_pair):
    """Evaluation: MMDetection's (scores, refined distances) are detlab's first and third
    outputs; training: all three."""
    _, reference, ours = vfnet_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = reference.extract_feat(images)
        expected_eval = reference.bbox_head(feats)
        expected_train = reference.bbox_head.train()(feats)
        reference.eval()
        actual = ours(images)
    assert len(expected_eval) == 2 and len(expected_train) == len(actual) == 3
    pairs = [(actual[0], expected_eval[0]), (actual[2], expected_eval[1]),
             *zip(actual, expected_train, strict=True)]
    for ours_levels, reference_levels in pairs:
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


def test_losses_match_mmdetection(vfnet_pair):
    losses = _compare_losses(*vfnet_pair[1:])
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(vfnet_pair):
    losses = _compare_losses(*vfnet_pair[1:], empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_bbox_rf"] == 0


def test_losses_match_mmdetection_across_processes(vfnet_pair, monkeypatch):
    """The IoU-weight sums (and, with sync_num_pos, the positives) go through the mean over
    processes, as in MMDetection: with the same stand-in for it in both models, the same
    losses."""
    name, reference, ours = vfnet_pair
    import mmdet.models.dense_heads.vfnet_head as mmdet_vfnet

    from detlab.models.heads import vfnet_head

    calls = []

    def mean_over_processes(tensor):
        calls.append(float(tensor))
        return tensor * 3

    monkeypatch.setattr(mmdet_vfnet, "reduce_mean", mean_over_processes)
    monkeypatch.setattr(vfnet_head, "reduce_mean", mean_over_processes)
    _compare_losses(reference, ours)
    assert len(calls) == (6 if name == "atss" else 4)


def test_detections_match_mmdetection(vfnet_pair):
    compare_detections(*vfnet_pair[1:])


def test_star_offsets_are_mmdetections(vfnet_pair):
    _, reference, _ = vfnet_pair
    distances = torch.rand(2, 4, 5, 6) * 40
    expected = reference.bbox_head.star_dcn_offset(distances, 0.1, 8)
    torch.testing.assert_close(star_offsets(distances / 8), expected)


# ---- without MMDetection -----------------------------------------------------------------

TRAIN_CFG = dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1,
                 debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)
META = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
EMPTY = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))


def _small_head(**kwargs) -> VFNetHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=2,
                strides=(8, 16), regress_ranges=((-1, 32), (32, 1e8)),
                norm_cfg=dict(type="GN", num_groups=4),
                anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                      scales_per_octave=1, center_offset=0.0, strides=[8, 16]),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return VFNetHead(**{**args, **kwargs})


def test_star_offsets_move_the_samples_to_the_box_sides():
    # left 1, top 2, right 3, bottom 4 strides: samples at rows (-2, 0, 4), columns (-1, 0, 3)
    offsets = star_offsets(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)).view(9, 2)
    base = torch.tensor([(i, j) for i in (-1.0, 0.0, 1.0) for j in (-1.0, 0.0, 1.0)])
    samples = offsets + base
    expected = torch.tensor([(i, j) for i in (-2.0, 0.0, 4.0) for j in (-1.0, 0.0, 3.0)])
    torch.testing.assert_close(samples, expected)


@pytest.mark.parametrize("options", [dict(), dict(use_atss=False, center_sampling=True),
                                     dict(use_vfl=False)])
def test_empty_ground_truth_gives_classification_loss_only(options):
    head = _small_head(**options)
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    losses = head.loss(head(feats), [EMPTY, EMPTY], [META, META])
    assert set(losses) == KEYS
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_bbox_rf"] == 0
    sum(losses.values()).backward()
    assert head.vfnet_cls.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())  # zeros, still in the graph
    box = dict(boxes=torch.tensor([[4.0, 6.0, 40.0, 36.0]]), labels=torch.tensor([2]))
    losses = head.loss(head(feats), [box, EMPTY], [META, META])
    assert all(v > 0 for v in losses.values())


def test_raw_outputs_do_not_depend_on_the_mode_and_detections_use_the_refined_boxes():
    head = _small_head()
    feats = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    with torch.no_grad():
        trained = head.train()(feats)
        evaluated = head.eval()(feats)
    for a, b in zip(trained, evaluated, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)
    expected = head.predict_by_feat(evaluated[0], evaluated[2], metas=[META])
    actual = head.predict(evaluated, [META])
    torch.testing.assert_close(actual[0].boxes, expected[0].boxes)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="bbox_norm_type"):
        _small_head(bbox_norm_type="log")
    with pytest.raises(ConfigError, match="reg_decoded_bbox"):
        _small_head(reg_decoded_bbox=False)
    with pytest.raises(ConfigError, match="regress_ranges"):
        _small_head(regress_ranges=((-1, 1e8),))

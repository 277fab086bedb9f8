"""DDOD against MMDetection 2.28: with MMDetection's weights loaded strictly into a small DDOD
built from the same zoo config (deformable first tower convs), the same head outputs, losses
(two ATSS assignments with the predicted-quality cost, per-level reweighting counted over the
calls) and detections (IoU score multiplied in); an empty ground truth; configuration errors.

The batch and the comparisons are FCOS's (``test_fcos.py``). (The zoo's DDOD config's parameter
count and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference.mmdet_reference import mmdet_config_dir
from test_fcos import _loss_inputs, build_pair, compare_detections, compare_outputs, mmdet_losses

from detlab.config import Config, ConfigError
from detlab.models.heads.ddod_head import DDODHead, level_reweight_factors
from detlab.models.ops import DeformConv2dPack
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
DDOD = "ddod/ddod_r50_fpn_1x_coco.py"
LOSS_KEYS = {"loss_cls", "loss_bbox", "loss_iou"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / DDOD)
    theirs = Config.fromfile(mmdet_config_dir() / DDOD)
    assert mine.to_dict() == theirs.to_dict()


@pytest.fixture(scope="module")
def ddod_pair():
    return build_pair(DDOD, "atss_cls")


def compare_losses(reference, ours, empty=False):
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    assert ours.bbox_head.cls_num_pos_samples_per_level == \
        reference.bbox_head.cls_num_pos_samples_per_level
    return actual


def test_head_outputs_match_mmdetection(ddod_pair):
    reference, ours = ddod_pair
    assert isinstance(ours.bbox_head.cls_convs[0].conv, DeformConv2dPack)
    compare_outputs(reference, ours)


def test_losses_match_mmdetection(ddod_pair):
    losses = compare_losses(*ddod_pair)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(ddod_pair):
    """After the other losses: the reweight factors count their positives too."""
    losses = compare_losses(*ddod_pair, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_iou"] == 0


def test_detections_match_mmdetection(ddod_pair):
    compare_detections(*ddod_pair)


# ---- without MMDetection -----------------------------------------------------------------

TRAIN_CFG = dict(assigner=dict(type="ATSSAssigner", topk=9, alpha=0.8),
                 reg_assigner=dict(type="ATSSAssigner", topk=9, alpha=0.5),
                 allowed_border=-1, pos_weight=-1, debug=False)


def _small_head(**kwargs) -> DDODHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1,
                norm_cfg=dict(type="GN", num_groups=4),
                anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                      scales_per_octave=1, strides=[8, 16]),
                train_cfg=TRAIN_CFG)
    return DDODHead(**{**args, **kwargs})


def test_reweight_factors():
    assert level_reweight_factors([10.0, 0.0, 5.0]) == pytest.approx([1.0, 2.0, 1.5])
    assert level_reweight_factors([0.0, 0.0]) == [2.0, 2.0]


def test_deformable_convs_start_as_plain_ones():
    head = _small_head()
    assert (head.reg_convs[0].conv.conv_offset.weight == 0).all()
    plain = _small_head(use_dcn=False)
    assert type(plain.cls_convs[0].conv) is torch.nn.Conv2d


def test_configuration_errors():
    with pytest.raises(ConfigError, match="reg_assigner"):
        _small_head(train_cfg={k: v for k, v in TRAIN_CFG.items() if k != "reg_assigner"})
    with pytest.raises(ConfigError, match="reg_decoded_bbox=False"):
        _small_head(reg_decoded_bbox=True)

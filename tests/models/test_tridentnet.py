"""TridentNet against MMDetection 2.28: a small TridentFasterRCNN of the shipped config (the
caffe ResNet-50 C4 with its trident stage, three branches sharing weights, dilations 1 2 3;
small RoIs, few samples, six classes) with MMDetection's weights loaded strictly gives the same
losses (every image repeated once per branch; with and without ground truth) and detections
(the test branch alone, or all branches merged by NMS); the trident stage shares one weight
across branches; the shipped configs read as MMDetection's; configuration errors.

The images, metas, ground truth and the weights' randomization are test_faster_rcnn.py's.
(The zoo's TridentNet configs' parameter counts and state_dict keys are checked by
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
from test_faster_rcnn import NUM_CLASSES, _images, _metas, _randomize_detector, _targets

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.registry import MODELS
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
TRIDENT = "tridentnet/tridentnet_r50_caffe_1x_coco.py"
SMALL = {"model.backbone.init_cfg": None, "model.roi_head.shared_head.init_cfg": None,
         "model.rpn_head.feat_channels": 32,
         "model.roi_head.bbox_roi_extractor.roi_layer.output_size": 4,
         "model.roi_head.bbox_head.roi_feat_size": 2,
         "model.roi_head.bbox_head.num_classes": NUM_CLASSES,
         "model.train_cfg.rpn_proposal.max_per_img": 100,
         "model.train_cfg.rcnn.sampler.num": 32,
         "model.test_cfg.rpn.max_per_img": 100}


def test_detlab_configs_are_mmdetections():
    for config in (TRIDENT, "_base_/models/faster_rcnn_r50_caffe_c4.py"):
        mine = Config.fromfile(REPO / "configs" / config)
        theirs = Config.fromfile(mmdet_config_dir() / config)
        assert mine.to_dict() == theirs.to_dict(), config


@pytest.fixture(scope="module")
def trident_pair():
    """(MMDetection's small TridentNet, detlab's of the shipped config with its weights loaded
    strictly), eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(TRIDENT)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize_detector(reference)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # MMDetection's TridentConv weight is uninitialized memory until
        for block in reference.backbone.layer3:  # init_weights: draw it (He normal)
            weight = block.conv2.weight
            weight.copy_(torch.randn(weight.shape, generator=gen)
                         * (2.0 / weight[0].numel()) ** 0.5)
    cfg = Config.fromfile(REPO / "configs" / TRIDENT)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "empty"])
def test_losses_match_mmdetection(trident_pair, empty):
    reference, ours = trident_pair
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
                                   rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    assert (actual["loss_bbox"] > 0) != empty


def _set_test_branch(model: torch.nn.Module, index: int) -> None:
    for module in model.modules():
        if hasattr(module, "test_branch_idx"):
            module.test_branch_idx = index


@pytest.mark.parametrize("branch", [1, -1], ids=["test-branch", "all-branches"])
def test_detections_match_mmdetection(trident_pair, branch):
    """The config's test branch on two images; all three branches merged on one image
    (MMDetection's merge groups consecutive entries, right for one image)."""
    reference, ours = trident_pair
    images, metas = _images(9), _metas()
    if branch == -1:
        images, metas = images[:1], metas[:1]
    try:
        for model in (reference, ours):
            _set_test_branch(model, branch)
        with torch.no_grad():
            expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
            actual = ours.predict(Batch(images, [{}] * len(metas), metas), rescale=True)
    finally:
        for model in (reference, ours):
            _set_test_branch(model, 1)
    assert len(actual) == len(expected) == len(metas)
    assert all(sum(len(c) for c in image) > 5 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


def test_branches_share_one_weight_with_their_own_dilation(trident_pair):
    """Training runs every branch (stacked on the batch, branch-major), evaluation the test
    branch alone, which equals that branch of the training output (norms frozen)."""
    _, ours = trident_pair
    backbone = ours.backbone
    images = _images(3)[:, :, :64, :96]
    with torch.no_grad():
        (all_branches,) = backbone.train()(images)
        (single,) = backbone.eval()(images)
    assert all_branches.shape[0] == 3 * images.shape[0]
    torch.testing.assert_close(single, all_branches[images.shape[0]:2 * images.shape[0]])
    block = backbone.layer3[0].train()
    with torch.no_grad():
        branches = block(torch.randn(1, block.conv1.in_channels, 8, 8))
    assert len(branches) == 3 and not torch.allclose(branches[0], branches[1])
    backbone.eval()
    names = [n for n, _ in backbone.layer3.named_parameters()]
    assert "0.conv2.weight" in names and not any("branch" in n for n in names)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(num_branch=2), "num_branch"),
    (dict(test_branch_idx=3), "test_branch_idx"),
    (dict(num_stages=4, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1)), "num_stages=3"),
])
def test_backbone_configuration_errors(changes, message):
    cfg = Config.fromfile(REPO / "configs" / TRIDENT).model.backbone.to_dict()
    cfg.update(init_cfg=None, **changes)
    with torch.device("meta"), pytest.raises(ConfigError, match=message):
        MODELS.build(cfg)


def test_detector_needs_matching_branches():
    cfg = Config.fromfile(REPO / "configs" / TRIDENT)
    cfg.merge_from_dict({"model.backbone.init_cfg": None, "model.roi_head.test_branch_idx": 0})
    with torch.device("meta"), pytest.raises(ConfigError, match="test_branch_idx"):
        build_model(cfg.model)

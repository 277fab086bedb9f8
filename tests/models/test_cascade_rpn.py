"""Cascade RPN against MMDetection 2.28: with MMDetection's weights loaded strictly into a small
Cascade RPN built from the zoo config, the same stage outputs (the dilated first stage, the
deformable second stage sampling at the refined anchors), losses of both stages (the region
assignment of the first; the second's RandomSampler draws seeded alike), an empty ground truth,
and proposals at test time and during training; the RegionAssigner on its own.

(The zoo's Cascade RPN configs' parameter counts and state_dict keys are checked by
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
from test_fcos import HEIGHT, WIDTH, metas_and_targets
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.assigners import RegionAssigner
from detlab.models.heads.cascade_rpn_head import anchor_offsets
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
CRPN = "cascade_rpn/crpn_r50_caffe_fpn_1x_coco.py"
RPN_CAFFE = "rpn/rpn_r50_caffe_fpn_1x_coco.py"
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.rpn_head.stages.0.in_channels": 32, "model.rpn_head.stages.0.feat_channels": 32,
         "model.rpn_head.stages.1.in_channels": 32, "model.rpn_head.stages.1.feat_channels": 32}


@pytest.mark.parametrize("config", [CRPN, RPN_CAFFE])
def test_detlab_config_is_mmdetections(config):
    mine = Config.fromfile(REPO / "configs" / config)
    theirs = Config.fromfile(mmdet_config_dir() / config)
    assert mine.to_dict() == theirs.to_dict()


def _randomize(model: nn.Module) -> None:
    """Varied norms (see test_rpn.randomize, on the last stage's classifier) and regressors whose
    deltas move the anchors by a few tenths of their size."""
    stage = model.rpn_head.stages[-1]
    model.rpn_head, stages = stage, model.rpn_head
    try:
        with torch.no_grad():
            for s in stages.stages:
                s.rpn_conv.conv.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
                s.rpn_reg.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(6))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    n = module.num_features
                    module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                    module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                    module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                    module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            stage.rpn_cls.weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(7))
            stage.rpn_cls.bias.fill_(-1.0)
    finally:
        model.rpn_head = stages


@pytest.fixture(scope="module")
def crpn_pair():
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(CRPN)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    _randomize(reference)
    cfg = Config.fromfile(REPO / "configs" / CRPN)
    cfg.merge_from_dict(SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _images(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_offsets_match_mmdetection(crpn_pair):
    reference, ours = crpn_pair
    stage = reference.rpn_head.stages[1]
    gen = torch.Generator().manual_seed(0)
    sizes = [(20, 28), (10, 14)]
    anchors = [[torch.rand(h * w, 4, generator=gen) * 50 + torch.tensor([0, 0, 60, 50])
                for h, w in sizes] for _ in range(2)]
    expected = stage.anchor_offset(anchors, [4, 8], sizes)
    actual = anchor_offsets(torch.stack([torch.cat(a) for a in anchors]), [4, 8], sizes)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e)


def _losses(reference, ours, empty: bool, seed: int = 11):
    images = _images(4)
    metas, targets = metas_and_targets(empty=empty)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference.train().forward_train(images, copy.deepcopy(metas),
                                                   [t["boxes"] for t in targets])
    reference.eval()
    expected = {k: sum(v) for k, v in expected.items()}
    torch.manual_seed(seed)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"s0.loss_rpn_reg", "s1.loss_rpn_cls",
                                            "s1.loss_rpn_reg"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(crpn_pair):
    losses = _losses(*crpn_pair, empty=False)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(crpn_pair):
    losses = _losses(*crpn_pair, empty=True)
    assert losses["s1.loss_rpn_cls"] > 0
    assert losses["s0.loss_rpn_reg"] == 0 and losses["s1.loss_rpn_reg"] == 0


def test_proposals_match_mmdetection(crpn_pair):
    reference, ours = crpn_pair
    images = _images(2)
    metas, targets = metas_and_targets()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
    results = ours.predict(Batch(images, targets, metas))
    assert all(len(e) > 100 for e in expected)
    for r, e in zip(results, expected, strict=True):
        actual = np.c_[r.boxes.numpy(), r.scores.numpy()]
        np.testing.assert_allclose(actual[:, 4], e[:, 4], rtol=1e-5, atol=1e-6)
        # proposals of equal scores (the padding's anchors score alike) may come in another order
        np.testing.assert_allclose(_by_score_and_box(actual), _by_score_and_box(e), rtol=1e-5,
                                   atol=1e-4)


def _by_score_and_box(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0],
                            -rows[:, 4].round(5)))]


def test_training_proposals_match_mmdetection(crpn_pair):
    """As MMDetection's, the proposals of a training pass follow test_cfg (not proposal_cfg)."""
    import mmcv

    reference, ours = crpn_pair
    images = _images(5)
    metas, targets = metas_and_targets(seed=6)
    proposal_cfg = dict(nms_pre=100, max_per_img=50, nms=dict(type="nms", iou_threshold=0.5),
                        min_bbox_size=0)
    torch.manual_seed(3)
    expected_losses, expected = reference.rpn_head.forward_train(
        reference.extract_feat(images), copy.deepcopy(metas), [t["boxes"] for t in targets],
        proposal_cfg=mmcv.ConfigDict(proposal_cfg))
    torch.manual_seed(3)
    losses, proposals = ours.rpn_head.loss_and_proposals(
        ours.extract_feat(images), targets, metas, proposal_cfg)
    for key in expected_losses:
        torch.testing.assert_close(losses[key], sum(expected_losses[key]), rtol=1e-5,
                                   atol=1e-6)
    for a, e in zip(proposals, expected, strict=True):
        assert len(e) > 100
        np.testing.assert_allclose(_by_score_and_box(a.numpy()),
                                   _by_score_and_box(e.detach().numpy()), rtol=1e-5, atol=1e-4)


# ---- the RegionAssigner alone ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_region_assigner_matches_mmdetection(seed):
    import_mmdet()
    from mmdet.core.bbox.assigners import RegionAssigner as Reference

    from detlab.models.anchors import AnchorGenerator

    generator = AnchorGenerator(strides=[4, 8, 16, 32], ratios=[1.0], scales=[8])
    sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    anchors = generator.grid_priors(sizes)
    valid = generator.valid_flags(sizes, (90, 120))
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(6, 2, generator=gen) * torch.tensor([100.0, 80.0])
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=gen) * 90 + 6], 1)
    meta = dict(img_shape=(90, 120, 3))
    expected = Reference(0.2, 0.5).assign(anchors, valid, boxes, meta, sizes, 8, [4, 8, 16, 32],
                                          allowed_border=0)
    actual = RegionAssigner(0.2, 0.5).assign(
        torch.cat(anchors), boxes, num_level_priors=[len(a) for a in anchors],
        featmap_sizes=sizes, anchor_scale=8, anchor_strides=[4, 8, 16, 32],
        valid_flags=torch.cat(valid), img_shape=meta["img_shape"], allowed_border=0)
    assert torch.equal(actual.gt_inds, expected.gt_inds)
    assert (actual.gt_inds > 0).sum() > 5 and (actual.gt_inds == -1).sum() > 5


def test_configuration_errors():
    with pytest.raises(ConfigError, match="center_ratio"):
        RegionAssigner(0.6, 0.5)
    cfg = Config.fromfile(REPO / "configs" / CRPN).to_dict()["model"]
    cfg["rpn_head"]["num_stages"] = 3
    with pytest.raises(ConfigError, match="num_stages=3"):
        build_model(cfg)
    cfg = Config.fromfile(REPO / "configs" / CRPN).to_dict()["model"]
    cfg["rpn_head"]["stages"][0]["adapt_cfg"] = dict(type="offsets")
    with pytest.raises(ConfigError, match="adapt_cfg.type"):
        build_model(cfg)

"""Guided-anchoring RPN against MMDetection 2.28: with MMDetection's weights loaded strictly into
a small GA-RPN built from the zoo config, the same head outputs, the four losses (both random
samplers' draws seeded alike), an empty ground truth, and proposals at test time (location
filter on) and during training (every location).

(The zoo's guided-anchoring RPN configs' parameter counts and state_dict keys are checked by
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
from test_guided_anchoring import _masked_conv_forward
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
GA_RPN = "guided_anchoring/ga_rpn_r50_caffe_fpn_1x_coco.py"
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.rpn_head.in_channels": 32, "model.rpn_head.feat_channels": 32}
PROPOSAL_CFG = dict(nms_pre=300, nms_post=200, max_per_img=150,
                    nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / GA_RPN)
    theirs = Config.fromfile(mmdet_config_dir() / GA_RPN)
    assert mine.to_dict() == theirs.to_dict()


def _randomize(model: nn.Module) -> None:
    """Varied norms; location logits spread around the 0.01 filter, shapes and deltas of a few
    tenths, objectness spread."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        head = model.rpn_head
        for name, std, bias in (("conv_loc", 1.0, -4.0), ("conv_shape", 0.3, 0.0),
                                ("conv_cls", 0.3, -1.0), ("conv_reg", 0.3, 0.0)):
            conv = getattr(head, name)
            conv.weight.normal_(0, std, generator=gen)
            conv.bias.fill_(bias)


@pytest.fixture(scope="module")
def ga_rpn_pair():
    """(MMDetection's small GA-RPN, detlab's with its weights), in eval mode; MMDetection's
    MaskedConv2d computes every location and zeroes the dropped ones (see
    test_guided_anchoring.py), so eval-mode comparisons go image by image."""
    import_mmdet()
    from mmcv.ops import MaskedConv2d
    from mmdet.models import build_detector

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MaskedConv2d, "forward", _masked_conv_forward)
        mm_cfg = load_mmdet_config(GA_RPN)
        mm_cfg.merge_from_dict(SMALL)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = build_detector(mm_cfg.model)
        _randomize(reference)
        head = reference.train().rpn_head
        with torch.no_grad():  # about half of the locations pass loc_filter_thr
            logits = torch.cat([p.flatten() for p in
                                head(reference.extract_feat(_images(3)))[3]])
            head.conv_loc.bias -= logits.median() - torch.logit(torch.tensor(0.01))
        cfg = Config.fromfile(REPO / "configs" / GA_RPN)
        cfg.merge_from_dict(SMALL)
        ours = build_model(cfg.model)
        ours.load_state_dict(reference.state_dict(), strict=True)
        yield reference.eval(), ours.eval()


def _images(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_head_outputs_match_mmdetection(ga_rpn_pair):
    reference, ours = ga_rpn_pair
    images = _images(1)
    for mode, batch in (("train", images), ("eval", images[:1]), ("eval", images[1:])):
        reference.train(mode == "train")
        ours.train(mode == "train")
        with torch.no_grad():
            expected = reference.rpn_head(reference.extract_feat(batch))
            actual = ours.rpn_head(ours.extract_feat(batch))
        for ours_levels, reference_levels in zip(actual, expected, strict=True):
            for a, e in zip(ours_levels, reference_levels, strict=True):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    reference.eval()
    ours.eval()
    kept = torch.cat([(p.sigmoid() >= 0.01).flatten() for p in actual[3]]).float().mean()
    assert 0.2 < kept < 0.8  # both kept and dropped locations compared


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
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox",
                                            "loss_anchor_shape", "loss_anchor_loc"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(ga_rpn_pair):
    losses = _losses(*ga_rpn_pair, empty=False)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(ga_rpn_pair):
    losses = _losses(*ga_rpn_pair, empty=True)
    assert losses["loss_rpn_cls"] > 0 and losses["loss_anchor_loc"] > 0
    assert losses["loss_rpn_bbox"] == 0 and losses["loss_anchor_shape"] == 0


def _by_score_and_box(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0],
                            -rows[:, 4].round(5)))]


def _compare(actual: np.ndarray, expected: np.ndarray) -> None:
    assert len(expected) > 50
    np.testing.assert_allclose(actual[:, 4], expected[:, 4], rtol=1e-5, atol=1e-6)
    # proposals of equal scores may come in another order
    np.testing.assert_allclose(_by_score_and_box(actual), _by_score_and_box(expected),
                               rtol=1e-5, atol=1e-4)


def test_proposals_match_mmdetection(ga_rpn_pair):
    reference, ours = ga_rpn_pair
    images = _images(2)
    metas, targets = metas_and_targets()
    for i in range(2):  # (the reference's masked conv takes one image at a time)
        with torch.no_grad():
            expected = reference.simple_test(images[i:i + 1], copy.deepcopy(metas[i:i + 1]),
                                             rescale=True)[0]
        result = ours.predict(Batch(images[i:i + 1], targets[i:i + 1], metas[i:i + 1]))[0]
        assert (result.labels == 0).all()
        _compare(np.c_[result.boxes.numpy(), result.scores.numpy()], expected)


@pytest.mark.parametrize("across", [False, True], ids=["per-level", "nms-across-levels"])
def test_training_proposals_match_mmdetection(ga_rpn_pair, across):
    import mmcv

    reference, ours = ga_rpn_pair
    images = _images(5)
    metas, targets = metas_and_targets(seed=6)
    cfg = dict(PROPOSAL_CFG, nms_across_levels=across)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.rpn_head.train()
        expected_losses, expected = reference.rpn_head.forward_train(
            reference.extract_feat(images), copy.deepcopy(metas), [t["boxes"] for t in targets],
            proposal_cfg=mmcv.ConfigDict(cfg))
        reference.rpn_head.eval()
    torch.manual_seed(3)
    ours.rpn_head.train()
    losses, proposals = ours.rpn_head.loss_and_proposals(ours.extract_feat(images), targets,
                                                         metas, cfg)
    ours.rpn_head.eval()
    for key in expected_losses:
        torch.testing.assert_close(losses[key], sum(expected_losses[key]), rtol=1e-5,
                                   atol=1e-6)
    for a, e in zip(proposals, expected, strict=True):
        _compare(a.numpy(), e.detach().numpy())


def test_configuration_errors(ga_rpn_pair):
    _, ours = ga_rpn_pair
    feats = ours.extract_feat(_images(0))
    metas, _ = metas_and_targets()
    with pytest.raises(ConfigError, match="plain NMS"):
        ours.rpn_head.proposals(feats, metas, dict(PROPOSAL_CFG, nms=dict(
            type="soft_nms", iou_threshold=0.5)))
    with pytest.raises(ConfigError, match="nms_post"):
        ours.rpn_head.proposals(feats, metas, {k: v for k, v in PROPOSAL_CFG.items()
                                               if k != "nms_post"})
    with pytest.warns(DeprecationWarning, match="nms_thr"):
        old = ours.rpn_head.proposals(feats, metas, dict(
            {k: v for k, v in PROPOSAL_CFG.items() if k not in ("nms", "max_per_img")},
            nms_thr=0.7, max_num=150))
    new = ours.rpn_head.proposals(feats, metas, PROPOSAL_CFG)
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(a, b)

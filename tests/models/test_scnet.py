"""SCNet against MMDetection 2.28: a small model of the shipped config (ResNet-18, 16 channels,
three box stages, one residual mask head) with MMDetection's weights loaded strictly gives the
same losses -- ``loss_semantic_seg``, ``loss_glbctx``, each stage's box losses and the mask
loss of the last stage's positives with their relayed box features -- with and without ground
truth, and the same detections and masks. The pair builder and detection check are
test_cascade_rcnn.py's, the semantic maps test_htc.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_cascade_rcnn
import torch
from reference.mmdet_reference import mmdet_config_dir
from test_cascade_rcnn import STAGES, build_cascade_pair
from test_htc import SEM_CLASSES, _with_semantic_maps
from test_mask_rcnn import CLASSES, HEIGHT, WIDTH, _metas, _mmdet_losses, _targets

from detlab.config import Config, ConfigError
from detlab.registry import MODELS
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
SCNET = "scnet/scnet_r50_fpn_1x_coco.py"


def _small() -> dict:
    """Overrides making the zoo's SCNet small (list entries by index)."""
    options = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
               "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 16,
               "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
               "model.roi_head.bbox_roi_extractor.out_channels": 16,
               "model.roi_head.mask_roi_extractor.out_channels": 16,
               "model.roi_head.mask_head.in_channels": 16,
               "model.roi_head.mask_head.conv_out_channels": 16,
               "model.roi_head.mask_head.num_classes": CLASSES,
               "model.roi_head.mask_head.num_convs": 4,
               "model.roi_head.semantic_roi_extractor.out_channels": 16,
               "model.roi_head.semantic_head.in_channels": 16,
               "model.roi_head.semantic_head.conv_out_channels": 16,
               "model.roi_head.semantic_head.num_classes": SEM_CLASSES,
               "model.roi_head.glbctx_head.in_channels": 16,
               "model.roi_head.glbctx_head.conv_out_channels": 16,
               "model.roi_head.glbctx_head.num_classes": CLASSES,
               "model.roi_head.feat_relay_head.in_channels": 32,
               "model.roi_head.feat_relay_head.out_conv_channels": 16,
               "model.train_cfg.rpn_proposal.max_per_img": 300,
               "model.test_cfg.rpn.max_per_img": 300}
    for stage in range(STAGES):
        head = f"model.roi_head.bbox_head.{stage}"
        options.update({f"{head}.in_channels": 16, f"{head}.fc_out_channels": 32,
                        f"{head}.num_classes": CLASSES,
                        f"model.train_cfg.rcnn.{stage}.sampler.num": 64})
    return options


@pytest.fixture(scope="module")
def scnet_pair():
    return build_cascade_pair(SCNET, _small())


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / SCNET)
    theirs = Config.fromfile(mmdet_config_dir() / SCNET)
    assert mine.to_dict() == theirs.to_dict()


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "no-boxes"])
def test_losses_match_mmdetection(scnet_pair, empty):
    reference, ours = scnet_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas = _metas()
    targets, seg = _with_semantic_maps(_targets(empty))
    forward_train = reference.forward_train
    reference.forward_train = lambda *args, **kwargs: forward_train(*args, **kwargs,
                                                                    gt_semantic_seg=seg)
    try:
        torch.manual_seed(11)
        expected = _mmdet_losses(reference, images, metas, targets)
    finally:
        del reference.forward_train
    torch.manual_seed(11)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    keys = {"loss_rpn_cls", "loss_rpn_bbox", "loss_semantic_seg", "loss_glbctx", "loss_mask"}
    keys |= {f"s{i}.{n}" for i in range(STAGES) for n in ("loss_cls", "acc", "loss_bbox")}
    assert set(actual) == set(expected) == keys
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert (actual["loss_mask"] > 0) != empty
    sum(v for k, v in actual.items() if "loss" in k).backward()
    assert all(p.grad is not None for n, p in ours.named_parameters()
               if p.requires_grad and "roi_head" in n
               and not (empty and ("mask_head" in n or "feat_relay" in n)))
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_and_masks_match(scnet_pair, rescale):
    test_cascade_rcnn.test_detections_and_masks_match_mmdetection(scnet_pair, rescale)


def test_no_proposals_give_no_detections(scnet_pair):
    _, ours = scnet_pair
    feats = ours.extract_feat(torch.zeros(2, 3, HEIGHT, WIDTH))
    results = ours.roi_head.predict(feats, [torch.zeros(0, 5), torch.zeros(0, 5)], _metas())
    assert all(len(r) == 0 and r.masks.shape == (0, HEIGHT // 2, WIDTH // 2) for r in results)


def test_configuration_errors_name_their_key():
    cfg = Config.fromfile(REPO / "configs" / SCNET)
    head = cfg.model.roi_head.to_dict()
    with pytest.raises(ConfigError, match="mask_roi_extractor"):
        MODELS.build(dict(head, mask_roi_extractor=None))
    with pytest.raises(ConfigError, match="semantic_roi_extractor"):
        MODELS.build(dict(head, semantic_roi_extractor=None))
    with pytest.raises(ConfigError, match="in_channels equal conv_out_channels"):
        MODELS.build(dict(head["mask_head"], in_channels=8))

"""Mask Scoring R-CNN against MMDetection 2.28: MaskIoUHead's outputs, IoU targets (tensor,
bitmap and polygon masks) and loss; a small Mask Scoring R-CNN with MMDetection's weights loaded
strictly gives the same losses (with and without ground truth, ``loss_mask_iou`` included) and
the same detections, masks and mask scores. (The zoo's ms_rcnn configs' parameter counts and
state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_mask_rcnn import (
    CLASSES,
    HEIGHT,
    POLYGONS,
    SMALL,
    WIDTH,
    _masks_and_proposals,
    _mmdet_losses,
    _mmdet_masks,
    _targets,
)
from test_mask_rcnn import _metas as _mask_metas

from detlab.config import Config, ConfigError
from detlab.data.masks import BitmapMasks, PolygonMasks
from detlab.models import build_model
from detlab.models.roi_heads.mask_heads import MaskIoUHead
from detlab.structures import Batch

MS_RCNN = "ms_rcnn/ms_rcnn_r50_fpn_1x_coco.py"
REPO = Path(__file__).resolve().parents[2]
SMALL_MS = {**SMALL, "model.roi_head.mask_iou_head.in_channels": 16,
            "model.roi_head.mask_iou_head.conv_out_channels": 16,
            "model.roi_head.mask_iou_head.fc_out_channels": 32,
            "model.roi_head.mask_iou_head.num_classes": CLASSES}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / MS_RCNN)
    theirs = Config.fromfile(mmdet_config_dir() / MS_RCNN)
    assert mine.to_dict() == theirs.to_dict()


def _head_pair():
    import_mmdet()
    from mmdet.models.roi_heads.mask_heads import MaskIoUHead as Reference

    args = dict(num_convs=2, num_fcs=2, roi_feat_size=14, in_channels=8, conv_out_channels=8,
                fc_out_channels=16, num_classes=CLASSES)
    torch.manual_seed(0)
    reference = Reference(**args)
    reference.init_weights()
    ours = MaskIoUHead(**args)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def test_mask_iou_head_outputs_and_loss_match_mmdetection():
    reference, ours = _head_pair()
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters())
    feats, logits = torch.randn(5, 8, 14, 14), torch.randn(5, 28, 28)
    torch.testing.assert_close(ours(feats, logits), reference(feats, logits))
    pred, targets = torch.rand(5), torch.tensor([0.3, 0.0, 0.8, 0.5, 0.0])
    torch.testing.assert_close(ours.loss(pred, targets)["loss_mask_iou"],
                               reference.loss(pred, targets)["loss_mask_iou"])
    empty = ours.loss(pred.requires_grad_(), torch.zeros(5))["loss_mask_iou"]
    assert empty.item() == 0 and empty.requires_grad


@pytest.mark.parametrize("kind", ["tensor", "bitmap", "polygon"])
def test_mask_iou_targets_match_mmdetection(kind):
    from mmcv import Config as MMConfig

    reference, ours = _head_pair()
    bitmaps, proposals, inds = _masks_and_proposals()
    h, w = bitmaps.shape[1:]

    class _Result:  # the two fields both sides read
        def __init__(self, boxes, gt_inds):
            self.pos_bboxes, self.pos_assigned_gt_inds = boxes, gt_inds

    results = [_Result(proposals, inds), _Result(proposals[:0], inds[:0]),
               _Result(proposals[3:], inds[3:])]
    total = 2 * len(proposals) - 3
    gen = torch.Generator().manual_seed(0)
    mask_pred = torch.randn(total, 28, 28, generator=gen)
    mask_targets = (torch.rand(total, 28, 28, generator=gen) > 0.4).float()
    cfg = MMConfig(dict(mask_thr_binary=0.5))
    expected = reference.get_targets(results, [_mmdet_masks(kind, bitmaps, POLYGONS, h, w)] * 3,
                                     mask_pred, mask_targets, cfg)
    masks = {"tensor": torch.from_numpy(bitmaps).bool(), "bitmap": BitmapMasks(bitmaps, h, w),
             "polygon": PolygonMasks(POLYGONS, h, w)}[kind]
    actual = ours.get_targets(results, [masks] * 3, mask_pred, mask_targets,
                              dict(mask_thr_binary=0.5))
    torch.testing.assert_close(actual, expected)
    with pytest.raises(ConfigError, match="mask_thr_binary"):
        ours.get_targets(results, [masks] * 3, mask_pred, mask_targets, {})


# ---- the whole detector ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ms_pair():
    """(MMDetection's small Mask Scoring R-CNN, detlab's with its weights loaded strictly),
    weights drawn at random, eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    reference_cfg = load_mmdet_config(MS_RCNN)
    reference_cfg.merge_from_dict(SMALL_MS)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(reference_cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "backbone" not in name:
                scale = 0.3 if "fc_cls" in name or "rpn_cls" in name else 0.1
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
        # mask logits around the IoU targets' threshold (0.5, on logits as in MMDetection)
        reference.roi_head.mask_head.conv_logits.bias.add_(0.5)
    cfg = Config.fromfile(REPO / "configs" / MS_RCNN)
    cfg.merge_from_dict(SMALL_MS)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "no-boxes"])
def test_detector_losses_match_mmdetection(ms_pair, empty):
    reference, ours = ms_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = _mask_metas(), _targets(empty)
    torch.manual_seed(11)
    expected = _mmdet_losses(reference, images, metas, targets)
    torch.manual_seed(11)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                                            "loss_bbox", "acc", "loss_mask", "loss_mask_iou"}
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert (actual["loss_mask_iou"] > 0) != empty
    sum(v for k, v in actual.items() if k.startswith("loss")).backward()
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_masks_and_mask_scores_match_mmdetection(ms_pair, rescale):
    reference, ours = ms_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas = _mask_metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=rescale)
    actual = ours.predict(Batch(images, [{}, {}], metas), rescale=rescale)
    for ours_image, (boxes, (masks, mask_scores)) in zip(actual, expected, strict=True):
        assert sum(len(c) for c in boxes) > 20
        assert ours_image.mask_scores is not None
        for label, (a, e) in enumerate(zip(ours_image.to_mmdet(CLASSES), boxes, strict=True)):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
            chosen = ours_image.labels == label
            np.testing.assert_allclose(ours_image.mask_scores[chosen].numpy(),
                                       mask_scores[label], rtol=1e-4, atol=1e-5)
            mine = ours_image.masks[chosen].numpy()
            assert len(mine) == len(masks[label])
            for m, r in zip(mine, masks[label], strict=True):
                np.testing.assert_array_equal(m, r)


def test_no_detections_give_empty_mask_scores(ms_pair):
    _, ours = ms_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    proposals = [torch.zeros(0, 5), torch.zeros(0, 5)]
    results = ours.predict(Batch(images, [{}, {}], _mask_metas()), proposals=proposals)
    assert all(len(r) == 0 and r.mask_scores is not None and len(r.mask_scores) == 0
               for r in results)
    assert len(results[0][:0].mask_scores) == 0


def test_configuration_errors():
    with pytest.raises(ConfigError, match="mask_iou_head"):
        build_model(dict(type="MaskScoringRoIHead", bbox_roi_extractor=None, bbox_head=None))
    with pytest.raises(ConfigError, match="num_convs"):
        MaskIoUHead(num_convs=0)


def test_segm_evaluation_ranks_masks_by_their_mask_scores(shapes_root):
    """As MMDetection's segm results of Mask Scoring R-CNN: each shape's true mask and an
    empty one on the same box, the empty one with the higher box score; ranked by box score
    the masks score below 1, ranked by their mask scores (true masks first) they score 1."""
    from test_mask_rcnn import _shapes_config

    import detlab
    from detlab.data.masks import decode_rles, segmentation_to_rle
    from detlab.structures import DetResult

    dataset = detlab.build_dataset(_shapes_config(shapes_root).data.val)
    results = []
    for info in dataset.data_infos:
        anns = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[info["id"]]))
        h, w, n = info["height"], info["width"], len(anns)
        masks = torch.from_numpy(decode_rles([segmentation_to_rle(a["segmentation"], h, w)
                                              for a in anns])).bool()
        boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in
                              (a["bbox"] for a in anns)], dtype=torch.float32)
        labels = torch.tensor([dataset.cat_ids.index(a["category_id"]) for a in anns])
        results.append(DetResult(boxes.repeat(2, 1), torch.cat([torch.full((n,), 0.5),
                                                               torch.ones(n)]),
                                 labels.repeat(2), masks=torch.cat([masks,
                                                                    torch.zeros_like(masks)])))
    by_box = dataset.evaluate(results, metric="segm")["segm_mAP"]
    for result in results:
        n = len(result) // 2
        result.mask_scores = torch.cat([torch.ones(n), torch.full((n,), 0.1)])
    assert by_box < 1.0 and dataset.evaluate(results, metric="segm")["segm_mAP"] == 1.0


def test_results_pkl_keeps_mask_scores(tmp_path):
    """Mask Scoring R-CNN's results.pkl is MMDetection's: per image (per-class boxes,
    (per-class RLEs, per-class mask scores)); it reads back with the mask scores in order."""
    import pickle

    from detlab.engine.tester import load_results, save_results
    from detlab.structures import DetResult

    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[1.0, 2, 9, 12], [4, 4, 20, 15], [0, 0, 5, 5]])
    masks = torch.rand(3, 16, 24, generator=gen) > 0.5
    result = DetResult(boxes, torch.tensor([0.9, 0.8, 0.3]), torch.tensor([2, 0, 2]),
                       masks=masks, mask_scores=torch.tensor([0.5, 0.7, 0.1]))
    path = save_results([result], str(tmp_path / "results.pkl"), num_classes=3)
    with open(path, "rb") as f:
        (row,) = pickle.load(f)
    segms, scores = row[1]
    assert [len(c) for c in segms] == [1, 0, 2]
    np.testing.assert_allclose(np.concatenate(scores), [0.7, 0.5, 0.1])
    (back,) = load_results(path, ("a", "b", "c"))
    assert back.labels.tolist() == [2, 0, 2] and torch.equal(back.masks, masks)
    torch.testing.assert_close(back.mask_scores, torch.tensor([0.5, 0.7, 0.1]))

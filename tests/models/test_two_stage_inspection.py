"""detlab.viz.two_stage: the inspection of a two-stage detector gives exactly what its stages
compute (the RPN's proposals, the RoI head's sampling, its detections and pasted masks), and the
drawings of notebook 10 draw them."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch
from test_mask_rcnn import _shapes_config

import detlab
from detlab.data.loader import collate
from detlab.models.assigners.iou import bbox_overlaps as box_iou
from detlab.viz.draw import read_rgb
from detlab.viz.two_stage import (
    GROUND_TRUTH,
    NEGATIVE,
    POSITIVE,
    draw_kept,
    draw_proposals,
    draw_sampled_rois,
    input_image,
    inspect_two_stage,
    mask_panels,
    stage_counts,
)


@pytest.fixture(scope="module")
def model_and_batch(shapes_root):
    """The 16-channel shapes Mask R-CNN (untrained: every score over the threshold) and one
    un-flipped training image with its ground truth and masks."""
    cfg = _shapes_config(shapes_root, **{"data.train.pipeline.3.flip_ratio": 0.0,
                                         "model.test_cfg.rcnn.score_thr": 0.0})
    torch.manual_seed(0)
    model = detlab.build_model(cfg.model)
    dataset = detlab.build_dataset(cfg.data.train)
    return model, collate([dataset[1]]), cfg


@pytest.fixture(scope="module")
def seen(model_and_batch):
    model, batch, _ = model_and_batch
    return inspect_two_stage(model, batch)


def test_each_stage_is_the_models(model_and_batch, seen):
    model, batch, cfg = model_and_batch
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(batch.images)
        proposals = model.rpn_head.proposals(feats, batch.metas, cfg.model.test_cfg.rpn)
        [result] = model.predict(batch, rescale=False)
    assert torch.equal(seen.proposals, proposals[0])
    assert len(seen.proposals) <= cfg.model.test_cfg.rpn.max_per_img
    assert seen.proposal_cfg["nms_pre"] == cfg.model.test_cfg.rpn.nms_pre
    assert torch.equal(seen.detections.boxes, result.boxes)
    assert torch.equal(seen.detections.labels, result.labels)
    assert torch.equal(seen.detections.masks, result.masks)  # pasted at the input's size
    counts = stage_counts(seen)
    assert 0 < counts["kept"] <= min(cfg.model.test_cfg.rcnn.max_per_img, counts["candidates"])
    assert counts["mask_logits"] == [counts["kept"], 3, 28, 28]
    assert counts["ground_truths"] == len(batch.targets[0]["boxes"])


def test_sampled_rois_follow_the_assigner_and_sampler(model_and_batch):
    model, batch, cfg = model_and_batch
    trained_on = inspect_two_stage(model.train(), batch, stage="train", seed=3)
    assert model.training  # the mode is given back
    assert trained_on.proposal_cfg["nms_pre"] == cfg.model.train_cfg.rpn_proposal.nms_pre
    sampler, assigner = cfg.model.train_cfg.rcnn.sampler, cfg.model.train_cfg.rcnn.assigner
    assert len(trained_on.positives) + len(trained_on.negatives) == sampler.num
    assert len(trained_on.positives) <= sampler.num * sampler.pos_fraction
    gt = trained_on.gt_boxes
    assert box_iou(trained_on.positives, gt).max(1).values.min() >= assigner.pos_iou_thr
    assert box_iou(trained_on.negatives, gt).max(1).values.max() < assigner.neg_iou_thr
    assert torch.equal(trained_on.positive_labels.unique(), trained_on.gt_labels.unique())
    again = inspect_two_stage(model, batch, stage="train", seed=3)
    assert torch.equal(again.negatives, trained_on.negatives)  # the seed fixes the draw


def test_input_image_is_the_file(model_and_batch, seen):
    _, batch, _ = model_and_batch
    original = read_rgb(batch.metas[0]["filename"])
    assert seen.image.shape == original.shape  # 64-pixel images: resized by 1, no padding
    assert np.abs(seen.image.astype(int) - original.astype(int)).max() <= 1
    bgr = dict(batch.metas[0], img_norm_cfg=dict(batch.metas[0]["img_norm_cfg"], to_rgb=False))
    assert np.array_equal(input_image(batch.images[0], bgr), seen.image[..., ::-1])


def test_drawings(seen):
    h, w = seen.image.shape[:2]
    assert draw_proposals(seen, top=5).shape == (h, w, 3)
    assert draw_proposals(seen, top=None, scale=2).shape == (2 * h, 2 * w, 3)
    sampled = draw_sampled_rois(dataclasses.replace(seen, positives=seen.gt_boxes + 2), scale=2)
    colors = {tuple(c) for c in sampled.reshape(-1, 3)}
    assert {POSITIVE, GROUND_TRUTH} <= colors
    assert NEGATIVE in colors or len(seen.negatives) == 0
    assert draw_kept(seen, scale=3).shape == (3 * h, 3 * w, 3)
    panels = mask_panels(seen, count=2, size=56)
    assert panels.ndim == 3 and panels.shape[1] >= 2 * 56
    assert mask_panels(seen, count=1).shape[1] >= 2 * w  # by default, the image's size
    with pytest.raises(ValueError, match="mask head"):
        mask_panels(dataclasses.replace(seen, mask_logits=None))


def test_errors_name_what_is_missing(model_and_batch):
    model, batch, _ = model_and_batch
    with pytest.raises(ValueError, match="model.rpn_head"):
        inspect_two_stage(types.SimpleNamespace(rpn_head=None, roi_head=model.roi_head), batch)
    with pytest.raises(ValueError, match="'test'"):
        inspect_two_stage(model, batch, stage="val")

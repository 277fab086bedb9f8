"""Look inside a two-stage detector (Faster / Mask R-CNN) on one image: what each stage passes on.

:func:`inspect_two_stage` runs the detector's own pieces on the first image of a batch and keeps
what comes out of each: the RPN's proposals (under ``test_cfg.rpn``, or
``train_cfg.rpn_proposal`` as in training), the RoIs the RoI head's assigner and sampler pick
among them for the losses (positives and negatives), the class-box candidates over the RoI head's
``score_thr`` and the detections its NMS keeps, and for a Mask R-CNN each kept detection's
``28 x 28`` mask logits and its mask pasted into the image. Everything is in the network input's
pixels, so it is drawn over :attr:`TwoStageInspection.image` (the input, un-normalized).

The drawing functions return ``H x W x 3`` uint8 RGB arrays (``PIL.Image.fromarray`` shows
them): :func:`draw_proposals`, :func:`draw_sampled_rois`, :func:`draw_kept` and
:func:`mask_panels`; :func:`stage_counts` is the numbers of each stage as one dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from detlab.structures import DetResult
from detlab.viz.draw import draw_boxes, draw_detections, image_grid

POSITIVE: tuple[int, int, int] = (40, 200, 60)     # sampled positive RoIs
NEGATIVE: tuple[int, int, int] = (230, 60, 50)     # sampled negative RoIs
GROUND_TRUTH: tuple[int, int, int] = (255, 255, 255)
PROPOSAL: tuple[int, int, int] = (255, 200, 0)


@dataclasses.dataclass
class TwoStageInspection:
    """What each stage of a two-stage detector made of one image (network-input pixels).

    Attributes:
        image: the input image, ``H x W x 3`` uint8 RGB (un-normalized, padding cut off).
        gt_boxes, gt_labels: the image's ground truth, ``(G, 4)`` and ``(G,)``.
        proposals: ``(N, 5)`` the RPN's proposals ``x1 y1 x2 y2 objectness``, best first.
        proposal_cfg: the settings they were made with (``nms_pre``, ``max_per_img`` ...).
        positives, negatives: ``(P, 4)`` and ``(Q, 4)`` the RoIs the sampler picked for the
            losses (positives include the ground truths when the sampler adds them as proposals).
        positive_labels: ``(P,)`` the classes of the positives' ground truths.
        candidates: the number of (RoI, class) pairs scoring over ``test_cfg.rcnn.score_thr``:
            what goes into the RoI head's NMS.
        detections: what the RoI head keeps (NMS, ``max_per_img``), with ``masks`` (``(K, H,
            W)`` bool, pasted at the input's size) for a mask head.
        mask_logits: ``(K, C, h, w)`` the mask head's logits of the kept detections (C is 1 for
            a class-agnostic head), or None without a mask head.
    """

    image: np.ndarray
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    proposals: torch.Tensor
    proposal_cfg: dict[str, Any]
    positives: torch.Tensor
    negatives: torch.Tensor
    positive_labels: torch.Tensor
    candidates: int
    detections: DetResult
    mask_logits: torch.Tensor | None


def input_image(images: torch.Tensor, meta: Mapping[str, Any]) -> np.ndarray:
    """The ``(3, H, W)`` normalized network input of one image back to ``H x W x 3`` uint8 RGB
    (``meta['img_norm_cfg']``'s mean and std undone, the padding beyond ``img_shape`` cut)."""
    norm = meta.get("img_norm_cfg") or {}
    mean = np.asarray(norm.get("mean", (0.0, 0.0, 0.0)), dtype=np.float32)
    std = np.asarray(norm.get("std", (1.0, 1.0, 1.0)), dtype=np.float32)
    h, w = meta.get("img_shape", images.shape[-2:])[:2]
    array = images.detach().cpu().float().numpy()[:, :h, :w].transpose(1, 2, 0)
    array = array * std + mean
    if not norm.get("to_rgb", True):  # the network saw BGR
        array = array[..., ::-1]
    return np.clip(array.round(), 0, 255).astype(np.uint8)


def _check_two_stage(model: Any) -> None:
    missing = [name for name in ("rpn_head", "roi_head") if getattr(model, name, None) is None]
    if missing:
        raise ValueError(f"inspect_two_stage needs a two-stage detector with an RPN "
                         f"(model.rpn_head and model.roi_head); {type(model).__name__} has no "
                         f"{' and no '.join(missing)}")
    if model.roi_head.train_cfg is None or model.roi_head.test_cfg is None:
        raise ValueError("inspect_two_stage needs the model's train_cfg.rcnn (assigner, sampler) "
                         "and test_cfg.rcnn (score_thr, nms, max_per_img): build the model "
                         "from a config that has both")


def _proposal_cfg(model: Any, stage: str) -> dict[str, Any]:
    if stage not in ("test", "train"):
        raise ValueError(f"stage must be 'test' (test_cfg.rpn) or 'train' "
                         f"(train_cfg.rpn_proposal), got {stage!r}")
    test_rpn = (model.test_cfg or {}).get("rpn")
    cfg = (model.train_cfg or {}).get("rpn_proposal", test_rpn) if stage == "train" else test_rpn
    return dict(cfg or {})


@torch.no_grad()
def inspect_two_stage(model: Any, batch: Any, stage: str = "test",
                      seed: int = 0) -> TwoStageInspection:
    """Run ``model`` (a Faster / Mask R-CNN) on the first image of ``batch`` stage by stage.

    Args:
        model: a two-stage detector with ``rpn_head`` and ``roi_head`` and both ``train_cfg``
            and ``test_cfg`` (its mode is kept; the inspection runs in eval mode).
        batch: a :class:`~detlab.structures.Batch` with targets (e.g. ``collate([dataset[i]])``
            of a training set).
        stage: which proposals: ``'test'`` (``test_cfg.rpn``, what prediction uses) or
            ``'train'`` (``train_cfg.rpn_proposal``, what the RoI head trains on).
        seed: seeds the sampler (it draws its RoIs at random).
    """
    from detlab.models.heads.base_dense_head import unpack_targets
    from detlab.models.roi_heads.roi_extractors import boxes_to_rois

    _check_two_stage(model)
    cfg = _proposal_cfg(model, stage)
    was_training = model.training
    model.eval()
    try:
        images, metas, targets = batch.images[:1], list(batch.metas[:1]), list(batch.targets[:1])
        feats = model.extract_feat(images)
        proposals = model.rpn_head.proposals(feats, metas, cfg)
        roi_head = model.roi_head
        head = roi_head.bbox_head
        gt = unpack_targets(targets, metas, 1, head.num_classes, images.device)[0]
        torch.manual_seed(seed)
        sampled = roi_head.assign_and_sample(proposals[0], gt, feats, 0)
        _, probs = roi_head.simple_test_bboxes(feats, metas, proposals, None)
        score_thr = roi_head.test_cfg.get("score_thr", 0.0)
        candidates = int((probs[0][:, :head.num_classes] > score_thr).sum()) if len(probs[0]) \
            else 0
        det, labels = roi_head.simple_test_bboxes(feats, metas, proposals, roi_head.test_cfg)
        det, labels = det[0], labels[0]
        image = input_image(images[0], metas[0])
        masks = logits = None
        if roi_head.with_mask:
            logits = roi_head._mask_forward(feats, boxes_to_rois([det[:, :4]]))["mask_pred"]
            masks = _paste(roi_head, logits, det[:, :4], labels, image.shape[:2])
    finally:
        model.train(was_training)
    return TwoStageInspection(
        image=image, gt_boxes=gt.boxes.cpu(), gt_labels=gt.labels.cpu(),
        proposals=proposals[0].cpu(), proposal_cfg=cfg, positives=sampled.pos_bboxes.cpu(),
        negatives=sampled.neg_bboxes.cpu(), positive_labels=sampled.pos_gt_labels.cpu(),
        candidates=candidates,
        detections=DetResult(boxes=det[:, :4].cpu(), scores=det[:, 4].cpu(), labels=labels.cpu(),
                             masks=None if masks is None else masks.cpu(),
                             class_names=getattr(model, "CLASSES", None)),
        mask_logits=None if logits is None else logits.cpu())


def _paste(roi_head: Any, logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
           size: Sequence[int]) -> torch.Tensor:
    """The detections' masks pasted at the input's ``(h, w)`` (input-pixel boxes, factor 1)."""
    if len(boxes) == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    return roi_head.mask_head.predict_masks(logits, boxes, labels, roi_head.test_cfg, size,
                                            1.0, rescale=True)


def stage_counts(inspection: TwoStageInspection) -> dict[str, Any]:
    """How many boxes each stage has: ``ground_truths``, ``proposals``, ``positives``,
    ``negatives``, ``candidates`` (into the RoI head's NMS), ``kept`` (after it), and
    ``mask_logits`` (the shape of the kept detections' mask logits, or None)."""
    logits = inspection.mask_logits
    return dict(ground_truths=len(inspection.gt_boxes), proposals=len(inspection.proposals),
                positives=len(inspection.positives), negatives=len(inspection.negatives),
                candidates=inspection.candidates, kept=len(inspection.detections),
                mask_logits=None if logits is None else list(logits.shape))


def draw_proposals(inspection: TwoStageInspection, top: int | None = 20,
                   scale: int = 1) -> np.ndarray:
    """The image with its ``top`` best proposals (all with None) as thin boxes and the ground
    truth as thick white ones, everything ``scale`` times larger."""
    proposals = inspection.proposals if top is None else inspection.proposals[:top]
    image = _enlarge(inspection.image, scale)
    image = draw_boxes(image, proposals[:, :4] * scale, colors=PROPOSAL, thickness=1)
    return draw_boxes(image, inspection.gt_boxes * scale, colors=GROUND_TRUTH, thickness=2)


def draw_sampled_rois(inspection: TwoStageInspection, scale: int = 1,
                      max_negatives: int | None = 30) -> np.ndarray:
    """The image with the sampled RoIs: negatives red (at most ``max_negatives`` of them,
    drawn first), positives green, the ground truth white; ``scale`` times larger."""
    negatives = inspection.negatives if max_negatives is None \
        else inspection.negatives[:max_negatives]
    image = _enlarge(inspection.image, scale)
    image = draw_boxes(image, negatives * scale, colors=NEGATIVE, thickness=1)
    image = draw_boxes(image, inspection.positives * scale, colors=POSITIVE, thickness=1)
    return draw_boxes(image, inspection.gt_boxes * scale, colors=GROUND_TRUTH, thickness=2)


def draw_kept(inspection: TwoStageInspection, scale: int = 1,
              class_names: Sequence[str] | None = None) -> np.ndarray:
    """The image with the detections the RoI head keeps (and their masks), ``scale`` times
    larger, captioned with class and score."""
    det = inspection.detections
    masks = det.masks
    if masks is not None and scale != 1:
        masks = masks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    scaled = dataclasses.replace(det, boxes=det.boxes * scale, masks=masks)
    return draw_detections(_enlarge(inspection.image, scale), scaled, class_names=class_names)


def mask_panels(inspection: TwoStageInspection, count: int = 4,
                size: int | None = None) -> np.ndarray:
    """For the ``count`` best kept detections, side by side: the mask head's ``28 x 28``
    probabilities of the detection's class (gray, ``size`` pixels square; default the image's
    longer side) and its mask pasted into the image (tinted, enlarged by a whole factor to about
    ``size``). Raises ValueError for a model without a mask head."""
    if inspection.mask_logits is None or inspection.detections.masks is None:
        raise ValueError("mask_panels needs a Mask R-CNN's inspection (no mask head here)")
    det = inspection.detections
    count = min(count, len(det))
    if count == 0:
        return image_grid([inspection.image], titles=["no detection kept"])
    size = size or max(inspection.image.shape[:2])
    panels, titles = [], []
    for i in range(count):
        logits = inspection.mask_logits[i]
        channel = 0 if logits.shape[0] == 1 else int(det.labels[i])
        probs = logits[channel].sigmoid().numpy()
        gray = (probs * 255).round().astype(np.uint8)
        gray = np.asarray(_resize(np.repeat(gray[..., None], 3, axis=2), size))
        pasted = draw_detections(inspection.image, det[i:i + 1], show_scores=False)
        panels += [gray, _enlarge(pasted, max(1, size // max(pasted.shape[:2])))]
        titles += [f"#{i} {tuple(logits.shape[-2:])}", f"#{i} pasted"]
    return image_grid(panels, ncols=2, titles=titles)


def _enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    return image if scale == 1 else image.repeat(scale, 0).repeat(scale, 1)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST)).copy()

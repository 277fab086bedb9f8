"""Post-processing of dense heads: the one function that turns one image's raw level maps into a
:class:`~detlab.structures.DetResult` (MMDetection 2.28's ``BaseDenseHead.get_bboxes``), and its
steps.

For each level: class probabilities (sigmoid, or softmax without the background column), the
(prior, class) pairs scoring above ``score_thr``, the best ``nms_pre`` of them, their boxes
decoded from the priors. Then, over all levels: boxes smaller than ``min_bbox_size`` dropped,
boxes mapped to the original image, score factors (centerness, objectness, IoU) multiplied in,
NMS (``nms`` or ``soft_nms``), the best ``max_per_img``.

Score factors enter as MMDetection applies them: *after* ``score_thr`` and the ``nms_pre`` top-k
(which look at the class probabilities alone), before NMS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from detlab.models.heads.nms import multiclass_nms
from detlab.structures import DetResult, flip_boxes

# meta keys a DetResult keeps
RESULT_META_KEYS = ("img_id", "filename", "ori_filename", "ori_shape")
DEFAULT_NMS = {"type": "nms", "iou_threshold": 0.5}

# decode(priors (k, P), bbox_preds (k, K), max_shape) -> boxes (k, 4) xyxy
Decoder = Callable[[torch.Tensor, torch.Tensor, Sequence[int] | None], torch.Tensor]


def levels_to_rows(maps: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Per level ``(B, A_l * channels, H_l, W_l)`` -> ``(B, sum_l H_l * W_l * A_l, channels)``,
    rows in anchor order (location-major, then anchor)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels) for m in maps],
                     dim=1)


def map_to_rows(level_map: torch.Tensor, num_priors: int) -> torch.Tensor:
    """One image's ``(A * K, H, W)`` map -> ``(H * W * A, K)`` rows, one per prior."""
    return level_map.permute(1, 2, 0).reshape(num_priors, -1)


def class_probabilities(logits: torch.Tensor, use_sigmoid: bool) -> torch.Tensor:
    """``(..., C)`` sigmoid scores, or ``(..., C + 1)`` -> ``(..., C)`` softmax without the
    background (last) column."""
    return logits.sigmoid() if use_sigmoid else logits.softmax(-1)[..., :-1]


def filter_scores_and_topk(scores: torch.Tensor, score_thr: float, topk: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, C)`` scores -> the (prior, class) pairs scoring above ``score_thr``, best first:
    scores ``(k,)``, labels ``(k,)``, prior indices ``(k,)``.

    ``topk`` slices the sorted pairs as MMDetection does (``[:min(topk, k)]``), so a negative
    ``topk`` drops that many of the worst (-1, MMDetection's default when ``nms_pre`` is unset,
    drops one pair per level).
    """
    valid = scores > score_thr
    kept = scores[valid]
    pairs = torch.nonzero(valid)  # (k, 2): prior, class
    kept, order = kept.sort(descending=True)
    num = min(int(topk), len(pairs))
    pairs = pairs[order[:num]]
    return kept[:num], pairs[:, 1], pairs[:, 0]


def _factor(scale_factor: object, like: torch.Tensor) -> torch.Tensor:
    factor = np.asarray(scale_factor if scale_factor is not None else 1.0,
                        dtype=np.float32).reshape(-1)
    if factor.size == 1:
        factor = np.repeat(factor, 4)
    elif factor.size == 2:
        factor = np.tile(factor, 2)
    return torch.as_tensor(factor, dtype=like.dtype, device=like.device)


def boxes_to_original(boxes: torch.Tensor, meta: Mapping) -> torch.Tensor:
    """``(n, 4)`` xyxy boxes in input pixels -> original-image pixels: undo the flip (inside
    ``img_shape``) recorded in ``meta``, then divide by ``meta['scale_factor']``."""
    if meta.get("flip"):
        boxes = flip_boxes(boxes, meta["img_shape"], meta.get("flip_direction") or "horizontal")
    return boxes / _factor(meta.get("scale_factor"), boxes)


def result_meta(meta: Mapping) -> dict:
    """The facts about an image that a DetResult keeps (``img_id``, ``filename`` ...)."""
    return {key: meta[key] for key in RESULT_META_KEYS if key in meta}


def candidates_per_level(cls_score: torch.Tensor, bbox_pred: torch.Tensor, priors: torch.Tensor,
                         score_factor: torch.Tensor | None, img_shape: Sequence[int],
                         cfg: Mapping, decode: Decoder, use_sigmoid: bool
                         ) -> tuple[torch.Tensor, ...]:
    """One level of one image: ``(A*C, H, W)`` logits, ``(A*K, H, W)`` box outputs, ``(H*W*A,
    P)`` priors and an optional ``(A, H, W)`` score-factor logit map -> boxes ``(k, 4)`` xyxy
    (input pixels, clipped to ``img_shape``), scores ``(k,)``, labels ``(k,)`` and factors
    ``(k,)`` (sigmoid; None without a factor map) of the best ``nms_pre`` pairs."""
    num = priors.shape[0]
    scores = class_probabilities(map_to_rows(cls_score.float(), num), use_sigmoid)
    scores, labels, keep = filter_scores_and_topk(scores, cfg.get("score_thr", 0.0),
                                                  cfg.get("nms_pre", -1))
    preds = map_to_rows(bbox_pred.float(), num)[keep]
    boxes = decode(priors[keep], preds, img_shape)
    factors = None
    if score_factor is not None:
        # the sigmoid of the whole map, then the kept rows: a vectorized sigmoid may round a
        # value differently at another place of the array, and MMDetection takes them this way
        factors = map_to_rows(score_factor.float(), num).reshape(-1).sigmoid()[keep]
    return boxes, scores, labels, factors


def drop_small_boxes(boxes: torch.Tensor, *columns: torch.Tensor | None,
                     min_size: float) -> tuple[torch.Tensor | None, ...]:
    """Keep boxes wider and taller than ``min_size`` (all of them when ``min_size <= 0``) and the
    same rows of each of ``columns``."""
    if min_size <= 0:
        return (boxes, *columns)
    wh = boxes[:, 2:] - boxes[:, :2]
    big = (wh[:, 0] > min_size) & (wh[:, 1] > min_size)
    return (boxes[big], *(None if c is None else c[big] for c in columns))


def dense_postprocess(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                      priors: Sequence[torch.Tensor], meta: Mapping, cfg: Mapping, *,
                      decode: Decoder, use_sigmoid: bool = True,
                      score_factors: Sequence[torch.Tensor] | None = None,
                      rescale: bool = True) -> DetResult:
    """The detections of one image from a dense head's raw maps.

    Args:
        cls_scores: per level ``(A*C, H, W)`` class logits (``C + 1`` columns with softmax).
        bbox_preds: per level ``(A*K, H, W)`` box outputs (deltas, distances ...).
        priors: per level ``(H*W*A, P)`` priors: xyxy anchors or points.
        meta: the image's meta (``img_shape``, ``scale_factor``, ``flip`` ...).
        cfg: ``test_cfg``: ``score_thr``, ``nms_pre``, ``min_bbox_size`` (input pixels; 0 keeps
            all, as MMDetection 2.28's dense heads do), ``nms``, ``max_per_img``.
        decode: the head's ``decode(priors, bbox_preds, max_shape)`` -> xyxy boxes.
        use_sigmoid: sigmoid class scores, else softmax with background last.
        score_factors: per level ``(A, H, W)`` logits of a factor multiplied into the scores
            after the top-k (FCOS's centerness, ATSS's IoU ...), or None.
        rescale: boxes in original-image pixels (un-flipped, divided by ``scale_factor``)
            before NMS, as MMDetection rescales; else in input pixels.
    """
    factors = [None] * len(cls_scores) if score_factors is None else score_factors
    found = [candidates_per_level(c, b, p, f, meta["img_shape"], cfg, decode, use_sigmoid)
             for c, b, p, f in zip(cls_scores, bbox_preds, priors, factors, strict=True)]
    boxes, scores, labels = (torch.cat([level[k] for level in found]) for k in range(3))
    factor = None if score_factors is None else torch.cat([level[3] for level in found])
    boxes, scores, labels, factor = drop_small_boxes(boxes, scores, labels, factor,
                                                     min_size=cfg.get("min_bbox_size", 0))
    if rescale:
        boxes = boxes_to_original(boxes, meta)
    if factor is not None:
        scores = scores * factor
    keep, scores = multiclass_nms(boxes, scores, labels, cfg.get("nms", DEFAULT_NMS),
                                  cfg.get("max_per_img"))
    return DetResult(boxes[keep], scores, labels[keep], meta=result_meta(meta))

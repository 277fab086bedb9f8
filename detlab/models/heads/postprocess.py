"""Helpers of dense-head post-processing: flattening level maps, picking candidates, and mapping
boxes back to the original image."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from detlab.structures import flip_boxes

# meta keys a DetResult keeps
RESULT_META_KEYS = ("img_id", "filename", "ori_filename", "ori_shape")


def levels_to_rows(maps: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """Per level ``(B, A_l * channels, H_l, W_l)`` -> ``(B, sum_l H_l * W_l * A_l, channels)``,
    rows in anchor order (location-major, then anchor)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, channels) for m in maps],
                     dim=1)


def filter_scores_and_topk(scores: torch.Tensor, score_thr: float, topk: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(N, C)`` scores -> the (anchor, class) pairs scoring above ``score_thr``, best first,
    at most ``topk`` of them (all when ``topk <= 0``): scores ``(k,)``, labels ``(k,)``,
    anchor indices ``(k,)``."""
    valid = scores > score_thr
    kept = scores[valid]
    pairs = torch.nonzero(valid)  # (k, 2): anchor, class
    if 0 < topk < kept.numel():
        kept, order = kept.topk(topk)
    else:
        kept, order = kept.sort(descending=True)
    pairs = pairs[order]
    return kept, pairs[:, 1], pairs[:, 0]


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

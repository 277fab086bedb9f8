"""Non-maximum suppression as a ``test_cfg.nms`` dict asks for it (mmcv 1.x's ``batched_nms``).

- ``dict(type='nms', iou_threshold=0.5)``: greedy NMS per class, through
  :func:`torchvision.ops.batched_nms` (``class_agnostic=True``: one NMS over every class).
- ``dict(type='soft_nms', iou_threshold=0.3, sigma=0.5, min_score=1e-3, method='linear')``:
  soft-NMS (Bodla et al., 2017) with mmcv's CPU kernel's results. torchvision has no soft-NMS, so
  :func:`soft_nms_rows` runs mmcv's algorithm on rows of boxes at once: each step takes the best
  box of every row, decays the rest of its row (``linear``: ``s *= 1 - iou`` where ``iou >=
  iou_threshold``; ``gaussian``: ``s *= exp(-iou**2 / sigma)``; ``naive``: ``s = 0`` where ``iou
  >= iou_threshold``) and drops boxes whose score fell under ``min_score``. Ties go where mmcv's
  kernel sends them: it keeps its boxes in an array, swaps the best box to the front and fills
  the slot of a dropped box with the last box, and takes the first of equal scores; the rows
  here keep the same order.

Classes are kept apart as mmcv does: with fewer than ``split_thr`` boxes, one soft-NMS over all
boxes shifted by ``class * (max coordinate + 1)`` (so that the IoUs, rounding included, are
mmcv's); with more, one row per class, the rows run side by side and merged by score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.ops import batched_nms, nms

from detlab.config import ConfigError, did_you_mean

NMS_TYPES = ("nms", "soft_nms")
# split_thr: mmcv runs NMS class by class above it; torchvision's batched_nms picks its own way
NMS_KEYS = {"nms": ("type", "iou_threshold", "class_agnostic", "split_thr"),
            "soft_nms": ("type", "iou_threshold", "class_agnostic", "split_thr", "sigma",
                         "min_score", "method")}
SOFT_NMS_METHODS = ("naive", "linear", "gaussian")
SPLIT_THR = 10000  # mmcv's default


def check_nms_cfg(cfg: Any, where: str = "model.test_cfg.nms") -> dict[str, Any]:
    """``cfg`` as a plain dict, after checking its type and keys (did-you-mean in errors)."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a dict such as dict(type='nms', iou_threshold=0.5), "
                          f"got {cfg!r}")
    kind = cfg.get("type", "nms")
    if kind not in NMS_TYPES:
        raise ConfigError(f"{where}.type {kind!r} is not supported."
                          f"{did_you_mean(str(kind), NMS_TYPES)} Supported: "
                          f"{', '.join(NMS_TYPES)}.")
    for key in cfg:
        if key not in NMS_KEYS[kind]:
            raise ConfigError(f"{where} has no key {key!r} for type {kind!r}."
                              f"{did_you_mean(key, NMS_KEYS[kind])} It accepts: "
                              f"{', '.join(NMS_KEYS[kind])}.")
    if kind == "nms" and "iou_threshold" not in cfg:
        raise ConfigError(f"{where} needs iou_threshold, e.g. dict(type='nms', "
                          f"iou_threshold=0.5)")
    if kind == "soft_nms" and cfg.get("method", "linear") not in SOFT_NMS_METHODS:
        raise ConfigError(f"{where}.method must be one of {', '.join(SOFT_NMS_METHODS)}, got "
                          f"{cfg['method']!r}")
    return dict(cfg)


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                   nms_cfg: Mapping[str, Any], max_num: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS of ``(n, 4)`` xyxy boxes with scores ``(n,)`` and class labels ``(n,)`` as
    ``nms_cfg`` says -> indices of the kept boxes, best first, and their scores (decayed by
    soft-NMS). ``max_num`` slices the result as MMDetection's ``[:max_per_img]`` does (None:
    keep all)."""
    cfg = dict(nms_cfg)
    kind, agnostic = cfg.pop("type", "nms"), cfg.pop("class_agnostic", False)
    split_thr = cfg.pop("split_thr", SPLIT_THR)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores[:0]
    if kind == "nms":
        threshold = float(cfg["iou_threshold"])
        keep = nms(boxes, scores, threshold) if agnostic \
            else batched_nms(boxes, scores, labels, threshold)
        keep = keep if max_num is None else keep[:max_num]
        return keep, scores[keep]
    keep, kept_scores = batched_soft_nms(boxes, scores, labels, class_agnostic=agnostic,
                                         split_thr=split_thr, max_num=max_num, **cfg)
    if max_num is not None:
        keep, kept_scores = keep[:max_num], kept_scores[:max_num]
    return keep, kept_scores


def offset_by_class(boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Shift ``(n, 4)`` boxes by ``label * (max coordinate + 1)`` so that classes never overlap
    (mmcv's and torchvision's trick, in the same float32 arithmetic)."""
    max_coordinate = boxes.max()
    offsets = labels.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return boxes + offsets[:, None]


def batched_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *,
                     iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 1e-3,
                     method: str = "linear", class_agnostic: bool = False,
                     split_thr: int = SPLIT_THR, max_num: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS of ``(n, 4)`` xyxy boxes, class by class (mmcv's ``batched_nms`` with
    ``type='soft_nms'``) -> indices of the kept boxes, best first, and their decayed scores.

    ``max_num`` (the caller's ``max_per_img``) stops each row after that many boxes: soft-NMS
    picks boxes in falling score order, so the rest could not be among the first ``max_num``.
    """
    params = _soft_params(iou_threshold, sigma, min_score, method, scores)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores[:0]
    boxes_for_nms = boxes if class_agnostic else offset_by_class(boxes, labels)
    if boxes.shape[0] < split_thr:
        order, kept, num = soft_nms_rows(boxes_for_nms[None], scores[None],
                                         torch.tensor([len(boxes)], device=boxes.device),
                                         *params, max_num=max_num)
        return order[0, :num[0]], kept[0, :num[0]]
    return _soft_nms_per_class(boxes_for_nms, scores, labels, params, max_num)


def _soft_params(iou_threshold: float, sigma: float, min_score: float, method: str,
                 like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """The thresholds as float32 scalars: mmcv's kernel takes them as C floats."""
    if method not in SOFT_NMS_METHODS:
        raise ConfigError(f"soft_nms method must be one of {', '.join(SOFT_NMS_METHODS)}, got "
                          f"{method!r}")

    def as_float(value: float) -> torch.Tensor:
        return torch.tensor(float(value), dtype=torch.float32, device=like.device)

    return as_float(iou_threshold), as_float(sigma), as_float(min_score), method


def _soft_nms_per_class(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                        params: tuple, max_num: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per class (boxes in index order within a row), merged by falling score."""
    order = torch.argsort(labels, stable=True)  # (n,): class by class, index order inside
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    rows, width = len(counts), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(len(order), device=boxes.device) - torch.repeat_interleave(starts, counts)
    row = torch.repeat_interleave(torch.arange(rows, device=boxes.device), counts)
    index = torch.zeros((rows, width), dtype=torch.long, device=boxes.device)
    index[row, col] = order  # (R, M): the box at each slot of each row
    row_boxes = boxes[index].masked_fill(~_slots(counts, width)[..., None], 0)
    row_scores = scores[index]
    picked, kept, num = soft_nms_rows(row_boxes, row_scores, counts, *params, max_num=max_num)
    done = _slots(num, picked.shape[1])  # (R, K) the slots that hold a kept box
    keep = index.gather(1, picked)[done]
    kept = kept[done]
    # mmcv sorts the kept boxes, in index order, by their decayed scores
    by_index = torch.argsort(keep)
    keep, kept = keep[by_index], kept[by_index]
    by_score = torch.sort(kept, descending=True, stable=True).indices
    return keep[by_score], kept[by_score]


def _slots(counts: torch.Tensor, width: int) -> torch.Tensor:
    """``(R, width)`` bool: slot ``j`` of row ``r`` is below ``counts[r]``."""
    return torch.arange(width, device=counts.device)[None] < counts[:, None]


def soft_nms_rows(boxes: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor,
                  iou_threshold: torch.Tensor, sigma: torch.Tensor, min_score: torch.Tensor,
                  method: str, max_num: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmcv's soft-NMS kernel on ``R`` independent rows at once.

    Args:
        boxes: ``(R, M, 4)`` xyxy; row ``r`` holds ``counts[r]`` boxes in its first slots.
        scores: ``(R, M)``.
        counts: ``(R,)`` int64.
        iou_threshold, sigma, min_score: float32 scalars; method: ``naive|linear|gaussian``.
        max_num: stop after this many boxes per row (None or <= 0: run to the end).

    Returns:
        ``(R, K)`` slot of each kept box in pick order, ``(R, K)`` its score when picked, and
        ``(R,)`` how many of the ``K`` are real in each row.
    """
    rows, width = scores.shape
    steps = width if max_num is None or max_num <= 0 else min(width, max_num)
    slot = torch.arange(width, device=scores.device).expand(rows, width)
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    state = [boxes, areas, scores.clone(), slot.clone()]  # kept in the kernel's array order
    count, picks = counts.clone(), []
    for i in range(steps):
        active = count > i
        if not bool(active.any()):
            break
        state = _permute(state, _bring_best_to(i, state[2], count, active, slot))
        picks.append((state[3][:, i], state[2][:, i]))
        state[2] = _decay(i, state, count, iou_threshold, sigma, method, slot)
        perm, count = _drop_low(i, state[2], count, active, min_score, slot)
        state = _permute(state, perm)
    if not picks:
        empty = scores.new_zeros((rows, 0))
        return empty.long(), empty, torch.zeros_like(counts)
    order = torch.stack([p[0] for p in picks], dim=1)
    picked = torch.stack([p[1] for p in picks], dim=1)
    return order, picked, torch.minimum(count, torch.full_like(count, len(picks)))


def _permute(state: list[torch.Tensor], perm: torch.Tensor) -> list[torch.Tensor]:
    """Reorder every ``(R, M, ...)`` array of ``state`` along its slots by ``perm`` ``(R, M)``."""
    out = []
    for array in state:
        index = perm if array.dim() == 2 else perm[..., None].expand_as(array)
        out.append(array.gather(1, index))
    return out


def _bring_best_to(i: int, scores: torch.Tensor, count: torch.Tensor, active: torch.Tensor,
                   slot: torch.Tensor) -> torch.Tensor:
    """The permutation swapping slot ``i`` with the first best-scoring slot in ``[i, count)``.

    As the kernel's running maximum (``if (max < s) max = s``) starting at slot ``i``: a NaN
    score never wins, unless it is slot ``i``'s."""
    live = (slot >= i) & (slot < count[:, None]) & ~scores.isnan()
    best = torch.where(live, scores, torch.full_like(scores, -torch.inf)).argmax(dim=1)
    stay = ~active | scores[:, i].isnan()  # finished rows, and a NaN at slot i, stay put
    best = torch.where(stay, torch.full_like(best, i), best)
    perm = slot.clone()
    perm[:, i] = best
    perm.scatter_(1, best[:, None], torch.full_like(best[:, None], i))
    return perm


def _decay(i: int, state: list[torch.Tensor], count: torch.Tensor, iou_threshold: torch.Tensor,
           sigma: torch.Tensor, method: str, slot: torch.Tensor) -> torch.Tensor:
    """Scores of slots ``(i, count)`` times the weight of their IoU with slot ``i``'s box, in
    the kernel's float32 arithmetic."""
    boxes, areas, scores = state[:3]
    top, top_area = boxes[:, i, None], areas[:, i, None]  # (R, 1, 4), (R, 1)
    lt = torch.maximum(top[..., :2], boxes[..., :2])
    rb = torch.minimum(top[..., 2:], boxes[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    iou = inter / (top_area + areas - inter)
    if method == "linear":
        weight = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
    elif method == "gaussian":
        # std::exp of a float: computed in double and rounded, as a correctly rounded expf
        weight = torch.exp((-(iou * iou) / sigma).double()).float()
    else:
        weight = torch.where(iou >= iou_threshold, torch.zeros_like(iou), torch.ones_like(iou))
    rest = (slot > i) & (slot < count[:, None])
    return torch.where(rest, scores * weight, scores)


def _drop_low(i: int, scores: torch.Tensor, count: torch.Tensor, active: torch.Tensor,
              min_score: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop slots of ``(i, count)`` scoring under ``min_score`` the kernel's way: its scan
    fills the k-th emptied slot below the new count with the k-th kept box counted from the
    end. Returns the permutation and the new counts."""
    rest = (slot > i) & (slot < count[:, None])
    dropped = rest & (scores < min_score)
    kept = rest & ~dropped
    new_count = torch.where(active, i + 1 + kept.sum(dim=1), count)
    hole = dropped & (slot < new_count[:, None])
    filler = kept & (slot >= new_count[:, None])
    hole_rank = hole.long().cumsum(dim=1) - 1
    filler_rank = filler.long().flip(1).cumsum(dim=1).flip(1) - 1
    width = slot.shape[1]
    source = torch.zeros((slot.shape[0], width + 1), dtype=torch.long, device=slot.device)
    source.scatter_(1, torch.where(filler, filler_rank, width), slot)  # rank -> filler slot
    perm = torch.where(hole, source.gather(1, hole_rank.clamp(min=0)), slot)
    return perm, new_count

"""Box coders: boxes <-> regression targets relative to priors (anchors or points), as
MMDetection 2.x encodes them.

Every coder has ``encode(priors, gt_bboxes, ...) -> targets`` and ``decode(priors, preds, ...)
-> (..., 4) xyxy boxes``; boxes are xyxy in input-image pixels. ``max_shape`` -- ``(h, w, ...)``,
or one such shape per image for batched ``(B, N, 4)`` decoding -- clips decoded boxes to the
image where the coder clips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from detlab.config import ConfigError
from detlab.registry import MODELS

MaxShape = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor


def clip_to_shape(boxes: torch.Tensor, max_shape: MaxShape) -> torch.Tensor:
    """``boxes`` ``(..., 4k)`` xyxy clipped to ``[0, w] x [0, h]``; ``max_shape`` is ``(h, w,
    ...)``, or ``(B, 2+)`` shapes for ``(B, N, 4k)`` boxes (one per image)."""
    shape = max_shape if isinstance(max_shape, torch.Tensor) else torch.as_tensor(max_shape)
    shape = shape[..., :2].to(device=boxes.device, dtype=boxes.dtype)  # (h, w) or (B, 2)
    if shape.ndim == 2 and (boxes.ndim != 3 or shape.shape[0] != boxes.shape[0]):
        raise ValueError(f"one max_shape per image needs (B, N, 4) boxes with B = "
                         f"{shape.shape[0]}, got boxes of shape {tuple(boxes.shape)}")
    max_xy = torch.cat([shape.flip(-1)] * (boxes.shape[-1] // 2), dim=-1).unsqueeze(-2)
    # where(), not clamp(): bounds per image, with MMDetection's treatment of NaN
    boxes = torch.where(boxes < 0, boxes.new_tensor(0), boxes)
    return torch.where(boxes > max_xy, max_xy, boxes)


def _check_last_dim(name: str, priors: torch.Tensor, preds: torch.Tensor) -> None:
    if priors.shape[-1] != 4 or preds.shape[-1] % 4 != 0 or preds.shape[-1] == 0:
        raise ValueError(f"{name}.decode needs (..., 4) xyxy priors and (..., 4k) predictions, "
                         f"got {tuple(priors.shape)} and {tuple(preds.shape)}")


def _means_stds(name: str, means: Sequence[float], stds: Sequence[float]) -> tuple[tuple, tuple]:
    if len(means) != 4 or len(stds) != 4:
        raise ConfigError(f"{name} target_means and target_stds need 4 values each, got "
                          f"{list(means)} and {list(stds)}")
    return tuple(float(m) for m in means), tuple(float(v) for v in stds)


@MODELS.register_module()
class DeltaXYWHBBoxCoder:
    """The R-CNN box parameterization (MMDetection 2.x's ``DeltaXYWHBBoxCoder``).

    ``encode`` maps an xyxy box and its prior to ``(dx, dy, dw, dh)`` --
    ``dx = (gx - px) / pw``, ``dw = log(gw / pw)`` -- normalized by ``target_means`` /
    ``target_stds``; ``decode`` inverts it.

    Args:
        target_means, target_stds: normalization of the deltas.
        clip_border: clip decoded boxes to ``max_shape`` when it is given.
        add_ctr_clamp: clamp the center shift to ``ctr_clamp`` pixels (and ``dw``, ``dh`` from
            above only), as YOLOF does.
        ctr_clamp: the center-shift bound in pixels.
    """

    def __init__(self, target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                 target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clip_border: bool = True,
                 add_ctr_clamp: bool = False, ctr_clamp: int = 32) -> None:
        self.means, self.stds = _means_stds("DeltaXYWHBBoxCoder", target_means, target_stds)
        self.clip_border, self.add_ctr_clamp, self.ctr_clamp = clip_border, add_ctr_clamp, \
            ctr_clamp

    def encode(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor) -> torch.Tensor:
        """``(..., 4)`` xyxy priors and ``(..., 4)`` xyxy targets -> ``(..., 4)`` deltas."""
        if bboxes.shape != gt_bboxes.shape or bboxes.shape[-1] != 4:
            raise ValueError(f"encode needs priors and targets of the same (..., 4) shape, got "
                             f"{tuple(bboxes.shape)} and {tuple(gt_bboxes.shape)}")
        bboxes, gt_bboxes = bboxes.float(), gt_bboxes.float()
        pxy = (bboxes[..., :2] + bboxes[..., 2:]) * 0.5
        pwh = bboxes[..., 2:] - bboxes[..., :2]
        gxy = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) * 0.5
        gwh = gt_bboxes[..., 2:] - gt_bboxes[..., :2]
        deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=-1)
        means, stds = deltas.new_tensor(self.means), deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, bboxes: torch.Tensor, pred_bboxes: torch.Tensor,
               max_shape: MaxShape | None = None,
               wh_ratio_clip: float = 16 / 1000) -> torch.Tensor:
        """``(..., 4)`` xyxy priors and ``(..., 4)`` deltas (broadcast against each other) ->
        ``(..., 4)`` xyxy boxes, clipped to ``max_shape`` with ``clip_border``.

        ``(..., 4k)`` deltas (one box per class, as R-CNN's bbox head predicts) give
        ``(..., 4k)`` boxes. ``dw``, ``dh`` are clamped to ``|log(wh_ratio_clip)|`` so that
        ``exp`` cannot overflow.
        """
        _check_last_dim("DeltaXYWHBBoxCoder", bboxes, pred_bboxes)
        if pred_bboxes.numel() == 0:
            return pred_bboxes.clone()
        out_shape = torch.broadcast_shapes(bboxes.shape[:-1], pred_bboxes.shape[:-1]) \
            + (pred_bboxes.shape[-1],)
        deltas = pred_bboxes.reshape(*pred_bboxes.shape[:-1], -1, 4)  # (..., k, 4)
        bboxes = bboxes[..., None, :]
        deltas = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        pxy = (bboxes[..., :2] + bboxes[..., 2:]) * 0.5
        pwh = bboxes[..., 2:] - bboxes[..., :2]
        dxy_wh = pwh * deltas[..., :2]
        max_ratio = abs(math.log(wh_ratio_clip))
        if self.add_ctr_clamp:
            dxy_wh = dxy_wh.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dwh = deltas[..., 2:].clamp(max=max_ratio)
        else:
            dwh = deltas[..., 2:].clamp(min=-max_ratio, max=max_ratio)
        gxy = pxy + dxy_wh
        gwh = pwh * dwh.exp()
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1).reshape(out_shape)
        if self.clip_border and max_shape is not None:
            boxes = clip_to_shape(boxes, max_shape)
        return boxes

    def __repr__(self) -> str:
        return (f"DeltaXYWHBBoxCoder(target_means={self.means}, target_stds={self.stds}, "
                f"clip_border={self.clip_border}, add_ctr_clamp={self.add_ctr_clamp}, "
                f"ctr_clamp={self.ctr_clamp})")


@MODELS.register_module()
class LegacyDeltaXYWHBBoxCoder:
    """:class:`DeltaXYWHBBoxCoder` in MMDetection 1.x's pixel convention (widths ``x2 - x1 +
    1``), for checkpoints trained with it.

    As in MMDetection 2.x, ``decode`` places the corners at ``center -+ w / 2`` with that ``+ 1``
    width, so ``decode(encode(box))`` is ``box`` grown by half a pixel on every side; decoded
    boxes are clipped to ``[0, w - 1] x [0, h - 1]`` when ``max_shape`` is given.

    Args:
        target_means, target_stds: normalization of the deltas.
    """

    def __init__(self, target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                 target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> None:
        self.means, self.stds = _means_stds("LegacyDeltaXYWHBBoxCoder", target_means,
                                            target_stds)

    def encode(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor) -> torch.Tensor:
        """``(..., 4)`` xyxy priors and ``(..., 4)`` xyxy targets -> ``(..., 4)`` deltas."""
        if bboxes.shape != gt_bboxes.shape or bboxes.shape[-1] != 4:
            raise ValueError(f"encode needs priors and targets of the same (..., 4) shape, got "
                             f"{tuple(bboxes.shape)} and {tuple(gt_bboxes.shape)}")
        bboxes, gt_bboxes = bboxes.float(), gt_bboxes.float()
        pxy = (bboxes[..., :2] + bboxes[..., 2:]) * 0.5
        pwh = bboxes[..., 2:] - bboxes[..., :2] + 1.0
        gxy = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) * 0.5
        gwh = gt_bboxes[..., 2:] - gt_bboxes[..., :2] + 1.0
        deltas = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=-1)
        return (deltas - deltas.new_tensor(self.means)) / deltas.new_tensor(self.stds)

    def decode(self, bboxes: torch.Tensor, pred_bboxes: torch.Tensor,
               max_shape: Sequence[int] | None = None,
               wh_ratio_clip: float = 16 / 1000) -> torch.Tensor:
        """``(..., 4)`` xyxy priors and ``(..., 4k)`` deltas -> ``(..., 4k)`` xyxy boxes,
        clipped to ``[0, w - 1] x [0, h - 1]`` of ``max_shape`` ``(h, w, ...)`` if given."""
        _check_last_dim("LegacyDeltaXYWHBBoxCoder", bboxes, pred_bboxes)
        out_shape = torch.broadcast_shapes(bboxes.shape[:-1], pred_bboxes.shape[:-1]) \
            + (pred_bboxes.shape[-1],)
        deltas = pred_bboxes.reshape(*pred_bboxes.shape[:-1], -1, 4)  # (..., k, 4)
        bboxes = bboxes[..., None, :]
        deltas = deltas * deltas.new_tensor(self.stds) + deltas.new_tensor(self.means)
        max_ratio = abs(math.log(wh_ratio_clip))
        dwh = deltas[..., 2:].clamp(min=-max_ratio, max=max_ratio)
        pxy = (bboxes[..., :2] + bboxes[..., 2:]) * 0.5
        pwh = bboxes[..., 2:] - bboxes[..., :2] + 1.0
        gwh = pwh * dwh.exp()
        gxy = pxy + pwh * deltas[..., :2]
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if max_shape is not None:
            w, h = max_shape[1] - 1, max_shape[0] - 1
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
        return boxes.reshape(out_shape)

    def __repr__(self) -> str:
        return f"LegacyDeltaXYWHBBoxCoder(target_means={self.means}, target_stds={self.stds})"


def _normalizer(value: float | Sequence[float]) -> float | tuple[float, ...]:
    if isinstance(value, (int, float)):
        return float(value)
    if len(value) != 4:
        raise ConfigError(f"TBLRBBoxCoder normalizer must be a number or 4 numbers (top, bottom, "
                          f"left, right), got {value!r}")
    return tuple(float(v) for v in value)


@MODELS.register_module()
class TBLRBBoxCoder:
    """FSAF's coder: a box as its distances (top, bottom, left, right) from the prior's center,
    divided by the prior's height (top, bottom) or width (left, right), then by ``normalizer``.

    Args:
        normalizer: one number, or 4 (top, bottom, left, right).
        clip_border: clip decoded boxes to ``max_shape`` when it is given.
    """

    def __init__(self, normalizer: float | Sequence[float] = 4.0,
                 clip_border: bool = True) -> None:
        self.normalizer, self.clip_border = _normalizer(normalizer), clip_border

    def _norm(self, like: torch.Tensor) -> float | torch.Tensor:
        return self.normalizer if isinstance(self.normalizer, float) \
            else like.new_tensor(self.normalizer)

    def encode(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` xyxy priors and ``(N, 4)`` xyxy targets -> ``(N, 4)`` (t, b, l, r)."""
        if bboxes.shape != gt_bboxes.shape or bboxes.ndim != 2 or bboxes.shape[-1] != 4:
            raise ValueError(f"TBLRBBoxCoder.encode needs (N, 4) priors and targets, got "
                             f"{tuple(bboxes.shape)} and {tuple(gt_bboxes.shape)}")
        cx = (bboxes[:, 0:1] + bboxes[:, 2:3]) / 2  # (N, 1)
        cy = (bboxes[:, 1:2] + bboxes[:, 3:4]) / 2
        loc = torch.cat([cy - gt_bboxes[:, 1:2], gt_bboxes[:, 3:4] - cy,
                         cx - gt_bboxes[:, 0:1], gt_bboxes[:, 2:3] - cx], dim=1)
        h = bboxes[:, 3:4] - bboxes[:, 1:2]
        w = bboxes[:, 2:3] - bboxes[:, 0:1]
        loc = torch.cat([loc[:, :2] / h, loc[:, 2:] / w], dim=1)
        return loc / self._norm(loc)

    def decode(self, bboxes: torch.Tensor, pred_bboxes: torch.Tensor,
               max_shape: MaxShape | None = None) -> torch.Tensor:
        """``(..., 4)`` xyxy priors and ``(..., 4)`` (t, b, l, r) -> ``(..., 4)`` xyxy boxes,
        clipped to ``max_shape`` with ``clip_border``."""
        if bboxes.shape[-1] != 4 or pred_bboxes.shape[-1] != 4:
            raise ValueError(f"TBLRBBoxCoder.decode needs (..., 4) priors and predictions, got "
                             f"{tuple(bboxes.shape)} and {tuple(pred_bboxes.shape)}")
        loc = pred_bboxes * self._norm(pred_bboxes)
        cx = (bboxes[..., 0:1] + bboxes[..., 2:3]) / 2
        cy = (bboxes[..., 1:2] + bboxes[..., 3:4]) / 2
        h = bboxes[..., 3:4] - bboxes[..., 1:2]
        w = bboxes[..., 2:3] - bboxes[..., 0:1]
        top, bottom = h * loc[..., 0:1], h * loc[..., 1:2]
        left, right = w * loc[..., 2:3], w * loc[..., 3:4]
        boxes = torch.cat([cx - left, cy - top, cx + right, cy + bottom], dim=-1)
        if self.clip_border and max_shape is not None:
            boxes = clip_to_shape(boxes, max_shape)
        return boxes

    def __repr__(self) -> str:
        return f"TBLRBBoxCoder(normalizer={self.normalizer}, clip_border={self.clip_border})"


@MODELS.register_module()
class DistancePointBBoxCoder:
    """Anchor-free coder: a box as its distances (left, top, right, bottom) from a point.

    Args:
        clip_border: clip decoded boxes to ``max_shape`` when it is given.
    """

    def __init__(self, clip_border: bool = True) -> None:
        self.clip_border = clip_border

    def encode(self, points: torch.Tensor, gt_bboxes: torch.Tensor,
               max_dis: float | None = None, eps: float = 0.1) -> torch.Tensor:
        """``(N, 2+)`` ``(x, y, ...)`` points and ``(N, 4)`` xyxy targets -> ``(N, 4)``
        distances (l, t, r, b), clamped to ``[0, max_dis - eps]`` when ``max_dis`` is given."""
        if points.ndim != 2 or points.shape[-1] < 2 or gt_bboxes.shape != (len(points), 4):
            raise ValueError(f"DistancePointBBoxCoder.encode needs (N, 2) points and (N, 4) "
                             f"boxes, got {tuple(points.shape)} and {tuple(gt_bboxes.shape)}")
        x, y = points[:, 0], points[:, 1]
        dist = torch.stack([x - gt_bboxes[:, 0], y - gt_bboxes[:, 1], gt_bboxes[:, 2] - x,
                            gt_bboxes[:, 3] - y], dim=-1)
        if max_dis is not None:
            dist = dist.clamp(min=0, max=max_dis - eps)
        return dist

    def decode(self, points: torch.Tensor, pred_bboxes: torch.Tensor,
               max_shape: MaxShape | None = None) -> torch.Tensor:
        """``(..., 2+)`` ``(x, y, ...)`` points and ``(..., 4)`` distances (l, t, r, b) ->
        ``(..., 4)`` xyxy boxes, clipped to ``max_shape`` with ``clip_border``."""
        if points.shape[-1] < 2 or pred_bboxes.shape[-1] != 4:
            raise ValueError(f"DistancePointBBoxCoder.decode needs (..., 2) points and (..., 4) "
                             f"distances, got {tuple(points.shape)} and "
                             f"{tuple(pred_bboxes.shape)}")
        x, y = points[..., 0], points[..., 1]
        boxes = torch.stack([x - pred_bboxes[..., 0], y - pred_bboxes[..., 1],
                             x + pred_bboxes[..., 2], y + pred_bboxes[..., 3]], dim=-1)
        if self.clip_border and max_shape is not None:
            boxes = clip_to_shape(boxes, max_shape)
        return boxes

    def __repr__(self) -> str:
        return f"DistancePointBBoxCoder(clip_border={self.clip_border})"


@MODELS.register_module()
class YOLOBBoxCoder:
    """YOLO's coder: the box center's position in its prior's grid cell, in ``[eps, 1 -
    eps]`` units of the ``stride`` (0.5: the prior's center), and ``log`` of the width and
    height ratios.

    Args:
        eps: the least center offset (and width / height ratio) when encoding.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps

    def encode(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor,
               stride: torch.Tensor | float) -> torch.Tensor:
        """``(..., 4)`` xyxy priors, ``(..., 4)`` xyxy targets and the priors' ``stride``
        (a number or ``(...)`` tensor) -> ``(..., 4)`` (x, y, log w, log h) targets."""
        if bboxes.shape != gt_bboxes.shape or bboxes.shape[-1] != 4:
            raise ValueError(f"YOLOBBoxCoder.encode needs priors and targets of the same (..., 4)"
                             f" shape, got {tuple(bboxes.shape)} and {tuple(gt_bboxes.shape)}")
        gx = (gt_bboxes[..., 0] + gt_bboxes[..., 2]) * 0.5
        gy = (gt_bboxes[..., 1] + gt_bboxes[..., 3]) * 0.5
        gw = gt_bboxes[..., 2] - gt_bboxes[..., 0]
        gh = gt_bboxes[..., 3] - gt_bboxes[..., 1]
        px = (bboxes[..., 0] + bboxes[..., 2]) * 0.5
        py = (bboxes[..., 1] + bboxes[..., 3]) * 0.5
        pw = bboxes[..., 2] - bboxes[..., 0]
        ph = bboxes[..., 3] - bboxes[..., 1]
        tw = torch.log((gw / pw).clamp(min=self.eps))
        th = torch.log((gh / ph).clamp(min=self.eps))
        tx = ((gx - px) / stride + 0.5).clamp(self.eps, 1 - self.eps)
        ty = ((gy - py) / stride + 0.5).clamp(self.eps, 1 - self.eps)
        return torch.stack([tx, ty, tw, th], dim=-1)

    def decode(self, bboxes: torch.Tensor, pred_bboxes: torch.Tensor,
               stride: torch.Tensor | float) -> torch.Tensor:
        """``(..., 4)`` xyxy priors, ``(..., 4)`` predictions (x, y in cell units, log w,
        log h) and the priors' ``stride`` (a number or ``(..., 1)`` tensor) -> ``(..., 4)``
        xyxy boxes."""
        if bboxes.shape[-1] != 4 or pred_bboxes.shape[-1] != 4:
            raise ValueError(f"YOLOBBoxCoder.decode needs (..., 4) priors and predictions, got "
                             f"{tuple(bboxes.shape)} and {tuple(pred_bboxes.shape)}")
        centers = (bboxes[..., :2] + bboxes[..., 2:]) * 0.5 + (pred_bboxes[..., :2] - 0.5) * stride
        half = (bboxes[..., 2:] - bboxes[..., :2]) * 0.5 * pred_bboxes[..., 2:].exp()
        return torch.stack([centers[..., 0] - half[..., 0], centers[..., 1] - half[..., 1],
                            centers[..., 0] + half[..., 0], centers[..., 1] + half[..., 1]],
                           dim=-1)

    def __repr__(self) -> str:
        return f"YOLOBBoxCoder(eps={self.eps})"

"""Box coders: boxes <-> regression targets relative to anchors (priors)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from detlab.config import ConfigError
from detlab.registry import MODELS


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
        if len(target_means) != 4 or len(target_stds) != 4:
            raise ConfigError(f"bbox_coder target_means and target_stds need 4 values each, got "
                              f"{list(target_means)} and {list(target_stds)}")
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
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
               max_shape: Sequence[int] | None = None,
               wh_ratio_clip: float = 16 / 1000) -> torch.Tensor:
        """``(..., 4)`` xyxy priors and ``(..., 4)`` deltas (broadcast against each other) ->
        ``(..., 4)`` xyxy boxes, clipped to ``max_shape`` ``(h, w, ...)`` with ``clip_border``.

        ``dw``, ``dh`` are clamped to ``|log(wh_ratio_clip)|`` so that ``exp`` cannot overflow.
        """
        if pred_bboxes.shape[-1] != 4 or bboxes.shape[-1] != 4:
            raise ValueError(f"decode needs (..., 4) priors and deltas, got "
                             f"{tuple(bboxes.shape)} and {tuple(pred_bboxes.shape)}")
        if pred_bboxes.numel() == 0:
            return pred_bboxes.clone()
        deltas = pred_bboxes * pred_bboxes.new_tensor(self.stds) \
            + pred_bboxes.new_tensor(self.means)
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
        boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if self.clip_border and max_shape is not None:
            h, w = max_shape[0], max_shape[1]
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
        return boxes

    def __repr__(self) -> str:
        return (f"DeltaXYWHBBoxCoder(target_means={self.means}, target_stds={self.stds}, "
                f"clip_border={self.clip_border})")

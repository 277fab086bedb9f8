"""Overlaps of xyxy boxes: IoU (intersection over union) and IoF (intersection over the first
box's area), as MMDetection computes them (no ``+1``, unions floored at ``eps``)."""

from __future__ import annotations

import torch

from detlab.config import ConfigError
from detlab.registry import MODELS

MODES = ("iou", "iof")


def bbox_overlaps(bboxes1: torch.Tensor, bboxes2: torch.Tensor, mode: str = "iou",
                  eps: float = 1e-6) -> torch.Tensor:
    """``(M, 4)`` and ``(N, 4)`` xyxy boxes -> ``(M, N)`` IoU or IoF (over ``bboxes1``'s area)."""
    if mode not in MODES:
        raise ValueError(f"overlap mode must be one of {MODES}, got {mode!r}")
    area1 = (bboxes1[:, 2] - bboxes1[:, 0]) * (bboxes1[:, 3] - bboxes1[:, 1])
    area2 = (bboxes2[:, 2] - bboxes2[:, 0]) * (bboxes2[:, 3] - bboxes2[:, 1])
    lt = torch.max(bboxes1[:, None, :2], bboxes2[None, :, :2])  # (M, N, 2)
    rb = torch.min(bboxes1[:, None, 2:], bboxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - overlap if mode == "iou" else area1[:, None]
    return overlap / union.clamp(min=eps)


@MODELS.register_module()
class BboxOverlaps2D:
    """Pairwise overlaps of two box sets (MMDetection's IoU calculator).

    Args:
        scale: boxes are multiplied by it first (no effect on the ratio; kept for configs).
        dtype: None, or ``'fp16'`` to compute in half precision (saves memory on GPUs).
    """

    def __init__(self, scale: float = 1.0, dtype: str | None = None) -> None:
        if dtype not in (None, "fp16"):
            raise ConfigError(f"BboxOverlaps2D dtype must be None or 'fp16', got {dtype!r}")
        self.scale, self.dtype = scale, dtype

    def __call__(self, bboxes1: torch.Tensor, bboxes2: torch.Tensor,
                 mode: str = "iou") -> torch.Tensor:
        """``(M, 4 or 5)`` and ``(N, 4 or 5)`` xyxy boxes (a 5th score column is ignored) ->
        ``(M, N)`` overlaps."""
        bboxes1, bboxes2 = bboxes1[:, :4], bboxes2[:, :4]
        if self.dtype == "fp16":
            out = bbox_overlaps((bboxes1 * self.scale).half(), (bboxes2 * self.scale).half(),
                                mode)
            return out.float()
        return bbox_overlaps(bboxes1 * self.scale, bboxes2 * self.scale, mode)

    def __repr__(self) -> str:
        return f"BboxOverlaps2D(scale={self.scale}, dtype={self.dtype})"

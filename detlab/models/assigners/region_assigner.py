"""Cascade RPN's first-stage assignment (MMDetection 2.28's ``RegionAssigner``): by where an
anchor's center falls relative to a box on the box's own pyramid level, not by IoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detlab.config import ConfigError
from detlab.models.anchors import anchor_inside_flags
from detlab.models.assigners.assign_result import AssignResult
from detlab.registry import MODELS


def box_region(box: torch.Tensor, ratio: float, stride: int,
               featmap_size: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The part of ``box`` (xyxy, input pixels) left when each side moves ``ratio`` of the
    box's size inwards, in cells of ``stride`` (rounded, clamped to the ``(h, w)`` map):
    ``x1, y1, x2, y2``."""
    f = box / stride
    x1 = torch.round((1 - ratio) * f[0] + ratio * f[2]).clamp(min=0, max=featmap_size[1])
    y1 = torch.round((1 - ratio) * f[1] + ratio * f[3]).clamp(min=0, max=featmap_size[0])
    x2 = torch.round(ratio * f[0] + (1 - ratio) * f[2]).clamp(min=0, max=featmap_size[1])
    y2 = torch.round(ratio * f[1] + (1 - ratio) * f[3]).clamp(min=0, max=featmap_size[0])
    return x1, y1, x2, y2


def centers_inside(anchors: torch.Tensor, stride: int,
                   region: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``(N,)`` bool: the anchor's center, in cells of ``stride``, lies in ``region``
    (borders included)."""
    x1, y1, x2, y2 = region
    f = anchors / stride
    x = (f[:, 0] + f[:, 2]) * 0.5
    y = (f[:, 1] + f[:, 3]) * 0.5
    return (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)


@MODELS.register_module()
class RegionAssigner:
    """Each box goes to one pyramid level, ``floor(log2(sqrt(area) / (anchor_scale *
    strides[0])) + 0.5)`` clamped to the levels; there, anchors centered in the box's central
    region (``center_ratio`` of its size) are its positives, those centered in its wider region
    (``ignore_ratio``) but not the central one are ignored. Later boxes overwrite earlier ones;
    anchors outside the image (``allowed_border``) are ignored; the rest are negatives. (The
    paper also ignores anchors in the wider region on the levels above and below; MMDetection
    2.28's indexing turns that into ignoring the first two anchors of those levels, which is
    what this assigner does too, see :meth:`assign`.)

    Args:
        center_ratio: the positive region's share of the box's width and height.
        ignore_ratio: the ignored region's share.

    ``assign`` takes, besides the priors and boxes, the level structure: ``num_level_priors``
    (one anchor per location), ``featmap_sizes``, ``anchor_scale``, ``anchor_strides``,
    ``valid_flags`` and ``img_shape``, ``allowed_border``. Ignored ground truth is not supported
    (as in MMDetection).
    """

    def __init__(self, center_ratio: float = 0.2, ignore_ratio: float = 0.5) -> None:
        if not 0 <= center_ratio <= ignore_ratio <= 1:
            raise ConfigError(f"RegionAssigner needs 0 <= center_ratio <= ignore_ratio <= 1, got "
                              f"center_ratio={center_ratio}, ignore_ratio={ignore_ratio}")
        self.center_ratio, self.ignore_ratio = center_ratio, ignore_ratio

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               featmap_sizes: Sequence[Sequence[int]] | None = None,
               anchor_scale: float | None = None,
               anchor_strides: Sequence[int] | None = None,
               valid_flags: torch.Tensor | None = None,
               img_shape: Sequence[int] | None = None, allowed_border: int = 0,
               **unused: object) -> AssignResult:
        """Assign ``(N, 4)`` anchors (all levels, level after level) to ``(G, 4)`` boxes."""
        if gt_bboxes_ignore is not None and gt_bboxes_ignore.numel():
            raise ConfigError("RegionAssigner does not support ignored boxes (boxes_ignore); "
                              "drop them from the targets or use MaxIoUAssigner")
        if None in (num_level_priors, featmap_sizes, anchor_scale, anchor_strides, valid_flags,
                    img_shape):
            raise ValueError("RegionAssigner.assign needs num_level_priors, featmap_sizes, "
                             "anchor_scale, anchor_strides, valid_flags and img_shape (Cascade "
                             "RPN's first stage passes them)")
        num_gts, num_priors = gt_bboxes.shape[0], priors.shape[0]
        if num_gts == 0 or num_priors == 0:
            labels = None if gt_labels is None else priors.new_full((num_priors,), -1,
                                                                    dtype=torch.long)
            return AssignResult(num_gts, priors.new_zeros(num_priors, dtype=torch.long),
                                priors.new_zeros(num_priors), labels)
        levels = len(num_level_priors)
        positive_ratio = (1 - self.center_ratio) / 2
        ignore_ratio = (1 - self.ignore_ratio) / 2
        scale = torch.sqrt((gt_bboxes[:, 2] - gt_bboxes[:, 0]) *
                           (gt_bboxes[:, 3] - gt_bboxes[:, 1]))
        smallest = scale.new_full((1,), float(anchor_scale * anchor_strides[0]))
        target_levels = torch.floor(torch.log2(scale) - torch.log2(smallest) + 0.5)
        target_levels = target_levels.clamp(min=0, max=levels - 1).long().tolist()
        anchors = list(priors.split(list(num_level_priors)))
        assigned = [priors.new_zeros(n, dtype=torch.long) for n in num_level_priors]
        near_ignored = [priors.new_zeros(n, dtype=torch.bool) for n in num_level_priors]
        for gt_id, level in enumerate(target_levels):
            box = gt_bboxes[gt_id, :4]

            def inside(lvl: int, ratio: float, box=box) -> torch.Tensor:
                return centers_inside(anchors[lvl], anchor_strides[lvl], box_region(
                    box, ratio, anchor_strides[lvl], featmap_sizes[lvl]))

            assigned[level][inside(level, ignore_ratio)] = -1
            assigned[level][inside(level, positive_ratio)] = gt_id + 1
            for neighbour in (level - 1, level + 1):
                if 0 <= neighbour < levels:
                    near_ignored[neighbour] |= inside(neighbour, ignore_ratio)
        for level in range(levels):
            # MMDetection 2.28 indexes with these flags as 0/1 integers, not as a mask: what it
            # ignores is the level's anchors number 0 and (if any flag is set) 1, not the anchors
            # near the box. Kept, so that the targets are MMDetection's.
            assigned[level][near_ignored[level].long()] = -1
        gt_inds = torch.cat(assigned)
        gt_inds[~anchor_inside_flags(priors, valid_flags, img_shape, allowed_border)] = -1
        labels = None
        if gt_labels is not None:
            labels = torch.full_like(gt_inds, -1)
            labels[gt_inds > 0] = gt_labels[gt_inds[gt_inds > 0] - 1]
        return AssignResult(num_gts, gt_inds, None, labels)

    def __repr__(self) -> str:
        return (f"RegionAssigner(center_ratio={self.center_ratio}, "
                f"ignore_ratio={self.ignore_ratio})")

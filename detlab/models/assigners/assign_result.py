"""What an assigner decides for each prior (anchor): its ground-truth box, or background."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AssignResult:
    """The assignment of ``N`` priors to ``num_gts`` ground-truth boxes.

    Attributes:
        num_gts: number of ground-truth boxes.
        gt_inds: ``(N,)`` int64: ``i + 1`` for the i-th ground truth (positive), ``0`` for
            background (negative), ``-1`` for ignored.
        max_overlaps: ``(N,)`` the prior's best overlap with any ground truth.
        labels: ``(N,)`` int64 label of the assigned ground truth, ``-1`` elsewhere; None when
            no labels were given.
    """

    num_gts: int
    gt_inds: torch.Tensor
    max_overlaps: torch.Tensor
    labels: torch.Tensor | None = None

    @property
    def num_preds(self) -> int:
        """Number of priors assigned."""
        return len(self.gt_inds)

    def __repr__(self) -> str:
        pos = int((self.gt_inds > 0).sum())
        neg = int((self.gt_inds == 0).sum())
        return (f"AssignResult(num_gts={self.num_gts}, num_preds={self.num_preds}, pos={pos}, "
                f"neg={neg}, ignored={self.num_preds - pos - neg})")

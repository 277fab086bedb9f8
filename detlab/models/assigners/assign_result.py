"""What an assigner decides for each prior (anchor or point): its ground-truth box, or
background -- and the helpers every assigner uses to say it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AssignResult:
    """The assignment of ``N`` priors to ``num_gts`` ground-truth boxes.

    Attributes:
        num_gts: number of ground-truth boxes.
        gt_inds: ``(N,)`` int64: ``i + 1`` for the i-th ground truth (positive), ``0`` for
            background (negative), ``-1`` for ignored.
        max_overlaps: ``(N,)`` the prior's overlap (or the assigner's quality measure) with its
            ground truth, as MMDetection's assigner of the same name computes it (see each
            assigner's docstring); None for assigners that compute none.
        labels: ``(N,)`` int64 label of the assigned ground truth, ``-1`` elsewhere; None when
            no labels were given.
        assign_metrics: ``(N,)`` alignment metric of each positive (``TaskAlignedAssigner``),
            0 elsewhere; None for other assigners.
        extra: further per-assigner outputs by name (e.g. ``CenterRegionAssigner``'s
            ``shadowed_labels``, ``UniformAssigner``'s ``pos_idx``).
    """

    num_gts: int
    gt_inds: torch.Tensor
    max_overlaps: torch.Tensor | None
    labels: torch.Tensor | None = None
    assign_metrics: torch.Tensor | None = None
    extra: dict[str, torch.Tensor | None] = field(default_factory=dict)

    @property
    def num_preds(self) -> int:
        """Number of priors assigned."""
        return len(self.gt_inds)

    def get_extra_property(self, key: str) -> torch.Tensor | None:
        """``extra[key]``, or None (MMDetection's spelling)."""
        return self.extra.get(key)

    def with_gts(self, gt_labels: torch.Tensor) -> AssignResult:
        """A new result with the ``G`` ground truths themselves prepended as priors assigned to
        themselves (overlap 1, their own labels) -- for samplers that add the ground truths to
        the proposals. ``gt_labels`` ``(G,)``."""
        num = len(gt_labels)
        own = torch.arange(1, num + 1, dtype=torch.long, device=gt_labels.device)
        max_overlaps = self.max_overlaps
        if max_overlaps is not None:
            max_overlaps = torch.cat([max_overlaps.new_ones(num), max_overlaps])
        labels = None if self.labels is None else torch.cat([gt_labels, self.labels])
        return AssignResult(self.num_gts, torch.cat([own, self.gt_inds]), max_overlaps, labels,
                            self.assign_metrics, dict(self.extra))

    def __repr__(self) -> str:
        pos = int((self.gt_inds > 0).sum())
        neg = int((self.gt_inds == 0).sum())
        return (f"AssignResult(num_gts={self.num_gts}, num_preds={self.num_preds}, pos={pos}, "
                f"neg={neg}, ignored={self.num_preds - pos - neg})")


def assigned_labels(gt_inds: torch.Tensor, gt_labels: torch.Tensor | None) -> torch.Tensor | None:
    """``(N,)`` labels of the positives' ground truths (``gt_labels`` ``(G,)``), ``-1``
    elsewhere; None without ``gt_labels``."""
    if gt_labels is None:
        return None
    labels = gt_inds.new_full(gt_inds.shape, -1)
    pos = gt_inds > 0
    labels[pos] = gt_labels[gt_inds[pos] - 1].long()
    return labels


def empty_result(num_gts: int, num_priors: int, gt_labels: torch.Tensor | None,
                 like: torch.Tensor, fill: int = 0,
                 with_overlaps: bool = True) -> AssignResult:
    """The result when there are no priors or no ground truths: every prior ``fill`` (``0``
    whenever there is no ground truth), overlaps 0 (or None), labels ``-1`` (or None)."""
    gt_inds = like.new_full((num_priors,), 0 if num_gts == 0 else fill, dtype=torch.long)
    labels = None if gt_labels is None else like.new_full((num_priors,), -1, dtype=torch.long)
    overlaps = like.new_zeros((num_priors,)) if with_overlaps else None
    return AssignResult(num_gts, gt_inds, overlaps, labels)


def require(assigner: str, name: str, value: object, what: str = "") -> None:
    """Raise a ValueError that names what ``assigner`` needs from the head, if ``value`` is
    None."""
    if value is None:
        raise ValueError(f"{assigner} needs {name}{what}; the head must pass them "
                         f"(assign(..., {name}=...))")

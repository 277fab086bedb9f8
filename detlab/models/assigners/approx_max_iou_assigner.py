"""Max-IoU assignment of square anchors through their approximating anchors (Guided Anchoring;
MMDetection 2.x's ``ApproxMaxIoUAssigner``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detlab.models.assigners.assign_result import AssignResult, require
from detlab.models.assigners.max_iou_assigner import MaxIoUAssigner
from detlab.registry import MODELS


@MODELS.register_module()
class ApproxMaxIoUAssigner(MaxIoUAssigner):
    """:class:`MaxIoUAssigner` where a prior's overlap with a ground truth is the best IoU of
    its group of approximating anchors (Guided Anchoring's ``approxs``); ignored boxes are
    measured against the priors themselves (the ``squares``). Same arguments as
    :class:`MaxIoUAssigner`.

    Needs from the head: ``priors`` ``(N, 4)`` xyxy squares and ``approxs`` ``(N * A, 4)`` xyxy,
    the ``A`` approximating anchors of each square one after the other (as Guided Anchoring's
    heads lay them out). This keyword is this assigner's addition to the shared signature.
    """

    def assign(self, priors: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None, *,
               num_level_priors: Sequence[int] | None = None,
               pred_scores: torch.Tensor | None = None,
               pred_bboxes: torch.Tensor | None = None,
               approxs: torch.Tensor | None = None) -> AssignResult:
        """Assign ``(N, 4)`` xyxy squares, through their ``approxs``, to ``(G, 4)`` xyxy ground
        truths (labels ``(G,)``); ``gt_bboxes_ignore`` ``(K, 4)`` xyxy boxes to ignore."""
        require("ApproxMaxIoUAssigner", "approxs", approxs, " (N * A approximating anchors)")
        num_squares, num_gts = priors.shape[0], gt_bboxes.shape[0]
        if num_squares == 0 or num_gts == 0:
            return self.assign_wrt_overlaps(approxs.new_zeros((num_gts, num_squares)),
                                            gt_labels)
        if approxs.shape[0] % num_squares:
            raise ValueError(f"ApproxMaxIoUAssigner needs the same number of approxs for each of "
                             f"the {num_squares} squares, got {approxs.shape[0]} approxs")
        per_square = approxs.shape[0] // num_squares
        # (N * A, 4) square-major -> (A * N, 4) approx-major, as MMDetection orders them
        approxs = approxs.reshape(num_squares, per_square, 4).transpose(0, 1).reshape(-1, 4)
        device = priors.device
        on_cpu = 0 < self.gpu_assign_thr < num_gts
        if on_cpu:
            approxs, priors, gt_bboxes = approxs.cpu(), priors.cpu(), gt_bboxes.cpu()
            gt_bboxes_ignore = None if gt_bboxes_ignore is None else gt_bboxes_ignore.cpu()
            gt_labels = None if gt_labels is None else gt_labels.cpu()
        overlaps = self.iou_calculator(approxs, gt_bboxes)  # (A * N, G)
        overlaps = overlaps.reshape(per_square, num_squares, num_gts).max(dim=0)[0].t()  # (G, N)
        if (self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None
                and gt_bboxes_ignore.numel() > 0):
            if self.ignore_wrt_candidates:
                iof = self.iou_calculator(priors, gt_bboxes_ignore, mode="iof").max(dim=1)[0]
            else:
                iof = self.iou_calculator(gt_bboxes_ignore, priors, mode="iof").max(dim=0)[0]
            overlaps[:, iof > self.ignore_iof_thr] = -1
        result = self.assign_wrt_overlaps(overlaps, gt_labels)
        if on_cpu:
            result.gt_inds, result.max_overlaps = result.gt_inds.to(device), \
                result.max_overlaps.to(device)
            result.labels = None if result.labels is None else result.labels.to(device)
        return result

    def __repr__(self) -> str:
        return "Approx" + super().__repr__()

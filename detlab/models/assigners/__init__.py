"""Target assignment (which prior learns which box) and sampling of the assigned priors."""

from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.iou import BboxOverlaps2D, bbox_overlaps
from detlab.models.assigners.max_iou_assigner import MaxIoUAssigner
from detlab.models.assigners.pseudo_sampler import PseudoSampler, SamplingResult

__all__ = ["AssignResult", "BboxOverlaps2D", "MaxIoUAssigner", "PseudoSampler", "SamplingResult",
           "bbox_overlaps"]

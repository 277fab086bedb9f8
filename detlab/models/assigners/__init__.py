"""Target assignment (which prior learns which box) and sampling of the assigned priors.

Every assigner has one signature, ``assign(priors, gt_bboxes, gt_bboxes_ignore=None,
gt_labels=None, *, num_level_priors=None, pred_scores=None, pred_bboxes=None) ->
AssignResult``, takes what it needs and ignores the rest; its docstring says what it needs
(``GridAssigner`` also takes ``responsible_flags``, ``ApproxMaxIoUAssigner`` ``approxs``). Every
sampler has ``sample(assign_result, bboxes, gt_bboxes, gt_labels=None) -> SamplingResult``.
"""

from detlab.models.assigners.approx_max_iou_assigner import ApproxMaxIoUAssigner
from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.atss_assigner import ATSSAssigner
from detlab.models.assigners.center_region_assigner import CenterRegionAssigner
from detlab.models.assigners.grid_assigner import GridAssigner
from detlab.models.assigners.iou import BboxOverlaps2D, bbox_overlaps
from detlab.models.assigners.max_iou_assigner import AscendMaxIoUAssigner, MaxIoUAssigner
from detlab.models.assigners.point_assigner import PointAssigner
from detlab.models.assigners.pseudo_sampler import PseudoSampler
from detlab.models.assigners.random_sampler import RandomSampler
from detlab.models.assigners.sampling_result import SamplingResult
from detlab.models.assigners.sim_ota_assigner import SimOTAAssigner
from detlab.models.assigners.task_aligned_assigner import TaskAlignedAssigner
from detlab.models.assigners.uniform_assigner import UniformAssigner

__all__ = ["ATSSAssigner", "ApproxMaxIoUAssigner", "AscendMaxIoUAssigner", "AssignResult",
           "BboxOverlaps2D",
           "CenterRegionAssigner", "GridAssigner", "MaxIoUAssigner", "PointAssigner",
           "PseudoSampler", "RandomSampler", "SamplingResult", "SimOTAAssigner",
           "TaskAlignedAssigner", "UniformAssigner", "bbox_overlaps"]

from detlab.models.assigners.region_assigner import RegionAssigner  # noqa: E402

__all__ += ["RegionAssigner"]

from detlab.models.assigners.ohem_sampler import OHEMSampler  # noqa: E402

__all__ += ["OHEMSampler"]

from detlab.models.assigners.balanced_samplers import (  # noqa: E402
    CombinedSampler,
    InstanceBalancedPosSampler,
    IoUBalancedNegSampler,
)
from detlab.models.assigners.score_hlr_sampler import ScoreHLRSampler, nms_match  # noqa: E402

__all__ += ["CombinedSampler", "InstanceBalancedPosSampler", "IoUBalancedNegSampler",
            "ScoreHLRSampler", "nms_match"]

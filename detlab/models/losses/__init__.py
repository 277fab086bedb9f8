"""Losses with MMDetection 2.x's names, arguments and ``loss_weight`` / ``reduction`` /
``avg_factor`` semantics, and its ``weighted_loss`` decorator for losses of one's own."""

from detlab.models.losses.box_iou_loss import (
    BoundedIoULoss,
    CIoULoss,
    DIoULoss,
    GIoULoss,
    IoULoss,
    aligned_bbox_overlaps,
    bounded_iou_loss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
)
from detlab.models.losses.cross_entropy_loss import (
    CrossEntropyLoss,
    binary_cross_entropy,
    cross_entropy,
    mask_cross_entropy,
)
from detlab.models.losses.focal_loss import FocalLoss, focal_loss_with_prob
from detlab.models.losses.gaussian_focal import GaussianFocalLoss, gaussian_focal_loss
from detlab.models.losses.gfocal_loss import (
    DistributionFocalLoss,
    QualityFocalLoss,
    distribution_focal_loss,
    quality_focal_loss,
)
from detlab.models.losses.ghm_loss import GHMC, GHMR
from detlab.models.losses.kd_loss import (
    KnowledgeDistillationKLDivLoss,
    knowledge_distillation_kl_div_loss,
)
from detlab.models.losses.regression_loss import (
    BalancedL1Loss,
    L1Loss,
    MSELoss,
    SmoothL1Loss,
    balanced_l1_loss,
    l1_loss,
    mse_loss,
    smooth_l1_loss,
)
from detlab.models.losses.utils import (
    WeightedLoss,
    reduce_loss,
    weight_reduce_loss,
    weighted_loss,
)
from detlab.models.losses.varifocal import VarifocalLoss, varifocal_loss

__all__ = [
    "BalancedL1Loss", "BoundedIoULoss", "CIoULoss", "CrossEntropyLoss", "DIoULoss",
    "DistributionFocalLoss", "FocalLoss", "GHMC", "GHMR", "GIoULoss", "GaussianFocalLoss",
    "IoULoss", "KnowledgeDistillationKLDivLoss", "L1Loss", "MSELoss", "QualityFocalLoss",
    "SmoothL1Loss", "VarifocalLoss", "WeightedLoss", "aligned_bbox_overlaps", "balanced_l1_loss",
    "binary_cross_entropy", "bounded_iou_loss", "ciou_loss", "cross_entropy", "diou_loss",
    "distribution_focal_loss", "focal_loss_with_prob", "gaussian_focal_loss", "giou_loss",
    "iou_loss", "knowledge_distillation_kl_div_loss", "l1_loss", "mask_cross_entropy",
    "mse_loss", "quality_focal_loss", "reduce_loss", "smooth_l1_loss", "varifocal_loss",
    "weight_reduce_loss", "weighted_loss",
]

from detlab.models.losses.pisa_loss import carl_loss, isr_p  # noqa: E402

__all__ += ["carl_loss", "isr_p"]

from detlab.models.losses.seesaw_loss import SeesawLoss  # noqa: E402

__all__ += ["SeesawLoss"]

"""Losses with MMDetection's ``loss_weight`` / ``reduction`` / ``avg_factor`` semantics."""

from detlab.models.losses.focal_loss import FocalLoss, focal_loss_with_prob
from detlab.models.losses.regression_loss import GIoULoss, L1Loss, SmoothL1Loss
from detlab.models.losses.utils import WeightedLoss, reduce_loss, weight_reduce_loss

__all__ = ["FocalLoss", "GIoULoss", "L1Loss", "SmoothL1Loss", "WeightedLoss",
           "focal_loss_with_prob", "reduce_loss", "weight_reduce_loss"]

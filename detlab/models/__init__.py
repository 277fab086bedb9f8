"""Detectors and their parts: backbones, necks, heads, losses, assigners, coders, anchors.

Importing this package registers every built-in model component in ``detlab.registry.MODELS``.
"""

from detlab.models import anchors, assigners, backbones, coders, detectors, heads, losses, necks
from detlab.models.anchors import AnchorGenerator
from detlab.models.assigners import (
    AssignResult,
    BboxOverlaps2D,
    MaxIoUAssigner,
    PseudoSampler,
    SamplingResult,
)
from detlab.models.backbones import ResNet
from detlab.models.builder import build_detector, build_model
from detlab.models.coders import DeltaXYWHBBoxCoder
from detlab.models.detectors import RetinaNet, SingleStageDetector
from detlab.models.heads import AnchorHead, RetinaHead
from detlab.models.losses import FocalLoss, GIoULoss, L1Loss, SmoothL1Loss
from detlab.models.necks import FPN
from detlab.models.utils import ConvModule

__all__ = [
    "AnchorGenerator", "AnchorHead", "AssignResult", "BboxOverlaps2D", "ConvModule",
    "DeltaXYWHBBoxCoder", "FPN", "FocalLoss", "GIoULoss", "L1Loss", "MaxIoUAssigner",
    "PseudoSampler", "ResNet", "RetinaHead", "RetinaNet", "SamplingResult", "SingleStageDetector",
    "SmoothL1Loss", "anchors", "assigners", "backbones", "build_detector", "build_model", "coders",
    "detectors", "heads", "losses", "necks",
]

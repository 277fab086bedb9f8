"""Detection heads."""

from detlab.models.heads.anchor_head import AnchorHead, AnchorTargets
from detlab.models.heads.retina_head import RetinaHead

__all__ = ["AnchorHead", "AnchorTargets", "RetinaHead"]

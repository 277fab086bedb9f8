"""Necks: backbone feature maps -> the pyramid the heads read."""

from detlab.models.necks.fpn import FPN

__all__ = ["FPN"]

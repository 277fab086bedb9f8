"""Backbones: image -> multi-level feature maps."""

from detlab.models.backbones.resnet import ResNet

__all__ = ["ResNet"]

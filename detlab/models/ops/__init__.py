"""Operators that MMDetection takes from ``mmcv.ops``, written on ``torchvision.ops``."""

from detlab.models.ops.deform_conv import (
                                           DeformConv2d,
                                           DeformConv2dPack,
                                           ModulatedDeformConv2d,
                                           ModulatedDeformConv2dPack,
)

__all__ = ["DeformConv2d", "DeformConv2dPack", "ModulatedDeformConv2d",
           "ModulatedDeformConv2dPack"]

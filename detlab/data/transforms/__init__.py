"""Transforms (MMDetection 2.x pipelines): callables ``dict -> dict`` (or None to drop).

Importing this package registers them in ``detlab.registry.TRANSFORMS``.
"""

from detlab.data.transforms.compose import Compose
from detlab.data.transforms.formatting import (
    Collect,
    DefaultFormatBundle,
    ImageToTensor,
    ToTensor,
    to_tensor,
)
from detlab.data.transforms.geometric import Pad, RandomFlip, Resize
from detlab.data.transforms.loading import LoadAnnotations, LoadImageFromFile
from detlab.data.transforms.photometric import Normalize
from detlab.data.transforms.tta import MultiScaleFlipAug

__all__ = [
    "Compose", "Collect", "DefaultFormatBundle", "ImageToTensor", "ToTensor", "to_tensor", "Pad",
    "RandomFlip", "Resize", "LoadAnnotations", "LoadImageFromFile", "Normalize",
    "MultiScaleFlipAug",
]

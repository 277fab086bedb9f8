"""Transforms (MMDetection 2.x pipelines): callables ``dict -> dict`` (or None to drop).

Importing this package registers them in ``detlab.registry.TRANSFORMS``. Each transform's
docstring says which keys of the sample it adds, updates and removes; boxes, masks, labels and
instance ids stay in step through every one (see :mod:`detlab.data.transforms.instances`).
"""

from detlab.data.transforms.affine import RandomAffine
from detlab.data.transforms.albu import Albu
from detlab.data.transforms.center_crop_pad import RandomCenterCropPad
from detlab.data.transforms.compose import Compose
from detlab.data.transforms.crop import MinIoURandomCrop, RandomCrop
from detlab.data.transforms.formatting import (
    Collect,
    DefaultFormatBundle,
    ImageToTensor,
    ToTensor,
    to_tensor,
)
from detlab.data.transforms.geometric import (
    Expand,
    Pad,
    RandomFlip,
    RandomShift,
    Resize,
    SegRescale,
)
from detlab.data.transforms.loading import (
    FilterAnnotations,
    ImageReadError,
    LoadAnnotations,
    LoadImageFromFile,
    LoadProposals,
)
from detlab.data.transforms.mix import MixUp, Mosaic
from detlab.data.transforms.photometric import (
    CutOut,
    Normalize,
    PhotoMetricDistortion,
    YOLOXHSVRandomAug,
)
from detlab.data.transforms.tta import MultiScaleFlipAug

__all__ = [
    "Compose", "Collect", "DefaultFormatBundle", "ImageToTensor", "ToTensor", "to_tensor", "Pad",
    "RandomFlip", "Resize", "Expand", "RandomShift", "SegRescale", "RandomCrop",
    "MinIoURandomCrop", "RandomAffine", "Mosaic", "MixUp", "LoadAnnotations",
    "LoadImageFromFile", "LoadProposals", "FilterAnnotations", "ImageReadError", "Normalize",
    "PhotoMetricDistortion", "YOLOXHSVRandomAug", "CutOut", "Albu", "MultiScaleFlipAug",
    "RandomCenterCropPad",
]

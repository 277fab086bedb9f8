"""Datasets, transforms (pipelines), loaders, converters and the preflight check.

Importing this package registers the built-in datasets and transforms.
"""

from detlab.data import datasets, transforms  # noqa: F401  (registration)
from detlab.data.builder import build_dataset
from detlab.data.checks import check_dataset, format_report
from detlab.data.converters import cityscapes2coco, coco2yolo, voc2coco, yolo2coco
from detlab.data.datasets import (
    ClassBalancedDataset,
    CocoDataset,
    ConcatDataset,
    CustomDataset,
    MultiImageMixDataset,
    RepeatDataset,
    VOCDataset,
    XMLDataset,
    YOLODataset,
    make_shapes_dataset,
)
from detlab.data.loader import build_dataloader, collate
from detlab.data.samplers import (
    ClassAwareSampler,
    DistributedGroupSampler,
    GroupSampler,
    SampleKey,
    SeededDataset,
)
from detlab.data.transforms import Compose

__all__ = [
    "build_dataset", "build_dataloader", "collate", "Compose", "CocoDataset", "CustomDataset",
    "VOCDataset", "XMLDataset", "YOLODataset", "ConcatDataset", "RepeatDataset",
    "ClassBalancedDataset", "MultiImageMixDataset", "make_shapes_dataset", "check_dataset",
    "format_report", "voc2coco", "yolo2coco", "coco2yolo", "cityscapes2coco", "GroupSampler",
    "DistributedGroupSampler", "ClassAwareSampler", "SampleKey", "SeededDataset",
]

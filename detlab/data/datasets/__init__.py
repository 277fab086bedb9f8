"""Datasets: the shared base (the "middle format"), COCO, VOC / xml, YOLO, the wrappers and the
embedded shapes generator.

Importing this package registers the datasets in ``detlab.registry.DATASETS``.
"""

from detlab.data.datasets.coco import CocoDataset
from detlab.data.datasets.custom import CustomDataset
from detlab.data.datasets.shapes import make_shapes_dataset
from detlab.data.datasets.voc import VOCDataset
from detlab.data.datasets.wrappers import (
    ClassBalancedDataset,
    ConcatDataset,
    MultiImageMixDataset,
    RepeatDataset,
)
from detlab.data.datasets.xml_style import XMLDataset
from detlab.data.datasets.yolo import YOLODataset

__all__ = [
    "CocoDataset", "CustomDataset", "VOCDataset", "XMLDataset", "YOLODataset", "ConcatDataset",
    "RepeatDataset", "ClassBalancedDataset", "MultiImageMixDataset", "make_shapes_dataset",
]

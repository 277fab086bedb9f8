"""Datasets: the shared base, COCO, and the embedded shapes generator.

Importing this package registers the datasets in ``detlab.registry.DATASETS``.
"""

from detlab.data.datasets.coco import CocoDataset
from detlab.data.datasets.custom import CustomDataset
from detlab.data.datasets.shapes import make_shapes_dataset

__all__ = ["CocoDataset", "CustomDataset", "make_shapes_dataset"]

"""Datasets, transforms (pipelines), loaders and converters.

Importing this package registers the built-in datasets and transforms.
"""

from detlab.data import datasets, transforms  # noqa: F401  (registration)
from detlab.data.builder import build_dataset
from detlab.data.datasets import CocoDataset, CustomDataset, make_shapes_dataset
from detlab.data.loader import build_dataloader, collate
from detlab.data.transforms import Compose

__all__ = [
    "build_dataset", "build_dataloader", "collate", "Compose", "CocoDataset", "CustomDataset",
    "make_shapes_dataset",
]

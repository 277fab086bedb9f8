"""VOCDataset: Pascal VOC 2007 / 2012 in the VOCdevkit layout, as MMDetection 2.x reads and
scores it.

``data_root='data/VOCdevkit/'``, ``ann_file='VOC2007/ImageSets/Main/test.txt'``,
``img_prefix='VOC2007/'``: images in ``VOC2007/JPEGImages``, xml in ``VOC2007/Annotations``.
The year comes from ``img_prefix`` (``VOC2007`` or ``VOC2012`` in it): VOC2007 is scored with
the 11-point AP, VOC2012 (and any other folder) with the area under the curve. As MMDetection's
``VOCDataset.evaluate``, ``mAP`` and ``recall`` measure boxes as ``x2 - x1 + 1`` (the devkit's
convention); boxes are read as :mod:`detlab.data.datasets.xml_style` describes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

from detlab.data.datasets.xml_style import XMLDataset
from detlab.registry import DATASETS


def voc_year(img_prefix: str | None) -> int | None:
    """2007 or 2012 when ``img_prefix`` names ``VOC2007`` / ``VOC2012``, else None."""
    prefix = img_prefix or ""
    if "VOC2007" in prefix:
        return 2007
    if "VOC2012" in prefix:
        return 2012
    return None


@DATASETS.register_module()
class VOCDataset(XMLDataset):
    """Pascal VOC: the 20 classes (or ``classes``, a subset: other objects are skipped).

    The arguments are :class:`XMLDataset`'s, in the order of MMDetection's dataset configs.
    ``year`` is 2007, 2012 or None (a folder without the year in its name: a warning, and
    the VOC2012 way of scoring).
    """

    CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
    legacy_coordinate = True

    def __init__(self, ann_file: str, pipeline: Sequence[Mapping | Callable],
                 classes: str | Sequence[str] | None = None, data_root: str | None = None,
                 img_prefix: str = "", seg_prefix: str | None = None,
                 proposal_file: str | None = None, test_mode: bool = False,
                 filter_empty_gt: bool = True, min_size: int | None = None,
                 img_subdir: str = "JPEGImages", ann_subdir: str = "Annotations") -> None:
        super().__init__(ann_file, pipeline, classes=classes, img_prefix=img_prefix,
                         img_subdir=img_subdir, ann_subdir=ann_subdir, data_root=data_root,
                         seg_prefix=seg_prefix, proposal_file=proposal_file,
                         test_mode=test_mode, filter_empty_gt=filter_empty_gt,
                         min_size=min_size)
        self.year = voc_year(self.img_prefix)
        if self.year is None:
            warnings.warn(f"VOCDataset cannot tell the year from img_prefix={self.img_prefix!r} "
                          "(it names neither VOC2007 nor VOC2012): mAP is the area under the "
                          "curve, as for VOC2012; VOC2007 scores with 11 points", UserWarning,
                          stacklevel=2)
        self.eval_mode = "11points" if self.year == 2007 else "area"

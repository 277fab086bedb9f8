"""Converters between annotation formats; each writes COCO json (or a YOLO folder) and returns
the paths it wrote.

- :func:`voc2coco`: a VOCdevkit -> ``voc07_train.json`` ... (MMDetection's names and boxes);
- :func:`yolo2coco`: an Ultralytics ``data.yaml`` / folder -> ``instances_<split>.json``;
- :func:`coco2yolo`: a COCO file -> ``labels/``, ``images/``, ``data.yaml``;
- :func:`cityscapes2coco`: ``gtFine`` instance maps ->
  ``instancesonly_filtered_gtFine_<split>.json``.

Boxes are COCO ``xywh`` in pixels in every json written here.
"""

from detlab.data.converters.cityscapes import cityscapes2coco
from detlab.data.converters.voc import voc2coco
from detlab.data.converters.yolo import coco2yolo, yolo2coco

__all__ = ["cityscapes2coco", "coco2yolo", "voc2coco", "yolo2coco"]

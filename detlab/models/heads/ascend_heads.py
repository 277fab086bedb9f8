"""The Ascend (NPU) variants of RetinaNet's and SSD's heads that MMDetection 2.28's zoo has
configs for (``retinanet/ascend_retinanet_r18_fpn_1x8_1x_coco.py``, ``ssd/ascend_ssd300_coco.py``).

MMDetection computes their targets batched, with fixed-size tensors that suit the NPU; what
they compute is RetinaHead's and SSDHead's -- the same layers, parameter names, targets,
losses and detections -- so detlab registers them as those heads under their own names, and
the configs (and checkpoints trained on Ascend) work unchanged.
"""

from __future__ import annotations

from detlab.models.heads.retina_head import RetinaHead
from detlab.models.heads.ssd_head import SSDHead
from detlab.registry import MODELS


@MODELS.register_module()
class AscendRetinaHead(RetinaHead):
    """RetinaHead under the name MMDetection's Ascend configs use (arguments as RetinaHead)."""


@MODELS.register_module()
class AscendSSDHead(SSDHead):
    """SSDHead under the name MMDetection's Ascend configs use (arguments as SSDHead)."""

"""Detectors: the model a config's ``model=dict(type=...)`` builds."""

from detlab.models.detectors.atss import ATSS
from detlab.models.detectors.fcos import FCOS
from detlab.models.detectors.retinanet import RetinaNet
from detlab.models.detectors.single_stage import SingleStageDetector

__all__ = ["RetinaNet", "SingleStageDetector"]

from detlab.models.detectors.gfl import GFL  # noqa: E402

__all__ += ["GFL"]
__all__ += ["FCOS"]
__all__ += ["ATSS"]

from detlab.models.detectors.tood import TOOD  # noqa: E402

__all__ += ["TOOD"]

from detlab.models.detectors.fovea import FOVEA  # noqa: E402

__all__ += ["FOVEA"]

from detlab.models.detectors.yolox import YOLOX  # noqa: E402

__all__ += ["YOLOX"]

from detlab.models.detectors.vfnet import VFNet  # noqa: E402

__all__ += ["VFNet"]

from detlab.models.detectors.paa import PAA  # noqa: E402

__all__ += ["PAA"]

from detlab.models.detectors.yolo import YOLOV3  # noqa: E402

__all__ += ["YOLOV3"]

from detlab.models.detectors.yolof import YOLOF  # noqa: E402

__all__ += ["YOLOF"]

from detlab.models.detectors.fsaf import FSAF  # noqa: E402

__all__ += ["FSAF"]

from detlab.models.detectors.ddod import DDOD  # noqa: E402

__all__ += ["DDOD"]

from detlab.models.detectors.autoassign import AutoAssign  # noqa: E402

__all__ += ["AutoAssign"]

from detlab.models.detectors.centernet import CenterNet  # noqa: E402

__all__ += ["CenterNet"]

from detlab.models.detectors.nasfcos import NASFCOS  # noqa: E402

__all__ += ["NASFCOS"]

from detlab.models.detectors.reppoints import RepPointsDetector  # noqa: E402

__all__ += ["RepPointsDetector"]

from detlab.models.detectors.kd_one_stage import (  # noqa: E402
    KnowledgeDistillationSingleStageDetector,
)

__all__ += ["KnowledgeDistillationSingleStageDetector"]

from detlab.models.detectors.lad import LAD  # noqa: E402

__all__ += ["LAD"]

from detlab.models.detectors.rpn import RPN  # noqa: E402

__all__ += ["RPN"]

from detlab.models.detectors.two_stage import (  # noqa: E402
    FasterRCNN,
    FastRCNN,
    TwoStageDetector,
)

__all__ += ["FastRCNN", "FasterRCNN", "TwoStageDetector"]

from detlab.models.detectors.mask_rcnn import MaskRCNN  # noqa: E402

__all__ += ["MaskRCNN"]

from detlab.models.detectors.mask_scoring_rcnn import MaskScoringRCNN  # noqa: E402

__all__ += ["MaskScoringRCNN"]

from detlab.models.detectors.cascade_rcnn import CascadeRCNN  # noqa: E402

__all__ += ["CascadeRCNN"]

from detlab.models.detectors.grid_rcnn import GridRCNN  # noqa: E402

__all__ += ["GridRCNN"]

from detlab.models.detectors.point_rend import PointRend  # noqa: E402

__all__ += ["PointRend"]

from detlab.models.detectors.htc import HybridTaskCascade  # noqa: E402

__all__ += ["HybridTaskCascade"]

from detlab.models.detectors.trident_faster_rcnn import TridentFasterRCNN  # noqa: E402

__all__ += ["TridentFasterRCNN"]

from detlab.models.detectors.scnet import SCNet  # noqa: E402

__all__ += ["SCNet"]

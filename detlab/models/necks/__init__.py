"""Necks: backbone feature maps -> the pyramid the heads read."""

from detlab.models.necks.fpn import FPN

__all__ = ["FPN"]

from detlab.models.necks.ssd_neck import SSDNeck  # noqa: E402

__all__ += ["SSDNeck"]

from detlab.models.necks.yolox_pafpn import YOLOXPAFPN  # noqa: E402

__all__ += ["YOLOXPAFPN"]

from detlab.models.necks.yolo_neck import YOLOV3Neck  # noqa: E402

__all__ += ["YOLOV3Neck"]

from detlab.models.necks.dilated_encoder import DilatedEncoder  # noqa: E402

__all__ += ["DilatedEncoder"]

from detlab.models.necks.nas_fpn import NASFPN  # noqa: E402

__all__ += ["NASFPN"]

from detlab.models.necks.ct_resnet_neck import CTResNetNeck  # noqa: E402

__all__ += ["CTResNetNeck"]

from detlab.models.necks.nasfcos_fpn import NASFCOS_FPN  # noqa: E402

__all__ += ["NASFCOS_FPN"]

from detlab.models.necks.bfp import BFP  # noqa: E402
from detlab.models.necks.neck_sequence import NeckSequence, build_neck  # noqa: E402

__all__ += ["BFP", "NeckSequence", "build_neck"]

from detlab.models.necks.hrfpn import HRFPN  # noqa: E402

__all__ += ["HRFPN"]

from detlab.models.necks.pafpn import PAFPN  # noqa: E402

__all__ += ["PAFPN"]

from detlab.models.necks.dyhead import DyHead  # noqa: E402

__all__ += ["DyHead"]

from detlab.models.necks.fpg import FPG  # noqa: E402

__all__ += ["FPG"]

from detlab.models.necks.fpn_carafe import FPN_CARAFE  # noqa: E402

__all__ += ["FPN_CARAFE"]

from detlab.models.necks.channel_mapper import ChannelMapper  # noqa: E402

__all__ += ["ChannelMapper"]

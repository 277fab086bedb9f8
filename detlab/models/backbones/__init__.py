"""Backbones: image -> multi-level feature maps."""

from detlab.models.backbones.resnet import ResNet

__all__ = ["ResNet"]

from detlab.models.backbones.ssd_vgg import SSDVGG  # noqa: E402

__all__ += ["SSDVGG"]

from detlab.models.backbones.csp_darknet import CSPDarknet  # noqa: E402

__all__ += ["CSPDarknet"]

from detlab.models.backbones.darknet import Darknet  # noqa: E402

__all__ += ["Darknet"]

from detlab.models.backbones.mobilenet_v2 import MobileNetV2  # noqa: E402

__all__ += ["MobileNetV2"]

from detlab.models.backbones.resnet import ResNeXt  # noqa: E402

__all__ += ["ResNeXt"]

from detlab.models.backbones.efficientnet import EfficientNet  # noqa: E402

__all__ += ["EfficientNet"]

from detlab.models.backbones.trident_resnet import TridentResNet  # noqa: E402

__all__ += ["TridentResNet"]

from detlab.models.backbones.res2net import Res2Net  # noqa: E402

__all__ += ["Res2Net"]

from detlab.models.backbones.regnet import RegNet  # noqa: E402

__all__ += ["RegNet"]

from detlab.models.backbones.hrnet import HRNet  # noqa: E402

__all__ += ["HRNet"]

from detlab.models.backbones.resnest import ResNeSt  # noqa: E402

__all__ += ["ResNeSt"]

from detlab.models.backbones.pvt import (  # noqa: E402
    PyramidVisionTransformer,
    PyramidVisionTransformerV2,
)

__all__ += ["PyramidVisionTransformer", "PyramidVisionTransformerV2"]

from detlab.models.backbones.swin import SwinTransformer  # noqa: E402

__all__ += ["SwinTransformer"]

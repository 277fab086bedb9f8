"""YOLOF (Chen et al., 2021): ResNet's last stage, the dilated encoder and
:class:`~detlab.models.heads.YOLOFHead` on one feature level."""

from __future__ import annotations

from detlab.config import ConfigError
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


def check_one_level_channels(detector: SingleStageDetector, neck_in: str, head_in: str) -> None:
    """Fail early, naming the config keys, when a one-level neck (reading the backbone's last
    map) does not take the backbone's last channels or does not give the head's."""
    out = getattr(detector.backbone, "out_channels", None)
    want = getattr(detector.neck, neck_in, None)
    if out is not None and want is not None and int(want) != list(out)[-1]:
        raise ConfigError(f"model.neck.{neck_in}={want} does not match the channels of the "
                          f"backbone's last output, {list(out)[-1]}; set "
                          f"model.neck.{neck_in}={list(out)[-1]}")
    given = getattr(detector.neck, "out_channels", None)
    takes = getattr(detector.bbox_head, "in_channels", None)
    if given is not None and takes is not None and int(given) != int(takes):
        raise ConfigError(f"model.bbox_head.{head_in}={takes} does not match the neck's output "
                          f"channels {given}; set model.bbox_head.{head_in}={given}")


@MODELS.register_module()
class YOLOF(SingleStageDetector):
    """YOLOF: backbone (ResNet, the last stage read), neck (DilatedEncoder, one level) and
    :class:`~detlab.models.heads.YOLOFHead`. Arguments as :class:`SingleStageDetector`."""

    def _check_channels(self) -> None:
        if self.neck is None:
            raise ConfigError("YOLOF needs a neck (model.neck=dict(type='DilatedEncoder', ...))")
        check_one_level_channels(self, "in_channels", "in_channels")

"""YOLOv3 (Redmon and Farhadi, 2018): Darknet, YOLOV3Neck and
:class:`~detlab.models.heads.YOLOV3Head`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from detlab.config import ConfigError
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class YOLOV3(SingleStageDetector):
    """YOLOv3: backbone (Darknet), neck (YOLOV3Neck) and :class:`~detlab.models.YOLOV3Head`.

    Arguments as :class:`SingleStageDetector`. The neck and head take their levels coarsest
    first (the backbone's outputs reversed), and a channel count per level.
    """

    def __init__(self, backbone: Mapping | nn.Module, neck: Mapping | nn.Module | None,
                 bbox_head: Mapping | nn.Module, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)

    def _check_channels(self) -> None:
        """Fail early, naming the config keys, when the parts' channels do not fit together."""
        out = getattr(self.backbone, "out_channels", None)
        if self.neck is not None:
            want = getattr(self.neck, "in_channels", None)
            if out is not None and want is not None and list(want) != list(out)[::-1]:
                raise ConfigError(f"model.neck.in_channels={list(want)} does not match the "
                                  f"backbone's outputs coarsest first {list(out)[::-1]}; set "
                                  f"model.neck.in_channels={list(out)[::-1]}")
            out = getattr(self.neck, "out_channels", None)
        else:
            out = None if out is None else list(out)[::-1]
        head_in = getattr(self.bbox_head, "in_channels", None)
        if out is not None and head_in is not None and list(head_in) != list(out):
            raise ConfigError(f"model.bbox_head.in_channels={list(head_in)} does not match the "
                              f"{'neck' if self.neck is not None else 'backbone'}'s output "
                              f"channels {list(out)}")

"""CenterNet (Zhou et al., 2019, "Objects as Points"): ResNet, CTResNetNeck and
:class:`~detlab.models.heads.CenterNetHead` on one stride-4 map."""

from __future__ import annotations

from detlab.config import ConfigError
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.models.detectors.yolof import check_one_level_channels
from detlab.registry import MODELS


@MODELS.register_module()
class CenterNet(SingleStageDetector):
    """CenterNet: backbone (ResNet, the last stage read), neck (CTResNetNeck, one upsampled
    level) and :class:`~detlab.models.heads.CenterNetHead`. Arguments as
    :class:`SingleStageDetector`; ``train_cfg`` is unused (no assigner)."""

    def _check_channels(self) -> None:
        if self.neck is None:
            raise ConfigError("CenterNet needs a neck (model.neck=dict(type='CTResNetNeck', "
                              "...))")
        check_one_level_channels(self, "in_channel", "in_channel")

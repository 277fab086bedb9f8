"""NAS-FCOS (Wang et al., 2020): FCOS with a searched feature pyramid (``NASFCOS_FPN``) and,
optionally, searched head towers (``NASFCOSHead``)."""

from __future__ import annotations

from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS


@MODELS.register_module()
class NASFCOS(SingleStageDetector):
    """NAS-FCOS: backbone (a caffe-style ResNet in MMDetection's configs),
    :class:`~detlab.models.necks.nasfcos_fpn.NASFCOS_FPN` and an FCOS-type head.

    Arguments as :class:`SingleStageDetector` (MMDetection's).
    """

"""Single-stage detectors: backbone -> neck -> dense head, with detlab's detector contract.

``loss(batch) -> dict`` of losses, ``predict(batch) -> list[DetResult]`` (original-image pixels),
``forward(images) -> raw head outputs``; no mode strings.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize, is_pretrained
from detlab.models.necks.neck_sequence import build_neck
from detlab.models.utils import thaw
from detlab.registry import MODELS
from detlab.structures import Batch, DetResult


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"a detector takes images as a (B, C, H, W) tensor, got {shape}")


@MODELS.register_module()
class SingleStageDetector(nn.Module):
    """A backbone, an optional neck and a dense head.

    Args:
        backbone: config or module; returns a tuple of feature maps.
        neck: config or module (or None); maps the backbone's features to the head's levels.
        bbox_head: config or module; ``train_cfg`` and ``test_cfg`` are passed to it.
        train_cfg: assignment settings (``assigner``, ``allowed_border``, ``pos_weight`` ...).
        test_cfg: post-processing settings (``nms_pre``, ``score_thr``, ``nms``,
            ``max_per_img`` ...).
        pretrained: deprecated: a checkpoint for the backbone (use the backbone's init_cfg).
        init_cfg: initialization of the whole detector, e.g. ``dict(type='Pretrained',
            checkpoint=...)`` for a detector checkpoint.

    Attributes:
        CLASSES: names of the classes (set by the trainer or by the user), copied into every
            DetResult.
    """

    CLASSES: tuple[str, ...] | None = None

    def __init__(self, backbone: Mapping | nn.Module,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None = None,
                 bbox_head: Mapping | nn.Module | None = None,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        self.backbone = MODELS.build(backbone, **_pretrained_arg(backbone, pretrained))
        self.neck = build_neck(neck)  # a list of necks runs them in order (Libra's BFP)
        if bbox_head is None:
            raise ConfigError(f"{type(self).__name__} needs a bbox_head (model.bbox_head)")
        self.bbox_head = MODELS.build(bbox_head, train_cfg=train_cfg, test_cfg=test_cfg)
        self.train_cfg, self.test_cfg, self.init_cfg = thaw(train_cfg), thaw(test_cfg), \
            thaw(init_cfg)
        self._check_channels()
        self._strides_checked = False  # the first forward compares them with the maps'

    def _check_channels(self) -> None:
        """Fail early, naming the config keys, when the parts do not fit together."""
        out = getattr(self.backbone, "out_channels", None)
        if self.neck is not None:
            want = getattr(self.neck, "in_channels", None)
            if out is not None and want is not None and list(want) != list(out):
                raise ConfigError(f"model.neck.in_channels={list(want)} does not match the "
                                  f"backbone's outputs {list(out)} (model.backbone.out_indices="
                                  f"{getattr(self.backbone, 'out_indices', '?')}); set "
                                  f"model.neck.in_channels={list(out)}")
            out = getattr(self.neck, "out_channels", None)
            out = [out] * getattr(self.neck, "num_outs", 1) if isinstance(out, int) else out
        head_in = getattr(self.bbox_head, "in_channels", None)
        if out is not None and head_in is not None and set(out) != {head_in}:
            raise ConfigError(f"model.bbox_head.in_channels={head_in} does not match the "
                              f"{'neck' if self.neck is not None else 'backbone'}'s output "
                              f"channels {sorted(set(out))}")
        levels = getattr(getattr(self.bbox_head, "prior_generator", None), "num_levels", None)
        # a head that reads the leading maps (YOLOXHead, as in MMDetection) builds with more
        # maps than levels; the first forward warns (FeatureStrideWarning)
        reads_leading = getattr(self.bbox_head, "reads_leading_levels", False)
        if out is not None and levels is not None and levels != len(out) \
                and not (reads_leading and levels < len(out)):
            raise ConfigError(f"model.bbox_head's priors have {levels} levels (the strides of "
                              f"bbox_head.anchor_generator, or bbox_head.strides) but the "
                              f"{'neck' if self.neck is not None else 'backbone'} gives "
                              f"{len(out)} feature maps (model.neck.num_outs)")

    @property
    def with_neck(self) -> bool:
        """Whether the detector has a neck."""
        return self.neck is not None

    def init_weights(self) -> None:
        """Initialize every part (loading pretrained weights where a part's init_cfg says so);
        a ``Pretrained`` init_cfg of the detector itself loads the whole detector instead."""
        if is_pretrained(self.init_cfg):
            initialize(self, self.init_cfg)
            return
        initialize(self, self.init_cfg)
        for part in (self.backbone, self.neck, self.bbox_head):
            if part is not None and callable(getattr(part, "init_weights", None)):
                part.init_weights()

    def extract_feat(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` images -> the feature maps the head reads."""
        _check_images(images)
        feats = self.backbone(images)
        return tuple(self.neck(feats) if self.neck is not None else feats)

    def forward(self, images: torch.Tensor) -> Any:
        """Raw head outputs of ``(B, 3, H, W)`` images: a dense head's tuple of per-level map
        lists, e.g. (classification maps, regression maps[, score-factor maps]).

        The first call also compares the head's strides with the maps' sizes and warns once
        (:class:`FeatureStrideWarning`) when they disagree."""
        feats = self.extract_feat(images)
        if not self._strides_checked:
            self._strides_checked = True
            problem = feature_stride_mismatch(self.bbox_head, self.neck, images, feats)
            if problem is not None:
                warnings.warn(problem, FeatureStrideWarning, stacklevel=_outside_stacklevel())
        return self.bbox_head(feats)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses of a training batch (every key starts with ``loss``; the trainer sums them)."""
        raw = self.forward(batch.images)
        return self.bbox_head.loss(raw, batch.targets, batch.metas)

    @torch.no_grad()
    def predict(self, batch: Batch, rescale: bool = True) -> list[DetResult]:
        """Detections of each image of ``batch``: boxes in original-image pixels with
        ``rescale`` (else in the network input's pixels), the detector's ``CLASSES`` as class
        names. Runs without gradients; call ``model.eval()`` first, as for any inference."""
        raw = self.forward(batch.images)
        results = self.bbox_head.predict(raw, batch.metas, rescale=rescale)
        classes = tuple(self.CLASSES) if self.CLASSES is not None else None
        for result in results:
            result.class_names = classes
        return results


class FeatureStrideWarning(UserWarning):
    """The head's strides are not those of the feature maps it reads, or the neck gives maps
    the head never reads: the model trains, but its priors sit in the wrong places."""


def _outside_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the function calling this one) of the
    first caller outside detlab's models and torch: the user's line, not torch's call
    machinery or ``loss`` / ``predict``."""
    inside = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
              os.path.dirname(os.path.abspath(torch.__file__)))
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 2


def _stride_key(head: nn.Module) -> str:
    """The config key of a head's strides (``strides``, ``point_strides`` or
    ``anchor_generator.strides``)."""
    params = inspect.signature(type(head).__init__).parameters
    if "strides" in params:
        return "model.bbox_head.strides"
    if "point_strides" in params:  # RepPoints
        return "model.bbox_head.point_strides"
    if "anchor_generator" in params:
        return "model.bbox_head.anchor_generator.strides"
    return "model.bbox_head's prior strides"


def real_stride(size: int, cells: int) -> int:
    """The stride of a map of ``cells`` over ``size`` input pixels, as the power of two
    nearest to the ratio (maps are ``ceil`` or ``floor`` of the size over the stride)."""
    return 2 ** round(math.log2(size / cells))


def feature_stride_mismatch(head: nn.Module, neck: nn.Module | None, images: torch.Tensor,
                            feats: Sequence[torch.Tensor]) -> str | None:
    """A message saying what to change when the head's prior strides disagree with the maps it
    reads (a map of a ``(H, W)`` input at stride ``s`` has ``floor`` or ``ceil`` of ``H / s``
    rows), or when the neck gives more maps than the head reads; None when all agree.

    Works on any head with a ``prior_generator``; the others are not checked."""
    generator = getattr(head, "prior_generator", None)
    if generator is None or not hasattr(generator, "strides"):
        return None
    height, width = images.shape[-2:]
    used = feats[:generator.num_levels]
    nominal = [tuple(s) if isinstance(s, Sequence) else (s, s) for s in generator.strides]
    real = [real_stride(height, f.shape[-2]) for f in used]
    wrong = any(f.shape[-1] not in (width // sw, -(-width // sw))
                or f.shape[-2] not in (height // sh, -(-height // sh))
                for f, (sw, sh) in zip(used, nominal, strict=False))
    unread = len(feats) - len(used)
    if not wrong and not unread:
        return None
    name = type(head).__name__
    shown = [sw if sw == sh else (sw, sh) for sw, sh in nominal]
    sizes = ", ".join(f"{f.shape[-2]}x{f.shape[-1]}" for f in used)
    parts, fixes = [], []
    if wrong:
        parts.append(f"{_stride_key(head)}={shown} are not the strides of the feature maps "
                     f"{name} reads: for the {height}x{width} input they are {sizes}, i.e. at "
                     f"strides {real}, so its priors and box decoding assume cells of the "
                     f"wrong size")
        fixes.append(f"{_stride_key(head)}={real}")
    if unread:
        num_outs = getattr(neck, "num_outs", None)
        where = f"model.neck.num_outs={num_outs}" if num_outs is not None else "the neck"
        parts.append(f"the neck gives {len(feats)} maps ({where}) and {name} reads only the "
                     f"first {len(used)}; the others are computed for nothing")
        fixes.append(f"model.neck.num_outs={len(used)}" if num_outs is not None
                     else f"a neck with {len(used)} outputs")
    return f"{'; '.join(parts)}. Set {' and '.join(fixes)}."


def _pretrained_arg(backbone: Mapping | nn.Module, pretrained: str | None) -> dict[str, Any]:
    """MMDetection's deprecated ``pretrained=`` of a detector goes to its backbone."""
    if not pretrained:
        return {}
    warnings.warn("the pretrained argument of a detector is deprecated; use "
                  "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)",
                  DeprecationWarning, stacklevel=3)
    if not isinstance(backbone, Mapping):
        raise ConfigError("pretrained= needs the backbone as a config dict, not a built module")
    return {"pretrained": pretrained}

"""YOLOX (Ge et al., 2021): CSPDarknet, YOLOXPAFPN and :class:`~detlab.models.heads.YOLOXHead`,
trained at a random input size that changes every ``random_size_interval`` iterations."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detlab.dist import broadcast_object, get_dist_info
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS
from detlab.structures import Batch


@MODELS.register_module()
class YOLOX(SingleStageDetector):
    """YOLOX with MMDetection 2.28's multi-scale training.

    A training batch is resized (bilinear) from ``input_size`` to the current size, its boxes
    scaled alike (the metas are left as they are, as MMDetection leaves them); after every
    ``random_size_interval`` training iterations the main process draws the next size,
    ``size_multiplier * randint(*random_size_range)`` high and as wide times ``input_size``'s
    aspect ratio, and every process takes it. The first interval trains at ``input_size``;
    testing always runs at the batch's own size.

    Args:
        input_size: the pipeline's (height, width).
        size_multiplier: the sizes' step.
        random_size_range: the range of the drawn size, in steps (both ends included).
        random_size_interval: iterations between draws.
        Others as :class:`SingleStageDetector`.
    """

    def __init__(self, backbone: Mapping | nn.Module, neck: Mapping | nn.Module | None,
                 bbox_head: Mapping | nn.Module, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, pretrained: str | None = None,
                 input_size: Sequence[int] = (640, 640), size_multiplier: int = 32,
                 random_size_range: Sequence[int] = (15, 25), random_size_interval: int = 10,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
        self._default_input_size = tuple(input_size)
        self._input_size = tuple(input_size)
        self._random_size_range = tuple(random_size_range)
        self._random_size_interval = random_size_interval
        self._size_multiplier = size_multiplier
        self._progress_in_iter = 0

    def _resize(self, batch: Batch) -> Batch:
        scale_y = self._input_size[0] / self._default_input_size[0]
        scale_x = self._input_size[1] / self._default_input_size[1]
        if scale_x == 1 and scale_y == 1:
            return batch
        images = F.interpolate(batch.images, size=self._input_size, mode="bilinear",
                               align_corners=False)
        factor = torch.tensor([scale_x, scale_y, scale_x, scale_y])
        targets = [dict(t, boxes=t["boxes"] * factor.to(t["boxes"]))
                   if "boxes" in t else dict(t) for t in batch.targets]
        return Batch(images, targets, batch.metas)

    def _random_size(self) -> tuple[int, int]:
        size = None
        if get_dist_info()[0] == 0:
            steps = random.randint(*self._random_size_range)
            aspect = float(self._default_input_size[1]) / self._default_input_size[0]
            size = (self._size_multiplier * steps, self._size_multiplier * int(aspect * steps))
        return tuple(broadcast_object(size))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses of a training batch at the current input size (see the class docstring)."""
        losses = super().loss(self._resize(batch))
        if (self._progress_in_iter + 1) % self._random_size_interval == 0:
            self._input_size = self._random_size()
        self._progress_in_iter += 1
        return losses

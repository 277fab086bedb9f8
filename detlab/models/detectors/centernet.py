"""CenterNet (Zhou et al., 2019, "Objects as Points"): ResNet, CTResNetNeck and
:class:`~detlab.models.heads.CenterNetHead` on one stride-4 map, with MMDetection's flip
test-time augmentation (:meth:`CenterNet.predict_flip`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detlab.config import ConfigError
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.models.detectors.yolof import check_one_level_channels
from detlab.models.heads.nms import multiclass_nms
from detlab.registry import MODELS
from detlab.structures import Batch, DetResult

# the map dimensions a flip mirrors, per flip_direction
FLIP_DIMS = {"horizontal": [3], "vertical": [2], "diagonal": [2, 3]}


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

    @torch.no_grad()
    def predict_flip(self, batches: Sequence[Batch], rescale: bool = True) -> list[DetResult]:
        """MMDetection's test-time augmentation of CenterNet: ``batches`` come in pairs of the
        same images, plain then flipped (``flip`` and ``flip_direction`` in the second's
        metas). For each pair, the heatmaps and sizes are averaged with the flipped ones
        mirrored back and decoded with the plain images' offsets and metas; the pairs'
        detections of each image are joined, and, when ``test_cfg`` has ``nms_cfg``, reduced
        by ``test_cfg.nms`` and ``max_per_img``."""
        if not batches or len(batches) % 2:
            raise ValueError(f"predict_flip takes pairs of batches (plain, flipped), got "
                             f"{len(batches)}")
        head = self.bbox_head
        per_pair = []
        for plain, flipped in zip(batches[0::2], batches[1::2], strict=True):
            direction = flipped.metas[0].get("flip_direction") if flipped.metas[0].get("flip") \
                else None
            if direction not in FLIP_DIMS:
                raise ValueError("the second batch of each predict_flip pair must be flipped "
                                 "(metas with flip=True and flip_direction horizontal, vertical "
                                 "or diagonal)")
            num = plain.images.shape[0]
            heatmaps, whs, offsets = self.forward(torch.cat([plain.images, flipped.images]))
            dims = FLIP_DIMS[direction]
            heatmap = (heatmaps[0][:num] + heatmaps[0][num:].flip(dims)) / 2
            wh = (whs[0][:num] + whs[0][num:].flip(dims)) / 2
            per_pair.append(head.predict(([heatmap], [wh], [offsets[0][:num]]), plain.metas,
                                         rescale=rescale))
        use_nms = "nms_cfg" in head.test_cfg
        if use_nms and "nms" not in head.test_cfg:
            raise ConfigError("CenterNet's test_cfg has nms_cfg, so flip testing runs NMS with "
                              "test_cfg.nms: add it, e.g. nms=dict(type='nms', "
                              "iou_threshold=0.5)")
        classes = tuple(self.CLASSES) if self.CLASSES is not None else None
        results = []
        for image in zip(*per_pair, strict=True):
            boxes = torch.cat([r.boxes for r in image])
            scores = torch.cat([r.scores for r in image])
            labels = torch.cat([r.labels for r in image])
            if use_nms:
                keep, scores = multiclass_nms(boxes, scores, labels, head.test_cfg["nms"],
                                              head.test_cfg.get("max_per_img"))
                boxes, labels = boxes[keep], labels[keep]
            results.append(DetResult(boxes, scores, labels, class_names=classes,
                                     meta=dict(image[0].meta)))
        return results

    def predict_aug(self, batches: Sequence[Batch]) -> list[DetResult]:
        """The tester's entry for test-time augmentation (``MultiScaleFlipAug(flip=True)``
        gives the plain and flipped batches of each scale in turn): :meth:`predict_flip`."""
        return self.predict_flip(batches)

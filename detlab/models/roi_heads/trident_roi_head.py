"""TridentNet's RoI head (MMDetection 2.28's ``TridentRoIHead``): a StandardRoIHead whose
inputs come branch by branch -- the backbone stacks its branches on the batch dimension and
the detector repeats each image's meta and ground truth once per branch -- and whose test-time
detections of an image's branches are merged by one more class-aware NMS, best
``max_per_img`` kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from detlab.config import ConfigError
from detlab.models.heads.nms import check_nms_cfg, multiclass_nms
from detlab.models.heads.postprocess import result_meta
from detlab.models.roi_heads.standard_roi_head import StandardRoIHead
from detlab.registry import MODELS
from detlab.structures import DetResult


@MODELS.register_module()
class TridentRoIHead(StandardRoIHead):
    """Arguments: ``num_branch`` (the backbone's), ``test_branch_idx`` (the branch that runs
    at test time, -1 for all), and :class:`StandardRoIHead`'s."""

    def __init__(self, num_branch: int, test_branch_idx: int, **kwargs) -> None:
        if not -1 <= test_branch_idx < num_branch:
            raise ConfigError(f"roi_head.test_branch_idx must be -1 (all branches) or a branch "
                              f"index below num_branch={num_branch}, got {test_branch_idx!r}")
        self.num_branch, self.test_branch_idx = num_branch, test_branch_idx
        super().__init__(**kwargs)

    @property
    def test_branches(self) -> int:
        """Branches the backbone runs in the current mode."""
        return self.num_branch if self.training or self.test_branch_idx == -1 else 1

    def merge_trident_bboxes(self, boxes: torch.Tensor, labels: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One image's ``(n, 5)`` detections of all its branches -> class-aware NMS
        (``test_cfg.nms``), the best ``test_cfg.max_per_img``."""
        if boxes.numel() == 0:
            return boxes.new_zeros((0, 5)), boxes.new_zeros((0,), dtype=torch.long)
        nms_cfg = check_nms_cfg(self.test_cfg["nms"], "model.test_cfg.rcnn.nms")
        max_num = self.test_cfg.get("max_per_img", -1)
        keep, scores = multiclass_nms(boxes[:, :4], boxes[:, 4].contiguous(), labels, nms_cfg,
                                      max_num if max_num > 0 else None)
        return torch.cat([boxes[keep, :4], scores[:, None]], dim=1), labels[keep]

    def predict(self, feats: Sequence[torch.Tensor], proposals: Sequence[torch.Tensor],
                metas: Sequence[Mapping], rescale: bool = True) -> list[DetResult]:
        """Detections of each image from the branch-major ``proposals`` / ``metas`` (branch
        0's images first): each branch's detections, then an image's branches merged.

        MMDetection groups ``num_branch`` consecutive entries as one image, which is the same
        for one image per batch or ``test_branch_idx >= 0`` (one branch); with several images
        and all branches, detlab merges each image's own branches."""
        if self.with_mask:
            raise ConfigError("TridentRoIHead has no mask branch (as MMDetection's); remove "
                              "model.roi_head.mask_head")
        if self.test_cfg is None:
            raise ConfigError("TridentRoIHead.predict needs model.test_cfg.rcnn (score_thr, "
                              "nms, max_per_img)")
        branches = self.test_branches
        if len(metas) % branches:
            raise ValueError(f"TridentRoIHead.predict got {len(metas)} metas, not a multiple "
                             f"of its {branches} branches")
        det_bboxes, det_labels = self.simple_test_bboxes(feats, metas, proposals, self.test_cfg,
                                                         rescale=rescale)
        num_images = len(metas) // branches
        results = []
        for image in range(num_images):
            entries = [image + branch * num_images for branch in range(branches)]
            boxes, labels = self.merge_trident_bboxes(
                torch.cat([det_bboxes[i].reshape(-1, 5) for i in entries]),
                torch.cat([det_labels[i] for i in entries]))
            results.append(DetResult(boxes=boxes[:, :4], scores=boxes[:, 4], labels=labels,
                                     meta=result_meta(metas[image])))
        return results

"""Hybrid Task Cascade's semantic segmentation branch (MMDetection 2.28's
``FusedSemanticHead``).

Every FPN level goes through its own 1x1 conv (``lateral_convs.i``) and is resized (bilinear,
``align_corners=True``) to level ``fusion_level``'s size, where they are summed; ``num_convs``
3x3 convs follow. Two 1x1 outputs: ``conv_logits``, the per-pixel class logits trained against
the batch's semantic maps, and ``conv_embedding``, the semantic features the HTC RoI head pools
(``semantic_roi_extractor``) and adds to its box and mask RoI features.

The loss (``loss_seg``, cross-entropy ignoring label 255 with weight 0.2 in the zoo) compares
the logits with each target's ``semantic_seg``: the pipeline's ``LoadAnnotations(with_seg=True)``
map scaled by ``SegRescale(scale_factor=1/8)`` to the fused level's stride. The batch pads the
maps with 255 to the images' size; the head keeps their top-left part of its own size, which is
what MMDetection's collate gives (it pads the small maps among themselves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.init import initialize
from detlab.models.utils import ConvModule, frozen, thaw
from detlab.registry import MODELS

SEG_LOSS = frozen(type="CrossEntropyLoss", ignore_index=255, loss_weight=0.2)
SEG_INIT = frozen(type="Kaiming", override=dict(name="conv_logits"))


@MODELS.register_module()
class FusedSemanticHead(nn.Module):
    """Multi-level features fused at one level into semantic logits and features.

    Args:
        num_ins: feature levels it takes (5 for an FPN).
        fusion_level: the level whose size the others are resized to (1: stride 8).
        num_convs: 3x3 convs after the fusion.
        in_channels: channels of each level.
        conv_out_channels: channels of the convs and of the semantic features.
        num_classes: semantic classes (183 for COCO-stuff's stuffthingmaps).
        conv_cfg, norm_cfg: of the convs.
        ignore_label, loss_weight: deprecated spellings of ``loss_seg``'s ``ignore_index`` and
            ``loss_weight`` (MMDetection still reads them).
        loss_seg: the per-pixel loss.
        init_cfg: initialization (He init of ``conv_logits`` by default).
    """

    def __init__(self, num_ins: int, fusion_level: int, num_convs: int = 4,
                 in_channels: int = 256, conv_out_channels: int = 256, num_classes: int = 183,
                 conv_cfg: Mapping | None = None, norm_cfg: Mapping | None = None,
                 ignore_label: int | None = None, loss_weight: float | None = None,
                 loss_seg: Mapping[str, Any] = SEG_LOSS,
                 init_cfg: Mapping | Sequence[Mapping] | None = SEG_INIT) -> None:
        super().__init__()
        if not 0 <= fusion_level < num_ins:
            raise ConfigError(f"semantic_head.fusion_level {fusion_level} is not one of its "
                              f"num_ins={num_ins} input levels: use 0..{num_ins - 1}")
        self.num_ins, self.fusion_level, self.num_convs = num_ins, fusion_level, num_convs
        self.in_channels, self.conv_out_channels = in_channels, conv_out_channels
        self.num_classes, self.conv_cfg, self.norm_cfg = num_classes, conv_cfg, norm_cfg
        self.init_cfg = thaw(init_cfg) if init_cfg is not None else None
        self.lateral_convs = nn.ModuleList(
            ConvModule(in_channels, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                       inplace=False) for _ in range(num_ins))
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3,
                       padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs))
        self.conv_embedding = ConvModule(conv_out_channels, conv_out_channels, 1,
                                         conv_cfg=conv_cfg, norm_cfg=norm_cfg)
        self.conv_logits = nn.Conv2d(conv_out_channels, num_classes, 1)
        loss_seg = thaw(loss_seg)
        if ignore_label:
            loss_seg["ignore_index"] = ignore_label
        if loss_weight:
            loss_seg["loss_weight"] = loss_weight
        self.criterion = MODELS.build(loss_seg)
        self.ignore_index = loss_seg.get("ignore_index", 255)

    def init_weights(self) -> None:
        """``init_cfg`` (He init of ``conv_logits``); the ConvModules keep their own."""
        initialize(self, self.init_cfg)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature levels -> ``(logits (N, num_classes, h, w), features (N,
        conv_out_channels, h, w))`` at level ``fusion_level``'s size."""
        if len(feats) < self.num_ins:
            raise ValueError(f"FusedSemanticHead takes {self.num_ins} feature levels, got "
                             f"{len(feats)}")
        x = self.lateral_convs[self.fusion_level](feats[self.fusion_level])
        size = tuple(x.shape[-2:])
        for i, feat in enumerate(feats[:self.num_ins]):
            if i != self.fusion_level:
                feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=True)
                x = x + self.lateral_convs[i](feat)
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(x), self.conv_embedding(x)

    def loss(self, mask_pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The per-pixel loss of ``(N, C, h, w)`` logits against ``(N, H, W)`` (or ``(N, 1, H,
        W)``) label maps of at least the logits' size (their top-left ``h x w`` is used; label
        ``ignore_index`` is ignored)."""
        labels = labels.reshape(labels.shape[0], *labels.shape[-2:]).long()
        h, w = mask_pred.shape[-2:]
        if labels.shape[-2] < h or labels.shape[-1] < w:
            raise ValueError(f"the semantic maps ({tuple(labels.shape[-2:])}) are smaller than "
                             f"the semantic head's output ({h}, {w}): scale them to its stride "
                             "with SegRescale(scale_factor=1 / 8) after Pad(size_divisor=32) "
                             "in the train pipeline")
        return self.criterion(mask_pred, labels[:, :h, :w])

    def semantic_targets(self, targets: Sequence[Mapping]) -> torch.Tensor:
        """The batch's ``(N, H, W)`` semantic maps (each target's ``semantic_seg``)."""
        missing = [i for i, t in enumerate(targets) if t.get("semantic_seg") is None]
        if missing:
            raise ConfigError(f"image {missing[0]} of the batch has no semantic map, which the "
                              "semantic head (model.roi_head.semantic_head) trains on: load "
                              "them with LoadAnnotations(with_seg=True) and "
                              "SegRescale(scale_factor=1 / 8), collect 'gt_semantic_seg' and "
                              "give the dataset a seg_prefix; or remove semantic_head and "
                              "semantic_roi_extractor (htc_without_semantic)")
        return torch.stack([torch.as_tensor(t["semantic_seg"]) for t in targets])

"""Cascade RPN (Vu et al., 2019), as MMDetection 2.28's ``CascadeRPNHead``: a sequence of RPN
stages, each refining the anchors the stage before it regressed, with convs that sample the
features where the anchors are (adaptive convolution).

- :class:`StageCascadeRPNHead` -- one stage: an :class:`AdaptiveConv` (``rpn_conv``: a dilated
  conv, ``adapt_cfg=dict(type='dilation', dilation=3)``, for the first stage's uniform anchors;
  a deformable conv whose offsets come from the anchors' centers and sizes, ``type='offset'``,
  for the refined ones), ``rpn_reg`` and, ``with_cls``, ``rpn_cls``. ``bridged_feature`` passes
  its conv's output on as the next stage's features. Targets come from ``RegionAssigner`` (the
  first stage; without sampling the losses are divided by ``anchors / 200``) or from
  :class:`~detlab.models.heads.anchor_head.AnchorHead`'s assigner-and-sampler path on the
  image's own refined anchors.
- :class:`CascadeRPNHead` -- ``num_stages`` stages built from ``stages`` with
  ``train_cfg[i]`` each and the shared ``test_cfg``; losses ``s{i}.loss_rpn_reg`` (and
  ``s{i}.loss_rpn_cls``); proposals from the last stage on the last refined anchors.

It offers the proposal interface of :class:`~detlab.models.heads.rpn_head.RPNHead`
(``loss_by_feats``, ``loss_and_proposals``, ``proposals``). As in MMDetection, the proposals of
a training pass follow ``test_cfg``, not ``proposal_cfg``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.assigners import PseudoSampler
from detlab.models.assigners.region_assigner import RegionAssigner
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.heads.postprocess import levels_to_rows
from detlab.models.heads.rpn_head import DELTA_CODER, SIGMOID_CE, SMOOTH_L1, RPNHead
from detlab.models.init import initialize
from detlab.models.ops.deform_conv import DeformConv2d
from detlab.models.utils import frozen, thaw
from detlab.registry import MODELS

STAGE_ANCHORS = frozen(type="AnchorGenerator", scales=(8,), ratios=(1.0,),
                       strides=(4, 8, 16, 32, 64))
DILATION = frozen(type="dilation", dilation=3)
ADAPT_TYPES = ("offset", "dilation")


class AdaptiveConv(nn.Module):
    """A 3x3 conv that samples where the anchors are: ``type='dilation'`` -- a plain conv with
    ``dilation`` (and padding as much), for anchors of one size per level; ``'offset'`` -- a
    deformable conv (no bias) given offsets ``(B, H*W, 18)`` per location. The weights start
    normal, std 0.01 (MMDetection's init)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 1, dilation: int = 3, groups: int = 1,
                 bias: bool = False, type: str = "dilation") -> None:
        super().__init__()
        if type not in ADAPT_TYPES:
            raise ConfigError(f"adapt_cfg.type must be one of {ADAPT_TYPES}, got {type!r}")
        if kernel_size != 3:
            raise ConfigError(f"adapt_cfg.kernel_size must be 3 (adaptive convs are 3x3), got "
                              f"{kernel_size!r}")
        self.adapt_type = type
        if type == "offset":
            if (stride, padding, groups) != (1, 1, 1):
                raise ConfigError("adapt_cfg with type='offset' needs stride=1, padding=1, "
                                  f"groups=1; got {stride}, {padding}, {groups}")
            self.conv = DeformConv2d(in_channels, out_channels, kernel_size, padding=padding,
                                     stride=stride, groups=groups, bias=bias)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation,
                                  dilation=dilation)
        nn.init.normal_(self.conv.weight, 0.0, 0.01)
        if getattr(self.conv, "bias", None) is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        if self.adapt_type == "offset":
            if offset is None:
                raise ValueError("an offset AdaptiveConv needs the anchors' offsets")
            n, _, h, w = x.shape
            return self.conv(x, offset.permute(0, 2, 1).reshape(n, -1, h, w).contiguous())
        return self.conv(x)


def anchor_offsets(anchors: torch.Tensor, strides: Sequence[int],
                   featmap_sizes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Per level ``(B, H*W, 18)`` offsets of a 3x3 deformable conv that samples each location's
    anchor (``anchors``: ``(B, A, 4)`` of all levels, one per location): from the cell to the
    anchor's center, plus the kernel spread to the anchor's size, ``(dy, dx)`` per tap."""
    taps = torch.arange(-1, 2, dtype=anchors.dtype, device=anchors.device)
    tap_y, tap_x = torch.meshgrid(taps, taps, indexing="ij")
    tap_x, tap_y = tap_x.reshape(-1), tap_y.reshape(-1)
    out, start = [], 0
    for stride, (h, w) in zip(strides, featmap_sizes, strict=True):
        level = anchors[:, start:start + h * w]
        start += h * w
        cx = (level[..., 0] + level[..., 2]) * 0.5
        cy = (level[..., 1] + level[..., 3]) * 0.5
        cx, cy = cx / stride, cy / stride
        grid_y, grid_x = torch.meshgrid(torch.arange(0, h, device=anchors.device),
                                        torch.arange(0, w, device=anchors.device),
                                        indexing="ij")
        center_x = cx - grid_x.reshape(-1).type_as(cx)
        center_y = cy - grid_y.reshape(-1).type_as(cy)
        width = (level[..., 2] - level[..., 0]) / stride
        height = (level[..., 3] - level[..., 1]) / stride
        width, height = width / 2 - 1, height / 2 - 1
        offset_x = width[..., None] * tap_x + center_x[..., None]
        offset_y = height[..., None] * tap_y + center_y[..., None]
        out.append(torch.stack([offset_y, offset_x], dim=-1).reshape(*level.shape[:2], -1))
    return out


@MODELS.register_module()
class StageCascadeRPNHead(RPNHead):
    """One stage of Cascade RPN.

    Args:
        in_channels: channels of the input feature maps.
        anchor_generator: the first stage's anchors (one per location: one scale, one ratio).
        adapt_cfg: the :class:`AdaptiveConv` (``type``, ``dilation`` ...).
        bridged_feature: pass this stage's conv output on as the next stage's features.
        with_cls: predict objectness (the last stage must).
        sampling: sample the assigned anchors with ``train_cfg.sampler`` (else all count).
        init_cfg: weight initialization (default: normal std 0.01 of the output convs).
        feat_channels, bbox_coder, reg_decoded_bbox, loss_cls, loss_bbox, train_cfg, test_cfg,
            num_classes: as :class:`RPNHead`.
    """

    def __init__(self, in_channels: int, anchor_generator: Mapping | Any = STAGE_ANCHORS,
                 adapt_cfg: Mapping = DILATION, bridged_feature: bool = False,
                 with_cls: bool = True, sampling: bool = True,
                 init_cfg: Mapping | Sequence[Mapping] | None = None, feat_channels: int = 256,
                 bbox_coder: Mapping | Any = DELTA_CODER, reg_decoded_bbox: bool = False,
                 loss_cls: Mapping | nn.Module = SIGMOID_CE,
                 loss_bbox: Mapping | nn.Module = SMOOTH_L1, train_cfg: Mapping | None = None,
                 test_cfg: Mapping | None = None, num_classes: int = 1) -> None:
        self.with_cls, self.bridged_feature = with_cls, bridged_feature
        self.adapt_cfg = thaw(adapt_cfg)
        if init_cfg is None:
            init_cfg = dict(type="Normal", std=0.01, override=[dict(name="rpn_reg")] + (
                [dict(name="rpn_cls")] if with_cls else []))
        super().__init__(in_channels, init_cfg=init_cfg, feat_channels=feat_channels,
                         anchor_generator=anchor_generator, bbox_coder=bbox_coder,
                         reg_decoded_bbox=reg_decoded_bbox, loss_cls=loss_cls,
                         loss_bbox=loss_bbox, train_cfg=train_cfg, test_cfg=test_cfg,
                         num_classes=num_classes)
        generator = self.prior_generator
        if getattr(generator, "scales", None) is None or len(generator.scales) != 1 \
                or self.num_base_priors != 1:
            raise ConfigError("StageCascadeRPNHead needs one anchor per location: "
                              "anchor_generator with one scale and one ratio")
        self.anchor_strides = [s[0] if isinstance(s, Sequence) else s for s in generator.strides]
        self.anchor_scales = [float(s) for s in generator.scales]
        # MMDetection's stage decides sampling itself (not by the loss type)
        self.sampling = sampling
        self.sampler = MODELS.build(self.train_cfg["sampler"]) \
            if sampling and "sampler" in self.train_cfg else PseudoSampler()
        del self.rpn_conv, self.rpn_cls
        self.rpn_conv = AdaptiveConv(in_channels, feat_channels, **self.adapt_cfg)
        if with_cls:
            self.rpn_cls = nn.Conv2d(feat_channels, self.num_base_priors * self.cls_out_channels,
                                     1)
        self.relu = nn.ReLU(inplace=True)
        # registration order as MMDetection's (rpn_conv, rpn_cls, rpn_reg): state_dict order
        self._modules["rpn_reg"] = self._modules.pop("rpn_reg")
        initialize(self, init_cfg, load_pretrained=False)

    def forward_single(self, x: torch.Tensor, offset: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One level: the features for the next stage, objectness logits (None without
        ``with_cls``) and deltas."""
        bridged = x
        x = self.relu(self.rpn_conv(x, offset))
        if self.bridged_feature:
            bridged = x
        return bridged, self.rpn_cls(x) if self.with_cls else None, self.rpn_reg(x)

    def forward(self, feats: Sequence[torch.Tensor],
                offsets: Sequence[torch.Tensor] | None = None) -> tuple[list, ...]:
        """Every level -> (features, objectness logits or Nones, deltas), each a level list;
        ``offsets`` per level for an offset AdaptiveConv."""
        offsets = [None] * len(feats) if offsets is None else offsets
        outs = [self.forward_single(x, o) for x, o in zip(feats, offsets, strict=True)]
        return tuple(list(maps) for maps in zip(*outs, strict=True))

    # ---- targets and loss ---------------------------------------------------------------------

    def stage_loss(self, anchors: torch.Tensor, valid: torch.Tensor,
                   cls_scores: Sequence[torch.Tensor | None], bbox_preds: Sequence[torch.Tensor],
                   gts: Sequence[GroundTruth], metas: Sequence[Mapping]
                   ) -> dict[str, torch.Tensor]:
        """``loss_rpn_reg`` (and ``loss_rpn_cls``) of this stage's outputs for the ``(B, A, 4)``
        anchors of each image (valid in ``(B, A)``)."""
        self.check_trainable()
        sizes = [tuple(p.shape[-2:]) for p in bbox_preds]
        num_level = [h * w * self.num_base_priors for h, w in sizes]
        if isinstance(self.assigner, RegionAssigner):
            per_image = [self._region_targets(anchors[i], valid[i], num_level, sizes, gts[i],
                                              metas[i]) for i in range(len(metas))]
        else:
            per_image = [self.targets_per_image(anchors[i], valid[i], num_level, gts[i],
                                                metas[i]) for i in range(len(metas))]
        labels, label_weights, bbox_targets, bbox_weights, samples = zip(*per_image,
                                                                          strict=True)
        if self.sampling:
            avg_factor = float(sum(max(0 if s is None else len(s.pos_inds), 1) for s in samples)
                               + sum(max(0 if s is None else len(s.neg_inds), 1)
                                     for s in samples))
        else:
            avg_factor = sum(len(lbl) for lbl in labels) / 200.0
        reg = levels_to_rows(bbox_preds, 4).reshape(-1, 4)
        if self.reg_decoded_bbox:
            reg = self.bbox_coder.decode(anchors.reshape(-1, 4), reg)
        losses = {}
        if self.with_cls:
            cls = levels_to_rows(cls_scores, self.cls_out_channels)
            losses["loss_rpn_cls"] = self.loss_cls(
                cls.reshape(-1, self.cls_out_channels), torch.stack(labels).reshape(-1),
                torch.stack(label_weights).reshape(-1), avg_factor=avg_factor)
        losses["loss_rpn_reg"] = self.loss_bbox(reg, torch.stack(bbox_targets).reshape(-1, 4),
                                                torch.stack(bbox_weights).reshape(-1, 4),
                                                avg_factor=avg_factor)
        return losses

    def _region_targets(self, anchors: torch.Tensor, valid: torch.Tensor,
                        num_level: Sequence[int], sizes: Sequence[tuple[int, int]],
                        gt: GroundTruth, meta: Mapping) -> tuple:
        """Targets of one image's anchors by the RegionAssigner. As MMDetection's, positives
        get label 1 (the background index of a one-class head): the stage that uses this
        assigner has no objectness branch in the zoo."""
        assign = self.assigner.assign(
            anchors, gt.boxes, num_level_priors=num_level, featmap_sizes=sizes,
            anchor_scale=self.anchor_scales[0], anchor_strides=self.anchor_strides,
            valid_flags=valid, img_shape=meta["img_shape"],
            allowed_border=self.train_cfg.get("allowed_border", 0))
        sample = self.sampler.sample(assign, anchors, gt.boxes)
        num = anchors.shape[0]
        labels = anchors.new_zeros(num, dtype=torch.long)
        label_weights = anchors.new_zeros(num)
        bbox_targets, bbox_weights = torch.zeros_like(anchors), torch.zeros_like(anchors)
        pos, neg = sample.pos_inds, sample.neg_inds
        if len(pos) > 0:
            bbox_targets[pos] = sample.pos_gt_bboxes if self.reg_decoded_bbox \
                else self.bbox_coder.encode(sample.pos_bboxes, sample.pos_gt_bboxes)
            bbox_weights[pos] = 1.0
            labels[pos] = 1
            pos_weight = self.train_cfg.get("pos_weight", -1)
            label_weights[pos] = 1.0 if pos_weight <= 0 else float(pos_weight)
        if len(neg) > 0:
            label_weights[neg] = 1.0
        return labels, label_weights, bbox_targets, bbox_weights, sample

    @torch.no_grad()
    def refine_anchors(self, anchors: torch.Tensor, bbox_preds: Sequence[torch.Tensor],
                       metas: Sequence[Mapping]) -> torch.Tensor:
        """The ``(B, A, 4)`` anchors moved by this stage's deltas (detached), clipped to each
        image: the next stage's anchors."""
        deltas = levels_to_rows([p.detach() for p in bbox_preds], 4)
        return torch.stack([self.bbox_coder.decode(anchors[i], deltas[i],
                                                   max_shape=meta["img_shape"])
                            for i, meta in enumerate(metas)])

    @torch.no_grad()
    def proposals_from_anchors(self, anchors: torch.Tensor,
                               cls_scores: Sequence[torch.Tensor],
                               bbox_preds: Sequence[torch.Tensor], metas: Sequence[Mapping],
                               cfg: Mapping | None = None) -> list[torch.Tensor]:
        """Each image's ``(N, 5)`` proposals from its own ``(A, 4)`` anchors (``anchors``:
        ``(B, A, 4)``), as :meth:`RPNHead.proposals_by_feat` does from shared ones."""
        if not self.with_cls:
            raise ConfigError("the last stage of a CascadeRPNHead must have with_cls=True: "
                              "proposals need objectness scores")
        cfg = self.proposal_cfg(cfg)
        num_level = [p.shape[-2] * p.shape[-1] * self.num_base_priors for p in bbox_preds]
        return [self._proposals_single([c[i].detach() for c in cls_scores],
                                       [b[i].detach() for b in bbox_preds],
                                       list(anchors[i].split(num_level)), meta, cfg)
                for i, meta in enumerate(metas)]


@MODELS.register_module()
class CascadeRPNHead(nn.Module):
    """Cascade RPN: stages that refine the anchors one after the other.

    Args:
        num_stages: number of stages (the length of ``stages``).
        stages: the stages' configs (``StageCascadeRPNHead``).
        train_cfg: one training config per stage (the detector's ``train_cfg.rpn``, a list), or
            None.
        test_cfg: the proposal settings (``test_cfg.rpn``), shared by the stages.
        init_cfg: accepted for MMDetection's signature; each stage initializes itself.
    """

    def __init__(self, num_stages: int, stages: Sequence[Mapping], train_cfg: Any = None,
                 test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__()
        if len(stages) != num_stages:
            raise ConfigError(f"rpn_head.num_stages={num_stages} but rpn_head.stages has "
                              f"{len(stages)} configs")
        if train_cfg is not None and (isinstance(train_cfg, Mapping)
                                      or len(train_cfg) != num_stages):
            raise ConfigError(f"CascadeRPNHead needs train_cfg.rpn as a list of {num_stages} "
                              f"dicts, one per stage, got {train_cfg!r}")
        self.num_stages = num_stages
        self.stages = nn.ModuleList(
            MODELS.build(stage, train_cfg=None if train_cfg is None else train_cfg[i],
                         test_cfg=test_cfg) for i, stage in enumerate(stages))
        self.train_cfg, self.test_cfg = thaw(train_cfg), thaw(test_cfg)
        self.init_cfg = thaw(init_cfg)

    def init_weights(self) -> None:
        for stage in self.stages:
            stage.init_weights()

    def forward(self, feats: Sequence[torch.Tensor]) -> Any:
        raise TypeError("CascadeRPNHead refines its anchors image by image, so it needs the "
                        "images' metas: use loss_by_feats(feats, targets, metas) or "
                        "proposals(feats, metas)")

    def _run(self, feats: Sequence[torch.Tensor], metas: Sequence[Mapping],
             gts: Sequence[GroundTruth] | None):
        """The stages in turn -> (losses or None, last anchors, last objectness, last deltas)."""
        first = self.stages[0]
        sizes = [tuple(f.shape[-2:]) for f in feats]
        priors = first.get_priors(feats, metas)
        anchors = priors.priors.expand(len(metas), -1, -1)
        losses: dict[str, torch.Tensor] | None = {} if gts is not None else None
        x, cls_scores, bbox_preds = list(feats), None, None
        for i, stage in enumerate(self.stages):
            offsets = anchor_offsets(anchors, stage.anchor_strides, sizes) \
                if stage.adapt_cfg.get("type", "dilation") == "offset" else None
            x, cls_scores, bbox_preds = stage(x, offsets)
            if losses is not None:
                for name, value in stage.stage_loss(anchors, priors.valid, cls_scores,
                                                    bbox_preds, gts, metas).items():
                    losses[f"s{i}.{name}"] = value
            if i < self.num_stages - 1:
                anchors = stage.refine_anchors(anchors, bbox_preds, metas)
        return losses, anchors, cls_scores, bbox_preds

    def _ground_truths(self, targets: Sequence[Mapping], metas: Sequence[Mapping],
                       device: torch.device) -> list[GroundTruth]:
        return self.stages[0].ground_truths(targets, metas, len(metas), device)

    def loss_by_feats(self, feats: Sequence[torch.Tensor], targets: Sequence[Mapping],
                      metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Every stage's losses (``s{i}.loss_rpn_reg``, ``s{i}.loss_rpn_cls``)."""
        gts = self._ground_truths(targets, metas, feats[0].device)
        return self._run(feats, metas, gts)[0]

    def loss_and_proposals(self, feats: Sequence[torch.Tensor], batch_or_targets: Any,
                           metas: Sequence[Mapping], proposal_cfg: Mapping | None = None
                           ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The losses and each image's proposals, which follow ``test_cfg`` whatever
        ``proposal_cfg`` says (MMDetection's Cascade RPN does so)."""
        targets = getattr(batch_or_targets, "targets", batch_or_targets)
        gts = self._ground_truths(targets, metas, feats[0].device)
        losses, anchors, cls_scores, bbox_preds = self._run(feats, metas, gts)
        return losses, self.stages[-1].proposals_from_anchors(anchors, cls_scores, bbox_preds,
                                                              metas)

    def proposals(self, feats: Sequence[torch.Tensor], metas: Sequence[Mapping],
                  cfg: Mapping | None = None) -> list[torch.Tensor]:
        """Each image's ``(N, 5)`` proposals (input pixels) under ``cfg`` (None:
        ``test_cfg``)."""
        _, anchors, cls_scores, bbox_preds = self._run(feats, metas, None)
        return self.stages[-1].proposals_from_anchors(anchors, cls_scores, bbox_preds, metas,
                                                      cfg)

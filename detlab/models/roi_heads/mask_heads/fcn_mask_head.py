"""MMDetection's ``FCNMaskHead``: the mask branch of Mask R-CNN, with its training targets and
the pasting of its predictions into the image.

Per RoI feature ``(in_channels, 14, 14)`` (the mask RoI extractor's output): ``num_convs``
``conv_kernel_size`` convs (:class:`~detlab.models.utils.ConvModule`, ``convs.i``), an upsampling
(``deconv``: a stride-``scale_factor`` transposed conv followed by ReLU; ``nearest`` /
``bilinear``: interpolation; None: none), then ``conv_logits``, a 1x1 conv to one mask logit map
per class (one in all with ``class_agnostic``) -- ``(N, C, 28, 28)`` by default.

Targets (:func:`mask_targets`): each positive proposal, clipped to the ground-truth masks' size,
cuts its ground truth's mask out with ``roi_align`` (``aligned=True``, adaptive sampling) to
``train_cfg.mask_size``; values ``>= 0.5`` are the target's pixels unless
``train_cfg.soft_mask_target``. The loss (``loss_mask``, ``CrossEntropyLoss(use_mask=True)``) is the
mean sigmoid cross-entropy of each positive's logits of its ground truth's class.

At test time (:meth:`FCNMaskHead.predict_masks`) each detection's probabilities of its class are
pasted into the image by ``grid_sample`` over the box (:func:`paste_masks`, Detectron2's rule
which MMDetection uses), thresholded at ``test_cfg.mask_thr_binary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from detlab.config import ConfigError
from detlab.data.masks import BitmapMasks, PolygonMasks, polygons_to_bitmap
from detlab.models.init import initialize
from detlab.models.ops.carafe import CARAFEPack
from detlab.models.utils import ConvModule, build_conv_layer, frozen, thaw
from detlab.registry import MODELS

UPSAMPLE_METHODS = (None, "deconv", "nearest", "bilinear", "carafe")
# the memory MMDetection lets one chunk of pasted masks take on a GPU
GPU_PASTE_BYTES = 1024 ** 3
MaskLike = torch.Tensor | BitmapMasks | PolygonMasks
MASK_LOSS = frozen(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _build_upsample(cfg: Mapping[str, Any] | None, channels: int, out_channels: int
                    ) -> nn.Module | None:
    """The upsampling layer of ``upsample_cfg`` (``scale_factor`` already taken out)."""
    if cfg is None or cfg.get("type") is None:
        return None
    cfg = dict(cfg)
    method, scale = cfg.pop("type"), cfg.pop("scale_factor", None)
    if method == "deconv":
        return nn.ConvTranspose2d(channels, out_channels, kernel_size=scale, stride=scale, **cfg)
    if method == "carafe":  # CARAFE in plain PyTorch; keeps the channels, as in MMDetection
        try:
            return CARAFEPack(channels, scale, **cfg)
        except TypeError as err:
            raise ConfigError(f"mask_head.upsample_cfg carafe: {err}") from err
    align_corners = None if method == "nearest" else False
    return nn.Upsample(scale_factor=scale, mode=method, align_corners=align_corners, **cfg)


@MODELS.register_module()
class FCNMaskHead(nn.Module):
    """A small fully convolutional network that predicts a mask per RoI and class.

    Args:
        num_convs: 3x3 (``conv_kernel_size``) convs before the upsampling.
        roi_feat_size: the RoI features' side (kept for configs; the layers do not depend on it).
        in_channels: channels of the RoI features.
        conv_kernel_size: kernel of those convs (padding keeps the size).
        conv_out_channels: their channels (and the transposed conv's).
        num_classes: classes, without background.
        class_agnostic: one mask per RoI instead of one per class.
        upsample_cfg: ``dict(type='deconv' | 'nearest' | 'bilinear' | 'carafe' | None,
            scale_factor=2)``; ``'carafe'`` takes CARAFEPack's arguments (``up_kernel`` ...)
            and is computed in plain PyTorch (:mod:`detlab.models.ops.carafe`).
        conv_cfg, norm_cfg: of the convs.
        predictor_cfg: the conv config of ``conv_logits``.
        loss_mask: the mask loss (``CrossEntropyLoss`` with ``use_mask=True``).
        init_cfg: must be None, as in MMDetection (the head initializes its own layers).
    """

    def __init__(self, num_convs: int = 4, roi_feat_size: int | Sequence[int] = 14,
                 in_channels: int = 256, conv_kernel_size: int = 3,
                 conv_out_channels: int = 256, num_classes: int = 80,
                 class_agnostic: bool = False,
                 upsample_cfg: Mapping[str, Any] | None = frozen(type="deconv", scale_factor=2),
                 conv_cfg: Mapping[str, Any] | None = None,
                 norm_cfg: Mapping[str, Any] | None = None,
                 predictor_cfg: Mapping[str, Any] = frozen(type="Conv"),
                 loss_mask: Mapping[str, Any] | nn.Module = MASK_LOSS,
                 init_cfg: Any = None) -> None:
        super().__init__()
        if init_cfg is not None:
            raise ConfigError("mask_head.init_cfg must be None: FCNMaskHead initializes its own "
                              "layers (as MMDetection's, which refuses it too); remove the key")
        upsample_cfg = thaw(upsample_cfg) if upsample_cfg is not None else dict(type=None)
        method = upsample_cfg.get("type")
        if method not in UPSAMPLE_METHODS:
            raise ConfigError(f"mask_head.upsample_cfg.type {method!r} is not an upsampling "
                              f"method; use one of {UPSAMPLE_METHODS}")
        self.upsample_cfg, self.upsample_method = upsample_cfg, method
        self.scale_factor = upsample_cfg.get("scale_factor")
        self.num_convs, self.roi_feat_size = num_convs, _pair(roi_feat_size)
        self.in_channels, self.conv_kernel_size = in_channels, conv_kernel_size
        self.conv_out_channels, self.num_classes = conv_out_channels, num_classes
        self.class_agnostic = class_agnostic
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.loss_mask = MODELS.build(thaw(loss_mask))

        padding = (conv_kernel_size - 1) // 2
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels,
                       conv_kernel_size, padding=padding, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
            for i in range(num_convs))
        upsample_in = conv_out_channels if num_convs > 0 else in_channels
        self.upsample = _build_upsample(upsample_cfg, upsample_in, conv_out_channels)
        logits_in = conv_out_channels if method == "deconv" else upsample_in
        self.conv_logits = build_conv_layer(predictor_cfg, logits_in,
                                            1 if class_agnostic else num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.init_weights()

    def init_weights(self) -> None:
        """MMDetection's: He init (fan out) of the upsampling and ``conv_logits``, zero biases;
        the convs keep :class:`ConvModule`'s own."""
        initialize(self, None, load_pretrained=False)
        for layer in (self.upsample, self.conv_logits):
            if isinstance(layer, CARAFEPack):
                layer.init_weights()
            elif getattr(layer, "weight", None) is not None and hasattr(layer, "bias"):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RoI features ``(N, in_channels, h, w)`` -> mask logits ``(N, C, h * s, w * s)``
        (``C = 1`` when class-agnostic, ``s`` the upsampling factor)."""
        for conv in self.convs:
            x = conv(x)
        if self.upsample is not None:
            x = self.upsample(x)
            if self.upsample_method == "deconv":
                x = self.relu(x)
        return self.conv_logits(x)

    # ---- training ----------------------------------------------------------------------------

    def get_targets(self, sampling_results: Sequence[Any], gt_masks: Sequence[MaskLike],
                    rcnn_train_cfg: Mapping[str, Any]) -> torch.Tensor:
        """``(P, *mask_size)`` float targets of the positives of all images, in order
        (``rcnn_train_cfg``: ``mask_size``, optional ``soft_mask_target``)."""
        if "mask_size" not in rcnn_train_cfg:
            raise ConfigError("train_cfg.rcnn.mask_size is missing: the mask head needs the side "
                              "of its targets (28 for Mask R-CNN's FCNMaskHead)")
        missing = [i for i, masks in enumerate(gt_masks) if masks is None]
        if missing:
            raise ConfigError(f"image {missing[0]} of the batch has no ground-truth masks, which "
                              "the mask head learns from: the training pipeline needs "
                              "LoadAnnotations(with_bbox=True, with_mask=True) and 'gt_masks' in "
                              "Collect's keys (see configs/_base_/datasets/coco_instance.py)")
        return mask_targets([r.pos_bboxes for r in sampling_results],
                            [r.pos_assigned_gt_inds for r in sampling_results], gt_masks,
                            rcnn_train_cfg["mask_size"],
                            binarize=not rcnn_train_cfg.get("soft_mask_target", False))

    def loss(self, mask_pred: torch.Tensor, mask_targets: torch.Tensor,
             labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_mask`` of logits ``(P, C, h, w)`` against ``mask_targets`` ``(P, h, w)`` for
        the positives' ``labels`` ``(P,)``; zero (with a gradient path) without positives."""
        if mask_pred.size(0) == 0:
            return dict(loss_mask=mask_pred.sum())
        if self.class_agnostic:
            labels = torch.zeros_like(labels)
        return dict(loss_mask=self.loss_mask(mask_pred, mask_targets, labels))

    # ---- testing -----------------------------------------------------------------------------

    def predict_masks(self, mask_pred: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
                      rcnn_test_cfg: Mapping[str, Any], ori_shape: Sequence[int],
                      scale_factor: Any, rescale: bool) -> torch.Tensor:
        """The detections' masks in the image: MMDetection's ``get_seg_masks`` without the
        per-class lists.

        Args:
            mask_pred: ``(N, C, h, w)`` logits of the detections' RoIs.
            boxes: ``(N, 4)`` xyxy boxes in the network input's pixels (those the RoIs were).
            labels: ``(N,)`` their classes.
            rcnn_test_cfg: ``mask_thr_binary`` (probabilities at least this are the mask; a
                negative value gives ``uint8`` probabilities times 255 instead).
            ori_shape: ``(h, w)`` of the original image.
            scale_factor: ``(4,)`` (w, h, w, h) factors from the original image to the input.
            rescale: paste into the original image (boxes divided by ``scale_factor``), or into
                the input image's size (``ori_shape`` times the factor, rounded).

        Returns:
            ``(N, H, W)`` bool masks (uint8 when the threshold is negative).
        """
        probs = mask_pred.sigmoid()
        scale = torch.as_tensor(scale_factor, dtype=boxes.dtype, device=boxes.device).reshape(-1)
        if scale.numel() == 1:
            scale = scale.expand(4)
        if rescale:
            img_h, img_w = int(ori_shape[0]), int(ori_shape[1])
            boxes = boxes / scale
        else:
            img_h = int(np.round(ori_shape[0] * scale[1].item()))
            img_w = int(np.round(ori_shape[1] * scale[0].item()))
        num = len(probs)
        if not self.class_agnostic:
            probs = probs[torch.arange(num, device=probs.device), labels][:, None]
        threshold = rcnn_test_cfg.get("mask_thr_binary", 0.5)
        return paste_masks(probs, boxes, img_h, img_w, threshold)


def mask_targets(pos_proposals: Sequence[torch.Tensor],
                 pos_assigned_gt_inds: Sequence[torch.Tensor], gt_masks: Sequence[MaskLike],
                 mask_size: int | Sequence[int], binarize: bool = True) -> torch.Tensor:
    """Mask targets of the positives of every image, concatenated: ``(P, h, w)`` float.

    Args:
        pos_proposals: per image, ``(P_i, 4)`` xyxy positive proposals.
        pos_assigned_gt_inds: per image, ``(P_i,)`` the ground truth of each positive.
        gt_masks: per image, the ground-truth masks: an ``(G, H, W)`` tensor (the batch's
            ``targets['masks']``), or ``BitmapMasks`` / ``PolygonMasks``.
        mask_size: ``(h, w)`` of the targets (an int for a square).
        binarize: threshold at 0.5 (False: MMDetection's ``soft_mask_target``).
    """
    size = _pair(mask_size)
    per_image = [mask_targets_per_image(p, i, m, size, binarize)
                 for p, i, m in zip(pos_proposals, pos_assigned_gt_inds, gt_masks, strict=True)]
    if not per_image:
        return torch.zeros((0, *size))
    return torch.cat(per_image)


def mask_targets_per_image(proposals: torch.Tensor, gt_inds: torch.Tensor, gt_masks: MaskLike,
                           size: tuple[int, int], binarize: bool = True) -> torch.Tensor:
    """``(P, h, w)`` float targets: the mask of each positive's ground truth cut to the
    proposal (clipped to the masks' canvas) and resized to ``size`` as MMDetection's
    ``BitmapMasks`` / ``PolygonMasks.crop_and_resize`` do."""
    if len(proposals) == 0:
        return proposals.new_zeros((0, *size))
    device = proposals.device
    if isinstance(gt_masks, torch.Tensor):
        height, width = gt_masks.shape[-2:]
    else:
        height, width = gt_masks.height, gt_masks.width
    boxes = proposals.detach().float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    if isinstance(gt_masks, BitmapMasks):  # cut here: soft targets must stay float
        gt_masks = torch.from_numpy(gt_masks.masks)
    if isinstance(gt_masks, PolygonMasks):
        if not binarize:
            raise ConfigError("train_cfg.rcnn.soft_mask_target needs bitmap masks: polygons are "
                              "always binary (load the masks with poly2mask=True)")
        cut = _polygon_targets(gt_masks, boxes.cpu().numpy(), gt_inds.cpu().numpy(), size)
        return torch.from_numpy(cut).float().to(device)
    masks = gt_masks.to(device).index_select(0, gt_inds.long()).float()  # (P, H, W)
    rois = torch.cat([torch.arange(len(boxes), device=device, dtype=boxes.dtype)[:, None],
                      boxes], dim=1)
    targets = roi_align(masks[:, None], rois, size, 1.0, 0, True).squeeze(1)
    return (targets >= 0.5).float() if binarize else targets


def _polygon_targets(polygons: PolygonMasks, boxes: np.ndarray, inds: np.ndarray,
                     size: tuple[int, int]) -> np.ndarray:
    """``(P, h, w)`` uint8: polygon ``inds[i]`` moved to box ``i``'s corner, scaled to ``size``
    and rasterized. A box side under a pixel counts as one pixel, as in MMDetection's
    ``PolygonMasks.crop_and_resize`` (so that a sliver does not blow the polygon up)."""
    h, w = size
    out = []
    for box, index in zip(boxes.astype(np.float64), inds.reshape(-1), strict=True):
        scale = np.array([w / max(box[2] - box[0], 1.0), h / max(box[3] - box[1], 1.0)])
        moved = [((p.reshape(-1, 2) - box[:2]) * scale).reshape(-1)
                 for p in polygons.masks[int(index)]]
        out.append(polygons_to_bitmap(moved, h, w))
    return np.stack(out)


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int,
                threshold: float = 0.5) -> torch.Tensor:
    """Masks ``(N, 1, h, w)`` of probabilities pasted over their ``(N, 4)`` xyxy boxes into
    ``(N, img_h, img_w)`` images, thresholded (``>= threshold`` -> bool; a negative threshold
    gives uint8 probabilities times 255).

    On the CPU each mask is sampled only over its box and a pixel around it (MMDetection's
    ``skip_empty``); on a GPU chunks of masks are sampled over the whole image, each chunk
    under ``GPU_PASTE_BYTES``.
    """
    num, device = len(probs), probs.device
    binary = threshold >= 0
    out = torch.zeros(num, img_h, img_w, device=device,
                      dtype=torch.bool if binary else torch.uint8)
    if num == 0:
        return out
    on_cpu = device.type == "cpu"
    chunks = num if on_cpu else int(np.ceil(num * img_h * img_w * 4 / GPU_PASTE_BYTES))
    for index in torch.chunk(torch.arange(num, device=device), chunks):
        pasted, region = paste_chunk(probs[index], boxes[index], img_h, img_w, on_cpu)
        pasted = pasted >= threshold if binary else (pasted * 255).to(torch.uint8)
        out[(index, *region)] = pasted
    return out


def paste_chunk(probs: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int,
                skip_empty: bool) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``(n, 1, h, w)`` masks sampled (bilinear, zeros outside) at the centers of the image's
    pixels: over the boxes' common extent plus a pixel when ``skip_empty`` (returned with the
    ``(rows, cols)`` slices of that region), else over the whole ``img_h x img_w`` image."""
    device = probs.device
    if skip_empty:
        x0, y0 = (boxes.min(dim=0).values.floor()[:2] - 1).clamp(min=0).to(torch.int32).tolist()
        x1 = int(boxes[:, 2].max().ceil().add(1).clamp(max=img_w))
        y1 = int(boxes[:, 3].max().ceil().add(1).clamp(max=img_h))
    else:
        x0, y0, x1, y1 = 0, 0, img_w, img_h
    bx0, by0, bx1, by1 = boxes.split(1, dim=1)  # each (n, 1)
    xs = torch.arange(x0, x1, device=device).float() + 0.5
    ys = torch.arange(y0, y1, device=device).float() + 0.5
    xs = (xs - bx0) / (bx1 - bx0) * 2 - 1  # (n, w') in the box's [-1, 1]
    ys = (ys - by0) / (by1 - by0) * 2 - 1  # (n, h')
    xs = torch.where(torch.isinf(xs), torch.zeros_like(xs), xs)  # zero-width boxes
    ys = torch.where(torch.isinf(ys), torch.zeros_like(ys), ys)
    n = len(probs)
    grid = torch.stack([xs[:, None, :].expand(n, ys.size(1), xs.size(1)),
                        ys[:, :, None].expand(n, ys.size(1), xs.size(1))], dim=3)
    pasted = F.grid_sample(probs.float(), grid, align_corners=False)[:, 0]
    region = (slice(y0, y1), slice(x0, x1)) if skip_empty else ()
    return pasted, region

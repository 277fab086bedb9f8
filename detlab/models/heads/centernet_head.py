"""CenterNet's head (Zhou et al., 2019, "Objects as Points") as MMDetection 2.28 builds it, on
:class:`~detlab.models.heads.BaseDenseHead`.

One level (the neck's stride-4 map) and three branches of a 3x3 conv, ReLU and a 1x1 conv:
``heatmap_head`` (a sigmoid heatmap per class), ``wh_head`` (box width and height in feature
cells) and ``offset_head`` (the center's sub-cell offset). The raw outputs are ``(heatmaps,
wh, offsets)``, one map each; the heatmaps are probabilities.

Targets, drawn on the feature grid (the input scaled by the map's size over the first image's
``pad_shape``, the batch's shape in CenterNet's pipeline): for each object a Gaussian bump at
its center cell in its class's heatmap (radius from the box size at a 0.3 least overlap,
``sigma = (2 * radius + 1) / 6``, the larger value kept where bumps overlap), and at the
center cell its size and offset (a later object at the same cell overwrites an earlier one).
Losses: ``loss_center_heatmap`` (Gaussian focal loss) over every cell, ``loss_wh`` and
``loss_offset`` (L1) at the centers, divided by the number of peaks (twice that for the two
channels of size and offset).

Detections: the heatmaps' local maxima (a max pool of ``local_maximum_kernel``), the ``topk``
best over all classes and cells of an image, each a box of the predicted size around its
cell plus offset, in input pixels (scaled by the input's ``batch_input_shape`` over the map's
size), moved by the image's crop ``border`` (CenterNet's test-time ``RandomCenterCropPad``;
none without it) and rescaled (un-flipped too when the meta says ``flip``, which
MMDetection's ``simple_test`` leaves alone); no score threshold, and no NMS unless asked
(``with_nms``), as MMDetection's ``simple_test``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detlab.config import ConfigError
from detlab.models.anchors import MlvlPointGenerator
from detlab.models.heads.base_dense_head import BaseDenseHead, pad_shape_of
from detlab.models.heads.nms import multiclass_nms
from detlab.models.heads.postprocess import boxes_to_original, result_meta
from detlab.models.init import bias_init_with_prob
from detlab.models.utils import frozen
from detlab.registry import MODELS
from detlab.structures import DetResult

HEATMAP_LOSS = frozen(type="GaussianFocalLoss", loss_weight=1.0)
WH_LOSS = frozen(type="L1Loss", loss_weight=0.1)
OFFSET_LOSS = frozen(type="L1Loss", loss_weight=1.0)
MIN_OVERLAP = 0.3  # least IoU of a box from a corner inside the Gaussian with its object
CENTERNET_TEST_CFG_KEYS = ("topk", "local_maximum_kernel", "max_per_img", "nms", "nms_cfg")


class HeatmapCells:
    """The priors of CenterNet's one heatmap: the cells' corners in feature cells. CenterNet has
    no stride of its own -- it scales its boxes by the input's size over the map's -- so this
    generator, unlike a point generator, claims none (and the detector's stride check leaves
    it alone)."""

    num_levels = 1
    num_base_priors = (1,)

    def __init__(self) -> None:
        self._cells = MlvlPointGenerator(strides=[1], offset=0.0)

    def grid_priors(self, featmap_sizes: Sequence[Sequence[int]],
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """``(H * W, 2)`` ``(x, y)`` cells of the one ``(H, W)`` map."""
        return self._cells.grid_priors(featmap_sizes, dtype=dtype, device=device)

    def valid_flags(self, featmap_sizes: Sequence[Sequence[int]], pad_shape: Sequence[int],
                    device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Every cell is valid (the heatmap covers the batch's padded input)."""
        return [torch.ones(h * w, dtype=torch.bool, device=device) for h, w in featmap_sizes]


def gaussian_radius(heights: torch.Tensor, widths: torch.Tensor,
                    min_overlap: float = MIN_OVERLAP) -> torch.Tensor:
    """CornerNet's radius of ``(G,)`` boxes (float32): the largest corner shift keeping an IoU of
    ``min_overlap`` with the box, the least of its three cases (one corner inside and one
    outside, both inside, both outside). The square roots are taken in float64, as Python's
    ``math.sqrt`` does in MMDetection, the rest in float32."""
    def root(b: torch.Tensor, a: float | torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.sqrt((b ** 2 - 4 * a * c).double()).float()

    # (the products in MMDetection's order: float32 rounding depends on it)
    size = heights + widths
    c1 = widths * heights * (1 - min_overlap) / (1 + min_overlap)
    r1 = (size - root(size, 1, c1)) / 2
    b2 = 2 * size
    r2 = (b2 - root(b2, 4, (1 - min_overlap) * widths * heights)) / (2 * 4)
    a3, b3 = 4 * min_overlap, -2 * min_overlap * size
    r3 = (b3 + root(b3, a3, (min_overlap - 1) * widths * heights)) / (2 * a3)
    return torch.minimum(torch.minimum(r1, r2), r3)


def gaussian_kernel(radius: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """A ``(2r+1, 2r+1)`` Gaussian with peak 1 and ``sigma = (2r+1) / 6``, values below the
    dtype's epsilon (relative to the peak) set to 0."""
    sigma = (2 * radius + 1) / 6
    steps = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = (-(steps[None, :] ** 2 + steps[:, None] ** 2) / (2 * sigma * sigma)).exp()
    kernel[kernel < torch.finfo(dtype).eps * kernel.max()] = 0
    return kernel


def draw_gaussian_(heatmap: torch.Tensor, x: int, y: int, radius: int) -> None:
    """Raise the ``(H, W)`` ``heatmap`` in place to a Gaussian bump of ``radius`` centered at
    cell ``(x, y)`` (clipped at the map's edges)."""
    kernel = gaussian_kernel(radius, heatmap.dtype, heatmap.device)
    height, width = heatmap.shape
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    window = heatmap[y - top:y + bottom, x - left:x + right]
    torch.maximum(window, kernel[radius - top:radius + bottom, radius - left:radius + right],
                  out=window)


def local_maxima(heatmap: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """``heatmap`` with every value that is not the maximum of its ``kernel`` window zeroed."""
    pooled = F.max_pool2d(heatmap, kernel, stride=1, padding=(kernel - 1) // 2)
    return heatmap * (pooled == heatmap).float()


@dataclass
class CenterNetTargets:
    """Targets of a batch on the ``(H, W)`` feature grid.

    Attributes:
        heatmap: ``(B, C, H, W)`` Gaussian bumps, 1 at the object centers.
        wh, offset: ``(B, 2, H, W)`` size (cells) and sub-cell offset of the object centered at
            a cell.
        weight: ``(B, 2, H, W)`` 1 at object centers.
        avg_factor: the number of heatmap peaks (at least 1).
    """

    heatmap: torch.Tensor
    wh: torch.Tensor
    offset: torch.Tensor
    weight: torch.Tensor
    avg_factor: torch.Tensor | int


@MODELS.register_module()
class CenterNetHead(BaseDenseHead):
    """Args (MMDetection's names and defaults):
        in_channel: channels of the input map.
        feat_channel: channels of each branch's 3x3 conv.
        num_classes: object classes (one heatmap each).
        loss_center_heatmap: heatmap loss (Gaussian focal loss).
        loss_wh, loss_offset: L1 losses of sizes and offsets (weights 0.1 and 1).
        train_cfg: unused (CenterNet has no assigner).
        test_cfg: ``topk``, ``local_maximum_kernel``, ``max_per_img``, ``nms`` (with
            ``predict(..., with_nms=True)``), ``nms_cfg``.
        init_cfg: kept for MMDetection's configs; :meth:`init_weights` is the head's own.
    """

    test_cfg_keys = CENTERNET_TEST_CFG_KEYS

    def __init__(self, in_channel: int, feat_channel: int, num_classes: int,
                 loss_center_heatmap: Mapping | nn.Module = HEATMAP_LOSS,
                 loss_wh: Mapping | nn.Module = WH_LOSS,
                 loss_offset: Mapping | nn.Module = OFFSET_LOSS,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channel,
                         prior_generator=HeatmapCells(), bbox_coder=None,
                         loss_cls=loss_center_heatmap, loss_bbox=loss_wh, train_cfg=None,
                         test_cfg=test_cfg, init_cfg=init_cfg)
        self.in_channel, self.feat_channel = in_channel, feat_channel
        self.cls_out_channels = num_classes  # probabilities, no background
        self.loss_center_heatmap, self.loss_wh = self.loss_cls, self.loss_bbox
        self.loss_offset = MODELS.build(loss_offset)
        self.heatmap_head = self._branch(num_classes)
        self.wh_head = self._branch(2)
        self.offset_head = self._branch(2)
        self.init_weights()

    def _branch(self, out_channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(self.in_channel, self.feat_channel, 3, padding=1),
                             nn.ReLU(inplace=True),
                             nn.Conv2d(self.feat_channel, out_channels, 1))

    def init_weights(self) -> None:
        """MMDetection's: the heatmap's bias at the 0.1 prior, the size and offset branches'
        convs normal (std 0.001, bias 0); the heatmap's convs keep PyTorch's init."""
        with torch.no_grad():
            self.heatmap_head[-1].bias.fill_(bias_init_with_prob(0.1))
            for m in (*self.wh_head, *self.offset_head):
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, 0.001)
                    nn.init.zeros_(m.bias)

    def forward_single(self, x: torch.Tensor, level: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, in_channel, H, W)`` -> heatmaps ``(B, C, H, W)`` (probabilities), sizes and
        offsets ``(B, 2, H, W)``."""
        return self.heatmap_head(x).sigmoid(), self.wh_head(x), self.offset_head(x)

    # ---- targets and loss --------------------------------------------------------------------

    def get_targets(self, targets: Sequence[Mapping], metas: Sequence[Mapping],
                    feat_shape: Sequence[int], device: torch.device | str = "cpu"
                    ) -> CenterNetTargets:
        """Targets (see :class:`CenterNetTargets`) of ``(B, C, H, W)`` heatmaps, on
        ``device``."""
        batch, _, height, width = feat_shape
        pad_h, pad_w = pad_shape_of(metas[0])[:2]
        width_ratio, height_ratio = float(width / pad_w), float(height / pad_h)
        gts = self.ground_truths(targets, metas, batch, torch.device(device))
        heatmap = torch.zeros((batch, self.num_classes, height, width), device=device)
        wh, offset, weight = (torch.zeros((batch, 2, height, width), device=device)
                              for _ in range(3))
        for i, gt in enumerate(gts):
            boxes = gt.boxes
            if not len(boxes):
                continue
            centers = torch.stack([(boxes[:, 0] + boxes[:, 2]) * width_ratio / 2,
                                   (boxes[:, 1] + boxes[:, 3]) * height_ratio / 2], dim=1)
            cells = centers.int()
            box_h = (boxes[:, 3] - boxes[:, 1]) * height_ratio
            box_w = (boxes[:, 2] - boxes[:, 0]) * width_ratio
            radii = gaussian_radius(box_h, box_w).clamp(min=0).int().tolist()
            for (x, y), radius, label in zip(cells.tolist(), radii, gt.labels.tolist(),
                                             strict=True):
                draw_gaussian_(heatmap[i, label], x, y, radius)
            # one object per center cell: the last written, as in a loop over the objects
            flat = (cells[:, 1] * width + cells[:, 0]).long()
            order = torch.arange(len(flat), device=device)
            last = torch.full((height * width,), -1, dtype=torch.long, device=device)
            last.scatter_reduce_(0, flat, order, reduce="amax")
            keep = last[flat] == order
            xs, ys = cells[keep, 0].long(), cells[keep, 1].long()
            wh[i, 0, ys, xs], wh[i, 1, ys, xs] = box_w[keep], box_h[keep]
            offset[i, :, ys, xs] = (centers[keep] - cells[keep]).t()
            weight[i, :, ys, xs] = 1.0
        avg_factor = max(1, heatmap.eq(1).sum())
        return CenterNetTargets(heatmap, wh, offset, weight, avg_factor)

    def loss(self, raw: tuple[list[torch.Tensor], ...], targets: Sequence[Mapping],
             metas: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """``loss_center_heatmap``, ``loss_wh`` and ``loss_offset`` (see the module
        docstring)."""
        heatmaps, whs, offsets = raw
        if not len(heatmaps) == len(whs) == len(offsets) == 1:
            raise ValueError(f"CenterNetHead takes one feature level, got {len(heatmaps)}")
        heatmap, wh, offset = heatmaps[0].float(), whs[0].float(), offsets[0].float()
        t = self.get_targets(targets, metas, heatmap.shape, heatmap.device)
        return dict(
            loss_center_heatmap=self.loss_center_heatmap(heatmap, t.heatmap,
                                                         avg_factor=t.avg_factor),
            loss_wh=self.loss_wh(wh, t.wh, t.weight, avg_factor=t.avg_factor * 2),
            loss_offset=self.loss_offset(offset, t.offset, t.weight,
                                         avg_factor=t.avg_factor * 2))

    # ---- detections ----------------------------------------------------------------------------

    def decode_heatmap(self, heatmap: torch.Tensor, wh: torch.Tensor, offset: torch.Tensor,
                       input_shape: Sequence[int], k: int = 100, kernel: int = 3
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, C, H, W)`` heatmaps, ``(B, 2, H, W)`` sizes and offsets -> the ``k`` best local
        maxima of each image: boxes ``(B, k, 4)`` xyxy in pixels of an input of
        ``input_shape`` (h, w), scores ``(B, k)`` and labels ``(B, k)``."""
        batch, _, height, width = heatmap.shape
        scores, index = torch.topk(local_maxima(heatmap, kernel).view(batch, -1), k)
        labels = index // (height * width)
        cell = index % (height * width)
        ys, xs = cell // width, (cell % width).int().float()

        def at_cells(maps: torch.Tensor) -> torch.Tensor:  # (B, 2, H, W) -> (B, k, 2)
            rows = maps.permute(0, 2, 3, 1).reshape(batch, -1, maps.shape[1])
            return rows.gather(1, cell[..., None].expand(-1, -1, maps.shape[1]))

        sizes, shifts = at_cells(wh), at_cells(offset)
        xs, ys = xs + shifts[..., 0], ys + shifts[..., 1]
        scale_x, scale_y = input_shape[1] / width, input_shape[0] / height
        half_w, half_h = sizes[..., 0] / 2, sizes[..., 1] / 2
        boxes = torch.stack([(xs - half_w) * scale_x, (ys - half_h) * scale_y,
                             (xs + half_w) * scale_x, (ys + half_h) * scale_y], dim=2)
        return boxes, scores, labels

    def predict(self, raw: tuple[list[torch.Tensor], ...], metas: Sequence[Mapping],
                rescale: bool = True, with_nms: bool = False) -> list[DetResult]:
        """Each image's ``topk`` detections (see the module docstring); ``with_nms`` applies
        ``test_cfg.nms`` and ``max_per_img`` after them."""
        cfg = self.test_cfg
        if "topk" not in cfg:
            raise ConfigError("CenterNetHead needs test_cfg.topk to detect, e.g. model.test_cfg="
                              "dict(topk=100, local_maximum_kernel=3, max_per_img=100)")
        if with_nms and "nms" not in cfg:
            raise ConfigError("predict(with_nms=True) needs model.test_cfg.nms, e.g. "
                              "dict(type='nms', iou_threshold=0.5)")
        heatmaps, whs, offsets = raw
        if len(metas) != heatmaps[0].shape[0]:
            raise ValueError(f"predict got {heatmaps[0].shape[0]} images but {len(metas)} metas")
        results = []
        for i, meta in enumerate(metas):
            input_shape = meta.get("batch_input_shape") or pad_shape_of(meta)[:2]
            boxes, scores, labels = self.decode_heatmap(
                heatmaps[0][i:i + 1].float(), whs[0][i:i + 1].float(),
                offsets[0][i:i + 1].float(), input_shape, k=cfg["topk"],
                kernel=cfg.get("local_maximum_kernel", 3))
            boxes, scores, labels = boxes[0], scores[0], labels[0]
            border = meta.get("border")
            if border is not None:  # the crop's top, bottom, left, right in the input
                boxes = boxes - boxes.new_tensor(border)[[2, 0, 2, 0]]
            if rescale:
                boxes = boxes_to_original(boxes, meta)
            if with_nms:
                keep, scores = multiclass_nms(boxes, scores, labels, cfg["nms"],
                                              cfg.get("max_per_img"))
                boxes, labels = boxes[keep], labels[keep]
            results.append(DetResult(boxes, scores, labels, meta=result_meta(meta)))
        return results

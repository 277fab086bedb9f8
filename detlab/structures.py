"""The data that crosses module boundaries: box helpers, ``Batch`` and ``DetResult``.

Boxes are ``(N, 4)`` float32 ``xyxy`` in absolute pixels everywhere inside detlab; COCO ``xywh``
exists only at the file boundary. The box helpers take NumPy arrays or torch tensors alike and
return the same kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Boxes = Any  # np.ndarray | torch.Tensor of shape (N, 4)


def _clone(boxes: Boxes) -> Boxes:
    return boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)


def xywh_to_xyxy(boxes: Boxes) -> Boxes:
    """``(N, 4)`` COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    out = _clone(boxes)
    out[..., 2:] = boxes[..., :2] + boxes[..., 2:]
    return out


def xyxy_to_xywh(boxes: Boxes) -> Boxes:
    """``(N, 4)`` ``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]``."""
    out = _clone(boxes)
    out[..., 2:] = boxes[..., 2:] - boxes[..., :2]
    return out


def box_areas(boxes: Boxes) -> Boxes:
    """``(N,)`` areas of ``(N, 4)`` xyxy boxes (0 for degenerate ones)."""
    w = (boxes[..., 2] - boxes[..., 0]).clip(0)
    h = (boxes[..., 3] - boxes[..., 1]).clip(0)
    return w * h


def clip_boxes(boxes: Boxes, shape: Sequence[int]) -> Boxes:
    """Clip ``(N, 4)`` xyxy boxes to an image of ``shape`` ``(h, w, ...)``."""
    h, w = shape[0], shape[1]
    out = _clone(boxes)
    out[..., 0::2] = out[..., 0::2].clip(0, w)
    out[..., 1::2] = out[..., 1::2].clip(0, h)
    return out


def scale_boxes(boxes: Boxes, scale_factor: Any) -> Boxes:
    """Multiply ``(N, 4)`` xyxy boxes by ``scale_factor``: a number, ``(sx, sy)`` or the
    ``(sx, sy, sx, sy)`` array that ``Resize`` stores in ``results['scale_factor']``."""
    factor = np.asarray(scale_factor, dtype=np.float32).reshape(-1)
    if factor.size == 1:
        factor = np.repeat(factor, 4)
    elif factor.size == 2:
        factor = np.tile(factor, 2)
    if isinstance(boxes, torch.Tensor):
        dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
        return boxes.to(dtype) * torch.as_tensor(factor, dtype=dtype, device=boxes.device)
    if not np.issubdtype(np.asarray(boxes).dtype, np.floating):
        return np.asarray(boxes, dtype=np.float32) * factor
    return (boxes * factor).astype(boxes.dtype, copy=False)


def flip_boxes(boxes: Boxes, shape: Sequence[int], direction: str = "horizontal") -> Boxes:
    """Mirror ``(N, 4)`` xyxy boxes inside an image of ``shape`` ``(h, w, ...)``.

    ``direction`` is ``'horizontal'``, ``'vertical'`` or ``'diagonal'`` (both).
    """
    if direction not in ("horizontal", "vertical", "diagonal"):
        raise ValueError(f"flip direction must be horizontal, vertical or diagonal, "
                         f"got {direction!r}")
    h, w = shape[0], shape[1]
    out = _clone(boxes)
    if direction in ("horizontal", "diagonal"):
        out[..., 0] = w - boxes[..., 2]
        out[..., 2] = w - boxes[..., 0]
    if direction in ("vertical", "diagonal"):
        out[..., 1] = h - boxes[..., 3]
        out[..., 3] = h - boxes[..., 1]
    return out


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """A collated batch, what a detector's ``loss`` and ``predict`` take.

    Attributes:
        images: ``(B, 3, H, W)`` float tensor; each image sits top-left, padded bottom/right.
        targets: one dict per image: ``boxes`` ``(n, 4)`` float32 xyxy in input pixels (after
            resize/flip), ``labels`` ``(n,)`` int64, ``boxes_ignore`` ``(k, 4)`` (may be empty),
            and ``masks`` when the pipeline loads them. Empty dicts at test time.
        metas: one dict per image: ``img_shape`` (h, w, c after resize), ``ori_shape``,
            ``pad_shape``, ``batch_input_shape`` (H, W), ``scale_factor`` (4,), ``flip``,
            ``flip_direction``, ``filename``, ``ori_filename``, ``img_id`` and whatever else
            ``Collect(meta_keys=...)`` keeps.
    """

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    metas: list[dict[str, Any]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def pin_memory(self) -> Batch:
        """A copy in pinned memory (the DataLoader calls this with ``pin_memory=True``)."""
        targets = [{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
                    for k, v in t.items()} for t in self.targets]
        return Batch(self.images.pin_memory(), targets, self.metas)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with images and targets on ``device`` (metas stay as they are)."""
        targets = [{k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor)
                        else v) for k, v in t.items()} for t in self.targets]
        return Batch(self.images.to(device, non_blocking=non_blocking), targets, self.metas)


# --------------------------------------------------------------------------------------------
# DetResult
# --------------------------------------------------------------------------------------------


@dataclass
class DetResult:
    """The detections of one image.

    Attributes:
        boxes: ``(N, 4)`` float32 ``xyxy`` in pixels of the original image.
        scores: ``(N,)`` float32.
        labels: ``(N,)`` int64, contiguous ``0..num_classes-1``.
        masks: optional ``(N, H, W)`` bool, original image size.
        class_names: names of the labels, when known.
        meta: facts about the image (``img_id``, ``filename``, ``ori_shape`` ...).
        image: the original RGB image (``H x W x 3`` uint8) when inference kept it, for display.
        mask_scores: optional ``(N,)`` float32 scores of the masks when a model scores them
            apart from the boxes (Mask Scoring R-CNN: class score times predicted mask IoU).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False)
    mask_scores: torch.Tensor | None = None

    def __post_init__(self) -> None:
        boxes = torch.as_tensor(self.boxes, dtype=torch.float32)
        if boxes.numel() == 0 or boxes.shape == (4,):  # no boxes, or a single one
            boxes = boxes.reshape(-1, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"DetResult boxes must be (N, 4) xyxy, got shape {tuple(boxes.shape)}")
        self.boxes = boxes
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        if self.masks is not None:
            self.masks = torch.as_tensor(self.masks).bool()
        n = len(self.boxes)
        if self.mask_scores is not None:
            self.mask_scores = torch.as_tensor(self.mask_scores, dtype=torch.float32).reshape(-1)
            if len(self.mask_scores) != n:
                raise ValueError(f"DetResult needs one mask score per box: {n} boxes, "
                                 f"{len(self.mask_scores)} mask scores")
        if len(self.scores) != n or len(self.labels) != n or (
                self.masks is not None and len(self.masks) != n):
            masks = "" if self.masks is None else f", {len(self.masks)} masks"
            raise ValueError(f"DetResult needs as many scores, labels (and masks) as boxes: "
                             f"{n} boxes, {len(self.scores)} scores, {len(self.labels)} labels"
                             f"{masks}")
        if self.class_names is not None:
            self.class_names = tuple(self.class_names)

    @classmethod
    def empty(cls, class_names: Sequence[str] | None = None, **meta: Any) -> DetResult:
        """A result with no detections."""
        return cls(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                   class_names=class_names, meta=dict(meta))

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: Any) -> DetResult:
        """The detections selected by an int, a slice, an index tensor or a boolean mask."""
        if isinstance(index, (int, np.integer)) or (
                isinstance(index, torch.Tensor) and index.ndim == 0
                and not index.dtype == torch.bool):
            position = int(index)
            if not -len(self) <= position < len(self):
                raise IndexError(f"detection {position} of a result with {len(self)}")
            position %= len(self)
            index = slice(position, position + 1)
        return DetResult(self.boxes[index], self.scores[index], self.labels[index],
                         None if self.masks is None else self.masks[index], self.class_names,
                         dict(self.meta), self.image,
                         None if self.mask_scores is None else self.mask_scores[index])

    def filter(self, score_thr: float) -> DetResult:
        """The detections scoring at least ``score_thr``."""
        return self[self.scores >= score_thr]

    def to(self, device: torch.device | str) -> DetResult:
        masks = None if self.masks is None else self.masks.to(device)
        return DetResult(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                         masks, self.class_names, dict(self.meta), self.image,
                         None if self.mask_scores is None else self.mask_scores.to(device))

    def cpu(self) -> DetResult:
        return self.to("cpu")

    def label_names(self) -> list[str]:
        """The class name of each detection (``str(label)`` when names are unknown)."""
        names = self.class_names
        return [names[i] if names and 0 <= i < len(names) else str(i)
                for i in self.labels.tolist()]

    def to_coco(self, image_id: int, cat_ids: Sequence[int]) -> list[dict[str, Any]]:
        """COCO result rows: ``image_id``, ``category_id`` (``cat_ids[label]``), ``bbox``
        ``[x, y, w, h]``, ``score`` (and ``segmentation`` as RLE when there are masks, with
        ``mask_score`` when the masks are scored apart, which the segm evaluation uses)."""
        labels = self.labels.tolist()
        bad = [label for label in labels if not 0 <= label < len(cat_ids)]
        if bad:
            raise ValueError(f"labels {sorted(set(bad))} of image {image_id} have no category id "
                             f"(labels must be 0..{len(cat_ids) - 1} for {len(cat_ids)} "
                             f"categories)")
        boxes = xyxy_to_xywh(self.boxes.detach().cpu().double()).tolist()
        rows = [dict(image_id=int(image_id), category_id=int(cat_ids[label]),
                     bbox=[round(v, 3) for v in box], score=float(score))
                for box, score, label in zip(boxes, self.scores.tolist(), labels, strict=True)]
        if self.masks is not None and len(rows):
            from pycocotools import mask as mask_utils

            masks = np.asfortranarray(self.masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
            for row, rle in zip(rows, mask_utils.encode(masks), strict=True):
                rle["counts"] = rle["counts"].decode("ascii")
                row["segmentation"] = rle
            if self.mask_scores is not None:  # what the segm evaluation ranks masks by
                for row, mask_score in zip(rows, self.mask_scores.tolist(), strict=True):
                    row["mask_score"] = float(mask_score)
        return rows

    def to_mmdet(self, num_classes: int) -> list[np.ndarray]:
        """MMDetection 2.x's result format: one ``(n, 5)`` float32 array
        ``[x1, y1, x2, y2, score]`` per class, in class order."""
        dets = torch.cat([self.boxes, self.scores[:, None]], dim=1).detach().cpu().numpy()
        labels = self.labels.cpu().numpy()
        return [dets[labels == c].astype(np.float32) for c in range(num_classes)]

    @classmethod
    def from_mmdet(cls, per_class: Sequence[np.ndarray],
                   class_names: Sequence[str] | None = None, **meta: Any) -> DetResult:
        """A DetResult from MMDetection 2.x's per-class ``(n, 5)`` arrays, sorted by score."""
        arrays = [np.asarray(a, dtype=np.float32).reshape(-1, 5) for a in per_class]
        dets = np.concatenate(arrays) if arrays else np.zeros((0, 5), np.float32)
        labels = np.concatenate([np.full(len(a), c) for c, a in enumerate(arrays)]) \
            if arrays else np.zeros(0)
        order = np.argsort(-dets[:, 4], kind="stable")
        return cls(dets[order, :4], dets[order, 4], labels[order], class_names=class_names,
                   meta=dict(meta))

    def to_dataframe(self):
        """A pandas DataFrame, one row a detection: ``x1 y1 x2 y2 score label class_name``."""
        import pandas as pd

        boxes = self.boxes.detach().cpu().numpy()
        return pd.DataFrame(dict(x1=boxes[:, 0], y1=boxes[:, 1], x2=boxes[:, 2], y2=boxes[:, 3],
                                 score=self.scores.detach().cpu().numpy(),
                                 label=self.labels.detach().cpu().numpy(),
                                 class_name=self.label_names()))

    def draw(self, image: np.ndarray | None = None, score_thr: float = 0.3) -> np.ndarray:
        """The image (``image``, else the one kept by inference, else a blank canvas of
        ``meta['ori_shape']``) with the detections scoring at least ``score_thr`` drawn on it."""
        from detlab.viz.draw import draw_detections

        image = self.image if image is None else image
        if image is None:
            extent = self.boxes.amax(dim=0).tolist() if len(self) else [0, 0, 1, 1]
            h, w = self.meta.get("ori_shape", (int(extent[3]) + 1, int(extent[2]) + 1))[:2]
            image = np.full((h, w, 3), 255, dtype=np.uint8)
        return draw_detections(image, self.filter(score_thr))

    def _repr_png_(self) -> bytes:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.draw()).save(buffer, format="PNG")
        return buffer.getvalue()

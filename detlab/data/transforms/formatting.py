"""Formatting transforms: NumPy to tensors, and the final choice of keys and metas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from detlab.registry import TRANSFORMS

DEFAULT_META_KEYS = ("filename", "ori_filename", "ori_shape", "img_shape", "pad_shape",
                     "scale_factor", "flip", "flip_direction", "img_norm_cfg")
# which transform sets each meta key, for the message when one is missing
_META_SOURCES = dict(filename="LoadImageFromFile", ori_filename="LoadImageFromFile",
                     ori_shape="LoadImageFromFile", img_shape="LoadImageFromFile",
                     pad_shape="Pad or DefaultFormatBundle", scale_factor="Resize",
                     flip="RandomFlip", flip_direction="RandomFlip",
                     img_norm_cfg="Normalize or DefaultFormatBundle")


class MissingKeyError(KeyError):
    """A key a transform needs is not in the sample (readable message, unlike ``KeyError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def to_tensor(data: Any) -> torch.Tensor:
    """A tensor of an array, a tensor, a sequence, an int or a float."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, Sequence) and not isinstance(data, str):
        return torch.tensor(data)
    if isinstance(data, (bool, int, np.integer)):
        return torch.LongTensor([int(data)])
    if isinstance(data, (float, np.floating)):
        return torch.FloatTensor([float(data)])
    raise TypeError(f"cannot make a tensor of a {type(data).__name__}")


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """``H x W (x C)`` array -> contiguous ``C x H x W`` tensor (same dtype)."""
    if img.ndim < 3:
        img = img[..., None]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


@TRANSFORMS.register_module()
class DefaultFormatBundle:
    """Tensors for the usual keys.

    Updates ``img`` (``C x H x W`` float32 tensor, contiguous), ``proposals``, ``gt_bboxes``,
    ``gt_bboxes_ignore``, ``gt_labels`` (tensors) and ``gt_semantic_seg`` (a ``1 x H x W``
    tensor, as MMDetection). Adds, when missing, ``pad_shape`` (the image shape),
    ``scale_factor`` (ones ``(4,)`` float32) and ``img_norm_cfg`` (mean 0, std 1).

    ``gt_masks`` stay mask objects (``BitmapMasks`` / ``PolygonMasks``, as MMDetection keeps
    them in a CPU-only container): ``collate`` turns them into an ``(n, H, W)`` bool tensor
    padded to the batch, so polygons are rasterized once, at the batch's size.

    Args:
        img_to_float: turn a uint8 image into float32.
        pad_val: MMDetection's padding values for batching, ``dict(img=0, masks=0, seg=255)``;
            ``collate`` pads with exactly these, so other values are refused.
    """

    def __init__(self, img_to_float: bool = True,
                 pad_val: Mapping[str, float] | None = None) -> None:
        expected = dict(img=0, masks=0, seg=255)
        if pad_val is not None and {**expected, **dict(pad_val)} != expected:
            raise ValueError(f"DefaultFormatBundle(pad_val={dict(pad_val)}): batches are padded "
                             f"with {expected} (see detlab.data.loader.collate); pad the images "
                             "to a common size with Pad(pad_val=...) instead")
        self.img_to_float = img_to_float

    @staticmethod
    def _add_default_meta_keys(results: dict[str, Any]) -> None:
        img = results["img"]
        results.setdefault("pad_shape", img.shape)
        # (4,) like Resize's, so that boxes scale back the same way whether or not it ran
        results.setdefault("scale_factor", np.ones(4, dtype=np.float32))
        channels = 1 if img.ndim < 3 else img.shape[2]
        results.setdefault("img_norm_cfg", dict(mean=np.zeros(channels, dtype=np.float32),
                                                std=np.ones(channels, dtype=np.float32),
                                                to_rgb=False))

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        if "img" in results:
            img = results["img"]
            if self.img_to_float and img.dtype == np.uint8:
                img = img.astype(np.float32)
            self._add_default_meta_keys(results)
            results["img"] = image_to_tensor(img)
        for key in ("proposals", "gt_bboxes", "gt_bboxes_ignore", "gt_labels"):
            if key in results:
                results[key] = to_tensor(results[key])
        if "gt_semantic_seg" in results and isinstance(results["gt_semantic_seg"], np.ndarray):
            results["gt_semantic_seg"] = to_tensor(results["gt_semantic_seg"][None, ...])
        return results

    def __repr__(self) -> str:
        return f"DefaultFormatBundle(img_to_float={self.img_to_float})"


@TRANSFORMS.register_module()
class ImageToTensor:
    """Turn each of ``keys`` (``H x W (x C)`` arrays) into a ``C x H x W`` tensor."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in self.keys:
            results[key] = image_to_tensor(results[key])
        return results

    def __repr__(self) -> str:
        return f"ImageToTensor(keys={self.keys})"


@TRANSFORMS.register_module()
class ToTensor:
    """Turn each of ``keys`` into a tensor (see :func:`to_tensor`)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in self.keys:
            results[key] = to_tensor(results[key])
        return results

    def __repr__(self) -> str:
        return f"ToTensor(keys={self.keys})"


@TRANSFORMS.register_module()
class Collect:
    """Keep only ``keys``, plus ``img_metas``: a dict of ``meta_keys`` (and ``img_id`` when the
    sample has it). The output is what the loader's ``collate`` takes.
    """

    def __init__(self, keys: Sequence[str], meta_keys: Sequence[str] = DEFAULT_META_KEYS) -> None:
        self.keys = list(keys)
        self.meta_keys = list(meta_keys)

    def _missing_message(self, results: dict[str, Any], missing: list[str], what: str) -> str:
        sources = {_META_SOURCES[k] for k in missing if k in _META_SOURCES}
        hint = f" (set by {', '.join(sorted(sources))})" if sources else ""
        return (f"Collect: the sample has no {what} {missing}{hint}; it has "
                f"{sorted(results)}")

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        missing_meta = [k for k in self.meta_keys if k not in results]
        if missing_meta:
            raise MissingKeyError(self._missing_message(results, missing_meta, "meta keys"))
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise MissingKeyError(self._missing_message(results, missing, "keys"))
        meta = {key: results[key] for key in self.meta_keys}
        if "img_id" in results:
            meta.setdefault("img_id", results["img_id"])
        data = {key: results[key] for key in self.keys}
        data["img_metas"] = meta
        return data

    def __repr__(self) -> str:
        return f"Collect(keys={self.keys}, meta_keys={tuple(self.meta_keys)})"

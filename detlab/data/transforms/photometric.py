"""Photometric transforms: pixel values change, geometry does not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.registry import TRANSFORMS


@TRANSFORMS.register_module()
class Normalize:
    """``(img - mean) / std`` per channel, as float32, after turning BGR into RGB (``to_rgb``).

    Updates every key of ``img_fields``; adds ``img_norm_cfg`` (``mean``, ``std`` float32
    arrays and ``to_rgb``), which inference and drawing use to undo it.

    Args:
        mean, std: per channel, in the channel order after ``to_rgb``.
        to_rgb: swap the first and third channels first (images load as BGR, as in mmcv).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True) -> None:
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(f"mean and std must be lists of one value per channel, got "
                             f"{list(mean)} and {list(std)}")
        if np.any(self.std == 0):
            raise ValueError(f"std must not contain 0, got {list(std)}")
        self.to_rgb = to_rgb

    def _normalize(self, img: np.ndarray) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != self.mean.size:
            raise ValueError(f"Normalize has {self.mean.size} channel means but the image has "
                             f"shape {img.shape}; load it with color_type='color'")
        img = img.astype(np.float32)
        if self.to_rgb:
            img = img[..., ::-1]
        return np.ascontiguousarray((img - self.mean) / self.std, dtype=np.float32)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in results.get("img_fields", ["img"]):
            results[key] = self._normalize(results[key])
        results["img_norm_cfg"] = dict(mean=self.mean, std=self.std, to_rgb=self.to_rgb)
        return results

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()}, " \
               f"to_rgb={self.to_rgb})"

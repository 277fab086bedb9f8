"""Test-time augmentation: one sample in, one output per scale and flip."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from detlab.data.transforms.compose import Compose
from detlab.data.transforms.geometric import FLIP_DIRECTIONS, as_scales
from detlab.registry import TRANSFORMS


@TRANSFORMS.register_module()
class MultiScaleFlipAug:
    """Run ``transforms`` once per scale and flip, as MMDetection 2.x's test pipelines do.

    For each scale of ``img_scale`` (or each factor of ``scale_factor``) and each of no flip and
    the ``flip_direction`` flips (with ``flip``), the inner transforms get a copy of the sample
    with ``scale`` (or ``scale_factor``), ``flip`` and ``flip_direction`` set. The output holds
    each key of the inner outputs as a list over the augmentations, in that order (scales
    outer, flips inner): ``{'img': [...], 'img_metas': [...]}``.

    Args:
        transforms: the inner pipeline (usually Resize, RandomFlip, Normalize, Pad,
            ImageToTensor, Collect).
        img_scale: ``(long, short)`` edges or a list of them.
        scale_factor: a factor or a list of factors (instead of ``img_scale``).
        flip: add flipped versions.
        flip_direction: a direction or a list of them.
    """

    def __init__(self, transforms: Sequence[Mapping | Callable], img_scale: Any = None,
                 scale_factor: float | Sequence[float] | None = None, flip: bool = False,
                 flip_direction: str | Sequence[str] = "horizontal") -> None:
        if (img_scale is None) == (scale_factor is None):
            raise ValueError("MultiScaleFlipAug needs exactly one of img_scale and "
                             "scale_factor")
        if img_scale is not None:
            self.scales: list[Any] = as_scales(img_scale)
            self.scale_key = "scale"
        else:
            factors = scale_factor if isinstance(scale_factor, Sequence) else [scale_factor]
            self.scales = [float(f) for f in factors]
            self.scale_key = "scale_factor"
        directions = [flip_direction] if isinstance(flip_direction, str) else list(flip_direction)
        if any(d not in FLIP_DIRECTIONS for d in directions):
            raise ValueError(f"flip_direction must be among {FLIP_DIRECTIONS}, "
                             f"got {flip_direction!r}")
        if flip and not any(_type_name(t) == "RandomFlip" for t in transforms):
            warnings.warn("MultiScaleFlipAug(flip=True) has no RandomFlip in its transforms: "
                          "nothing will be flipped", stacklevel=2)
        self.transforms = Compose(transforms)
        self.flip = flip
        self.flip_direction = directions

    def __call__(self, results: dict[str, Any]) -> dict[str, list[Any]] | None:
        flips: list[tuple[bool, str | None]] = [(False, None)]
        if self.flip:
            flips += [(True, direction) for direction in self.flip_direction]
        outputs = []
        for scale in self.scales:
            for flip, direction in flips:
                sample = dict(results)  # shallow: transforms replace values, never edit them
                sample[self.scale_key] = scale
                sample["flip"] = flip
                sample["flip_direction"] = direction
                outputs.append(self.transforms(sample))
        if any(out is None for out in outputs):
            return None
        return {key: [out[key] for out in outputs] for key in outputs[0]}

    def __repr__(self) -> str:
        return (f"MultiScaleFlipAug(transforms={self.transforms!r}, {self.scale_key}="
                f"{self.scales}, flip={self.flip}, flip_direction={self.flip_direction})")


def _type_name(transform: Any) -> str:
    if isinstance(transform, Mapping):
        kind = transform.get("type")
        return kind if isinstance(kind, str) else getattr(kind, "__name__", "")
    return type(transform).__name__

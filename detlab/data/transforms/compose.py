"""Compose: run transforms one after the other on a sample dict."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from detlab.registry import TRANSFORMS


@TRANSFORMS.register_module()
class Compose:
    """Transforms applied in order; a transform returning None drops the sample.

    Args:
        transforms: config dicts (built through ``TRANSFORMS``) or callables ``dict -> dict``.
    """

    def __init__(self, transforms: Sequence[Mapping | Callable]) -> None:
        if isinstance(transforms, (Mapping, str)) or not isinstance(transforms, Sequence):
            raise TypeError(f"a pipeline is a list of transforms, got {transforms!r}")
        self.transforms: list[Callable] = []
        # iterate the given list itself: the registry finds each dict's config path
        # (data.train.pipeline.3) by identity
        for transform in transforms:
            built = TRANSFORMS.build(transform) if isinstance(transform, Mapping) else transform
            if not callable(built):
                raise TypeError(f"a transform must be a dict or a callable, got {transform!r}")
            self.transforms.append(built)

    def __call__(self, results: dict[str, Any]) -> dict[str, Any] | None:
        """``results`` through every transform; None as soon as one drops it."""
        for transform in self.transforms:
            results = transform(results)
            if results is None:
                return None
        return results

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose({inner}\n)"

"""build_dataset: a dataset from its config dict, through the DATASETS registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detlab.registry import DATASETS


def build_dataset(cfg: Any, default_args: Mapping[str, Any] | None = None,
                  _path: str | None = None) -> Any:
    """The dataset of ``cfg`` (``dict(type='CocoDataset', ann_file=..., pipeline=[...])``).

    ``default_args`` fill keys the config leaves out (e.g. ``dict(test_mode=True)``);
    ``_path`` names the config key in messages (``'data.train'``). A built dataset is returned
    as it is.
    """
    return DATASETS.build(cfg, _path=_path, **dict(default_args or {}))

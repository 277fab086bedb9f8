"""build_dataset: a dataset from its config, through the DATASETS registry, with MMDetection
2.x's shortcuts for concatenation and wrappers."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from detlab.config import Config
from detlab.registry import DATASETS

_ONE_DATASET_WRAPPERS = ("RepeatDataset", "ClassBalancedDataset")
_PER_FILE_KEYS = ("img_prefix", "seg_prefix", "proposal_file")


def _join(path: str | None, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _type_name(cfg: Mapping) -> str | None:
    kind = cfg.get("type")
    return kind if isinstance(kind, str) else getattr(kind, "__name__", None)


def _concat_files(cfg: Mapping, default_args: Mapping[str, Any] | None,
                  path: str | None) -> Any:
    """One dataset per ``ann_file`` of the list (with the matching ``img_prefix`` ...
    when those are lists too), concatenated."""
    from detlab.data.datasets.wrappers import ConcatDataset

    files = list(cfg["ann_file"])
    datasets = []
    for i, ann_file in enumerate(files):
        one = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "separate_eval"}
        one["ann_file"] = ann_file
        for key in _PER_FILE_KEYS:
            value = cfg.get(key)
            if isinstance(value, (list, tuple)):
                if len(value) != len(files):
                    raise ValueError(f"{_join(path, key)} has {len(value)} entries for "
                                     f"{len(files)} ann_files; give one per file")
                one[key] = value[i]
        datasets.append(build_dataset(one, default_args, _join(path, f"ann_file.{i}")))
    return ConcatDataset(datasets, cfg.get("separate_eval", True))


def build_dataset(cfg: Any, default_args: Mapping[str, Any] | None = None,
                  _path: str | None = None) -> Any:
    """The dataset of ``cfg`` (``dict(type='CocoDataset', ann_file=..., pipeline=[...])``).

    As in MMDetection 2.x: a list of configs, or a config whose ``ann_file`` is a list (with
    ``img_prefix`` a list of the same length, or one prefix for all), is a
    :class:`ConcatDataset` (``separate_eval`` from the config, default True); wrapper configs
    (``RepeatDataset``, ``ClassBalancedDataset``, ``ConcatDataset``, ``MultiImageMixDataset``)
    have their ``dataset`` / ``datasets`` built first. ``default_args`` fill keys the config
    leaves out (e.g. ``dict(test_mode=True)``) in the innermost datasets, not the wrappers
    (nor the dataset of a ``MultiImageMixDataset``, as MMDetection); ``_path`` names the
    config key in messages (``'data.train'``). A built dataset is returned as it is.
    """
    from detlab.data.datasets.wrappers import ConcatDataset

    if isinstance(cfg, Config):
        cfg = cfg._cfg_dict
    if isinstance(cfg, (list, tuple)):
        return ConcatDataset([build_dataset(c, default_args, _join(_path, i))
                              for i, c in enumerate(cfg)])
    if not isinstance(cfg, Mapping):
        return cfg
    kind = _type_name(cfg)
    if kind == "ConcatDataset":
        datasets = [build_dataset(c, default_args, _join(_path, f"datasets.{i}"))
                    for i, c in enumerate(cfg.get("datasets", []))]
        return DATASETS.build(dict(cfg, datasets=datasets), _path=_path)
    if kind in _ONE_DATASET_WRAPPERS or kind == "MultiImageMixDataset":
        if "dataset" not in cfg:
            raise ValueError(f"{kind} config{f' at {_path}' if _path else ''} has no 'dataset' "
                             "(the config of the dataset it wraps)")
        inner_args = None if kind == "MultiImageMixDataset" else default_args
        inner = build_dataset(cfg["dataset"], inner_args, _join(_path, "dataset"))
        return DATASETS.build(dict(cfg, dataset=inner), _path=_path)
    if isinstance(cfg.get("ann_file"), (list, tuple)):
        return _concat_files(cfg, default_args, _path)
    return DATASETS.build(cfg, _path=_path, **dict(default_args or {}))

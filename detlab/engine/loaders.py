"""Loaders of a config's ``data`` section, for training (setup) and testing (tester) alike.

``data=dict(samples_per_gpu, workers_per_gpu, persistent_workers, train, val, test,
train_dataloader=dict(...), val_dataloader=dict(...), test_dataloader=dict(...))``, as MMDetection
2.28 reads it: the ``*_dataloader`` dicts override the shared settings for one split, and a split's
own ``samples_per_gpu`` (an older spelling) does too.
"""

from __future__ import annotations

import copy
from typing import Any

from detlab.config import Config, ConfigError, did_you_mean
from detlab.data import build_dataloader, build_dataset
from detlab.registry import check_arguments

DATA_KEYS = ("samples_per_gpu", "workers_per_gpu", "persistent_workers", "train", "val", "test",
             "train_dataloader", "val_dataloader", "test_dataloader")
# what build_dataloader is given by the engine itself, not by a *_dataloader dict
_ENGINE_ARGS = ("dataset", "dist", "shuffle", "seed")


def check_data_keys(data_cfg: Any) -> None:
    """Reject a key of ``data`` that MMDetection does not read (``samples_per_gup``) and
    loader options that ``build_dataloader`` does not take, before anything is built."""
    for key in data_cfg:
        if key not in DATA_KEYS:
            raise ConfigError(f"data.{key} is not a data setting.{did_you_mean(key, DATA_KEYS)} "
                              f"data takes: {', '.join(DATA_KEYS)}.")
    for split in ("train", "val", "test"):
        options = dict(loader_args(data_cfg, split), dataset=None)
        check_arguments(build_dataloader, options, "build_dataloader", f"data.{split}_dataloader")


def loader_args(data_cfg: Any, split: str, samples: int | None = None) -> dict[str, Any]:
    """``build_dataloader`` keyword arguments for ``split``: the shared settings, then the
    split's ``samples_per_gpu`` (``samples``), then ``data.<split>_dataloader``."""
    args = dict(samples_per_gpu=data_cfg.get("samples_per_gpu", 2),
                workers_per_gpu=data_cfg.get("workers_per_gpu", 2),
                persistent_workers=data_cfg.get("persistent_workers", False))
    if samples is not None:
        args["samples_per_gpu"] = samples
    args.update(data_cfg.get(f"{split}_dataloader") or {})
    for key in _ENGINE_ARGS:
        args.pop(key, None)
    return args


def build_train_loader(cfg: Config, distributed: bool, seed: int | None) -> Any:
    """The shuffled, seeded loader of ``data.train``."""
    dataset = build_dataset(cfg.data.train, _path="data.train")
    return build_dataloader(dataset, dist=distributed, shuffle=True, seed=seed,
                            **loader_args(cfg.data, "train"))


def build_test_loader(cfg: Config, split: str, distributed: bool) -> Any:
    """The loader of ``data.<split>`` in test mode (one image per batch unless the split's
    ``samples_per_gpu`` or ``data.<split>_dataloader`` says otherwise)."""
    split_cfg = copy.deepcopy(cfg.data[split])
    samples = split_cfg.pop("samples_per_gpu", 1)
    dataset = build_dataset(split_cfg, dict(test_mode=True), _path=f"data.{split}")
    return build_dataloader(dataset, dist=distributed, shuffle=False,
                            **loader_args(cfg.data, split, samples))


def build_val_loss_loader(cfg: Config, distributed: bool) -> Any:
    """The loader of the ``('val', N)`` workflow: ``data.val``'s images with the training
    pipeline and annotations, so that the model's losses can be computed on them."""
    val_cfg = copy.deepcopy(cfg.data.val)
    samples = val_cfg.pop("samples_per_gpu", None)
    val_cfg.pipeline = copy.deepcopy(cfg.data.train.pipeline)
    dataset = build_dataset(val_cfg, _path="data.val")
    return build_dataloader(dataset, dist=distributed, shuffle=False,
                            **loader_args(cfg.data, "val", samples))

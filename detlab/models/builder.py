"""Building a detector from a config (``cfg.model``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from torch import nn

from detlab.config import Config, ConfigError
from detlab.registry import MODELS


def _model_cfg(cfg: Config | Mapping | nn.Module) -> Mapping | nn.Module:
    """``cfg.model`` of a whole config, else ``cfg`` itself."""
    if isinstance(cfg, Config):
        cfg = cfg._cfg_dict
    if isinstance(cfg, Mapping) and "type" not in cfg and isinstance(cfg.get("model"), Mapping):
        return cfg["model"]
    return cfg


def build_model(cfg: Config | Mapping | nn.Module) -> nn.Module:
    """The model ``cfg`` describes: ``cfg.model`` (``dict(type='RetinaNet', backbone=...,
    ...)``) or a whole :class:`~detlab.config.Config` holding one. Nothing is downloaded here:
    pretrained weights load in ``model.init_weights()``."""
    return MODELS.build(_model_cfg(cfg), _path="model")


def build_detector(cfg: Config | Mapping, train_cfg: Mapping | None = None,
                   test_cfg: Mapping | None = None) -> nn.Module:
    """MMDetection 2.x's spelling: ``train_cfg`` / ``test_cfg`` given here (deprecated) fill
    the model config's."""
    cfg = _model_cfg(cfg)
    extra = {}
    for key, value in (("train_cfg", train_cfg), ("test_cfg", test_cfg)):
        if value is None:
            continue
        warnings.warn(f"build_detector({key}=...) is deprecated; put {key} in the model config",
                      UserWarning, stacklevel=2)
        if isinstance(cfg, Mapping) and cfg.get(key) is not None:
            raise ConfigError(f"{key} is given both to build_detector and in model.{key}; "
                              f"keep one")
        extra[key] = value
    return MODELS.build(cfg, _path="model", **extra)

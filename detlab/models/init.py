"""Weight initialization from ``init_cfg`` (mmcv's initializers) and pretrained checkpoints.

``init_cfg`` is a dict or a list of dicts, applied in order:

- ``dict(type='Kaiming' | 'Xavier' | 'Normal' | 'TruncNormal' | 'Uniform' | 'Constant' |
  'Caffe2Xavier',
  layer='Conv2d' | [...], bias=0, bias_prob=None, override=dict(name='retina_cls', ...), ...)``
  initializes every submodule whose class (or a direct base class, e.g. ``_BatchNorm``) is named
  in ``layer``; ``override`` re-initializes the named child, with the parent's type and arguments
  unless it sets its own;
- ``dict(type='Pretrained', checkpoint='torchvision://resnet50' | URL | path, prefix=None)``
  loads weights. Pretrained weights load only when a model's ``init_weights()`` runs, never while
  building it, so building a model needs no network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from detlab.checkpoint import (  # noqa: F401  (re-exported for model code)
    CheckpointLoadError,
    load_checkpoint,
    torchvision_weights_url,
)
from detlab.config import ConfigError, did_you_mean
from detlab.models.utils import constant_init, kaiming_init

INIT_TYPES = ("Kaiming", "Xavier", "Normal", "TruncNormal", "Uniform", "Constant", "Pretrained",
              "Caffe2Xavier")
# mmcv's Caffe2Xavier: Caffe2's "Xavier", which is a He-uniform fan-in init with a=1
_CAFFE2_XAVIER = dict(a=1, mode="fan_in", nonlinearity="leaky_relu", distribution="uniform")
# what each initializer accepts besides type/layer/override/bias/bias_prob
_INIT_ARGS = {"Kaiming": ("a", "mode", "nonlinearity", "distribution"),
              "Xavier": ("gain", "distribution"), "Normal": ("mean", "std"),
              "TruncNormal": ("mean", "std", "a", "b"), "Uniform": ("a", "b"),
              "Constant": ("val",), "Caffe2Xavier": ()}
def bias_init_with_prob(prior_prob: float) -> float:
    """The bias whose sigmoid is ``prior_prob``: ``-log((1 - p) / p)`` (focal-loss prior)."""
    return float(-math.log((1 - prior_prob) / prior_prob))


def is_pretrained(init_cfg: Any) -> bool:
    """Whether ``init_cfg`` is (or contains) a ``type='Pretrained'`` entry."""
    cfgs = [init_cfg] if isinstance(init_cfg, Mapping) else list(init_cfg or [])
    return any(isinstance(c, Mapping) and c.get("type") == "Pretrained" for c in cfgs)


def initialize(module: nn.Module, init_cfg: Mapping | Sequence[Mapping] | None,
               load_pretrained: bool = True) -> None:
    """Apply ``init_cfg`` (a dict or a list of dicts, see the module docstring) to ``module``.

    ``load_pretrained=False`` skips ``Pretrained`` entries (used while building a model).
    """
    if init_cfg is None:
        return
    cfgs = [init_cfg] if isinstance(init_cfg, Mapping) else list(init_cfg)
    for cfg in cfgs:
        if not isinstance(cfg, Mapping) or cfg.get("type") not in INIT_TYPES:
            raise ConfigError(f"init_cfg entries must be dict(type=T, ...) with T one of "
                              f"{', '.join(INIT_TYPES)}; got {cfg!r}")
        args = dict(cfg)
        if args["type"] == "Pretrained":
            if load_pretrained:
                _load_pretrained(module, args)
            continue
        _apply_initializer(module, args)


def _layer_names(module: nn.Module) -> set[str]:
    cls = type(module)
    return {cls.__name__} | {base.__name__ for base in cls.__bases__}


def _apply_initializer(module: nn.Module, cfg: dict[str, Any]) -> None:
    override = cfg.pop("override", None)
    layer = cfg.pop("layer", None)
    init_fn = _make_init_fn(dict(cfg))
    if layer is not None:
        layers = {layer} if isinstance(layer, str) else set(layer)
        for m in module.modules():
            if _layer_names(m) & layers:
                init_fn(m)
    overrides = [override] if isinstance(override, Mapping) else list(override or [])
    for item in overrides:
        item = dict(item)
        name = item.pop("name", None)
        target = getattr(module, name, None) if name else None
        if not isinstance(target, nn.Module):
            raise ConfigError(f"init_cfg override names {name!r}, which is not a submodule of "
                              f"{type(module).__name__}."
                              f"{did_you_mean(str(name), dict(module.named_children()))}")
        # an override without its own type inherits the parent's initializer and arguments
        merged = item if "type" in item else {**cfg, **item}
        fn = _make_init_fn(merged)
        for m in target.modules():
            fn(m)


def _make_init_fn(cfg: dict[str, Any]) -> Callable[[nn.Module], None]:
    """``(module) -> None`` that initializes the module's weight and bias per ``cfg``."""
    kind = cfg.pop("type")
    bias = cfg.pop("bias", 0.0)
    if cfg.get("bias_prob") is not None:
        bias = bias_init_with_prob(cfg.pop("bias_prob"))
    cfg.pop("bias_prob", None)
    unknown = [k for k in cfg if k not in _INIT_ARGS[kind]]
    if unknown:
        raise ConfigError(f"init_cfg type {kind!r} does not accept {', '.join(unknown)}; it "
                          f"accepts: layer, override, bias, bias_prob, "
                          f"{', '.join(_INIT_ARGS[kind])}")
    if kind == "Caffe2Xavier":
        kind, cfg = "Kaiming", dict(_CAFFE2_XAVIER)

    def init_weight(weight: torch.Tensor) -> None:
        if kind == "Kaiming":
            fn = nn.init.kaiming_uniform_ if cfg.get("distribution") == "uniform" \
                else nn.init.kaiming_normal_
            fn(weight, a=cfg.get("a", 0), mode=cfg.get("mode", "fan_out"),
               nonlinearity=cfg.get("nonlinearity", "relu"))
        elif kind == "Xavier":
            fn = nn.init.xavier_uniform_ if cfg.get("distribution") == "uniform" \
                else nn.init.xavier_normal_
            fn(weight, gain=cfg.get("gain", 1))
        elif kind == "Normal":
            nn.init.normal_(weight, cfg.get("mean", 0), cfg.get("std", 1))
        elif kind == "TruncNormal":
            nn.init.trunc_normal_(weight, cfg.get("mean", 0), cfg.get("std", 1),
                                  cfg.get("a", -2), cfg.get("b", 2))
        elif kind == "Uniform":
            nn.init.uniform_(weight, cfg.get("a", 0), cfg.get("b", 1))
        else:
            nn.init.constant_(weight, cfg["val"])

    def apply(m: nn.Module) -> None:
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            init_weight(m.weight)
        if isinstance(getattr(m, "bias", None), torch.Tensor):
            nn.init.constant_(m.bias, bias)

    return apply


def default_resnet_init(module: nn.Module) -> None:
    """He init for convolutions, weight 1 / bias 0 for norm layers (MMDetection's ResNet)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kaiming_init(m)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            constant_init(m, 1.0)


def _load_pretrained(module: nn.Module, cfg: Mapping[str, Any]) -> None:
    """``dict(type='Pretrained', checkpoint=..., prefix=None, map_location='cpu')``."""
    checkpoint = cfg.get("checkpoint")
    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ConfigError(f"init_cfg=dict(type='Pretrained') needs checkpoint='torchvision://"
                          f"NAME', a URL or a file path; got {checkpoint!r}")
    load_checkpoint(module, checkpoint, map_location=cfg.get("map_location", "cpu"),
                    prefix=cfg.get("prefix"))

"""Optimizers from configs: every ``torch.optim`` optimizer by name, and MMDetection's
parameter-wise learning-rate and weight-decay multipliers (``paramwise_cfg``).

``optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'backbone': dict(lr_mult=0.1)}))``
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from detlab.config import ConfigError, did_you_mean
from detlab.registry import OPTIMIZER_BUILDERS, OPTIMIZERS


def _register_torch_optimizers() -> list[str]:
    names = []
    for name, obj in vars(torch.optim).items():
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) \
                and obj is not torch.optim.Optimizer and name not in OPTIMIZERS._modules:
            OPTIMIZERS.register_module(module=obj)
            names.append(name)
    return names


TORCH_OPTIMIZERS = _register_torch_optimizers()

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
          nn.LayerNorm)
PARAMWISE_KEYS = ("custom_keys", "bias_lr_mult", "bias_decay_mult", "norm_decay_mult",
                  "dwconv_decay_mult", "dcn_offset_lr_mult", "bypass_duplicate")
_DECAY_MULTS = ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult")


@OPTIMIZER_BUILDERS.register_module()
class DefaultOptimizerConstructor:
    """Builds an optimizer whose parameter groups follow ``paramwise_cfg`` (MMDetection's rules).

    Args:
        optimizer_cfg: ``dict(type=NAME, lr=..., weight_decay=..., ...)`` for ``OPTIMIZERS``.
        paramwise_cfg: multipliers, applied to a parameter in this order:
            ``custom_keys`` -- ``{substring: dict(lr_mult, decay_mult)}``; the longest key found in
            the parameter's full name wins (alphabetical among equals) and no other rule applies;
            ``bias_lr_mult`` -- the lr of ``bias`` parameters outside norm layers;
            ``norm_decay_mult`` / ``dwconv_decay_mult`` / ``bias_decay_mult`` -- the weight decay
            of norm-layer parameters, of depthwise convs, of other biases (first match wins);
            ``dcn_offset_lr_mult`` -- the lr of the offset convs of deformable convolutions;
            ``bypass_duplicate`` -- skip a parameter shared by two modules instead of failing.
    """

    def __init__(self, optimizer_cfg: Mapping, paramwise_cfg: Mapping | None = None) -> None:
        if not isinstance(optimizer_cfg, Mapping) or "lr" not in optimizer_cfg:
            raise ConfigError(f"optimizer must be dict(type=NAME, lr=..., ...), got "
                              f"{optimizer_cfg!r}")
        self.optimizer_cfg = dict(optimizer_cfg)
        self.paramwise_cfg = dict(paramwise_cfg or {})
        for key in self.paramwise_cfg:
            if key not in PARAMWISE_KEYS:
                raise ConfigError(f"optimizer.paramwise_cfg has no key {key!r}."
                                  f"{did_you_mean(key, PARAMWISE_KEYS)} It accepts: "
                                  f"{', '.join(PARAMWISE_KEYS)}.")
        self.base_lr = float(self.optimizer_cfg["lr"])
        self.base_wd = self.optimizer_cfg.get("weight_decay")
        custom = self.paramwise_cfg.get("custom_keys", {})
        if not isinstance(custom, Mapping):
            raise ConfigError(f"optimizer.paramwise_cfg.custom_keys must be a dict of "
                              f"{{name: dict(lr_mult, decay_mult)}}, got {custom!r}")
        uses_decay = [k for k in _DECAY_MULTS if k in self.paramwise_cfg] + [
            f"custom_keys.{k}.decay_mult" for k, v in custom.items() if "decay_mult" in v]
        if uses_decay and self.base_wd is None:
            raise ConfigError(f"optimizer.paramwise_cfg sets {', '.join(uses_decay)} but the "
                              f"optimizer has no weight_decay to multiply; set "
                              f"optimizer.weight_decay")

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        model = getattr(model, "module", model)  # DataParallel / DistributedDataParallel
        cfg = dict(self.optimizer_cfg)
        if self.paramwise_cfg:
            cfg["params"] = self.param_groups(model)
        else:
            cfg["params"] = list(model.parameters())
        return OPTIMIZERS.build(cfg, _path="optimizer")

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameters grouped by their (lr, weight_decay); one group per distinct setting."""
        groups: dict[tuple, dict[str, Any]] = {}
        seen: set[int] = set()
        for module_name, module in model.named_modules():
            for name, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    if self.paramwise_cfg.get("bypass_duplicate", False):
                        continue
                    raise ConfigError(
                        f"parameter {module_name}.{name} is shared by two modules; set "
                        f"optimizer.paramwise_cfg.bypass_duplicate=True to add it once")
                seen.add(id(param))
                settings = self._settings(f"{module_name}.{name}" if module_name else name,
                                          name, module)
                key = tuple(sorted(settings.items()))
                groups.setdefault(key, dict(settings, params=[]))["params"].append(param)
        return list(groups.values())

    def _settings(self, full_name: str, name: str, module: nn.Module) -> dict[str, float]:
        """The lr (and weight_decay, when the optimizer has one) of one parameter.

        The order of the rules is MMDetection 2.x's (mmcv 1.x): a norm layer's bias takes
        ``norm_decay_mult``, a depthwise conv's bias ``dwconv_decay_mult``; unset multipliers are 1.
        """
        lr, wd = self.base_lr, self.base_wd
        custom = self.paramwise_cfg.get("custom_keys", {})
        for key in sorted(sorted(custom), key=len, reverse=True):
            if key in full_name:
                lr = self.base_lr * custom[key].get("lr_mult", 1.0)
                if wd is not None:
                    wd = self.base_wd * custom[key].get("decay_mult", 1.0)
                return _settings_dict(lr, wd)
        mult = self.paramwise_cfg.get
        is_norm = isinstance(module, _NORMS)
        is_conv = isinstance(module, nn.Conv2d)
        if name == "bias" and not is_norm:
            lr = self.base_lr * mult("bias_lr_mult", 1.0)
        if is_conv and "conv_offset" in full_name:  # offsets of deformable convolutions
            lr = self.base_lr * mult("dcn_offset_lr_mult", 1.0)
        if wd is not None:
            if is_norm:
                wd = self.base_wd * mult("norm_decay_mult", 1.0)
            elif is_conv and module.in_channels == module.groups:
                wd = self.base_wd * mult("dwconv_decay_mult", 1.0)
            elif name == "bias":
                wd = self.base_wd * mult("bias_decay_mult", 1.0)
        return _settings_dict(lr, wd)


def _settings_dict(lr: float, wd: float | None) -> dict[str, float]:
    return {"lr": lr} if wd is None else {"lr": lr, "weight_decay": wd}


def build_optimizer(model: nn.Module, cfg: Mapping) -> torch.optim.Optimizer:
    """The optimizer a config's ``optimizer`` entry describes, for ``model``'s parameters.

    ``constructor`` (default ``'DefaultOptimizerConstructor'``) and ``paramwise_cfg`` are taken out
    of the dict; the rest goes to the optimizer class.
    """
    optimizer_cfg = copy.deepcopy(dict(cfg))
    constructor = optimizer_cfg.pop("constructor", "DefaultOptimizerConstructor")
    paramwise_cfg = optimizer_cfg.pop("paramwise_cfg", None)
    builder = OPTIMIZER_BUILDERS.build(
        dict(type=constructor, optimizer_cfg=optimizer_cfg, paramwise_cfg=paramwise_cfg),
        _path="optimizer.constructor")
    return builder(model)

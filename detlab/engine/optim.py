"""Optimizers from configs: every ``torch.optim`` optimizer by name, MMDetection's
parameter-wise learning-rate and weight-decay multipliers (``paramwise_cfg``), and MMDetection
2.28's layer-wise learning-rate decay for ConvNeXt backbones.

``optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'backbone': dict(lr_mult=0.1)}))``

An optimizer or a constructor of your own is registered as MMDetection's tutorial teaches, in
:data:`~detlab.registry.OPTIMIZERS` / :data:`~detlab.registry.OPTIMIZER_BUILDERS`, and named by
``optimizer=dict(type='MyOptimizer', ...)`` / ``optimizer=dict(..., constructor='MyConstructor')``;
a constructor is called as ``Constructor(optimizer_cfg=..., paramwise_cfg=...)(model)``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Mapping
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
# mmcv.ops' deformable convolutions (and their *Pack subclasses, which hold the conv_offset
# layer), recognised by class name so that modules written for mmcv, torchvision's
# DeformConv2d and any of ours count alike, without importing mmcv.
_DEFORMABLE_CONVS = ("DeformConv2d", "ModulatedDeformConv2d")
PARAMWISE_KEYS = ("custom_keys", "bias_lr_mult", "bias_decay_mult", "norm_decay_mult",
                  "dwconv_decay_mult", "dcn_offset_lr_mult", "bypass_duplicate")
_DECAY_MULTS = ("bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult")


def is_deformable_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a deformable convolution (mmcv's ``DeformConv2d`` or
    ``ModulatedDeformConv2d``, or a subclass such as ``DeformConv2dPack``)."""
    return any(cls.__name__ in _DEFORMABLE_CONVS for cls in type(module).__mro__)


def walk_modules(module: nn.Module, prefix: str = "",
                 in_deformable: bool = False) -> Iterator[tuple[str, nn.Module, bool]]:
    """``(name, module, parent_is_deformable_conv)`` for ``module`` and its descendants, parent
    first, the way mmcv's constructor visits them: a module registered under two parents is
    visited under each name (so a shared parameter is seen twice)."""
    yield prefix, module, in_deformable
    deformable = is_deformable_conv(module)
    for name, child in module.named_children():
        yield from walk_modules(child, f"{prefix}.{name}" if prefix else name, deformable)


def _check_paramwise_cfg(paramwise_cfg: Mapping, base_lr: Any, base_wd: Any) -> None:
    for key in paramwise_cfg:
        if key not in PARAMWISE_KEYS:
            raise ConfigError(f"optimizer.paramwise_cfg has no key {key!r}."
                              f"{did_you_mean(key, PARAMWISE_KEYS)} It accepts: "
                              f"{', '.join(PARAMWISE_KEYS)}.")
    custom = paramwise_cfg.get("custom_keys", {})
    if not isinstance(custom, Mapping):
        raise ConfigError(f"optimizer.paramwise_cfg.custom_keys must be a dict of "
                          f"{{name: dict(lr_mult, decay_mult)}}, got {custom!r}")
    if paramwise_cfg and base_lr is None:
        raise ConfigError("optimizer.paramwise_cfg multiplies the learning rate, but the "
                          "optimizer has no lr; set optimizer.lr")
    uses_decay = [k for k in _DECAY_MULTS if k in paramwise_cfg] + [
        f"custom_keys.{k}.decay_mult" for k, v in custom.items() if "decay_mult" in v]
    if uses_decay and base_wd is None:
        raise ConfigError(f"optimizer.paramwise_cfg sets {', '.join(uses_decay)} but the "
                          f"optimizer has no weight_decay to multiply; set "
                          f"optimizer.weight_decay")


def _constructor_settings(optimizer_cfg: Mapping, paramwise_cfg: Mapping | None
                          ) -> tuple[dict, dict, float | None, float | None]:
    """What an optimizer constructor keeps: copies of both configs, the base lr and the base
    weight decay (None where the optimizer has none)."""
    if not isinstance(optimizer_cfg, Mapping):
        raise ConfigError(f"optimizer must be dict(type=NAME, lr=..., ...), got {optimizer_cfg!r}")
    optimizer_cfg = dict(optimizer_cfg)
    return (optimizer_cfg, dict(paramwise_cfg or {}), optimizer_cfg.get("lr"),
            optimizer_cfg.get("weight_decay"))


@OPTIMIZER_BUILDERS.register_module()
class DefaultOptimizerConstructor:
    """Builds an optimizer whose parameter groups follow ``paramwise_cfg`` (mmcv 1.x's rules, which
    MMDetection 2.x uses).

    Args:
        optimizer_cfg: ``dict(type=NAME, lr=..., weight_decay=..., ...)`` for ``OPTIMIZERS``.
        paramwise_cfg: multipliers, applied to a trainable parameter in this order:
            ``custom_keys`` -- ``{substring: dict(lr_mult, decay_mult)}``; the longest key found in
            the parameter's full name wins (alphabetical among equals) and no other rule applies;
            ``bias_lr_mult`` -- the lr of ``bias`` parameters outside norm layers and outside
            deformable convolutions;
            ``dcn_offset_lr_mult`` -- the lr (weight and bias) of the ``conv_offset`` convs of
            deformable convolutions (``DeformConv2dPack`` ...), instead of ``bias_lr_mult``;
            ``norm_decay_mult`` / ``dwconv_decay_mult`` / ``bias_decay_mult`` -- the weight decay
            of norm-layer parameters, of depthwise convs, of other biases (first match wins; the
            layers inside a deformable convolution keep their bias decay);
            ``bypass_duplicate`` -- add a parameter shared by two modules once instead of failing.
            Frozen parameters (``requires_grad=False``) stay in the optimizer with the base lr and
            weight decay, so that a hook can unfreeze them later.
    """

    def __init__(self, optimizer_cfg: Mapping, paramwise_cfg: Mapping | None = None) -> None:
        (self.optimizer_cfg, self.paramwise_cfg, self.base_lr,
         self.base_wd) = _constructor_settings(optimizer_cfg, paramwise_cfg)
        _check_paramwise_cfg(self.paramwise_cfg, self.base_lr, self.base_wd)

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
        for prefix, module, in_deformable in walk_modules(model):
            for name, param in module.named_parameters(recurse=False):
                full_name = f"{prefix}.{name}" if prefix else name
                if id(param) in seen:
                    if self.paramwise_cfg.get("bypass_duplicate", False):
                        continue
                    raise ConfigError(
                        f"parameter {full_name} is shared by two modules; set "
                        f"optimizer.paramwise_cfg.bypass_duplicate=True to add it once")
                seen.add(id(param))
                if param.requires_grad:
                    settings = self._settings(prefix, name, module, in_deformable)
                else:
                    settings = _settings_dict(self.base_lr, self.base_wd)
                key = tuple(sorted(settings.items()))
                groups.setdefault(key, dict(settings, params=[]))["params"].append(param)
        return list(groups.values())

    def _custom_settings(self, full_name: str) -> dict[str, float] | None:
        """The settings of the longest ``custom_keys`` entry found in ``full_name``, if any."""
        custom = self.paramwise_cfg.get("custom_keys", {})
        for key in sorted(sorted(custom), key=len, reverse=True):
            if key in full_name:
                lr = self.base_lr * custom[key].get("lr_mult", 1.0)
                wd = None if self.base_wd is None else (
                    self.base_wd * custom[key].get("decay_mult", 1.0))
                return _settings_dict(lr, wd)
        return None

    def _settings(self, prefix: str, name: str, module: nn.Module,
                  in_deformable: bool) -> dict[str, float]:
        """The lr (and weight_decay, when the optimizer has one) of one trainable parameter
        ``name`` of ``module`` (at ``prefix``; ``in_deformable``: its parent is a deformable conv).

        mmcv 1.x's order: a norm layer's bias takes ``norm_decay_mult``, a depthwise conv's bias
        ``dwconv_decay_mult``; unset multipliers are 1. mmcv names a parameter ``prefix.name``
        when matching ``custom_keys`` (``.weight`` for one of the model itself).
        """
        custom = self._custom_settings(f"{prefix}.{name}")
        if custom is not None:
            return custom
        mult = self.paramwise_cfg.get
        lr, wd = self.base_lr, self.base_wd
        is_norm = isinstance(module, _NORMS)
        is_conv = isinstance(module, nn.Conv2d)
        if name == "bias" and not (is_norm or in_deformable):
            lr = self.base_lr * mult("bias_lr_mult", 1.0)
        if in_deformable and is_conv and "conv_offset" in prefix:
            lr = self.base_lr * mult("dcn_offset_lr_mult", 1.0)
        if wd is not None:
            if is_norm:
                wd = self.base_wd * mult("norm_decay_mult", 1.0)
            elif is_conv and module.in_channels == module.groups:
                wd = self.base_wd * mult("dwconv_decay_mult", 1.0)
            elif name == "bias" and not in_deformable:
                wd = self.base_wd * mult("bias_decay_mult", 1.0)
        return _settings_dict(lr, wd)


def _settings_dict(lr: float | None, wd: float | None) -> dict[str, float]:
    settings = {} if lr is None else {"lr": lr}
    if wd is not None:
        settings["weight_decay"] = wd
    return settings


# ---- layer-wise learning-rate decay (MMDetection 2.28, ConvNeXt) ---------------------------

LAYER_DECAY_KEYS = ("decay_rate", "decay_type", "num_layers")
DECAY_TYPES = ("layer_wise", "stage_wise")
_CONVNEXT_TOKENS = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")
_CONVNEXT_NAMES = "backbone.downsample_layers.N..., backbone.stages.N.M..."


def _convnext_stage(name: str, part: int) -> int:
    index = int(name.split(".")[part])
    if part == 2 and not 0 <= index <= 3:
        raise ConfigError(f"LearningRateDecayOptimizerConstructor knows ConvNeXt's 4 stages, but "
                          f"parameter {name} is in stage {index}")
    return index


def convnext_layer_id(name: str, num_layers: int) -> int:
    """The layer of a parameter of a ConvNeXt detector for ``decay_type='layer_wise'``
    (MMDetection 2.28's ``get_layer_id_for_convnext``, MMClassification's names).

    0: the stem (``backbone.downsample_layers.0``) and the tokens; 1: stage 0; 2: stage 1 and
    downsampling layer 1; 3: downsampling layer 2; ``3 + block // 3``: block ``block`` of stage 2;
    ``num_layers``: stage 3 and downsampling layer 3; ``num_layers + 1``: everything else (the
    backbone's output norms, the neck, the heads).
    """
    if name in _CONVNEXT_TOKENS:
        return 0
    if name.startswith("backbone.downsample_layers"):
        return (0, 2, 3, num_layers)[_convnext_stage(name, 2)]
    if name.startswith("backbone.stages"):
        stage, block = _convnext_stage(name, 2), _convnext_stage(name, 3)
        return (1, 2, 3 + block // 3, num_layers)[stage]
    return num_layers + 1


def convnext_stage_id(name: str, num_layers: int) -> int:
    """The layer of a parameter of a ConvNeXt detector for ``decay_type='stage_wise'``
    (MMDetection 2.28's ``get_stage_id_for_convnext``): 0 for the tokens and every downsampling
    layer, ``stage + 1`` for the blocks of a stage, ``num_layers + 1`` for everything else."""
    if name in _CONVNEXT_TOKENS or name.startswith("backbone.downsample_layers"):
        return 0
    if name.startswith("backbone.stages"):
        return _convnext_stage(name, 2) + 1
    return num_layers + 1


def _check_layer_decay_cfg(paramwise_cfg: Mapping, base_lr: Any) -> None:
    path = "optimizer.paramwise_cfg"
    for key in paramwise_cfg:
        if key not in LAYER_DECAY_KEYS:
            raise ConfigError(f"{path} of LearningRateDecayOptimizerConstructor has no key "
                              f"{key!r}.{did_you_mean(key, LAYER_DECAY_KEYS)} It accepts: "
                              f"{', '.join(LAYER_DECAY_KEYS)}.")
    for key in ("num_layers", "decay_rate"):
        if key not in paramwise_cfg:
            raise ConfigError(f"LearningRateDecayOptimizerConstructor needs {path}.{key}, e.g. "
                              f"paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', "
                              f"num_layers=6)")
    num_layers = paramwise_cfg["num_layers"]
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 3:
        raise ConfigError(f"{path}.num_layers must be an int of at least 3 (6 for ConvNeXt-T/S/"
                          f"B/L in MMDetection's configs), got {num_layers!r}")
    decay_type = paramwise_cfg.get("decay_type", "layer_wise")
    if decay_type not in DECAY_TYPES:
        raise ConfigError(f"{path}.decay_type must be one of {', '.join(map(repr, DECAY_TYPES))}, "
                          f"got {decay_type!r}.{did_you_mean(str(decay_type), DECAY_TYPES)}")
    if base_lr is None:
        raise ConfigError("LearningRateDecayOptimizerConstructor scales the learning rate, but "
                          "the optimizer has no lr; set optimizer.lr")


@OPTIMIZER_BUILDERS.register_module()
class LearningRateDecayOptimizerConstructor:
    """Learning rates that shrink towards the input of a ConvNeXt backbone (MMDetection 2.28).

    ``optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, constructor=
    'LearningRateDecayOptimizerConstructor', paramwise_cfg=dict(decay_rate=0.95,
    decay_type='layer_wise', num_layers=6))``

    Each trainable parameter gets a layer id from its name (MMClassification's ConvNeXt names:
    ``backbone.downsample_layers.N...``, ``backbone.stages.N.M...``; see
    :func:`convnext_layer_id` and :func:`convnext_stage_id`) and the learning rate
    ``lr * decay_rate ** (num_layers + 1 - layer_id)`` -- the neck and heads keep ``lr``.
    One-dimensional parameters (norms, biases), ``*.bias`` and the tokens get no weight decay.
    Frozen parameters are left out of the optimizer, and ``paramwise_cfg`` takes only these
    three keys, as in MMDetection. Each group carries ``param_names``, ``lr_scale`` and
    ``group_name`` (``layer_<id>_decay`` / ``layer_<id>_no_decay``) for inspection.

    Args:
        optimizer_cfg: ``dict(type=NAME, lr=..., weight_decay=..., ...)`` for ``OPTIMIZERS``.
        paramwise_cfg: ``dict(decay_rate, decay_type='layer_wise' | 'stage_wise', num_layers)``.
    """

    def __init__(self, optimizer_cfg: Mapping, paramwise_cfg: Mapping | None = None) -> None:
        (self.optimizer_cfg, self.paramwise_cfg, self.base_lr,
         self.base_wd) = _constructor_settings(optimizer_cfg, paramwise_cfg)
        _check_layer_decay_cfg(self.paramwise_cfg, self.base_lr)
        self.num_layers = int(self.paramwise_cfg["num_layers"])
        self.decay_rate = float(self.paramwise_cfg["decay_rate"])
        self.decay_type = self.paramwise_cfg.get("decay_type", "layer_wise")

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        model = getattr(model, "module", model)  # DataParallel / DistributedDataParallel
        backbone = getattr(model, "backbone", None)
        if "ConvNeXt" not in type(backbone).__name__:
            raise ConfigError(
                f"optimizer.constructor 'LearningRateDecayOptimizerConstructor' reads the "
                f"parameter names of a ConvNeXt backbone ({_CONVNEXT_NAMES}), but model.backbone "
                f"is {type(backbone).__name__}; use a ConvNeXt backbone or remove "
                f"optimizer.constructor")
        cfg = dict(self.optimizer_cfg, params=self.param_groups(model))
        return OPTIMIZERS.build(cfg, _path="optimizer")

    def layer_id(self, name: str) -> int:
        """The layer id of parameter ``name`` (a full name: ``backbone.stages.2.4.gamma``)."""
        if self.decay_type == "layer_wise":
            return convnext_layer_id(name, self.num_layers)
        return convnext_stage_id(name, self.num_layers)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """One group per (layer id, weight decay or not), in the order parameters come."""
        groups: dict[str, dict[str, Any]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim == 1 or name.endswith(".bias") or name in ("pos_embed",
                                                                             "cls_token")
            layer_id = self.layer_id(name)
            group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
            if group_name not in groups:
                scale = self.decay_rate ** (self.num_layers + 1 - layer_id)
                groups[group_name] = {"params": [], "param_names": [], "lr_scale": scale,
                                      "group_name": group_name, "lr": scale * self.base_lr}
                if no_decay:
                    groups[group_name]["weight_decay"] = 0.0
                elif self.base_wd is not None:
                    groups[group_name]["weight_decay"] = self.base_wd
            groups[group_name]["params"].append(param)
            groups[group_name]["param_names"].append(name)
        return list(groups.values())


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

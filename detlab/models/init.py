"""Weight initialization from ``init_cfg`` (mmcv's initializers) and pretrained checkpoints.

``init_cfg`` is a dict or a list of dicts, applied in order:

- ``dict(type='Kaiming' | 'Xavier' | 'Normal' | 'TruncNormal' | 'Uniform' | 'Constant',
  layer='Conv2d' | [...], bias=0, bias_prob=None, override=dict(name='retina_cls', ...), ...)``
  initializes every submodule whose class (or a direct base class, e.g. ``_BatchNorm``) is named
  in ``layer``; ``override`` re-initializes the named child, with the parent's type and arguments
  unless it sets its own;
- ``dict(type='Pretrained', checkpoint='torchvision://resnet50' | URL | path, prefix=None)``
  loads weights. Pretrained weights load only when a model's ``init_weights()`` runs, never while
  building it, so building a model needs no network.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from detlab.config import ConfigError, closest, did_you_mean
from detlab.models.utils import constant_init, kaiming_init

logger = logging.getLogger("detlab")

INIT_TYPES = ("Kaiming", "Xavier", "Normal", "TruncNormal", "Uniform", "Constant", "Pretrained")
# what each initializer accepts besides type/layer/override/bias/bias_prob
_INIT_ARGS = {"Kaiming": ("a", "mode", "nonlinearity", "distribution"),
              "Xavier": ("gain", "distribution"), "Normal": ("mean", "std"),
              "TruncNormal": ("mean", "std", "a", "b"), "Uniform": ("a", "b"),
              "Constant": ("val",)}
# keys of a torchvision classifier checkpoint that a detection backbone does not use
EXPECTED_UNUSED_PREFIXES = ("fc.",)


class CheckpointLoadError(ConfigError, OSError):
    """Pretrained weights that could not be downloaded or read."""


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
                load_checkpoint(module, args.get("checkpoint"), prefix=args.get("prefix"),
                                map_location=args.get("map_location", "cpu"))
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


# ---- checkpoints ----------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What loading a state dict into a module did."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    expected_unused: list[str] = field(default_factory=list)


def torchvision_weights_url(name: str) -> str:
    """The download URL of torchvision's weights for ``name``.

    ``name`` is an architecture (``'resnet50'``: its ``IMAGENET1K_V1`` weights, the ones
    MMDetection's models were trained from), ``'resnet50.imagenet1k_v2'`` for another entry of
    its weight enum, or the enum spelled out (``'ResNet50_Weights.IMAGENET1K_V2'``).
    """
    import torchvision.models as tvm

    arch, _, tag = name.partition(".")
    if arch.endswith("_Weights") and isinstance(getattr(tvm, arch, None), type):
        enum = getattr(tvm, arch)
    else:
        known = tvm.list_models()
        if arch not in known:
            hits = closest(arch, known)
            hint = f" Did you mean {' or '.join(map(repr, hits))}?" if hits else ""
            raise ConfigError(f"torchvision://{name}: torchvision has no model {arch!r}.{hint}")
        enum = tvm.get_model_weights(arch)
    members = {m.name: m for m in enum}
    if not tag:
        tag = "IMAGENET1K_V1" if "IMAGENET1K_V1" in members else "DEFAULT"
    member = enum.DEFAULT if tag.upper() == "DEFAULT" else members.get(tag.upper())
    if member is None:
        raise ConfigError(f"torchvision://{name}: {enum.__name__} has no {tag!r}; it has "
                          f"{', '.join(members)}")
    return member.url


def _download_hint(checkpoint: str, url: str) -> str:
    filename = os.path.basename(urlparse(url).path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    return (f"Without internet access, download {url} elsewhere and pass the local file instead: "
            f"init_cfg.checkpoint=/path/to/{filename} (e.g. --cfg-options "
            f"model.backbone.init_cfg.checkpoint=/path/to/{filename}), or copy it to {cached} "
            f"where torch.hub looks first.")


def _load_url(checkpoint: str, url: str, map_location: Any) -> Any:
    try:
        return torch.hub.load_state_dict_from_url(url, map_location=map_location, progress=False,
                                                  weights_only=True)
    except Exception as err:
        raise CheckpointLoadError(f"could not load the pretrained weights {checkpoint!r} from "
                                  f"{url}: {err}. {_download_hint(checkpoint, url)}") from err


def read_checkpoint(checkpoint: str, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict of ``checkpoint``: ``torchvision://NAME``, an http(s) URL (both through
    ``torch.hub``'s cache under ``$TORCH_HOME/hub/checkpoints``) or a local file. A checkpoint
    with a ``state_dict`` or ``model`` entry is unwrapped and ``module.`` prefixes dropped."""
    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ConfigError(f"init_cfg=dict(type='Pretrained') needs checkpoint='torchvision://"
                          f"NAME', a URL or a file path; got {checkpoint!r}")
    checkpoint = str(checkpoint)
    if checkpoint.startswith("torchvision://"):
        raw = _load_url(checkpoint, torchvision_weights_url(checkpoint[14:]), map_location)
    elif checkpoint.startswith(("http://", "https://")):
        raw = _load_url(checkpoint, checkpoint, map_location)
    elif "://" in checkpoint:
        raise ConfigError(f"checkpoint {checkpoint!r}: detlab reads torchvision://NAME, http(s) "
                          f"URLs and local files; download the file and pass its path")
    else:
        path = os.path.expanduser(checkpoint)
        if not os.path.isfile(path):
            raise CheckpointLoadError(f"checkpoint file {checkpoint!r} does not exist (set "
                                      f"init_cfg.checkpoint to an existing .pth file)")
        raw = torch.load(path, map_location=map_location, weights_only=True)
    state = raw
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointLoadError(f"checkpoint {checkpoint!r} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor],
                    source: str = "state dict") -> LoadReport:
    """Load ``state`` into ``module`` non-strictly, report what did not fit, and return it.

    Tensors whose shape differs are skipped; ``fc.*`` keys (a classifier's head) are expected
    extras and only logged; other missing or unexpected keys give a warning.
    """
    own = module.state_dict()
    report = LoadReport(source)
    usable = {}
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)}, "
                                     f"model {tuple(own[key].shape)}")
        else:
            usable[key] = value
    result = module.load_state_dict(usable, strict=False)
    report.missing = [k for k in result.missing_keys if "num_batches_tracked" not in k]
    for key in result.unexpected_keys:
        extra = key.startswith(EXPECTED_UNUSED_PREFIXES)
        (report.expected_unused if extra else report.unexpected).append(key)
    _log_report(module, report)
    return report


def _log_report(module: nn.Module, report: LoadReport) -> None:
    name = type(module).__name__
    if report.expected_unused:
        logger.info("%s: %s keys of %s are not used (a classifier's head, expected): %s", name,
                    len(report.expected_unused), report.source, ", ".join(report.expected_unused))
    problems = []
    if report.missing:
        problems.append(f"missing in the checkpoint (left as initialized): "
                        f"{', '.join(report.missing)}")
    if report.unexpected:
        problems.append(f"in the checkpoint but not in the model: {', '.join(report.unexpected)}")
    if report.mismatched:
        problems.append(f"shape mismatch (skipped): {'; '.join(report.mismatched)}")
    if problems:
        warnings.warn(f"loading {report.source} into {name}: " + " | ".join(problems),
                      stacklevel=3)
    else:
        logger.info("%s: loaded %s", name, report.source)


def load_checkpoint(module: nn.Module, checkpoint: str, prefix: str | None = None,
                    map_location: Any = "cpu") -> LoadReport:
    """Read ``checkpoint`` (see :func:`read_checkpoint`) and load it into ``module``; with
    ``prefix`` (e.g. ``'backbone.'``) only the keys under it are used, the prefix removed."""
    state = read_checkpoint(checkpoint, map_location)
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointLoadError(f"checkpoint {checkpoint!r} has no keys under prefix "
                                      f"{prefix!r}")
    return load_state_dict(module, state, source=str(checkpoint))

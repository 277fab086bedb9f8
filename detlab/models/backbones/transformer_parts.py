"""What the transformer backbones (Swin, PVT) share: sizes given as one int or (height, width),
their LayerNorms from ``norm_cfg=dict(type='LN', ...)`` (tokens are ``(B, L, C)``: no other norm
applies), and MMDetection's from-scratch init of their linears and LayerNorms."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from detlab.config import ConfigError


def pair(value: int | Sequence[int], key: str) -> tuple[int, int]:
    """``value`` (the config's ``backbone.<key>``) as ``(height, width)``."""
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) == 1:
        return value[0], value[0]
    if len(value) != 2:
        raise ConfigError(f"backbone.{key}: give one size or (height, width); got {value!r}")
    return value  # type: ignore[return-value]


def layer_norm(cfg: Mapping[str, Any], dims: int, owner: str) -> nn.LayerNorm:
    """A LayerNorm over the last ``dims`` channels from ``norm_cfg=dict(type='LN', eps=...,
    requires_grad=...)``; ``owner`` names the backbone in the error."""
    args = dict(cfg)
    if args.pop("type", None) != "LN":
        raise ConfigError(f"backbone.norm_cfg must be dict(type='LN', ...) for {owner} (its "
                          f"norms act on tokens); got {dict(cfg)!r}")
    requires_grad = bool(args.pop("requires_grad", True))
    try:
        layer = nn.LayerNorm(dims, **args)
    except TypeError as err:
        raise ConfigError(f"backbone.norm_cfg {dict(cfg)!r}: {err}") from err
    for param in layer.parameters():
        param.requires_grad = requires_grad
    return layer


def init_linears_and_layer_norms(module: nn.Module,
                                 other: Callable[[nn.Module], None] | None = None) -> None:
    """Truncated-normal (std 0.02) linears with zero bias, unit LayerNorms, and ``other`` on
    every other submodule -- in one pass over the modules, in MMDetection's order (so that a
    seed draws the same weights)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif other is not None:
            other(m)

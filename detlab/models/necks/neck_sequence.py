"""Several necks one after the other: a config's ``neck=[dict(type='FPN', ...), dict(type='BFP',
...)]`` (Libra R-CNN), built as MMDetection builds a list of configs -- an ``nn.Sequential``,
so the state_dict keys are ``neck.0.*``, ``neck.1.*``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from detlab.config import ConfigError
from detlab.registry import MODELS


class NeckSequence(nn.Sequential):
    """Necks run in order, each on the previous one's feature maps; ``in_channels`` is the
    first one's, ``out_channels`` and ``num_outs`` the last one's (for the detectors' channel
    checks)."""

    def _part(self, index: int, name: str) -> Any:
        return getattr(self[index], name, None)

    @property
    def in_channels(self) -> Any:
        """What the first neck reads."""
        return self._part(0, "in_channels")

    @property
    def out_channels(self) -> Any:
        """What the last neck gives."""
        return self._part(-1, "out_channels")

    @property
    def num_outs(self) -> Any:
        """How many maps the last neck gives (a neck that keeps its input's levels, as DyHead,
        has no ``num_outs`` of its own: then the nearest earlier neck's)."""
        for index in range(len(self) - 1, -1, -1):
            if (num := self._part(index, "num_outs")) is not None:
                return num
        return None

    def init_weights(self) -> None:
        """Each neck's own initialization."""
        for neck in self:
            if callable(getattr(neck, "init_weights", None)):
                neck.init_weights()


def build_neck(cfg: Mapping | Sequence[Mapping] | nn.Module | None) -> nn.Module | None:
    """The neck of ``model.neck``: None, one config (or module), or a list of them run one
    after the other (a :class:`NeckSequence`)."""
    if cfg is None or isinstance(cfg, (Mapping, nn.Module)):
        return MODELS.build(cfg, _path="model.neck") if cfg is not None else None
    if isinstance(cfg, Sequence) and not isinstance(cfg, str):
        if not cfg:
            raise ConfigError("model.neck is an empty list: give one neck config, a list of "
                              "them, or None")
        return NeckSequence(*[MODELS.build(part, _path=f"model.neck.{i}")
                              for i, part in enumerate(cfg)])
    raise ConfigError(f"model.neck must be a neck config dict, a list of them or None, got "
                      f"{type(cfg).__name__}")

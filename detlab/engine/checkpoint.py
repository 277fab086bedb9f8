"""Checkpoints: written atomically, loaded with ``weights_only=True``, mismatches reported.

A checkpoint is a dict in MMDetection's layout: ``meta`` (epoch, iter, config text, class names,
detlab version, time), ``state_dict`` (the model's) and ``optimizer`` (its state), so that files
move between detlab and MMDetection-style tools.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("detlab")


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DataParallel / DistributedDataParallel


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    meta: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` (and ``optimizer``) to ``path`` through a temporary file and a rename, so a
    crash while writing never leaves a broken checkpoint behind. Returns ``path``."""
    meta = dict(meta or {})
    meta.setdefault("time", time.asctime())
    from detlab import __version__

    meta.setdefault("detlab_version", __version__)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    checkpoint: dict[str, Any] = {"meta": meta, "state_dict": OrderedDict(state)}
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint.update(extra or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``path`` (``weights_only=True``: tensors and plain data only).

    A file that is only a state dict is returned as ``{'state_dict': ..., 'meta': {}}``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(f"cannot read checkpoint {path}: {err}. It may be truncated, not a "
                           f"torch checkpoint, or hold objects other than tensors and plain "
                           f"data.") from err
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a dict")
    if "state_dict" not in checkpoint:
        return {"state_dict": checkpoint, "meta": {}}
    checkpoint = dict(checkpoint)
    checkpoint.setdefault("meta", {})
    return checkpoint


@dataclass
class LoadReport:
    """What :func:`load_weights` could not load."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = []
        for what, keys in (("missing keys in the checkpoint", self.missing),
                           ("unexpected keys in the checkpoint", self.unexpected)):
            if keys:
                more = " ..." if len(keys) > 20 else ""
                lines.append(f"{what} ({len(keys)}): " + ", ".join(keys[:20]) + more)
        for key, want, got in self.shape_mismatch:
            lines.append(f"shape mismatch for {key}: the model has {want}, the checkpoint "
                         f"{got} (left as initialized)")
        return "\n".join(lines) or "all keys matched"


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                 strict: bool = False) -> LoadReport:
    """Copy matching tensors of ``state_dict`` into ``model``; tensors of another shape are left
    out (not a crash). Returns what did not match; ``strict`` raises if anything did not."""
    model = _unwrap(model)
    state = _strip_prefix(state_dict, "module.")
    own = model.state_dict()
    report = LoadReport(missing=[k for k in own if k not in state],
                        unexpected=[k for k in state if k not in own])
    usable = {}
    for key, value in state.items():
        if key in own:
            if own[key].shape == value.shape:
                usable[key] = value
            else:
                report.shape_mismatch.append((key, tuple(own[key].shape), tuple(value.shape)))
    model.load_state_dict(usable, strict=False)
    if strict and report:
        raise RuntimeError(f"the checkpoint does not match the model:\n{report}")
    return report


def load_checkpoint(model: nn.Module, path: str, map_location: str | torch.device = "cpu",
                    strict: bool = False, log: logging.Logger | None = None) -> dict[str, Any]:
    """Load the weights of the checkpoint at ``path`` into ``model`` and return the checkpoint.

    Missing, unexpected and shape-mismatched keys are logged (``strict=True``: an error).
    """
    checkpoint = read_checkpoint(path, map_location)
    report = load_weights(model, checkpoint["state_dict"], strict=strict)
    if report:
        (log or logger).warning("loading %s:\n%s", path, report)
    checkpoint["load_report"] = report
    return checkpoint

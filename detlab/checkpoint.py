"""Checkpoints: written atomically, loaded with ``weights_only=True``, mismatches reported.

Sources are files, http(s) URLs, ``torchvision://NAME`` (torchvision's ImageNet weights) and the
names MMDetection 2.x configs use for OpenMMLab's published weights, ``open-mmlab://NAME`` and
``mmcls://NAME`` (their addresses are in ``pretrained_urls.json``), downloaded through torch.hub's
cache. A checkpoint is a dict in MMDetection's layout: ``meta``
(epoch, iter, config text, class names, detlab version, time), ``state_dict`` (the model's) and
``optimizer`` (its state), so that files move between detlab and MMDetection-style tools.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from detlab import __version__
from detlab.config import ConfigError, closest

logger = logging.getLogger("detlab")
# keys of a torchvision classifier checkpoint that a detection backbone does not use, and the
# EMA copies (mmcv's EMAHook keeps them as ``ema_*`` buffers of the model) a trained checkpoint
# may carry
EXPECTED_UNUSED_PREFIXES = ("fc.", "ema_")
# temporary files of an atomic write: ``epoch_3.pth.tmp12345``
TMP_MARK = ".tmp"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DataParallel / DistributedDataParallel


def _disk_full_message(path: str, err: BaseException) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return (f"could not write checkpoint {path} ({free} in {folder}): {err}. Free some space "
            f"(or set checkpoint_config.out_dir / max_keep_ckpts) and resume from the newest "
            f"checkpoint that was written.")


def _is_write_failure(err: BaseException) -> bool:
    """A failed write: an OSError, or torch's RuntimeError from its zip writer (a full disk
    shows as ``inline_container.cc ... unexpected pos``)."""
    text = str(err)
    return isinstance(err, OSError) or "inline_container" in text or "StreamWriter" in text


def save_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    meta: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` (and ``optimizer``) to ``path`` through a temporary file and a rename, so a
    crash while writing never leaves a broken checkpoint behind. Returns ``path``. A failed write
    (a full disk) removes the temporary file and raises :class:`CheckpointWriteError` naming the
    path and the free space."""
    meta = dict(meta or {})
    meta.setdefault("time", time.asctime())
    meta.setdefault("detlab_version", __version__)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    checkpoint: dict[str, Any] = {"meta": meta, "state_dict": OrderedDict(state)}
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint.update(extra or {})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if not _is_write_failure(err):
            raise
        raise CheckpointWriteError(_disk_full_message(path, err)) from err
    return path


def link_latest(target: str, link: str) -> str:
    """Make ``link`` (``latest.pth``) point at ``target`` in the same folder: a relative symbolic
    link, replaced atomically; a copy where the file system has no links."""
    tmp = f"{link}{TMP_MARK}{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    try:
        os.symlink(os.path.basename(target), tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, link)
    return link


def remove_orphaned_temp_files(folder: str) -> list[str]:
    """Remove ``*.pth.tmp<PID>`` files left in ``folder`` by a process that no longer runs (a
    kill -9 or a full disk during a write). Returns the removed paths."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in os.listdir(folder):
        head, mark, pid = name.rpartition(TMP_MARK)
        if not mark or not head or not pid.isdigit() or _process_alive(int(pid)):
            continue
        path = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class CheckpointLoadError(ConfigError, OSError):
    """Weights that could not be downloaded or read."""


class CheckpointNotFoundError(CheckpointLoadError, FileNotFoundError):
    """A checkpoint file that does not exist."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a folder without permission)."""


class CheckpointMismatchError(CheckpointLoadError):
    """A checkpoint whose keys or shapes do not match the model, loaded strictly."""


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


@functools.cache
def _pretrained_urls() -> dict[str, dict[str, str]]:
    path = os.path.join(os.path.dirname(__file__), "pretrained_urls.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def openmmlab_weights_url(source: str) -> str:
    """The download URL of ``open-mmlab://NAME`` or ``mmcls://NAME``, the pretrained weights
    MMDetection 2.x configs name (``open-mmlab://detectron2/resnet50_caffe``,
    ``open-mmlab://resnext101_64x4d``, ``mmcls://mobilenet_v2`` ...). An older open-mmlab name
    that OpenMMLab has since renamed (``open-mmlab://resnet50_caffe``) gives the renamed entry's
    address with a warning, as MMDetection does."""
    scheme, _, name = source.partition("://")
    table = _pretrained_urls()["mmcls" if scheme == "mmcls" else "open-mmlab"]
    if scheme == "open-mmlab" and name in _pretrained_urls()["open-mmlab-renamed"]:
        renamed = _pretrained_urls()["open-mmlab-renamed"][name]
        warnings.warn(f"{source} is an old name of open-mmlab://{renamed}; write that instead",
                      DeprecationWarning, stacklevel=3)
        name = renamed
    if name not in table:
        hits = closest(name, list(table))
        hint = f" Did you mean {' or '.join(f'{scheme}://{h}' for h in hits)}?" if hits else ""
        raise ConfigError(f"{source}: no such entry among OpenMMLab's published {scheme} weights "
                          f"({len(table)} names, listed in detlab/pretrained_urls.json).{hint} "
                          f"Pass a local file or an http(s) URL instead.")
    return table[name]


def _mmcls_backbone(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """An MMClassification classifier's weights as its backbone's: the ``backbone.`` entries,
    the prefix dropped (its neck and head do not belong to a detector)."""
    return {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}


def _download_hint(url: str) -> str:
    filename = os.path.basename(urlparse(url).path)
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    return (f"Without internet access, download {url} elsewhere and pass the local file instead: "
            f"init_cfg.checkpoint=/path/to/{filename} (e.g. --cfg-options "
            f"model.backbone.init_cfg.checkpoint=/path/to/{filename}), or copy it to {cached} "
            f"where torch.hub looks first.")


def _load_url(source: str, url: str, map_location: Any) -> Any:
    try:
        return torch.hub.load_state_dict_from_url(url, map_location=map_location, progress=False,
                                                  weights_only=True)
    except Exception as err:
        raise CheckpointLoadError(f"could not load the weights {source!r} from {url}: {err}. "
                                  f"{_download_hint(url)}") from err


def _load_file(path: str, map_location: Any) -> Any:
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointLoadError(f"cannot read checkpoint {path}: {err}. It may be truncated, "
                                  f"not a torch checkpoint, or hold objects other than tensors "
                                  f"and plain data.") from err


def _load_source(source: str, map_location: Any) -> Any:
    if source.startswith("torchvision://"):
        return _load_url(source, torchvision_weights_url(source[len("torchvision://"):]),
                         map_location)
    if source.startswith(("http://", "https://")):
        return _load_url(source, source, map_location)
    if source.startswith(("open-mmlab://", "mmcls://")):
        raw = _load_url(source, openmmlab_weights_url(source), map_location)
        if source.startswith("mmcls://"):
            weights = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
            if isinstance(weights, Mapping):
                return _mmcls_backbone(weights)
        return raw
    if "://" in source:
        raise ConfigError(f"checkpoint {source!r}: detlab reads torchvision://NAME, "
                          f"open-mmlab://NAME, mmcls://NAME, http(s) URLs and local files; "
                          f"download the file and pass its path")
    return _load_file(os.path.expanduser(source), map_location)


def read_checkpoint(source: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """The checkpoint at ``source`` -- a file, an http(s) URL, ``torchvision://NAME``,
    ``open-mmlab://NAME`` or ``mmcls://NAME`` (all but files through torch.hub's cache under
    ``$TORCH_HOME/hub/checkpoints``) -- read with
    ``weights_only=True``, as a dict with ``state_dict`` and ``meta`` (empty for a bare state
    dict; a ``model`` entry counts as the state dict; ``module.`` prefixes are dropped)."""
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise ConfigError(f"a checkpoint is a file path, a URL or torchvision://NAME; got "
                          f"{source!r}")
    raw = _load_source(os.fspath(source), map_location)
    if not isinstance(raw, Mapping):
        raise CheckpointLoadError(f"checkpoint {source} holds a {type(raw).__name__}, not a dict")
    checkpoint = dict(raw) if isinstance(raw.get("state_dict"), Mapping) else {"state_dict": raw}
    if isinstance(checkpoint["state_dict"].get("model"), Mapping):
        checkpoint["state_dict"] = checkpoint["state_dict"]["model"]
    checkpoint["state_dict"] = {k.removeprefix("module."): v
                                for k, v in checkpoint["state_dict"].items()}
    checkpoint.setdefault("meta", {})
    return checkpoint


@dataclass
class LoadReport:
    """What :func:`load_weights` could not load, or left out on purpose."""

    source: str = "state dict"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    expected_unused: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = []
        for what, keys in (("missing in the checkpoint (left as initialized)", self.missing),
                           ("in the checkpoint but not in the model", self.unexpected)):
            if keys:
                more = " ..." if len(keys) > 20 else ""
                lines.append(f"{what} ({len(keys)}): " + ", ".join(keys[:20]) + more)
        for key, want, got in self.shape_mismatch:
            lines.append(f"shape mismatch for {key}: the model has {want}, the checkpoint "
                         f"{got} (left as initialized)")
        return "\n".join(lines) or "all keys matched"


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = False,
                 source: str = "state dict") -> LoadReport:
    """Copy matching tensors of ``state_dict`` into ``model``; tensors of another shape are left
    out (not a crash), and a classifier's ``fc.*`` keys are expected extras. Returns what did
    not match; ``strict`` raises if anything did not."""
    model = _unwrap(model)
    own = model.state_dict()
    report = LoadReport(source)
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            unused = key.startswith(EXPECTED_UNUSED_PREFIXES)
            (report.expected_unused if unused else report.unexpected).append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append((key, tuple(own[key].shape), tuple(value.shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state_dict and "num_batches_tracked" not in k]
    if strict and report:
        raise CheckpointMismatchError(mismatch_message(report))
    model.load_state_dict(usable, strict=False)
    return report


def _config_keys(keys: list[str]) -> str:
    """``model.<part>`` for the first few parts of the model that ``keys`` belong to."""
    parts = list(dict.fromkeys(f"model.{key.split('.')[0]}" for key in keys))
    return ", ".join(parts[:3])


def mismatch_message(report: LoadReport) -> str:
    """What a strict load says: the first offending keys and the config keys to change."""
    lines = [f"{report.source} does not match the model built from the config:"]
    if report.shape_mismatch:
        key, want, got = report.shape_mismatch[0]
        lines.append(f"  {len(report.shape_mismatch)} tensors differ in shape, first {key}: the "
                     f"model has {want}, the checkpoint {got}")
    for what, keys in (("missing in the checkpoint", report.missing),
                       ("not in the model", report.unexpected)):
        if keys:
            lines.append(f"  {len(keys)} keys {what}, first: {', '.join(keys[:5])}")
    offending = [k for k, _, _ in report.shape_mismatch] + report.missing + report.unexpected
    hint = (f"Make the config describe the checkpoint's model (look at {_config_keys(offending)}"
            f"; a classifier whose first dimension differs means another num_classes), or pass "
            f"allow_partial=True (--allow-partial) to load what matches and report the rest.")
    return "\n".join(lines + [hint])


def log_report(model: nn.Module, report: LoadReport, log: logging.Logger | None = None) -> None:
    """Expected extras at INFO; anything else that did not load as a warning (to the log
    given, else as a Python warning so that it shows in a notebook)."""
    name = type(_unwrap(model)).__name__
    if report.expected_unused:
        logger.info("%s: %d keys of %s are not used (a classifier's head, expected): %s", name,
                    len(report.expected_unused), report.source,
                    ", ".join(report.expected_unused))
    if not report:
        logger.info("%s: loaded %s", name, report.source)
    elif log is not None:
        log.warning("loading %s into %s:\n%s", report.source, name, report)
    else:
        warnings.warn(f"loading {report.source} into {name}: {report}", stacklevel=3)


def load_checkpoint(model: nn.Module, source: str | os.PathLike,
                    map_location: str | torch.device = "cpu", strict: bool = False,
                    prefix: str | None = None, log: logging.Logger | None = None
                    ) -> dict[str, Any]:
    """Load the weights of a checkpoint (file, URL or ``torchvision://NAME``) into ``model``
    and return the checkpoint, its :class:`LoadReport` under ``load_report``. With ``prefix``
    (e.g. ``'backbone.'``) only the keys under it are used, the prefix removed."""
    checkpoint = read_checkpoint(source, map_location)
    state = checkpoint["state_dict"]
    if prefix:
        prefix = prefix if prefix.endswith(".") else prefix + "."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointLoadError(f"checkpoint {source} has no keys under prefix {prefix!r}")
    report = load_weights(model, state, strict=strict, source=os.fspath(source))
    log_report(model, report, log)
    checkpoint["load_report"] = report
    return checkpoint

"""MMDetection 2.28 as a test-time reference: import it, find its zoo configs, build its models.

Every function skips the calling test (``pytest.skip``, as ``pytest.importorskip`` does) when
MMDetection or mmcv is not installed; ``make reference-deps`` installs both (see
``tests/reference/__init__.py``). Outside a test (the manifest script) the skip surfaces as
``pytest.skip.Exception``; :func:`mmdet_available` asks without skipping.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

MMDET_VERSION = "2.28.2"
INSTALL_HINT = "run `make reference-deps` to install the MMDetection 2.28 reference"


def mmdet_available() -> bool:
    """Whether ``mmdet`` and ``mmcv`` are installed (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("mmcv", "mmdet"))


def import_mmdet() -> ModuleType:
    """``mmdet``, imported with the ``mmcv._ext`` stand-in in place; skips the test when
    MMDetection or mmcv cannot be imported, or MMDetection is not version 2.28.2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmcv's "MMCV will release v2.0.0" and friends
        mmcv = pytest.importorskip("mmcv", reason=f"mmcv is not installed: {INSTALL_HINT}")
        if importlib.util.find_spec("mmcv._ext") is None:  # no compiled mmcv-full here
            from .mmcv_ext import install

            install()
        mmdet = pytest.importorskip("mmdet", reason=f"mmdet is not installed: {INSTALL_HINT}")
    if mmdet.__version__ != MMDET_VERSION:
        pytest.skip(f"mmdet {mmdet.__version__} is installed, the reference is {MMDET_VERSION}: "
                    f"{INSTALL_HINT}")
    del mmcv
    return mmdet


def mmdet_config_dir() -> Path:
    """The zoo configs shipped in MMDetection's wheel (``mmdet/.mim/configs``), found without
    importing mmdet (reading them needs no mmcv); skips the test when the wheel is missing."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"mmdet is not installed, and its wheel holds the zoo configs: {INSTALL_HINT}")
    version = importlib.metadata.version("mmdet")
    if version != MMDET_VERSION:
        pytest.skip(f"mmdet {version} is installed, the reference is {MMDET_VERSION}: "
                    f"{INSTALL_HINT}")
    path = Path(spec.submodule_search_locations[0]) / ".mim" / "configs"
    if not path.is_dir():
        pytest.skip(f"{path} is missing: the mmdet {MMDET_VERSION} wheel ships its configs "
                    f"there; {INSTALL_HINT}")
    return path


def load_mmdet_config(config_path: str | Path):
    """The mmcv ``Config`` of ``config_path`` (absolute, or relative to :func:`mmdet_config_dir`)
    with its ``custom_imports`` imported."""
    import_mmdet()
    from mmcv import Config
    from mmcv.utils import import_modules_from_strings

    path = Path(config_path)
    if not path.is_absolute():
        path = mmdet_config_dir() / path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = Config.fromfile(str(path))
        if cfg.get("custom_imports"):
            import_modules_from_strings(**cfg.custom_imports)
    return cfg


def build_mmdet_model(config_path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """MMDetection's ``build_detector(cfg.model)`` for a config file, before ``init_weights``
    (nothing is downloaded), on ``device``: ``'meta'`` builds in no time and holds no memory
    (names and shapes only), ``'cpu'`` has real (random) weights. Raises what MMDetection raises
    when it cannot build the model (some modules make tensors that the ``meta`` device refuses:
    build those on CPU)."""
    cfg = load_mmdet_config(config_path)
    from mmdet.models import build_detector

    with warnings.catch_warnings(), _default_device(device):
        warnings.simplefilter("ignore")
        return build_detector(cfg.model)


@contextlib.contextmanager
def _default_device(device: str | torch.device):
    if torch.device(device).type == "cpu":
        yield  # the default already; a device context would slow every factory call
    else:
        with torch.device(device):
            yield


def trainable_params(model: nn.Module) -> int:
    """The number of parameter elements with ``requires_grad`` (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

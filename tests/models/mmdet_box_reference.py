"""MMDetection 2.28's own box code -- assigners, samplers, coders, prior generators -- as the
reference that detlab's pieces are compared with.

These modules need only torch, numpy and mmcv's pure-Python ``Registry``; MMDetection's package
``__init__`` files, though, import everything (``mmcv.ops`` included, which needs mmcv's compiled
extension). So the modules are loaded one by one from MMDetection's sources, under empty
stand-ins of their parent packages, and ``sys.modules`` is put back as it was afterwards -- a
test that imports the real ``mmdet`` later gets the real one.

Where the sources are: ``$DETLAB_MMDET_SRC`` (a folder holding the ``mmdet`` package, e.g. an
unpacked ``mmdet-2.28.2`` wheel), else the ``mmdet`` that ``make reference-deps`` installs
(found without importing it). Without either, :func:`mmdet_module` skips the calling test.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path

import pytest

MMDET_VERSION = "2.28.2"
HINT = ("MMDetection 2.28.2's sources are not available: run `make reference-deps`, or unpack "
        "its wheel and set DETLAB_MMDET_SRC to the folder holding `mmdet/`")
# packages whose __init__ would import far more than the box code
_STUB_PACKAGES = ("mmdet", "mmdet.utils", "mmdet.core", "mmdet.core.bbox",
                  "mmdet.core.bbox.assigners", "mmdet.core.bbox.samplers",
                  "mmdet.core.bbox.coder", "mmdet.core.anchor")
_LOADED: dict[str, types.ModuleType] = {}  # MMDetection's modules loaded so far, by name
_STATE = {"root": None, "depth": 0}  # the sources found first; how deep in mmdet_modules()


def mmdet_source() -> Path | None:
    """The folder holding MMDetection's ``mmdet`` package, or None (found once)."""
    if _STATE["root"] is None:
        _STATE["root"] = _find_source()
    return _STATE["root"]


def _find_source() -> Path | None:
    env = os.environ.get("DETLAB_MMDET_SRC")
    if env:
        return Path(env) if (Path(env) / "mmdet" / "core").is_dir() else None
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def _check_version(root: Path) -> None:
    text = (root / "mmdet" / "version.py").read_text()
    if f"'{MMDET_VERSION}'" not in text and f'"{MMDET_VERSION}"' not in text:
        pytest.skip(f"the mmdet at {root} is not version {MMDET_VERSION}; {HINT}")


@contextlib.contextmanager
def mmdet_modules():
    """Within the block, ``sys.modules`` holds the MMDetection modules loaded so far (and the
    stand-ins of their packages) in place of any other ``mmdet``: for reference code that
    imports at call time (``RandomSampler.__init__`` imports ``mmdet.core.bbox.demodata``)."""
    if _STATE["depth"]:  # already inside: the modules are in place
        yield
        return
    root = mmdet_source()
    if root is None:
        pytest.skip(HINT)
    _check_version(root)
    saved = {k: v for k, v in sys.modules.items() if k == "mmdet" or k.startswith("mmdet.")}
    for key in saved:
        del sys.modules[key]
    if not _LOADED:
        for package in _STUB_PACKAGES:
            stub = types.ModuleType(package)
            stub.__path__ = [str(root.joinpath(*package.split(".")))]
            _LOADED[package] = stub
    sys.modules.update(_LOADED)
    _STATE["depth"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _STATE["depth"] -= 1
        for key in [k for k in sys.modules if k == "mmdet" or k.startswith("mmdet.")]:
            _LOADED[key] = sys.modules.pop(key)
        sys.modules.update(saved)


def mmdet_module(name: str) -> types.ModuleType:
    """MMDetection's module ``mmdet.<name>`` (e.g. ``core.bbox.assigners.atss_assigner``);
    skips the calling test when MMDetection's sources are not available."""
    pytest.importorskip("mmcv.utils", reason="mmcv (the reference's registry) is not installed")
    with mmdet_modules():
        return importlib.import_module(f"mmdet.{name}")

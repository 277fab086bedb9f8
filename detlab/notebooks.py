"""Parameterized notebooks, run headless with papermill, and the values they record.

>>> from detlab import notebooks
>>> record = notebooks.run('notebooks/00_quickstart.ipynb', 'runs/quickstart',
...                        parameters=dict(epochs=2, cfg_options={'optimizer.lr': 0.01}))
>>> record.records['bbox_mAP']

(``run`` is :func:`run_notebook` under its short name.)

Inside a notebook, ``record(name, value)`` stores a value for the caller: it is shown in the cell
output (so the executed notebook keeps it) and written to the run's record file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from detlab.engine.logging import RUN_DIR_ENV

RECORD_ENV = "DETLAB_RECORD_FILE"
RECORD_MIME = "application/vnd.detlab.record+json"


def _register_tuple_translator() -> None:
    """Make papermill write tuples as tuples (its Python translator turns them into strings,
    and ``img_scale=(640, 480)`` must arrive as a tuple)."""
    from papermill.translators import PythonTranslator, papermill_translators

    class TupleAwareTranslator(PythonTranslator):
        @classmethod
        def translate(cls, val: Any) -> str:
            if isinstance(val, tuple):
                items = [cls.translate(v) for v in val]
                return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
            return super().translate(val)

    papermill_translators.register("python", TupleAwareTranslator)


def _json_safe(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def record(name: str, value: Any) -> Any:
    """Store ``value`` under ``name`` for whoever runs this notebook; returns ``value``.

    The value must be JSON-representable (numbers, strings, lists, dicts; NumPy and torch
    scalars are converted). Outside a papermill run it is only displayed.
    """
    value = _json_safe(value)
    path = os.environ.get(RECORD_ENV)
    if path:
        records = read_records(path)
        records[name] = value
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=2)
        os.replace(tmp, path)
    try:
        from IPython.display import display

        display({RECORD_MIME: {name: value}, "text/plain": f"{name} = {value!r}"}, raw=True)
    except ImportError:  # not in IPython
        pass
    return value


def read_records(path: str) -> dict[str, Any]:
    """The records a run left in its record file (empty when there are none yet)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def records_from_notebook(path: str) -> dict[str, Any]:
    """The records kept in the outputs of an executed notebook."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    records: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            records.update(output.get("data", {}).get(RECORD_MIME, {}))
    return records


@dataclass
class NotebookRun:
    """The outcome of one notebook run."""

    notebook: str
    output: str
    parameters: dict[str, Any]
    records: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    error: str | None = None
    failed_cell: int | None = None       # execution count of the failing cell
    failed_source: str | None = None     # its code
    duration: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_notebook(notebook: str, output_dir: str, parameters: Mapping[str, Any] | None = None,
                 output_name: str | None = None, cwd: str | None = None,
                 timeout: float | None = None, kernel_name: str | None = None,
                 raise_on_error: bool = True) -> NotebookRun:
    """Execute ``notebook`` with papermill into ``output_dir`` and return what it recorded.

    Args:
        parameters: values for the cell tagged ``parameters``.
        output_name: file name of the executed notebook (default: the input's name).
        cwd: working directory of the kernel (default: the current one).
        timeout: seconds a cell may run.
        raise_on_error: raise on a failing cell (else return a run with ``status='failed'``).
    """
    import papermill

    os.makedirs(output_dir, exist_ok=True)
    output = os.path.join(output_dir, output_name or os.path.basename(notebook))
    record_file = os.path.abspath(os.path.join(output_dir, "records.json"))
    if os.path.exists(record_file):
        os.remove(record_file)
    run = NotebookRun(os.path.abspath(notebook), os.path.abspath(output), dict(parameters or {}))
    _register_tuple_translator()
    previous = {key: os.environ.get(key) for key in (RECORD_ENV, RUN_DIR_ENV)}
    os.environ[RECORD_ENV] = record_file
    os.environ[RUN_DIR_ENV] = os.path.abspath(output_dir)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(notebook, output, parameters=run.parameters, cwd=cwd or ".",
                                   kernel_name=kernel_name, progress_bar=False,
                                   execution_timeout=timeout)
    except Exception as err:  # PapermillExecutionError, a dead kernel, a timeout
        run.status, run.error = "failed", f"{type(err).__name__}: {err}"
        run.failed_cell = getattr(err, "exec_count", None)
        run.failed_source = getattr(err, "source", None)
        if run.failed_cell is None and os.path.exists(output):  # a timeout, a dead kernel
            run.failed_cell, run.failed_source = _last_started_cell(output)
        if raise_on_error:
            raise
    finally:
        run.duration = time.perf_counter() - start
        _restore_env(previous)
        run.records = read_records(record_file) or (
            records_from_notebook(output) if os.path.exists(output) else {})
        write_capsule(run, output_dir, cwd or ".")
    return run


run = run_notebook


def _last_started_cell(path: str) -> tuple[int | None, str | None]:
    """The execution count and source of the last code cell papermill started in the notebook
    at ``path``: after a timeout or a dead kernel (which papermill does not attribute to a
    cell), the one that was running."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # an unreadable output: nothing to say
        return None, None
    started = [(i, cell) for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code")
               if cell.metadata.get("papermill", {}).get("start_time")]
    if not started:
        return None, None
    position, cell = started[-1]
    return cell.get("execution_count") or position + 1, cell.source


def _restore_env(previous: Mapping[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def quickstart_overrides(cfg: Any, data_root: str, image_size: int | None = None,
                         epochs: int | None = None) -> dict[str, Any]:
    """Dotted overrides that point every split of ``cfg.data`` at ``data_root``, set the
    ``img_scale`` of each Resize / MultiScaleFlipAug step to a square ``image_size`` and
    ``runner.max_epochs`` to ``epochs`` (what the quickstart notebook's parameters change)."""
    options: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        if split not in cfg.data:
            continue
        options[f"data.{split}.data_root"] = data_root
        for i, step in enumerate(cfg.data[split].get("pipeline", [])):
            if image_size and step.get("type") in ("Resize", "MultiScaleFlipAug") \
                    and "img_scale" in step:
                options[f"data.{split}.pipeline.{i}.img_scale"] = (image_size, image_size)
    if epochs is not None:
        options["runner.max_epochs"] = int(epochs)
    return options


# --------------------------------------------------------------------------------------------
# run capsules: everything needed to know what ran and to run it again
# --------------------------------------------------------------------------------------------


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, as ``sha256:<hex>``."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _git_commit(cwd: str) -> str | None:
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def environment_facts(cwd: str = ".") -> dict[str, Any]:
    """Python, torch, torchvision, CUDA, detlab versions and the git commit of ``cwd``."""
    import platform
    import sys

    import torch
    import torchvision

    from detlab import __version__

    return dict(python=sys.version.split()[0], platform=platform.platform(),
                torch=torch.__version__, torchvision=torchvision.__version__,
                cuda=torch.version.cuda if torch.cuda.is_available() else None,
                detlab=__version__, git_commit=_git_commit(cwd))


def reproduce_command(run: NotebookRun, cwd: str = ".") -> str:
    """The ``detlab nb run`` command line that runs ``run`` again."""
    import shlex

    from detlab.config import _inline

    parts = ["detlab", "nb", "run", run.notebook, run.output, "--cwd", os.path.abspath(cwd)]
    for key, value in run.parameters.items():
        parts += ["-p", key, value if isinstance(value, str) else _inline(value)]
    return " ".join(shlex.quote(str(p)) for p in parts)


def _checkpoints(run_dir: str, records: Mapping[str, Any]) -> dict[str, str]:
    folders = {run_dir} | {str(v) for k, v in records.items()
                           if k.endswith("work_dir") and isinstance(v, str) and os.path.isdir(v)}
    found = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                if name.endswith(".pth"):
                    path = os.path.join(root, name)
                    found[os.path.relpath(path, run_dir)] = file_digest(path)
    return found


def write_capsule(run: NotebookRun, run_dir: str, cwd: str = ".") -> str:
    """Write ``run.json`` into ``run_dir``: the run record, environment facts, fingerprints of
    the input files the notebook declared (:func:`record_config`), checkpoint hashes and the
    command that reproduces the run. Returns its path."""
    run_dir = os.path.abspath(run_dir)
    capsule = dict(run.to_dict(), environment=environment_facts(cwd),
                   inputs=run.records.get("inputs", {}),
                   checkpoints=_checkpoints(run_dir, run.records),
                   command=reproduce_command(run, cwd))
    path = os.path.join(run_dir, "run.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_json_safe(capsule), f, indent=2)
    os.replace(tmp, path)
    return path


def record_config(cfg: Any, name: str = "config.py") -> str | None:
    """Inside a notebook run: save the resolved ``cfg`` into the run directory and record the
    fingerprints of the annotation files it reads (``inputs``). Returns the saved path (None
    outside a run)."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    inputs = {}
    for split in ("train", "val", "test"):
        ann = cfg.get("data", {}).get(split, {}).get("ann_file")
        root = cfg.get("data", {}).get(split, {}).get("data_root")
        for path in [ann] if isinstance(ann, str) else list(ann or []):
            full = os.path.join(root, path) if root and not os.path.isabs(path) else path
            if os.path.isfile(full):
                inputs[os.path.abspath(full)] = file_digest(full)
    record("inputs", inputs)
    if not run_dir:
        return None
    path = os.path.join(run_dir, name)
    cfg.dump(path)
    return path


# --------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------


def grid_points(grid: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every combination of a ``{name: [values]}`` grid (a scalar counts as one value), or the
    list of parameter dicts as given."""
    import itertools

    if isinstance(grid, list):
        return [dict(point) for point in grid]
    names = list(grid)
    values = [v if isinstance(v, list) else [v] for v in grid.values()]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def _slug(point: Mapping[str, Any]) -> str:
    import re

    text = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.=-]+", "", text)[:80] or "run"


def sweep(notebook: str, grid: Mapping[str, Any] | list[Mapping[str, Any]], output_dir: str,
          base_parameters: Mapping[str, Any] | None = None, cwd: str | None = None,
          timeout: float | None = None, kernel_name: str | None = None,
          run_folders: Sequence[str] | Mapping[str, str] = ()):
    """Run ``notebook`` for every point of ``grid`` (see :func:`grid_points`), each in its own
    folder of ``output_dir``, and return a pandas DataFrame: one row a run, with its
    parameters, what it recorded, ``status`` ('ok' / 'failed'), ``error``, ``failed_cell``
    (its execution count; the injected parameters count as one) and ``failed_source``,
    ``duration`` (s), ``output`` (the executed notebook) and ``run_dir``. A failing run (an
    error in a cell, a dead kernel, a timeout) is a row, and the sweep goes on.

    ``run_folders`` names the parameters that are folders each run must have to itself (a
    ``work_dir``, or runs would write their checkpoints into one another's): each is set to
    ``<run_dir>/<name>``, an absolute path (a mapping gives other folder names:
    ``{'data_root': 'shapes'}``)."""
    import pandas as pd

    folders = dict(run_folders) if isinstance(run_folders, Mapping) else {
        name: name for name in run_folders}
    rows = []
    for i, point in enumerate(grid_points(grid)):
        run_dir = os.path.join(output_dir, f"run_{i:03d}_{_slug(point)}")
        parameters = dict(base_parameters or {}, **point)
        parameters.update({name: os.path.join(os.path.abspath(run_dir), folder)
                           for name, folder in folders.items()})
        run = run_notebook(notebook, run_dir, parameters, cwd=cwd, timeout=timeout,
                           kernel_name=kernel_name, raise_on_error=False)
        row = dict(point)
        row.update({k: v for k, v in run.records.items() if k not in point})
        row.update(status=run.status, error=run.error, failed_cell=run.failed_cell,
                   failed_source=run.failed_source, duration=run.duration, output=run.output,
                   run_dir=os.path.abspath(run_dir))
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(os.path.join(output_dir, "sweep.csv"), index=False)
    return frame


def resolve_path(path: str) -> str:
    """``path`` as given if it exists from the current directory, else the first match found
    from its parent folders upward -- so a notebook finds ``configs/...`` whether its kernel runs
    in the repository root (papermill, ``make demo``) or in ``notebooks/`` (JupyterLab)."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    folder = os.path.abspath(os.getcwd())
    while True:
        candidate = os.path.join(folder, path)
        if os.path.exists(candidate):
            return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return path
        folder = parent

"""Parameterized notebooks, run headless with papermill, and the values they record.

>>> run = run_notebook('notebooks/00_quickstart.ipynb', 'runs/quickstart',
...                    parameters=dict(epochs=2))
>>> run.records['bbox_mAP']

Inside a notebook, ``record(name, value)`` stores a value for the caller: it is shown in the cell
output (so the executed notebook keeps it) and written to the run's record file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

RECORD_ENV = "DETLAB_RECORD_FILE"
RECORD_MIME = "application/vnd.detlab.record+json"


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
    failed_cell: int | None = None
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
    previous = os.environ.get(RECORD_ENV)
    os.environ[RECORD_ENV] = record_file
    start = time.perf_counter()
    try:
        papermill.execute_notebook(notebook, output, parameters=run.parameters, cwd=cwd or ".",
                                   kernel_name=kernel_name, progress_bar=False,
                                   execution_timeout=timeout)
    except Exception as err:  # PapermillExecutionError, a dead kernel, a timeout
        run.status, run.error = "failed", f"{type(err).__name__}: {err}"
        run.failed_cell = getattr(err, "exec_count", None)
        if raise_on_error:
            raise
    finally:
        run.duration = time.perf_counter() - start
        _restore_env(previous)
        run.records = read_records(record_file) or (
            records_from_notebook(output) if os.path.exists(output) else {})
    return run


def _restore_env(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(RECORD_ENV, None)
    else:
        os.environ[RECORD_ENV] = previous


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

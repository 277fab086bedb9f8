"""Training logs: a text log and a JSON-lines log with MMDetection's keys, and reading them back.

The JSON log has one object per line. Its first line holds the run's facts (``env_info``,
``config``, ``seed``, ``exp_name``); each further line is a row: ``mode`` ('train' / 'val'),
``epoch``, ``iter``, ``lr``, ``time``, ``data_time``, ``memory``, each loss and ``loss`` for
training rows; the metrics (``bbox_mAP``, ...) for validation rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

LOGGER_NAME = "detlab"
# set while detlab.notebooks runs a notebook headless (its run folder): progress bars stay off
RUN_DIR_ENV = "DETLAB_RUN_DIR"


def get_logger(log_file: str | None = None, level: int | str = logging.INFO,
               console: bool = True) -> logging.Logger:
    """The ``detlab`` logger, writing to ``log_file`` (replacing an earlier run's file handler)
    and to the console once; calling it again in a notebook does not duplicate lines."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s - detlab - %(levelname)s - %(message)s")
    if console and not any(getattr(h, "_detlab_console", False) for h in logger.handlers):
        stream = logging.StreamHandler(sys.stdout)
        stream._detlab_console = True
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def close_file_handlers(logger: logging.Logger) -> None:
    """Close the log file of the finished run (the console handler stays)."""
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()


def log_to_files(logger: logging.Logger, level: int, message: str) -> None:
    """Write ``message`` to the logger's files only (a traceback the console already shows)."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, (), None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def read_run_status(path: str) -> dict[str, Any] | None:
    """The final status row of a JSON log (``status``: 'finished', 'crashed' or
    'interrupted', with ``final_epoch``, ``final_iter`` and ``error``), or None while the run
    has not ended."""
    status = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if '"status"' in line:
                row = json.loads(line)
                if "status" in row and "mode" not in row:
                    status = row
    return status


def env_info() -> dict[str, str]:
    """Versions and devices, for the head of a log and for run records."""
    import torch
    import torchvision

    from detlab import __version__

    info = {"sys.platform": sys.platform, "Python": sys.version.replace("\n", " "),
            "machine": platform.machine(), "PyTorch": torch.__version__,
            "TorchVision": torchvision.__version__, "detlab": __version__,
            "CUDA available": str(torch.cuda.is_available())}
    if torch.cuda.is_available():
        info["GPU 0"] = torch.cuda.get_device_name(0)
        info["CUDA"] = str(torch.version.cuda)
    return info


def _clean(value: Any) -> Any:
    """A JSON-safe scalar: tensors and NumPy numbers become Python numbers, NaN becomes None."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonLog:
    """Appends rows to a JSON-lines log; the first line holds the run's facts."""

    def __init__(self, path: str, head: Mapping[str, Any] | None = None) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if head is not None and not os.path.exists(path):
            self._append(dict(head))

    def _append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row (values made JSON-safe)."""
        self._append({k: _clean(v) for k, v in row.items()})


def read_json_log(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON-lines training log (MMDetection's or detlab's), head line excluded."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not a JSON object ({err.msg}); is this "
                                 f"a *.log.json file?") from err
            if "mode" in row:
                rows.append(row)
    return rows


def load_json_log(path: str):
    """A training log as a pandas DataFrame, one row per logged line (train and val)."""
    import pandas as pd

    return pd.DataFrame(read_json_log(path))


def format_row(row: Mapping[str, Any], iters_per_epoch: int | None = None,
               max_iters: int | None = None) -> str:
    """A log row as the text line MMDetection prints: ``Epoch [1][50/7330]  lr: 1.000e-03, ...``
    (``Iter [50/90000]`` for an iteration-based run, when ``max_iters`` is given)."""
    head = f"Epoch({row['mode']}) [{row['epoch']}]"
    if max_iters is not None:
        head = f"Iter({row['mode']}) [{row['iter']}/{max_iters}]"
        if row["mode"] == "train":
            head = f"Iter [{row['iter']}/{max_iters}]"
    elif row["mode"] == "train":
        head = f"Epoch [{row['epoch']}][{row['iter']}/{iters_per_epoch or '?'}]"
    parts = []
    for key, value in row.items():
        if key in ("mode", "epoch", "iter"):
            continue
        if key == "lr":
            parts.append(f"lr: {value:.3e}")
        elif isinstance(value, float):
            parts.append(f"{key}: {value:.4f}")
        else:
            parts.append(f"{key}: {value}")
    return f"{head}\t" + ", ".join(parts)


def cal_train_time(json_log: str, include_outliers: bool = False) -> dict[str, Any]:
    """Training speed from a JSON log, as MMDetection's ``analyze_logs.py cal_train_time``:
    the slowest and fastest epoch by mean iteration time, the std of the epoch means and the
    mean iteration time (the first logged row of each epoch, which carries start-up costs, is
    left out unless ``include_outliers``)."""
    import numpy as np

    per_epoch: dict[int, list[float]] = {}
    for row in read_json_log(json_log):
        if row.get("mode") == "train" and "time" in row:
            per_epoch.setdefault(int(row["epoch"]), []).append(float(row["time"]))
    if not per_epoch:
        raise ValueError(f"{json_log} has no training rows with a 'time' value")
    if not include_outliers:
        per_epoch = {e: t[1:] or t for e, t in per_epoch.items()}
    epochs = sorted(per_epoch)
    means = np.array([np.mean(per_epoch[e]) for e in epochs])
    every = np.concatenate([per_epoch[e] for e in epochs])
    return dict(slowest_epoch=epochs[int(means.argmax())], slowest_time=float(means.max()),
                fastest_epoch=epochs[int(means.argmin())], fastest_time=float(means.min()),
                epoch_time_std=float(means.std()), mean_iter_time=float(every.mean()))


def progress_bar(iterable: Any, desc: str, **kwargs: Any) -> Any:
    """``iterable`` wrapped in a tqdm progress bar (a widget in a notebook, text in a
    terminal), iterated once. Not in a notebook that :func:`detlab.notebooks.run_notebook` executes
    headless: the saved notebook would keep only the bar's first state ("0%") -- the log lines
    tell the progress there."""
    import warnings

    if os.environ.get(RUN_DIR_ENV):
        return iterable
    from tqdm import TqdmExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        # not tqdm.auto: its asyncio mix-in calls iter() on the iterable when the bar is made
        # and again when it is iterated -- a DataLoader would start its workers twice and its
        # sampler would skip an epoch's order
        from tqdm.autonotebook import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, **kwargs)

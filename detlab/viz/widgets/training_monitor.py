"""TrainingMonitor: live training curves in a notebook, with throughput and the time left.

Two ways to feed it:

- in the same notebook as the training: ``detlab.train(cfg, hooks=[monitor.hook()])``; the
  hook records every iteration and redraws the view every ``interval`` iterations, after each
  validation and at the end, from the training loop's own thread;
- for a training started elsewhere: ``TrainingMonitor(work_dir)`` reads the newest
  ``*.log.json`` of the folder, :meth:`TrainingMonitor.refresh` reads what was added since
  (only whole lines: a row being written waits for the next call), and
  :meth:`TrainingMonitor.start` / ``stop`` do that every few seconds in a background thread.

Shown with :meth:`TrainingMonitor.display` (rather than as a cell's value), the static picture
kept in the notebook for readers without a live kernel follows the live view too.

The view shows the losses and the learning rate against iterations and the validation metric
against epochs, under a line with the epoch, iteration, speed (images per second when the
number of images per iteration is known, else iterations per second) and the ETA: the mean
time of the recent iterations times the iterations left.
"""

from __future__ import annotations

import datetime
import glob
import io
import json
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from detlab.engine.hooks import Hook
from detlab.viz.widgets.base import WidgetView, control_row

if TYPE_CHECKING:
    import pandas as pd

    from detlab.engine.trainer import Trainer

_STEP_KEYS = ("mode", "epoch", "iter")


@dataclass
class TrainingProgress:
    """Where a training run stands.

    Attributes:
        epoch, iter: the last logged iteration (epoch counted from 1, ``iter`` within it).
        iters_per_epoch, max_epochs: the run's length, when known.
        done_iters, total_iters: iterations finished and planned (``total`` when known).
        seconds_per_iter: mean time of the recent iterations.
        iters_per_second, images_per_second: throughput (images when the number of images
            per iteration is known).
        eta_seconds: time left for the remaining training iterations (validation excluded).
        metric, best_metric, best_epoch: the last and the best value of the monitored metric.
        finished: every planned iteration has run.
    """

    epoch: int = 0
    iter: int = 0
    iters_per_epoch: int | None = None
    max_epochs: int | None = None
    done_iters: int = 0
    total_iters: int | None = None
    seconds_per_iter: float | None = None
    iters_per_second: float | None = None
    images_per_second: float | None = None
    eta_seconds: float | None = None
    metric: float | None = None
    best_metric: float | None = None
    best_epoch: int | None = None
    finished: bool = False

    def text(self, metric_name: str = "metric") -> str:
        """One line: epoch, iteration, speed, ETA and the metric."""
        parts = [f"epoch {self.epoch}/{self.max_epochs or '?'}",
                 f"iter {self.iter}/{self.iters_per_epoch or '?'}"]
        if self.images_per_second is not None:
            parts.append(f"{self.images_per_second:.1f} img/s")
        elif self.iters_per_second is not None:
            parts.append(f"{self.iters_per_second:.2f} it/s")
        if self.finished:
            parts.append("finished")
        elif self.eta_seconds is not None:
            parts.append(f"ETA {datetime.timedelta(seconds=round(self.eta_seconds))}")
        if self.metric is not None:
            parts.append(f"{metric_name} {self.metric:.4f} (best {self.best_metric:.4f} at "
                         f"epoch {self.best_epoch})")
        return " | ".join(parts)


def newest_log(work_dir: str | os.PathLike) -> str | None:
    """The most recently modified ``*.log.json`` of ``work_dir`` (None when there is none)."""
    paths = glob.glob(os.path.join(os.fspath(work_dir), "*.log.json"))
    return max(paths, key=lambda p: (os.path.getmtime(p), p)) if paths else None


def _int_setting(text: str, *names: str) -> int | None:
    """The first ``name=<int>`` of ``text`` (the config a log's first line holds)."""
    for name in names:
        found = re.search(rf"\b{name}\s*=\s*(\d+)", text)
        if found:
            return int(found.group(1))
    return None


class MonitorHook(Hook):
    """Feeds a :class:`TrainingMonitor` from inside the training loop (lowest priority, so
    it sees each iteration after the optimizer step and the logger)."""

    priority = "VERY_LOW"

    def __init__(self, monitor: TrainingMonitor) -> None:
        self.monitor = monitor
        self._last = time.perf_counter()
        self._seen_eval: int | None = None

    def before_run(self, trainer: Trainer) -> None:
        self.monitor.start_run(trainer.max_epochs, trainer.iters_per_epoch)

    def before_train_epoch(self, trainer: Trainer) -> None:
        self._last = time.perf_counter()

    def after_train_iter(self, trainer: Trainer) -> None:
        now = time.perf_counter()
        row: dict[str, Any] = dict(epoch=trainer.epoch + 1, iter=trainer.inner_iter + 1,
                                   lr=trainer.current_lr()[0], time=now - self._last)
        row.update(trainer.outputs.get("log_vars", {}))
        self.monitor.add_row("train", row, trainer.outputs.get("num_samples"))
        if (trainer.iter + 1) % self.monitor.interval == 0:
            self.monitor.update_view()
        self._add_evaluation(trainer)
        self._last = time.perf_counter()  # drawing the view is not iteration time

    def after_train_epoch(self, trainer: Trainer) -> None:
        self._add_evaluation(trainer)

    def _add_evaluation(self, trainer: Trainer) -> None:
        """The metrics of an evaluation that ran since the last look."""
        if trainer.evaluated_at is None or trainer.evaluated_at == self._seen_eval:
            return
        self._seen_eval = trainer.evaluated_at
        self.monitor.add_row("val", dict(epoch=trainer.epoch + 1, **trainer.val_outputs))
        self.monitor.update_view()
        self._last = time.perf_counter()  # validation time is not iteration time

    def after_run(self, trainer: Trainer) -> None:
        self.monitor.update_view()


class TrainingMonitor(WidgetView):
    """Live curves, throughput and ETA of a training run.

    Args:
        work_dir: the folder of a run to follow through its JSON log (None when fed by
            :meth:`hook`).
        keys: the losses to plot (those the log holds).
        metric: the validation metric to plot and report.
        interval: the hook redraws the view every ``interval`` iterations.
        samples_per_iter: images per iteration, for images/s (the hook counts them; from a log
            it is read from the config in the log's first line, ``data.samples_per_gpu``).
        window: how many recent rows the mean iteration time is taken over.

    Widgets carry CSS classes for browser tests: ``detlab-view`` (the curves),
    ``detlab-monitor-status``, ``detlab-refresh``, ``detlab-auto-refresh`` (a toggle that
    starts and stops polling).
    """

    def __init__(self, work_dir: str | os.PathLike | None = None,
                 keys: Sequence[str] = ("loss", "loss_cls", "loss_bbox"),
                 metric: str = "bbox_mAP", interval: int = 10,
                 samples_per_iter: int | None = None, window: int = 50) -> None:
        if interval < 1:
            raise ValueError(f"interval must be at least 1 iteration, got {interval}")
        self.work_dir = None if work_dir is None else os.fspath(work_dir)
        self.keys, self.metric = tuple(keys), metric
        self.interval, self.window = int(interval), int(window)
        self.samples_per_iter = samples_per_iter
        self.max_epochs: int | None = None
        self.iters_per_epoch: int | None = None
        self.run_status: str | None = None  # 'finished', 'crashed', 'interrupted' once ended
        self.log_path: str | None = None
        self.view_updates = 0  # how many times the view was redrawn (for tests and debugging)
        self._given_samples = samples_per_iter
        self._lock = threading.RLock()
        self._train: list[dict[str, Any]] = []
        self._val: list[dict[str, Any]] = []
        self._offset = 0
        self._from_hook = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._version = 0  # counts changes of the rows, so that a picture is drawn once
        self._picture: tuple[int, bytes] = (-1, b"")
        self._handle: Any = None
        self._build_widgets()
        if self.work_dir is not None:
            self.refresh()
        else:
            self.update_view()

    # ---- data ----------------------------------------------------------------------------

    def hook(self) -> MonitorHook:
        """A hook for ``detlab.train(cfg, hooks=[monitor.hook()])``."""
        return MonitorHook(self)

    def start_run(self, max_epochs: int | None, iters_per_epoch: int | None) -> None:
        """Forget earlier rows: a new run of ``max_epochs`` epochs starts (called by the hook)."""
        with self._lock:
            self._train, self._val = [], []
            self.max_epochs, self.iters_per_epoch = max_epochs, iters_per_epoch
            self.samples_per_iter = self._given_samples
            self._from_hook = True
            self._version += 1

    def add_row(self, mode: str, row: Mapping[str, Any], samples: int | None = None) -> None:
        """Record one row: ``mode`` ``'train'`` (``epoch``, ``iter``, ``lr``, ``time``,
        losses) or ``'val'`` (``epoch`` and metrics); ``samples`` is the number of images of
        the iteration."""
        with self._lock:
            self._version += 1
            if mode == "train":
                self._train.append(dict(row))
                if samples and self._given_samples is None:
                    self.samples_per_iter = int(samples)
            elif mode == "val":
                self._val.append(dict(row))

    def rows(self, mode: str = "train") -> list[dict[str, Any]]:
        """A copy of the recorded rows of ``mode`` (``'train'`` or ``'val'``)."""
        with self._lock:
            return [dict(r) for r in (self._train if mode == "train" else self._val)]

    def frame(self, mode: str = "train") -> pd.DataFrame:
        """The rows of ``mode`` as a pandas DataFrame (train rows get a global ``step``)."""
        import pandas as pd

        table = pd.DataFrame(self.rows(mode))
        if mode == "train" and not table.empty:
            table["step"] = self._steps(table["epoch"].tolist(), table["iter"].tolist())
        return table

    def refresh(self) -> None:
        """Read what the log gained since the last call (unless a hook feeds the monitor),
        then redraw the view."""
        if self.work_dir is not None and not self._from_hook:
            self._read_log()
        self.update_view()

    def _read_log(self) -> None:
        path = newest_log(self.work_dir)
        if path is None:
            return
        with self._lock:
            if path != self.log_path or os.path.getsize(path) < self._offset:
                self._train, self._val = [], []  # another run, or the log was rewritten
                self.log_path, self._offset = path, 0
                self.max_epochs = None
                self._version += 1
            with open(path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
            whole = chunk[:chunk.rfind(b"\n") + 1]  # a line still being written waits
            self._offset += len(whole)
            self._version += bool(whole)
            for line in whole.splitlines():
                self._read_line(line)
            self.iters_per_epoch = self._iters_per_epoch_from_log()

    def _read_line(self, line: bytes) -> None:
        try:
            row = json.loads(line)
        except ValueError:
            return  # not a row (a log written by something else): skip it
        if not isinstance(row, dict):
            return
        if "status" in row and "mode" not in row:  # the last line: how the run ended
            self.run_status = str(row["status"])
            return
        if "mode" not in row:  # the first line: the run's facts
            text = str(row.get("config", ""))
            self.max_epochs = _int_setting(text, "max_epochs", "total_epochs")
            if self._given_samples is None:
                self.samples_per_iter = _int_setting(text, "samples_per_gpu")
            return
        facts = {k: v for k, v in row.items() if k != "mode"}
        self.add_row(str(row["mode"]), facts)

    def _iters_per_epoch_from_log(self) -> int | None:
        """Evaluation rows carry the epoch's length; else the longest finished epoch."""
        for row in self._val:
            if not any(str(k).startswith("loss") for k in row) and row.get("iter"):
                return int(row["iter"])
        if not self._train:
            return None
        last = self._train[-1]["epoch"]
        finished = [int(r["iter"]) for r in self._train if r["epoch"] < last]
        return max(finished) if finished else None

    # ---- progress ------------------------------------------------------------------------

    def _steps(self, epochs: Sequence[int], iters: Sequence[int]) -> list[int]:
        per_epoch = self.iters_per_epoch or max(
            [i for e, i in zip(epochs, iters, strict=True) if e == min(epochs)], default=1)
        return [(int(e) - 1) * per_epoch + int(i) for e, i in zip(epochs, iters, strict=True)]

    def progress(self) -> TrainingProgress:
        """Where the run stands: see :class:`TrainingProgress`."""
        with self._lock:
            train, val = list(self._train), list(self._val)
            per_epoch, max_epochs = self.iters_per_epoch, self.max_epochs
            samples = self.samples_per_iter
        out = TrainingProgress(iters_per_epoch=per_epoch, max_epochs=max_epochs)
        if train:
            out.epoch, out.iter = int(train[-1]["epoch"]), int(train[-1]["iter"])
            out.done_iters = self._steps([r["epoch"] for r in train],
                                         [r["iter"] for r in train])[-1]
            times = [float(r["time"]) for r in train[-self.window:] if r.get("time")]
            if times:
                out.seconds_per_iter = sum(times) / len(times)
                out.iters_per_second = 1.0 / out.seconds_per_iter
                out.images_per_second = samples / out.seconds_per_iter if samples else None
        if per_epoch and max_epochs:
            out.total_iters = per_epoch * max_epochs
            out.finished = out.done_iters >= out.total_iters
            if out.seconds_per_iter is not None:
                left = max(0, out.total_iters - out.done_iters)
                out.eta_seconds = left * out.seconds_per_iter
        self._metric_progress(out, val)
        return out

    def _metric_progress(self, out: TrainingProgress, val: list[dict[str, Any]]) -> None:
        scored = [(r[self.metric], int(r["epoch"])) for r in val
                  if isinstance(r.get(self.metric), (int, float))]
        if scored:
            out.metric = float(scored[-1][0])
            best = max(scored, key=lambda pair: pair[0])
            out.best_metric, out.best_epoch = float(best[0]), best[1]

    def summary(self) -> str:
        return f"TrainingMonitor: {self.progress().text(self.metric)}"

    # ---- pictures ------------------------------------------------------------------------

    def render_png(self) -> bytes:
        """Losses and lr against iterations, the metric against epochs (matplotlib); drawn
        again only when rows were added since the last call."""
        with self._lock:
            version, (drawn, png) = self._version, self._picture
        if drawn != version:
            png = self._draw()
            with self._lock:
                self._picture = (version, png)
        return png

    def _draw(self) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # a Figure of its own (not pyplot): safe from the training or polling thread
        fig = Figure(figsize=(12, 3.4))
        FigureCanvasAgg(fig)
        losses, lr, metric = fig.subplots(1, 3)
        train, val = self.frame("train"), self.frame("val")
        self._plot_train(losses, lr, train)
        self._plot_metric(metric, val)
        fig.suptitle(self.progress().text(self.metric), fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()

    def _plot_train(self, losses: Any, lr: Any, train: Any) -> None:
        shown = [k for k in self.keys if k in train]
        for key in shown:
            losses.plot(train["step"], train[key], label=key, linewidth=1)
        if shown:
            losses.legend(fontsize=8)
        else:
            _note(losses, "no training rows yet" if train.empty else
                  f"none of {', '.join(self.keys)} logged")
        losses.set_title("losses")
        losses.set_xlabel("iteration")
        if "lr" in train:
            lr.plot(train["step"], train["lr"], color="tab:orange", linewidth=1)
            lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        lr.set_title("learning rate")
        lr.set_xlabel("iteration")
        for ax in (losses, lr):
            ax.grid(alpha=0.3)

    def _plot_metric(self, ax: Any, val: Any) -> None:
        if self.metric in val and val[self.metric].notna().any():
            rows = val[val[self.metric].notna()]
            ax.plot(rows["epoch"], rows[self.metric], marker="o", color="tab:green")
            ax.set_xlabel("epoch")
        else:
            _note(ax, f"no {self.metric} yet")
        ax.set_title(self.metric)
        ax.grid(alpha=0.3)

    def update_view(self) -> None:
        """Redraw the curves and the status line in the widget (and in the output shown by
        :meth:`display`)."""
        png = self.render_png()
        text = self.progress().text(self.metric)
        self._image.value = png
        self._status.value = f"<b>{text}</b>" + (
            f" <span style='color:#777'>({os.path.basename(self.log_path)})</span>"
            if self.log_path else "")
        self.view_updates += 1
        if self._handle is not None:
            self._handle.update(self)

    def display(self) -> None:
        """Show the monitor in the notebook, and keep the static picture of that output up to
        date as well as the live view: a notebook run headless (papermill) then keeps the
        last curves rather than the empty first ones."""
        from IPython.display import display

        self._handle = display(self, display_id=True)

    # ---- polling -------------------------------------------------------------------------

    @property
    def polling(self) -> bool:
        """Whether the background thread is reading the log."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, period: float = 5.0) -> None:
        """Call :meth:`refresh` every ``period`` seconds in a background thread until
        :meth:`stop`."""
        if self.work_dir is None:
            raise ValueError("start() follows the log of a work_dir; this monitor has none "
                             "(it is fed by its hook)")
        if period <= 0:
            raise ValueError(f"period must be positive, got {period}")
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(float(period), self._stop),
                                        name="detlab-training-monitor", daemon=True)
        self._thread.start()
        self._sync_toggle()

    def stop(self) -> None:
        """Stop the background thread (waits for a refresh in progress to finish)."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._sync_toggle()

    def _poll(self, period: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.refresh()
            except Exception as err:  # keep polling: the log may be readable next time
                self._status.value = f"<span style='color:#b00020'>{type(err).__name__}: " \
                                     f"{err}</span>"
            stop.wait(period)

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        self._status = w.HTML()
        self._image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self._refresh_button = w.Button(description="refresh", icon="refresh",
                                        layout=w.Layout(width="auto"))
        self._auto = w.ToggleButton(value=False, description="follow the log", icon="play",
                                    layout=w.Layout(width="auto"))
        for widget, css in ((self._status, "detlab-monitor-status"),
                            (self._image, "detlab-view"),
                            (self._refresh_button, "detlab-refresh"),
                            (self._auto, "detlab-auto-refresh")):
            widget.add_class(css)
        self._refresh_button.on_click(lambda _: self.refresh())
        self._auto.observe(self._on_auto, names="value")
        controls = [self._refresh_button] + ([self._auto] if self.work_dir is not None else [])
        self.widget = w.VBox([self._status, self._image, control_row(w, controls)])
        self.widget.add_class("detlab-training-monitor")

    def _on_auto(self, change: Mapping[str, Any]) -> None:
        if change["new"] and not self.polling:
            self.start()
        elif not change["new"] and self.polling:
            self.stop()

    def _sync_toggle(self) -> None:
        auto = getattr(self, "_auto", None)
        if auto is not None and auto.value != self.polling:
            auto.value = self.polling


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="#777",
            transform=ax.transAxes)


__all__ = ["TrainingMonitor", "TrainingProgress", "MonitorHook", "newest_log"]

"""RunComparer: training runs side by side, from what their work folders hold.

Each run is a ``work_dir`` written by :func:`detlab.train`: its ``config.py`` (the resolved
config), its JSON log (``*.log.json``, the newest when there are several) and, when the run was
tested, a ``results.pkl`` (``detlab test CONFIG CHECKPOINT --out results.pkl``) or a
``classwise.csv`` (the ``classwise`` table of :func:`~detlab.evaluation.coco.coco_evaluate`).

The comparer shows one table -- the config keys on which the runs differ
(:meth:`~detlab.config.Config.diff` against the first run), the metrics of each run's last
validation, its epochs and its training time --, the curves of chosen log keys overlaid (drawn
from the rows read once, as :func:`~detlab.viz.plots.plot_curves` draws them from files), and
the AP of each class side by side.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.viz.widgets.base import (
    ControlsMixin,
    WidgetView,
    array_png,
    control_row,
    figure_png,
    status_html,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from detlab.config import Config

CLASSWISE_FILE = "classwise.csv"
RESULTS_FILE = "results.pkl"
IGNORED_KEYS = ("work_dir",)  # differs between any two runs, says nothing about them
_STEP_KEYS = ("mode", "epoch", "iter")
_MISSING = object()
_MAX_CELL = 40


# --------------------------------------------------------------------------------------------
# one run: its files
# --------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """What a run's work folder holds.

    Attributes:
        name: the run's name in tables and legends.
        work_dir: the folder.
        config: its ``config.py`` (None when missing).
        json_log: its newest ``*.log.json`` (None when missing).
        rows: the log's rows (train and val).
        problems: what could not be read, for the user.
    """

    name: str
    work_dir: str
    config: Config | None = None
    json_log: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def newest_json_log(work_dir: str) -> str | None:
    """The most recently modified ``*.log.json`` of ``work_dir`` (None when there is none)."""
    paths = glob.glob(os.path.join(work_dir, "*.log.json"))
    return max(paths, key=lambda p: (os.path.getmtime(p), p)) if paths else None


def load_run(work_dir: str | os.PathLike, name: str | None = None) -> RunRecord:
    """Read a run's config and JSON log; what is missing or unreadable goes to ``problems``."""
    from detlab.config import Config
    from detlab.engine.logging import read_json_log

    folder = os.path.abspath(os.fspath(work_dir))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no run folder {folder}: pass the work_dir of a training run")
    run = RunRecord(name or os.path.basename(folder.rstrip(os.sep)), folder)
    config_path = os.path.join(folder, "config.py")
    try:
        run.config = Config.fromfile(config_path, import_custom_modules=False)
    except Exception as err:  # a missing or broken config leaves the run without one
        run.problems.append(f"config.py: {err}")
    run.json_log = newest_json_log(folder)
    if run.json_log is None:
        run.problems.append("no *.log.json")
    else:
        run.rows = read_json_log(run.json_log)
    return run


def final_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The numbers of the last validation row (``epoch`` included), {} without any."""
    val = [row for row in rows if row.get("mode") == "val"]
    if not val:
        return {}
    last = val[-1]
    out = {"epoch": last.get("epoch")}
    out.update({k: v for k, v in last.items() if k not in (*_STEP_KEYS, "lr")
                and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def training_time(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """``train_time``: seconds spent in training iterations (each row's mean ``time`` times the
    iterations it covers; validation not counted) and ``iter_time``: the mean per iteration."""
    seconds, iters, last_iter = 0.0, 0, {}
    for row in rows:
        if row.get("mode") != "train" or row.get("time") is None:
            continue
        epoch, it = row.get("epoch"), int(row.get("iter", 0))
        covered = max(it - last_iter.get(epoch, 0), 0)
        last_iter[epoch] = it
        seconds += float(row["time"]) * covered
        iters += covered
    if not iters:
        return {"train_time": None, "iter_time": None}
    return {"train_time": seconds, "iter_time": seconds / iters}


# --------------------------------------------------------------------------------------------
# config differences
# --------------------------------------------------------------------------------------------


def lookup(tree: Any, key: str) -> Any:
    """The value at a dotted ``key`` (list items by number) of a nested dict, or ``_MISSING``."""
    value = tree
    for part in key.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def config_differences(configs: Sequence[Config | None],
                       ignore: Sequence[str] = IGNORED_KEYS) -> dict[str, list[Any]]:
    """The dotted keys on which the configs differ (:meth:`Config.diff` of each against the
    first) and each config's value there (None where a config lacks the key or is missing);
    keys starting with one of ``ignore`` are left out."""
    present = [c for c in configs if c is not None]
    if len(present) < 2:
        return {}
    keys: dict[str, None] = {}
    for other in present[1:]:
        diff = present[0].diff(other)
        for key in (*diff.changed, *diff.added, *diff.removed):
            if not any(key == i or key.startswith(f"{i}.") for i in ignore):
                keys[key] = None
    trees = [None if c is None else c.to_dict() for c in configs]
    out = {}
    for key in keys:
        values = [_MISSING if t is None else lookup(t, key) for t in trees]
        out[key] = [None if v is _MISSING else v for v in values]
    return out


# --------------------------------------------------------------------------------------------
# per-class AP
# --------------------------------------------------------------------------------------------


def run_class_ap(run: RunRecord, split: str = "test") -> pd.DataFrame:
    """A run's per-class table (``class``, ``AP`` ...): its ``classwise.csv``, else its
    ``results.pkl`` evaluated on ``data.<split>`` of its config. Raises FileNotFoundError
    when it has neither."""
    import pandas as pd

    csv = os.path.join(run.work_dir, CLASSWISE_FILE)
    if os.path.exists(csv):
        return pd.read_csv(csv)
    pkl = os.path.join(run.work_dir, RESULTS_FILE)
    if not os.path.exists(pkl):
        raise FileNotFoundError(f"{run.name} has no {CLASSWISE_FILE} nor {RESULTS_FILE}")
    if run.config is None:
        raise FileNotFoundError(f"{run.name} has {RESULTS_FILE} but no config.py to say which "
                                f"images it is about")
    from detlab.engine.tester import eval_metric

    metrics = eval_metric(run.config, pkl, eval="bbox", eval_options={"classwise": True},
                          split=split)
    return metrics["classwise"]


def how_to_get_class_ap(runs: Sequence[RunRecord]) -> str:
    """What to run so that each of ``runs`` gets a per-class AP."""
    names = ", ".join(r.name for r in runs)
    first = runs[0].work_dir
    return (f"no per-class AP for {names}: test each run and save its results, e.g. "
            f"`detlab test {first}/config.py {first}/latest.pth --out {first}/{RESULTS_FILE}` "
            f"(or detlab.test(cfg, checkpoint, out=...)), or write the classwise table of "
            f"coco_evaluate(..., classwise=True) to <work_dir>/{CLASSWISE_FILE}")


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL - 3] + "..."


def table_figure(table: pd.DataFrame) -> Figure:
    """The run table as a picture: one column per run, one row per field."""
    from detlab.viz.plots import _figure

    shown = table.T
    fig, axes = _figure(1, 1, size=1.0)
    fig.set_size_inches(2.2 + 1.6 * len(shown.columns), 0.4 + 0.28 * (len(shown) + 1))
    ax = axes[0, 0]
    ax.axis("off")
    cells = [[_cell(v) for v in row] for row in shown.itertuples(index=False)]
    drawn = ax.table(cellText=cells or [["-"] * len(shown.columns)],
                     rowLabels=[str(i) for i in shown.index] or ["-"],
                     colLabels=[str(c) for c in shown.columns], loc="center", cellLoc="left")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(8)
    return fig


def class_ap_figure(frame: pd.DataFrame, column: str = "AP") -> Figure:
    """Horizontal bars of each class's AP, one bar per run."""
    from detlab.viz.plots import _figure

    fig, axes = _figure(1, 1, size=1.0)
    fig.set_size_inches(6.0, 1.0 + 0.3 * len(frame) * max(1, len(frame.columns)) / 2)
    ax = axes[0, 0]
    height = 0.8 / max(1, len(frame.columns))
    positions = np.arange(len(frame))
    for i, run in enumerate(frame.columns):
        ax.barh(positions + i * height, frame[run].fillna(0).to_numpy(), height, label=str(run))
    ax.set_yticks(positions + height * (len(frame.columns) - 1) / 2, [str(c) for c in
                                                                        frame.index])
    ax.invert_yaxis()
    ax.set(xlabel=column, xlim=(0, 1), title=f"{column} per class")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def log_curve(rows: Sequence[Mapping[str, Any]],
              key: str) -> tuple[np.ndarray, np.ndarray, str] | None:
    """``(x, y, x_label)`` of ``key`` in a run's log rows: against iterations when the train
    rows hold it (counted as MMDetection's analyze_logs: an epoch is the last iteration logged
    in the first one), else against epochs from the val rows; None when no row holds it."""
    train = [r for r in rows if r.get("mode") == "train"]
    with_key = [r for r in train if r.get(key) is not None]
    if with_key:
        first = min(int(r["epoch"]) for r in train)
        per_epoch = max(int(r["iter"]) for r in train if int(r["epoch"]) == first)
        x = [(int(r["epoch"]) - 1) * per_epoch + int(r["iter"]) for r in with_key]
        return np.asarray(x), np.asarray([float(r[key]) for r in with_key]), "iteration"
    val = [r for r in rows if r.get("mode") == "val" and r.get(key) is not None]
    if val:
        return (np.asarray([int(r["epoch"]) for r in val]),
                np.asarray([float(r[key]) for r in val]), "epoch")
    return None


def curves_figure(runs: Sequence[RunRecord], keys: Sequence[str]) -> Figure:
    """One panel per key, one line per run (train keys against iterations, val keys against
    epochs); a panel says which runs lack its key."""
    from detlab.viz.plots import _figure

    fig, axes = _figure(len(keys), 1, size=4.0)
    for ax, key in zip(axes[0], keys, strict=True):
        lacking = []
        for run in runs:
            curve = log_curve(run.rows, key)
            if curve is None:
                lacking.append(run.name)
                continue
            x, y, x_label = curve
            ax.plot(x, y, marker="o" if x_label == "epoch" else None, label=run.name)
            ax.set_xlabel(x_label)
        if lacking:
            ax.text(0.5, 0.02, f"no {key} in {', '.join(lacking)}", ha="center", va="bottom",
                    fontsize=8, transform=ax.transAxes)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        if len(lacking) < len(runs):
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def stack_pictures(pictures: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
    """``H x W x 3`` pictures one under the other, each titled, left-aligned on white."""
    from detlab.viz.draw import image_grid

    titled = [image_grid([p], titles=[t]) for p, t in zip(pictures, titles, strict=True)]
    if not titled:
        return np.full((1, 1, 3), 255, np.uint8)
    width = max(p.shape[1] for p in titled)
    padded = [np.pad(p, ((0, 8), (0, width - p.shape[1]), (0, 0)), constant_values=255)
              for p in titled]
    return np.concatenate(padded, axis=0)


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).copy()


# --------------------------------------------------------------------------------------------
# the widget
# --------------------------------------------------------------------------------------------


class RunComparer(ControlsMixin, WidgetView):
    """Training runs side by side: their config differences, final metrics and training time
    (:meth:`table`), the curves of chosen log keys overlaid (:meth:`plot`), and the AP of each
    class (:meth:`class_ap`).

    Args:
        work_dirs: the runs' work folders, or ``{name: work_dir}`` (default names: the
            folders' names, numbered when two are the same).
        keys: the log keys plotted first (default ``loss`` and the first metric of the logs).
        split: the config's split a ``results.pkl`` is evaluated on (``detlab test`` uses
            ``test``).
        class_metric: the column of the per-class tables compared (``AP``, ``AP50`` ...).

    The controls carry CSS classes: ``detlab-runs-keys``, ``detlab-runs-reload``,
    ``detlab-runs-table``, ``detlab-runs-view``, ``detlab-runs-class-ap``,
    ``detlab-runs-status``.
    """

    def __init__(self, work_dirs: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                 keys: Sequence[str] | None = None, split: str = "test",
                 class_metric: str = "AP") -> None:
        self.sources = _named_dirs(work_dirs)
        self.split, self.class_metric = split, class_metric
        self.runs: list[RunRecord] = []
        self.keys: list[str] = []
        self.class_ap_note = ""
        self._class_ap: pd.DataFrame | None = None
        self._class_ap_done = False
        self._syncing = False
        self.reload(refresh=False)
        self.keys = list(keys) if keys else self._default_keys()
        self._build_widgets()
        self._refresh()

    # ---- state ---------------------------------------------------------------------------

    def reload(self, refresh: bool = True) -> list[RunRecord]:
        """Read every run's files again (e.g. while a run is still training)."""
        self.runs = [load_run(path, name) for name, path in self.sources.items()]
        self._class_ap, self._class_ap_done = None, False
        if refresh:
            self._refresh()
        return self.runs

    def available_keys(self) -> list[str]:
        """The numeric keys the logs hold (losses, ``lr``, ``time``, metrics ...)."""
        keys: dict[str, None] = {}
        for run in self.runs:
            for row in run.rows:
                for key, value in row.items():
                    if key not in _STEP_KEYS and isinstance(value, (int, float)):
                        keys[key] = None
        return list(keys)

    def _default_keys(self) -> list[str]:
        available = self.available_keys()
        metrics = [k for run in self.runs for k in final_metrics(run.rows) if k != "epoch"]
        chosen = [k for k in ("loss", *metrics[:1]) if k in available]
        return chosen or available[:1]

    def table(self) -> pd.DataFrame:
        """One row per run (indexed by name): the config keys on which the runs differ, the
        ``epoch`` and metrics of the last validation, ``train_time`` (seconds in training
        iterations) and ``iter_time`` (seconds per iteration)."""
        import pandas as pd

        differences = config_differences([r.config for r in self.runs])
        rows = []
        for i, run in enumerate(self.runs):
            row: dict[str, Any] = {key: values[i] for key, values in differences.items()}
            row.update(final_metrics(run.rows))
            row.update(training_time(run.rows))
            rows.append(row)
        return pd.DataFrame(rows, index=pd.Index([r.name for r in self.runs], name="run"))

    def plot(self, keys: Sequence[str] | None = None) -> Figure:
        """The curves of ``keys`` (default: those shown) of every run with a log, overlaid,
        one panel per key (:func:`curves_figure`, from the rows read by :meth:`reload`);
        ``keys`` also become the keys shown."""
        if keys is not None:
            chosen = [keys] if isinstance(keys, str) else list(keys)
            if not chosen:
                raise ValueError("choose at least one key to plot")
            self.keys = chosen
            self._refresh()
        logged = [r for r in self.runs if r.json_log]
        if not logged:
            raise FileNotFoundError("none of the runs has a *.log.json to plot")
        return curves_figure(logged, self.keys)

    def class_ap(self) -> pd.DataFrame | None:
        """``class_metric`` of each class (rows) for each run that has a per-class table
        (columns), or None when none has; :attr:`class_ap_note` says what the others lack."""
        if not self._class_ap_done:
            self._class_ap, self.class_ap_note = self._collect_class_ap()
            self._class_ap_done = True
        return self._class_ap

    def _collect_class_ap(self) -> tuple[pd.DataFrame | None, str]:
        import pandas as pd

        columns, lacking, failures = {}, [], []
        for run in self.runs:
            try:
                table = run_class_ap(run, self.split)
                columns[run.name] = table.set_index("class")[self.class_metric]
            except FileNotFoundError:
                lacking.append(run)
            except Exception as err:  # a results file that does not evaluate: say why
                failures.append(f"{run.name}: {type(err).__name__}: {err}")
        notes = ([how_to_get_class_ap(lacking)] if lacking else []) + failures
        frame = pd.DataFrame(columns) if columns else None
        if frame is not None:
            frame.index.name = "class"
        return frame, "; ".join(notes)

    # ---- pictures ------------------------------------------------------------------------

    def view_image(self, with_table: bool = True) -> np.ndarray:
        """The run table (unless ``with_table`` is false: the live view shows it as HTML),
        the curves and the per-class AP stacked, as ``H x W x 3`` RGB."""
        pictures, titles = [], []
        if with_table:
            pictures.append(_png_array(figure_png(table_figure(self.table()))))
            titles.append("runs")
        if any(r.json_log for r in self.runs):
            pictures.append(_png_array(figure_png(self.plot())))
            titles.append(", ".join(self.keys))
        frame = self.class_ap()
        if frame is not None:
            pictures.append(_png_array(figure_png(class_ap_figure(frame, self.class_metric))))
            titles.append(f"{self.class_metric} per class")
        return stack_pictures(pictures, titles)

    def render_png(self) -> bytes:
        """The table, the curves and the per-class AP of the runs, as PNG."""
        return array_png(self.view_image())

    def summary(self) -> str:
        metric = next((k for run in self.runs for k in final_metrics(run.rows)
                       if k != "epoch"), None)
        if metric is None:
            return f"RunComparer: {len(self.runs)} runs, no validation logged yet"
        values = ", ".join(f"{run.name} {_cell(final_metrics(run.rows).get(metric))}"
                           for run in self.runs)
        return f"RunComparer: {len(self.runs)} runs, final {metric}: {values}"

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        options = list(dict.fromkeys([*self.available_keys(), *self.keys]))
        self._keys = w.SelectMultiple(options=options, value=tuple(self.keys),
                                      description="curves", rows=min(8, max(3, len(options))))
        self._reload = w.Button(description="reload", icon="refresh",
                                layout=w.Layout(width="auto"))
        self._table_html, self._class_html, self._status = w.HTML(), w.HTML(), w.HTML()
        self._image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        for attribute, css in dict(_keys="keys", _reload="reload", _table_html="table",
                                   _image="view", _class_html="class-ap",
                                   _status="status").items():
            getattr(self, attribute).add_class(f"detlab-runs-{css}")
        self._keys.observe(self._on_keys, names="value")
        self._reload.on_click(lambda _: self._safely(self.reload))
        self.widget = w.VBox([control_row(w, [self._keys, self._reload]), self._status,
                              self._table_html, self._image, self._class_html])
        self.widget.add_class("detlab-run-comparer")

    def _on_keys(self, change: Mapping[str, Any]) -> None:
        if not self._syncing and change["new"]:
            self._safely(self.plot, list(change["new"]))


    def _refresh(self) -> None:
        """Bring the controls, the tables and the picture in line with the state."""
        if not hasattr(self, "_image"):
            return
        self._image.value = array_png(self.view_image(with_table=False))
        self._table_html.value = self.table().to_html(
            float_format=lambda v: f"{v:.4g}", na_rep="-")
        frame = self.class_ap()
        class_html = "" if frame is None else frame.to_html(float_format=lambda v: f"{v:.3f}")
        note = status_html(self.class_ap_note) if self.class_ap_note else ""
        self._class_html.value = class_html + note
        problems = [f"{r.name}: {p}" for r in self.runs for p in r.problems]
        self._status.value = status_html("; ".join(problems)) if problems else ""
        with self._quiet():
            self._keys.options = list(dict.fromkeys([*self.available_keys(), *self.keys]))
            self._keys.value = tuple(self.keys)


def _named_dirs(work_dirs: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike]
                ) -> dict[str, str]:
    """``{name: folder}``: a mapping as it is; a list named by folder (numbered when two
    folders share a name)."""
    if isinstance(work_dirs, (str, os.PathLike)):
        work_dirs = [work_dirs]
    if isinstance(work_dirs, Mapping):
        named = {str(k): os.fspath(v) for k, v in work_dirs.items()}
    else:
        named = {}
        for path in work_dirs:
            base = os.path.basename(os.path.abspath(os.fspath(path)))
            name, n = base, 1
            while name in named:
                n += 1
                name = f"{base}_{n}"
            named[name] = os.fspath(path)
    if not named:
        raise ValueError("RunComparer needs at least one work_dir")
    return named



__all__ = ["RunComparer", "RunRecord", "load_run", "final_metrics", "training_time",
           "config_differences", "run_class_ap", "how_to_get_class_ap", "newest_json_log",
           "log_curve", "curves_figure", "stack_pictures"]

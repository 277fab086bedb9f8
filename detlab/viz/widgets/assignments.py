"""AssignerInspector: which priors each assigner makes positive, image by image.

Several detectors (or configs) side by side under one dropdown -- MaxIoU (RetinaNet), ATSS,
SimOTA (YOLOX), task-aligned (TOOD) by default, each built small from its shipped config --
and one image of a dataset at a time: the image with its ground truths and their positive
priors (:func:`~detlab.viz.assigners.plot_assignment`), and below it the table of
:func:`~detlab.viz.assigners.inspect_assignment` (one row per positive prior, one per ground
truth left without any). A ground-truth selector shows one object's positives only, a level
filter one pyramid level's.

The controls call plain methods (:meth:`AssignerInspector.set`), so the widget also works, and
is tested, without a frontend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from detlab.viz.widgets.base import (
    ControlsMixin,
    WidgetView,
    control_row,
    figure_png,
    status_html,
)

if TYPE_CHECKING:
    import pandas as pd

ALL = -1  # the gt / level value that selects all of them
# the shipped configs whose assigners the inspector shows by default, by assigner
DEFAULT_CONFIGS = {
    "MaxIoU (RetinaNet)": "retinanet/retinanet_r50_fpn_1x_coco.py",
    "ATSS": "atss/atss_r50_fpn_1x_coco.py",
    "SimOTA (YOLOX)": "yolox/yolox_s_8x8_300e_coco.py",
    "TaskAligned (TOOD)": "tood/tood_r50_fpn_1x_coco.py",
}
_TABLE_COLUMNS = ["gt", "gt_label", "prior", "level", "stride", "prior_x1", "prior_y1",
                  "prior_x2", "prior_y2", "iou", "max_overlap", "assign_metric"]


def build_inspected_model(cfg_or_path: Any, shrink: bool = True, channels: int = 64,
                          num_classes: int | None = None, seed: int = 0) -> Any:
    """A detector to inspect, from a config (object or file; a path relative to the
    repository's ``configs/`` works too). With ``shrink`` it is made small by
    :func:`~detlab.viz.assigners.small_model_overrides` (``num_classes`` default: the
    config's). A head that switches assigners at ``train_cfg.initial_epoch`` (TOOD) is set
    to that epoch, so that its second, prediction-based assigner is the one inspected."""
    import os

    import torch

    import detlab
    from detlab.viz.assigners import small_model_overrides

    if isinstance(cfg_or_path, str | os.PathLike):
        path = str(cfg_or_path)
        if not os.path.exists(path):  # relative to the repository's configs/
            path = os.path.join(os.path.dirname(os.path.dirname(detlab.__file__)), "configs",
                                path)
        cfg = detlab.Config.fromfile(path)
    else:
        cfg = cfg_or_path
    if shrink:
        head = cfg["model"]["bbox_head"]
        classes = num_classes if num_classes is not None else head.get("num_classes", 80)
        cfg.merge_from_dict(small_model_overrides(cfg, channels=channels, num_classes=classes,
                                                  tiny_input=True))
    torch.manual_seed(seed)
    model = detlab.build_model(cfg)
    initial_epoch = getattr(model.bbox_head, "initial_epoch", 0)
    if initial_epoch and hasattr(model.bbox_head, "set_epoch"):
        model.bbox_head.set_epoch(initial_epoch)
    return model


def default_models(num_classes: int = 80, channels: int = 64) -> dict[str, Any]:
    """The four assigners of :data:`DEFAULT_CONFIGS`, each a small model built from its
    shipped config (:func:`build_inspected_model`)."""
    return {name: build_inspected_model(path, channels=channels, num_classes=num_classes)
            for name, path in DEFAULT_CONFIGS.items()}


class AssignerInspector(ControlsMixin, WidgetView):
    """An image slider, an assigner dropdown, a ground-truth selector and a level filter over
    :func:`~detlab.viz.assigners.inspect_assignment`, with the picture and the table.

    Args:
        models_or_configs: ``{name: detector or config}``; a config (object or path) is
            built by :func:`build_inspected_model` (shrunk unless ``shrink=False``). Default:
            :func:`default_models` (MaxIoU, ATSS, SimOTA, TaskAligned).
        dataset: a built training dataset (boxes and labels loaded), or a config (object or
            path) whose ``data.train`` is built.
        index: the image shown first.
        shrink: make configs small (ResNet-18, ``channels`` channels) so they run on a CPU.

    Attributes:
        state: ``model`` (name), ``index``, ``gt`` and ``level`` (:data:`ALL` for all).
        frame: the full :func:`inspect_assignment` frame of the current model and image.
        table: the rows shown (``frame`` filtered by gt and level).

    The controls carry CSS classes: ``detlab-assign-image``, ``detlab-assign-model``,
    ``detlab-assign-gt``, ``detlab-assign-level``, ``detlab-assign-view``,
    ``detlab-assign-table``, ``detlab-assign-summary``, ``detlab-assign-status``.
    """

    def __init__(self, models_or_configs: Mapping[str, Any] | None, dataset: Any,
                 index: int = 0, shrink: bool = True, channels: int = 64) -> None:
        self.dataset = _dataset_of(dataset)
        num_classes = len(getattr(self.dataset, "CLASSES", ()) or ()) or 80
        if models_or_configs is None:
            models_or_configs = default_models(num_classes, channels)
        if not models_or_configs:
            raise ValueError("AssignerInspector needs at least one model or config, e.g. "
                             "{'ATSS': 'atss/atss_r50_fpn_1x_coco.py'}")
        self.models = {name: m if hasattr(m, "bbox_head") else
                       build_inspected_model(m, shrink, channels, num_classes)
                       for name, m in models_or_configs.items()}
        self._batches: dict[int, Any] = {}
        self._frames: dict[tuple[str, int], pd.DataFrame] = {}
        self.state = dict(model=next(iter(self.models)), index=0, gt=ALL, level=ALL)
        self.frame: pd.DataFrame | None = None
        self._png = b""
        self._syncing = False
        self._build_widgets()
        self.set(index=index)

    # ---- state ---------------------------------------------------------------------------

    def set(self, model: str | None = None, index: int | None = None, gt: int | None = None,
            level: int | None = None) -> pd.DataFrame:
        """Show ``model``'s assignment of image ``index``, only ground truth ``gt`` and level
        ``level`` (:data:`ALL`: all); what is not given stays (a new image or model shows all
        its ground truths again). Returns :attr:`table`."""
        state = dict(self.state)
        if model is not None:
            if model not in self.models:
                raise KeyError(f"no model {model!r}: choose one of {sorted(self.models)}")
            state["model"] = model
        if index is not None:
            if not 0 <= int(index) < len(self.dataset):
                raise IndexError(f"image {index} is not in the dataset of "
                                 f"{len(self.dataset)} images")
            state["index"] = int(index)
        if (state["model"], state["index"]) != (self.state["model"], self.state["index"]) \
                or self.frame is None:
            state["gt"] = ALL
        if gt is not None:
            state["gt"] = int(gt)
        if level is not None:
            state["level"] = int(level)
        frame = self._frame(state["model"], state["index"])
        if state["level"] >= len(frame.attrs.get("strides", ())):
            state["level"] = ALL  # a model with fewer levels
        self.frame, self.state = frame, state
        self._refresh()
        return self.table

    def _batch(self, index: int) -> Any:
        """One image's batch, read once (a random pipeline step then stays as first drawn)."""
        if index not in self._batches:
            from detlab.data.loader import collate

            self._batches[index] = collate([self.dataset[index]])
        return self._batches[index]

    def _frame(self, model: str, index: int) -> pd.DataFrame:
        key = (model, index)
        if key not in self._frames:
            from detlab.viz.assigners import inspect_assignment

            self._frames[key] = inspect_assignment(self.models[model], self._batch(index))
        return self._frames[key]

    @property
    def table(self) -> pd.DataFrame:
        """The rows of :attr:`frame` of the selected ground truth and level."""
        frame = self.frame
        if self.state["gt"] != ALL:
            frame = frame[frame["gt"] == self.state["gt"]]
        if self.state["level"] != ALL:
            frame = frame[frame["level"] == self.state["level"]]
        frame = frame.reset_index(drop=True)
        frame.attrs = dict(self.frame.attrs)
        return frame

    def positives_per_gt(self) -> dict[int, int]:
        """Positive priors of each ground truth of the current image, at the selected level."""
        frame = self.frame
        if self.state["level"] != ALL:
            frame = frame[(frame["level"] == self.state["level"]) | (frame["prior"] < 0)]
        positives = frame[frame["prior"] >= 0].groupby("gt").size()
        return {int(g): int(positives.get(g, 0)) for g in sorted(self.frame["gt"].unique())}

    # ---- pictures ------------------------------------------------------------------------

    def figure(self) -> Any:
        """The image with the shown ground truths and their positive priors."""
        from detlab.viz.assigners import plot_assignment

        title = f"{self.state['model']}: {self.frame.attrs.get('assigner', '')}"
        return plot_assignment(self.table, self._batch(self.state["index"]).images[0],
                               title=title)

    def render_png(self) -> bytes:
        """The current picture as PNG."""
        return self._png or figure_png(self.figure())

    def summary(self) -> str:
        counts = ", ".join(f"gt {g}: {n}" for g, n in self.positives_per_gt().items())
        return (f"AssignerInspector: {self.state['model']} "
                f"({self.frame.attrs.get('assigner', '')}), image "
                f"{self.state['index'] + 1}/{len(self.dataset)}, positives {counts or 'none'}")

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        self._index = w.IntSlider(value=0, min=0, max=max(len(self.dataset) - 1, 0),
                                  description="image", continuous_update=False)
        self._model = w.Dropdown(options=list(self.models), description="assigner")
        self._gt = w.Dropdown(options=[("all ground truths", ALL)], value=ALL,
                              description="gt")
        self._level = w.Dropdown(options=[("all levels", ALL)], value=ALL,
                                 description="level")
        self._image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self._table_html, self._summary, self._status = w.HTML(), w.HTML(), w.HTML()
        for attribute, css in dict(_index="image", _model="model", _gt="gt", _level="level",
                                   _image="view", _table_html="table", _summary="summary",
                                   _status="status").items():
            getattr(self, attribute).add_class(f"detlab-assign-{css}")
        for control in (self._index, self._model, self._gt, self._level):
            control.observe(self._on_control, names="value")
        controls = [self._index, self._model, self._gt, self._level]
        self.widget = w.VBox([control_row(w, controls), self._status, self._summary,
                              self._image, self._table_html])
        self.widget.add_class("detlab-assigner-inspector")

    def _on_control(self, change: Mapping[str, Any]) -> None:
        if self._syncing:
            return
        owner = change["owner"]
        if owner is self._index:
            self._safely(self.set, index=self._index.value)
        elif owner is self._model:
            self._safely(self.set, model=self._model.value)
        elif owner is self._gt:
            self._safely(self.set, gt=self._gt.value)
        else:
            self._safely(self.set, level=self._level.value)

    def _refresh(self) -> None:
        self._png = figure_png(self.figure())
        self._sync_controls()
        self._image.value = self._png
        self._table_html.value = _table_html(self.table)
        self._summary.value = status_html(self.summary().removeprefix("AssignerInspector: "))
        self._status.value = ""

    def _sync_controls(self) -> None:
        frame, state = self.frame, self.state
        gts = frame.drop_duplicates("gt").sort_values("gt")
        gt_options = [("all ground truths", ALL)] + [
            (f"gt {int(r.gt)} (label {int(r.gt_label)})", int(r.gt)) for r in gts.itertuples()]
        strides = list(frame.attrs.get("strides", ()))
        level_options = [("all levels", ALL)] + [(f"level {i} (stride {s})", i)
                                                 for i, s in enumerate(strides)]
        with self._quiet():
            self._index.value = state["index"]
            self._model.value = state["model"]
            self._gt.options = gt_options
            self._gt.value = state["gt"] if state["gt"] in dict(gt_options).values() else ALL
            self._level.options = level_options
            self._level.value = state["level"]


def _dataset_of(dataset: Any) -> Any:
    """``dataset`` itself when built, else ``data.train`` of a config (object or path)."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") \
            and not isinstance(dataset, str | Mapping):
        return dataset
    import detlab

    cfg = detlab.Config.fromfile(str(dataset)) if not isinstance(dataset, Mapping) \
        else dataset
    return detlab.build_dataset(cfg["data"]["train"])


def _table_html(frame: pd.DataFrame) -> str:
    if not len(frame):
        return "<i>no positive prior and no unmatched ground truth here</i>"
    return frame[_TABLE_COLUMNS].to_html(index=False, float_format=lambda v: f"{v:.3g}",
                                         na_rep="", border=0, classes="detlab-assign-frame")


def assigner_inspector(models_or_configs: Mapping[str, Any] | None, dataset: Any,
                       **options: Any) -> AssignerInspector:
    """An :class:`AssignerInspector` (``options``: ``index``, ``shrink``, ``channels``);
    display it in a notebook, its ``widget`` is the ipywidgets box."""
    return AssignerInspector(models_or_configs, dataset, **options)


__all__ = ["AssignerInspector", "assigner_inspector", "build_inspected_model",
           "default_models", "DEFAULT_CONFIGS", "ALL"]

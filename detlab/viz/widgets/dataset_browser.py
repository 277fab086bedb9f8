"""DatasetBrowser: step through a detection dataset in a notebook.

One image at a time (slider, next / previous, jump to an image id or file name), only the
images holding a class if asked, with its boxes, captions and masks, after any step of the
pipeline (:func:`detlab.data.browse.pipeline_steps`): boxes a step cut are outlined in orange,
boxes it dropped are shown in red on the picture before the step and listed. A second tab
counts images and boxes per class and plots box sizes and aspect ratios.

Everything the controls do is a plain method (:meth:`DatasetBrowser.show`, ``next``, ``prev``,
``set_class``, ``set_step`` ...), so the browser also works, and is tested, without a frontend.
"""

from __future__ import annotations

import math
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
    make_button,
    status_html,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

ALL_CLASSES = "(all classes)"
_VIEW_SIDE = 320  # small images are enlarged (nearest) to about this size, so captions fit
_MAX_ZOOM = 8
_CLIPPED_COLOR = (255, 140, 0)
_DROPPED_COLOR = (230, 30, 30)
_MASK_ALPHA = 0.4


@dataclass
class BrowserSample:
    """What a :class:`DatasetBrowser` shows.

    Attributes:
        index: the dataset index of the image.
        image_id: the image's id in its annotation file (None when the format has none).
        file: the image's file name as the annotations give it.
        step: the name of the pipeline step shown (the transform's class).
        step_index: its position in the pipeline (0-based).
        boxes: ``(n, 4)`` float32 xyxy, in pixels of the image after that step.
        labels: ``(n,)`` int64 class indices.
        dropped: ids of the boxes this step removed.
        clipped: ids of the boxes this step cut at the image border.
    """

    index: int
    image_id: Any
    file: str | None
    step: str
    step_index: int
    boxes: np.ndarray
    labels: np.ndarray
    dropped: list[int] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# datasets: building one, reading its images' facts
# --------------------------------------------------------------------------------------------


def load_dataset(source: Any, split: str = "train",
                 cfg_options: Mapping[str, Any] | None = None) -> Any:
    """The dataset to browse: ``source`` itself when it is a built dataset; ``data.<split>`` of a
    config (a path, a :class:`~detlab.config.Config` or a config dict with ``data``); or a
    dataset config dict (``dict(type='CocoDataset', ...)``)."""
    from detlab.config import Config, load_config
    from detlab.data.builder import build_dataset

    is_config = isinstance(source, (str, os.PathLike, Config)) or (
        isinstance(source, Mapping) and "data" in source)
    if is_config:
        cfg = load_config(source, cfg_options)
        data = cfg.get("data") or {}
        if split not in data:
            splits = sorted(k for k, v in data.items() if isinstance(v, Mapping))
            raise KeyError(f"the config has no data.{split}; its data has {splits}")
        return build_dataset(data[split], _path=f"data.{split}")
    if cfg_options:
        raise ValueError("cfg_options change a config; pass the config, not a built dataset")
    if isinstance(source, Mapping):
        return build_dataset(source)
    return source


def _image_info(dataset: Any, index: int) -> Mapping[str, Any]:
    """The ``data_infos`` entry behind ``dataset[index]``, through picking and mixing wrappers."""
    from detlab.data.browse import _inner

    while True:
        infos = getattr(dataset, "data_infos", None)
        if infos is not None:
            return infos[index]
        inner = _inner(dataset, index)
        if inner is not None:
            dataset, index = inner
        elif getattr(dataset, "dataset", None) is not None:  # a mixing wrapper keeps the index
            dataset = dataset.dataset
        else:
            return {}


def _class_names(dataset: Any) -> tuple[str, ...]:
    while dataset is not None:
        names = getattr(dataset, "CLASSES", None)
        if names:
            return tuple(str(n) for n in names)
        inner = getattr(dataset, "datasets", None)
        dataset = inner[0] if inner else getattr(dataset, "dataset", None)
    return ()


def _empty_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------


def _zoom(shape: Sequence[int]) -> int:
    return int(min(_MAX_ZOOM, max(1, math.ceil(_VIEW_SIDE / max(1, max(shape[:2]))))))


def _enlarge(image: np.ndarray, zoom: int) -> np.ndarray:
    return image if zoom == 1 else image.repeat(zoom, axis=0).repeat(zoom, axis=1)


def _tint(image: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``image`` with each ``(H, W)`` bool mask blended in its class colour."""
    from detlab.viz.draw import palette_color

    tinted = image.astype(np.float32)
    for mask, label in zip(masks, labels, strict=True):
        color = np.asarray(palette_color(int(label)), np.float32)
        tinted[mask] = (1 - _MASK_ALPHA) * tinted[mask] + _MASK_ALPHA * color
    return tinted.round().astype(np.uint8)


def message_image(text: str, size: tuple[int, int] = (120, 480)) -> np.ndarray:
    """A grey ``H x W x 3`` picture that says ``text`` (shown where there is no image)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (size[1], size[0]), (235, 235, 235))
    ImageDraw.Draw(canvas).multiline_text((10, 10), text, fill=(60, 60, 60))
    return np.asarray(canvas).copy()


@dataclass
class DrawOptions:
    """What a picture of a sample shows: boxes, their captions (class names), masks."""

    boxes: bool = True
    labels: bool = True
    masks: bool = True


def draw_step(record: Mapping[str, Any], class_names: Sequence[str], options: DrawOptions,
              highlight: Sequence[int] = (), highlight_color: tuple[int, int, int] = _CLIPPED_COLOR,
              mark: str = "cut", zoom: int | None = None) -> np.ndarray:
    """The picture of one :func:`~detlab.data.browse.pipeline_steps` record: its image
    (enlarged ``zoom`` times, by default enough for small images to be legible), masks, boxes
    and captions; boxes whose id is in ``highlight`` in ``highlight_color``, their caption
    followed by ``(mark)``."""
    image = record.get("image")
    if image is None:
        return message_image(f"step {record['step']} ({record['name']}): no image yet")
    zoom = _zoom(image.shape) if zoom is None else zoom
    picture = _enlarge(image, zoom)
    boxes, labels = record.get("boxes"), record.get("labels")
    if boxes is None or labels is None:
        return picture
    ids = record.get("ids")
    ids = np.arange(len(boxes)) if ids is None else np.asarray(ids)
    masks = record.get("masks")
    if options.masks and masks is not None and len(masks) == len(boxes) \
            and masks.shape[1:] == image.shape[:2]:
        picture = _tint(picture, _enlarge_masks(masks, zoom), labels)
    if not options.boxes or not len(boxes):
        return picture
    marked = np.isin(ids, list(highlight))
    colors = [highlight_color if m else None for m in marked]
    texts = _captions(labels, class_names, marked, mark) if options.labels else None
    return _draw_colored(picture, boxes * zoom, labels, texts, colors)


def _enlarge_masks(masks: np.ndarray, zoom: int) -> np.ndarray:
    return masks if zoom == 1 else masks.repeat(zoom, axis=1).repeat(zoom, axis=2)


def _captions(labels: np.ndarray, class_names: Sequence[str], marked: np.ndarray,
              mark: str) -> list[str]:
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels.tolist()]
    return [f"{name} ({mark})" if m else name for name, m in zip(names, marked, strict=True)]


def _draw_colored(picture: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                  texts: list[str] | None, colors: list[Any]) -> np.ndarray:
    """Boxes (``(n, 4)`` xyxy) in their class colour, except those given a colour of their
    own."""
    from detlab.viz.draw import draw_boxes, palette_color

    palette = [c if c is not None else palette_color(int(label))
               for c, label in zip(colors, labels.tolist(), strict=True)]
    # one colour per box: index the colour list by box position through fake labels
    return draw_boxes(picture, boxes, np.arange(len(boxes)), texts=texts, colors=palette,
                      thickness=2)


def _box_rows(record: Mapping[str, Any], ids: Sequence[int], class_names: Sequence[str],
              what: str) -> list[str]:
    """HTML list items describing the boxes ``ids`` of ``record``."""
    import html

    boxes, labels, all_ids = record.get("boxes"), record.get("labels"), record.get("ids")
    if boxes is None or all_ids is None:
        return []
    rows = []
    for box, label, box_id in zip(boxes, labels, all_ids, strict=True):
        if int(box_id) in ids:
            name = class_names[label] if 0 <= label < len(class_names) else str(label)
            coords = ", ".join(f"{v:.1f}" for v in box.tolist())
            rows.append(f"<li>{what}: box #{int(box_id)} {html.escape(name)} [{coords}]</li>")
    return rows


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def box_table(annotations: Sequence[Mapping[str, Any]],
              class_names: Sequence[str]) -> pd.DataFrame:
    """One row per box of ``annotations`` (``get_ann_info`` dicts, in dataset order): ``index``,
    ``label``, ``class``, ``width``, ``height``, ``size`` (square root of the area, pixels),
    ``aspect`` (width / height)."""
    import pandas as pd

    boxes = [np.asarray(a.get("bboxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
             for a in annotations]
    labels = [np.asarray(a.get("labels", np.zeros(0)), np.int64).reshape(-1)
              for a in annotations]
    xyxy = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    table = pd.DataFrame(dict(
        index=np.repeat(np.arange(len(boxes)), [len(b) for b in boxes]),
        label=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        width=xyxy[:, 2] - xyxy[:, 0], height=xyxy[:, 3] - xyxy[:, 1]))
    names = list(class_names)
    table.insert(2, "class", [names[i] if 0 <= i < len(names) else str(i)
                              for i in table["label"].tolist()])
    table["size"] = np.sqrt(table["width"].clip(lower=0) * table["height"].clip(lower=0))
    table["aspect"] = table["width"] / table["height"].where(table["height"] > 0)
    return table


def class_stats(boxes: pd.DataFrame, class_names: Sequence[str]) -> pd.DataFrame:
    """Per class (rows, in class order): ``images`` holding it, ``boxes``, the median box
    ``size`` (pixels) and ``aspect`` (width / height), from a :func:`box_table`."""
    import pandas as pd

    grouped = boxes.groupby("class")
    table = pd.DataFrame(dict(images=grouped["index"].nunique(), boxes=grouped.size(),
                              median_size=grouped["size"].median(),
                              median_aspect=grouped["aspect"].median()))
    order = list(class_names) + sorted(set(table.index) - set(class_names))
    table = table.reindex(order)
    table[["images", "boxes"]] = table[["images", "boxes"]].fillna(0).astype(int)
    table.index.name = "class"
    return table


def stats_figure(boxes: pd.DataFrame, table: pd.DataFrame) -> Figure:
    """Three panels: images and boxes per class, box sizes, aspect ratios (matplotlib)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.3))
    counts, sizes, aspects = fig.subplots(1, 3)
    x = np.arange(len(table))
    counts.bar(x - 0.2, table["images"], 0.4, label="images")
    counts.bar(x + 0.2, table["boxes"], 0.4, label="boxes")
    counts.set_xticks(x, [str(n) for n in table.index], rotation=45 if len(x) > 6 else 0,
                      ha="right" if len(x) > 6 else "center")
    counts.set_title("per class")
    counts.legend(fontsize=8)
    sizes.hist(boxes["size"].dropna(), bins=20, color="tab:green")
    sizes.set_title("box size")
    sizes.set_xlabel("sqrt(area), pixels")
    ratios = np.log2(boxes["aspect"].dropna().clip(lower=1e-3))
    aspects.hist(ratios, bins=20, color="tab:purple")
    aspects.set_title("aspect ratio")
    aspects.set_xlabel("log2(width / height)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# the browser
# --------------------------------------------------------------------------------------------


class DatasetBrowser(ControlsMixin, WidgetView):
    """Browse a detection dataset image by image, after any step of its pipeline.

    Args:
        dataset_or_config: a built dataset, a dataset config dict, or a config (path,
            :class:`~detlab.config.Config` or dict) whose ``data.<split>`` is built.
        split: the key of ``data`` to build from a config.
        cfg_options: dotted overrides applied to the config first.
        seed: random transforms draw from NumPy's generator seeded with ``seed + index`` (the
            global generator is left as it was), so an image looks the same each time it is
            shown; :meth:`resample` draws again.

    The controls carry CSS classes for browser tests: ``detlab-prev``, ``detlab-next``,
    ``detlab-index`` (slider), ``detlab-jump`` (+ ``detlab-jump-button``),
    ``detlab-class-filter``, ``detlab-step``, ``detlab-resample``, ``detlab-show-boxes``,
    ``detlab-show-labels``, ``detlab-show-masks``, ``detlab-tabs``, ``detlab-view`` (the
    picture), ``detlab-info``, ``detlab-step-changes``, ``detlab-stats-view``,
    ``detlab-stats-table``, ``detlab-status``.
    """

    def __init__(self, dataset_or_config: Any, split: str = "train",
                 cfg_options: Mapping[str, Any] | None = None, seed: int = 0) -> None:
        self.dataset = load_dataset(dataset_or_config, split, cfg_options)
        if len(self.dataset) == 0:
            raise ValueError("the dataset is empty: there is nothing to browse")
        self.class_names = _class_names(self.dataset)
        self.seed = int(seed)
        self.options = DrawOptions()
        self._draws = 0  # how many times resample() was asked for, part of the seed
        self._class: str | None = None
        self._positions = list(range(len(self.dataset)))
        self._annotations: list[Mapping[str, Any]] | None = None
        self._stats: tuple[pd.DataFrame, pd.DataFrame] | None = None
        self._index = 0
        self._step: int | None = None  # None: the last step
        self._steps: list[dict[str, Any]] = []
        self._syncing = False
        self._png = b""
        self._build_widgets()
        self.show(0)

    # ---- state ---------------------------------------------------------------------------

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The :func:`~detlab.data.browse.pipeline_steps` records of the current image."""
        return self._steps

    @property
    def step_names(self) -> list[str]:
        """The names of the pipeline steps of the current image."""
        return [record["name"] for record in self._steps]

    @property
    def positions(self) -> list[int]:
        """The dataset indices the slider runs over (those holding the chosen class)."""
        return list(self._positions)

    @property
    def step_index(self) -> int:
        """The position in the pipeline of the step shown."""
        last = len(self._steps) - 1
        return last if self._step is None else min(self._step, last)

    @property
    def current(self) -> BrowserSample:
        """The image and step shown, with their boxes."""
        record = self._steps[self.step_index]
        info = _image_info(self.dataset, self._index)
        boxes, labels = _empty_boxes()
        if record.get("boxes") is not None:
            boxes, labels = record["boxes"].reshape(-1, 4), record["labels"].reshape(-1)
        return BrowserSample(index=self._index, image_id=info.get("id"),
                             file=info.get("filename", info.get("file_name")),
                             step=record["name"], step_index=record["step"], boxes=boxes,
                             labels=labels, dropped=list(record.get("dropped", [])),
                             clipped=list(record.get("clipped", [])))

    # ---- navigation ----------------------------------------------------------------------

    def show(self, index: int) -> BrowserSample:
        """Show dataset image ``index`` (negative counts from the end). An image without the
        chosen class clears the class filter."""
        count = len(self.dataset)
        if not -count <= index < count:
            raise IndexError(f"index {index} is out of range for a dataset of {count} images")
        index %= count
        steps = self._run_pipeline(index)  # first: a failing step leaves the view as it was
        if index not in self._positions:
            self._filter(None)
        self._index, self._steps = index, steps
        self._refresh()
        return self.current

    def next(self) -> BrowserSample:
        """The next image (of the chosen class), wrapping around at the end."""
        position = self._positions.index(self._index)
        return self.show(self._positions[(position + 1) % len(self._positions)])

    def prev(self) -> BrowserSample:
        """The previous image (of the chosen class), wrapping around at the start."""
        position = self._positions.index(self._index)
        return self.show(self._positions[(position - 1) % len(self._positions)])

    def find(self, key: int | str) -> int:
        """The dataset index of the image whose id (an int, or digits) or file name (the whole
        name as in the annotations, or its base name) is ``key``."""
        from detlab.config import did_you_mean

        text = str(key).strip()
        files = []
        for index in range(len(self.dataset)):
            info = _image_info(self.dataset, index)
            name = str(info.get("filename", info.get("file_name", "")))
            if str(info.get("id")) == text or name == text or os.path.basename(name) == text:
                return index
            files.append(os.path.basename(name))
        raise KeyError(f"no image has the id or file name {text!r}.{did_you_mean(text, files)}")

    def jump(self, key: int | str) -> BrowserSample:
        """Show the image whose id or file name is ``key`` (see :meth:`find`)."""
        return self.show(self.find(key))

    def set_class(self, name: str | None) -> BrowserSample:
        """Browse only the images holding class ``name`` (None: all images)."""
        self._filter(name)
        if self._index not in self._positions:
            return self.show(self._positions[0])
        self._refresh()
        return self.current

    def set_step(self, step: int | str) -> BrowserSample:
        """Show the image after pipeline step ``step``: its position (negative from the end) or
        the name of its transform (the first such step)."""
        names = self.step_names
        if isinstance(step, str):
            if step not in names:
                from detlab.config import did_you_mean

                raise KeyError(f"no pipeline step is named {step!r}.{did_you_mean(step, names)}"
                               f" The steps are: {', '.join(names)}")
            step = names.index(step)
        if not -len(names) <= step < len(names):
            raise IndexError(f"step {step} is out of range: the pipeline ran {len(names)} steps")
        step %= len(names)
        self._step = None if step == len(names) - 1 else step
        self._refresh()
        return self.current

    def resample(self) -> BrowserSample:
        """Run the pipeline of the current image again with other random draws."""
        self._draws += 1
        return self.show(self._index)

    def set_display(self, boxes: bool | None = None, labels: bool | None = None,
                    masks: bool | None = None) -> None:
        """Switch drawing boxes, their captions and masks on or off (None: leave as is)."""
        for name, value in (("boxes", boxes), ("labels", labels), ("masks", masks)):
            if value is not None:
                setattr(self.options, name, bool(value))
        self._refresh()

    def _filter(self, name: str | None) -> None:
        if name is None or name == ALL_CLASSES:
            self._class, self._positions = None, list(range(len(self.dataset)))
            return
        if name not in self.class_names:
            from detlab.config import did_you_mean

            raise KeyError(f"{name!r} is not a class of the dataset."
                           f"{did_you_mean(name, self.class_names)} Classes: "
                           f"{', '.join(self.class_names)}")
        label = self.class_names.index(name)
        positions = [i for i, ann in enumerate(self.annotations())
                     if label in np.asarray(ann.get("labels", [])).tolist()]
        if not positions:
            raise ValueError(f"no image of the dataset holds a {name!r} box")
        self._class, self._positions = name, positions

    def _run_pipeline(self, index: int) -> list[dict[str, Any]]:
        from detlab.data.browse import pipeline_steps

        state = np.random.get_state()
        np.random.seed((self.seed + index + 7919 * self._draws) % 2**32)
        try:
            steps = pipeline_steps(self.dataset, index)
        finally:
            np.random.set_state(state)  # the caller's random stream goes on undisturbed
        if not steps:
            raise ValueError("the dataset's pipeline has no steps, so no image is ever loaded; "
                             "give it at least dict(type='LoadImageFromFile')")
        return steps

    # ---- statistics ----------------------------------------------------------------------

    def annotations(self) -> list[Mapping[str, Any]]:
        """``get_ann_info`` of every image (read once)."""
        if self._annotations is None:
            self._annotations = [self.dataset.get_ann_info(i) for i in range(len(self.dataset))]
        return self._annotations

    def box_table(self) -> pd.DataFrame:
        """One row per annotated box: see :func:`box_table`."""
        return self._statistics()[0]

    def stats(self) -> pd.DataFrame:
        """Images and boxes per class with median box size and aspect ratio (a DataFrame
        indexed by class name), from the annotations (before any pipeline step)."""
        return self._statistics()[1]

    def _statistics(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        if self._stats is None:
            boxes = box_table(self.annotations(), self.class_names)
            self._stats = boxes, class_stats(boxes, self.class_names)
        return self._stats

    def stats_png(self) -> bytes:
        """The statistics figure as PNG bytes."""
        boxes, table = self._statistics()
        return figure_png(stats_figure(boxes, table))

    # ---- pictures ------------------------------------------------------------------------

    def view_image(self) -> np.ndarray:
        """The current view as ``H x W x 3`` uint8 RGB: the image after the chosen step; when
        the step dropped boxes, the image before it (dropped boxes in red) on its left."""
        record = self._steps[self.step_index]
        if record.get("dropped_sample"):
            return message_image(f"step {record['step']} ({record['name']}) dropped the sample:"
                                 f"\nthe data loader would pick another image")
        dropped = record.get("dropped", [])
        previous = self._steps[record["step"] - 1] if record["step"] else {}
        if not dropped or previous.get("image") is None or record.get("image") is None:
            return draw_step(record, self.class_names, self.options, record.get("clipped", []))
        from detlab.viz.draw import image_grid

        # one zoom for both pictures, so that sizes compare
        zoom = _zoom(np.maximum(previous["image"].shape, record["image"].shape))
        before = draw_step(previous, self.class_names, self.options, dropped, _DROPPED_COLOR,
                           "dropped", zoom)
        after = draw_step(record, self.class_names, self.options, record.get("clipped", []),
                          zoom=zoom)
        return image_grid([before, after], titles=[
            f"before ({previous['name']}): {len(dropped)} dropped in red",
            f"after {record['name']}"])

    def render_png(self) -> bytes:
        """The selected tab as PNG: the image view, or the statistics figure."""
        if getattr(self, "_tabs", None) is not None and self._tabs.selected_index == 1:
            return self.stats_png()
        return self._png or array_png(self.view_image())

    def summary(self) -> str:
        sample = self.current
        where = f"image {self._positions.index(self._index) + 1}/{len(self._positions)}"
        chosen = f" of class {self._class}" if self._class else ""
        return (f"DatasetBrowser: {where}{chosen} (index {sample.index}, id {sample.image_id}, "
                f"{sample.file}), step {sample.step_index} {sample.step}, "
                f"{len(sample.boxes)} boxes")

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        self._prev = make_button(w, "prev", "detlab-prev", "arrow-left")
        self._next = make_button(w, "next", "detlab-next", "arrow-right")
        self._slider = w.IntSlider(value=1, min=1, max=max(1, len(self._positions)),
                                   description="image", continuous_update=False)
        self._jump = w.Text(placeholder="image id or file name", description="jump to",
                            continuous_update=False)
        self._go = make_button(w, "go", "detlab-jump-button")
        self._classes = w.Dropdown(options=[ALL_CLASSES, *self.class_names], value=ALL_CLASSES,
                                   description="class")
        self._step_menu = w.Dropdown(options=[("-", 0)], description="step")
        self._resample = make_button(w, "resample", "detlab-resample", "refresh")
        self._toggles = {name: w.Checkbox(value=True, description=name, indent=False,
                                          layout=w.Layout(width="auto"))
                         for name in ("boxes", "labels", "masks")}
        self._image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self._info, self._changes, self._status = w.HTML(), w.HTML(), w.HTML()
        self._stats_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self._stats_table = w.HTML()
        self._tabs = w.Tab(children=[w.VBox([self._image, self._info, self._changes]),
                                     w.VBox([self._stats_image, self._stats_table])])
        self._tabs.titles = ("image", "statistics")
        self._style_widgets()
        self._connect()
        self.widget = w.VBox([
            control_row(w, [self._prev, self._slider, self._next, self._jump, self._go]),
            control_row(w, [self._classes, self._step_menu, self._resample,
                            *self._toggles.values()]),
            self._status, self._tabs])
        self.widget.add_class("detlab-dataset-browser")

    def _style_widgets(self) -> None:
        classes = dict(_slider="detlab-index", _jump="detlab-jump",
                       _classes="detlab-class-filter", _step_menu="detlab-step",
                       _image="detlab-view", _info="detlab-info", _changes="detlab-step-changes",
                       _status="detlab-status", _stats_image="detlab-stats-view",
                       _stats_table="detlab-stats-table", _tabs="detlab-tabs")
        for attribute, css in classes.items():
            getattr(self, attribute).add_class(css)
        for name, toggle in self._toggles.items():
            toggle.add_class(f"detlab-show-{name}")

    def _connect(self) -> None:
        self._prev.on_click(lambda _: self._safely(self.prev))
        self._next.on_click(lambda _: self._safely(self.next))
        self._resample.on_click(lambda _: self._safely(self.resample))
        self._go.on_click(lambda _: self._safely(self.jump, self._jump.value))
        self._slider.observe(self._on_slider, names="value")
        self._jump.observe(self._on_jump, names="value")
        self._classes.observe(self._on_class, names="value")
        self._step_menu.observe(self._on_step, names="value")
        self._tabs.observe(self._on_tab, names="selected_index")
        for name, toggle in self._toggles.items():
            toggle.observe(lambda change, name=name: self._safely(
                self.set_display, **{name: change["new"]}), names="value")

    def _on_slider(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            self._safely(self.show, self._positions[int(change["new"]) - 1])

    def _on_jump(self, change: Mapping[str, Any]) -> None:
        if not self._syncing and str(change["new"]).strip():
            self._safely(self.jump, change["new"])

    def _on_class(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            chosen = None if change["new"] == ALL_CLASSES else change["new"]
            self._safely(self.set_class, chosen)

    def _on_step(self, change: Mapping[str, Any]) -> None:
        if not self._syncing and change["new"] is not None:
            self._safely(self.set_step, int(change["new"]))

    def _on_tab(self, change: Mapping[str, Any]) -> None:
        if change["new"] == 1 and not self._stats_image.value:
            self._safely(self._show_stats)

    def _show_stats(self) -> None:
        self._stats_image.value = self.stats_png()
        self._stats_table.value = self.stats().to_html(float_format=lambda v: f"{v:.2f}")



    def _refresh(self) -> None:
        """Bring the controls and the picture in line with the state."""
        self._png = array_png(self.view_image())
        self._sync_controls()
        self._image.value = self._png
        self._info.value = status_html(self.summary().removeprefix("DatasetBrowser: "))
        self._changes.value = self._changes_html(self._steps[self.step_index])
        self._status.value = ""

    def _sync_controls(self) -> None:
        with self._quiet():
            self._slider.max = max(1, len(self._positions))  # 1-based, as "image 4/600" reads
            self._slider.value = self._positions.index(self._index) + 1
            self._classes.value = self._class or ALL_CLASSES
            self._step_menu.options = [(_step_label(r), r["step"]) for r in self._steps]
            self._step_menu.value = self._steps[self.step_index]["step"]
            for name, toggle in self._toggles.items():
                toggle.value = getattr(self.options, name)

    def _changes_html(self, record: Mapping[str, Any]) -> str:
        if record["step"] == 0 or record.get("dropped_sample"):
            return ""
        previous = self._steps[record["step"] - 1]
        rows = _box_rows(previous, record.get("dropped", []), self.class_names, "dropped")
        rows += _box_rows(record, record.get("clipped", []), self.class_names, "cut")
        if not record.get("tracked", True):
            rows.append("<li>this step changed the boxes without keeping their ids</li>")
        return f"<ul style='margin:0'>{''.join(rows)}</ul>" if rows else ""



def _step_label(record: Mapping[str, Any]) -> str:
    notes = []
    if record.get("dropped_sample"):
        notes.append("drops the sample")
    for key in ("dropped", "clipped"):
        if record.get(key):
            notes.append(f"{len(record[key])} {'cut' if key == 'clipped' else key}")
    return f"{record['step']}: {record['name']}" + (f" ({', '.join(notes)})" if notes else "")




__all__ = ["DatasetBrowser", "BrowserSample", "DrawOptions", "load_dataset", "box_table",
           "class_stats", "stats_figure", "draw_step", "message_image"]

"""ErrorBrowser: the detections of a match table, image by image, coloured by what they are.

The table is :func:`detlab.evaluation.matching.match_detections`'s: one row per evaluated
detection and per missed ground truth. The browser filters its rows by error type -- COCO's
``TP`` / ``FP`` / ``FN`` at one of the table's IoU thresholds, or a TIDE type (``Cls``, ``Loc``,
``Both``, ``Dupe``, ``Bkg``, ``Miss``) --, by class, by score range and by IoU range, and steps
through the images holding such rows, the worst first (:func:`~detlab.evaluation.curves.
image_ranking`) or by image id. Each image shows its filtered rows: true positives in green,
false positives in red, missed ground truths in orange, ignored detections in grey, and the
ground truth each detection is about in blue.

Everything the controls do is a plain method (:meth:`ErrorBrowser.filter`, ``show``, ``next``,
``prev``, ``sort_images``), so the browser also works, and is tested, without a frontend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from detlab.evaluation.matching import ERROR_TYPES, find_tp_column, table_thresholds
from detlab.viz.widgets.base import (
    ControlsMixin,
    WidgetView,
    array_png,
    control_row,
    make_button,
    status_html,
)

if TYPE_CHECKING:
    import pandas as pd

COCO_KINDS = ("TP", "FP", "FN")
ALL = "all"
SORT_ORDERS = ("worst", "image id")
STATUS_COLORS = {"TP": (0, 190, 0), "FP": (230, 30, 30), "FN": (255, 150, 0),
                 "ignored": (150, 150, 150), "gt": (40, 120, 255)}
_VIEW_SIDE = 360  # small images are enlarged (nearest) to about this size, so captions fit
_MAX_ZOOM = 8


# --------------------------------------------------------------------------------------------
# the table: the status of each row at an IoU threshold, and the filter
# --------------------------------------------------------------------------------------------


def _threshold_columns(table: pd.DataFrame, iou_thr: float) -> tuple[str, str]:
    """The ``tp@`` and ``ignored@`` columns of the table's threshold ``iou_thr``."""
    tp_col = find_tp_column(table, iou_thr)
    return tp_col, "ignored@" + tp_col.split("@", 1)[1]


def row_status(table: pd.DataFrame, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's verdict on each row at ``iou_thr`` (one of the table's thresholds): ``'TP'``,
    ``'FP'``, ``'ignored'`` for detections, ``'FN'`` for missed ground truths; and whether a
    detection lost, at ``iou_thr``, the ground truth it matched at the table's first threshold
    (that ground truth then counts as missed at ``iou_thr``)."""
    tp_col, ignored_col = _threshold_columns(table, iou_thr)
    first_col, _ = _threshold_columns(table, min(table_thresholds(table)))
    det = (table["kind"] == "det").to_numpy()
    tp = table[tp_col].to_numpy(bool)
    ignored = table[ignored_col].to_numpy(bool)
    status = np.where(~det, "FN", np.where(tp, "TP", np.where(ignored, "ignored", "FP")))
    lost = det & table[first_col].to_numpy(bool) & ~tp & ~ignored
    return status.astype(object), lost


def _error_mask(table: pd.DataFrame, error: str | None, status: np.ndarray,
                lost: np.ndarray) -> np.ndarray:
    if error in (None, ALL):
        return np.ones(len(table), bool)
    if error == "FN":  # the missed gts, and the detections whose gt is missed at this IoU
        return (status == "FN") | lost
    if error in COCO_KINDS:
        return status == error
    if error in ERROR_TYPES:
        return (table["error"] == error).to_numpy(bool)
    raise ValueError(f"error must be one of {[ALL, *COCO_KINDS, *ERROR_TYPES]} or None, got "
                     f"{error!r}")


def _class_mask(table: pd.DataFrame, cls: str | int | None) -> np.ndarray:
    if cls in (None, ALL):
        return np.ones(len(table), bool)
    if isinstance(cls, (int, np.integer)):
        return (table["category_id"] == int(cls)).to_numpy(bool)
    names = list(dict.fromkeys(table.attrs.get("class_names", ())) or table["class"].unique())
    if cls not in names:
        raise ValueError(f"no class {cls!r} in the table; its classes are {names}")
    return (table["class"] == cls).to_numpy(bool)


def _range_mask(values: np.ndarray, bounds: tuple[float, float] | None,
                keep_nan: bool) -> np.ndarray:
    if bounds is None:
        return np.ones(len(values), bool)
    low, high = (float(b) for b in bounds)
    if low > high:
        raise ValueError(f"a range is (low, high) with low <= high, got {bounds!r}")
    inside = (values >= low) & (values <= high)
    return inside | np.isnan(values) if keep_nan else inside


def filter_rows(table: pd.DataFrame, iou_thr: float, error: str | None = None,
                cls: str | int | None = None, score: tuple[float, float] | None = None,
                iou: tuple[float, float] | None = None) -> pd.DataFrame:
    """The rows of a match table that pass a filter, with two more columns: ``status``
    (``TP`` / ``FP`` / ``FN`` / ``ignored`` at ``iou_thr``) and ``lost_gt`` (see
    :func:`row_status`).

    Args:
        table: a match table (:func:`~detlab.evaluation.matching.match_detections`).
        iou_thr: the IoU threshold of ``TP`` / ``FP`` / ``FN``, one of the table's.
        error: ``None`` / ``'all'``, ``'TP'``, ``'FP'``, ``'FN'`` (missed at ``iou_thr``: the
            missed ground truths, and above the first threshold also the detections whose
            ground truth is missed there) or a TIDE type (``error`` column, typed at the
            table's first threshold).
        cls: a class name or a category id (``None`` / ``'all'``: every class).
        score: ``(low, high)`` inclusive; applies to detections (misses have no score).
        iou: ``(low, high)`` inclusive, on the ``iou`` column.
    """
    status, lost = row_status(table, iou_thr)
    keep = (_error_mask(table, error, status, lost) & _class_mask(table, cls)
            & _range_mask(table["score"].to_numpy(np.float64), score, keep_nan=True)
            & _range_mask(table["iou"].to_numpy(np.float64), iou, keep_nan=False))
    rows = table[keep].copy()
    rows["status"] = status[keep]
    rows["lost_gt"] = lost[keep]
    return rows


def order_images(rows: pd.DataFrame, ranking: pd.DataFrame | None) -> list[int]:
    """The image ids of ``rows``, in the order of ``ranking`` (an
    :func:`~detlab.evaluation.curves.image_ranking` table), else by id."""
    ids = np.unique(rows["image_id"].to_numpy(np.int64))
    if ranking is None:
        return [int(i) for i in ids]
    ranked = ranking["image_id"].to_numpy(np.int64)
    present = ranked[np.isin(ranked, ids)]
    rest = ids[~np.isin(ids, present)]  # images the ranking does not know stay last
    return [int(i) for i in np.r_[present, rest]]


# --------------------------------------------------------------------------------------------
# images and ground truth of the dataset
# --------------------------------------------------------------------------------------------


class ImageSource:
    """The pictures and ground-truth boxes of a dataset, by image id.

    ``dataset`` is a built dataset with ``data_infos`` (each with its file's ``id`` and
    ``filename``) and ``img_prefix``; its ``coco`` (a pycocotools ``COCO``) gives the ground
    truth by annotation id. ``None`` (or an image it lacks) draws on a blank canvas."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        infos = getattr(dataset, "data_infos", None) or []
        self.infos = {int(info["id"]): info for info in infos if "id" in info}
        coco = getattr(dataset, "coco", None)
        anns = getattr(coco, "anns", None) or {}
        self.gt = {int(i): ann for i, ann in anns.items()}

    def image(self, image_id: int, boxes: np.ndarray) -> np.ndarray:
        """``H x W x 3`` uint8 RGB of ``image_id``: its file, else a white canvas of its size
        (or large enough for ``boxes``, ``(n, 4)`` xyxy)."""
        from detlab.viz.draw import read_rgb

        info = self.infos.get(int(image_id), {})
        prefix = getattr(self.dataset, "img_prefix", None) or ""
        if info.get("filename"):
            path = os.path.join(prefix, info["filename"])
            if os.path.exists(path):
                return read_rgb(path)
        extent = boxes.max(axis=0) if len(boxes) else np.array([0, 0, 63, 63])
        height = int(info.get("height") or math.ceil(extent[3]) + 1)
        width = int(info.get("width") or math.ceil(extent[2]) + 1)
        return np.full((height, width, 3), 255, np.uint8)

    def gt_box(self, ann_id: int) -> np.ndarray | None:
        """``(4,)`` xyxy box of annotation ``ann_id`` (None when unknown)."""
        ann = self.gt.get(int(ann_id))
        if ann is None:
            return None
        x, y, w, h = (float(v) for v in ann["bbox"])
        return np.array([x, y, x + w, y + h])

    def gt_mask(self, ann_id: int, shape: Sequence[int]) -> np.ndarray | None:
        """``(H, W)`` bool mask of annotation ``ann_id``'s ``segmentation`` (polygons or RLE)
        on an image of ``shape``; None when it has none (or an RLE of another size)."""
        ann = self.gt.get(int(ann_id))
        if not ann or not ann.get("segmentation"):
            return None
        from detlab.data.masks import decode_rles, segmentation_to_rle

        try:
            rle = segmentation_to_rle(ann["segmentation"], int(shape[0]), int(shape[1]))
        except ValueError:  # drawn on a canvas that is not the image: no mask to show
            return None
        return decode_rles([rle])[0].astype(bool)


# --------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------


def _zoom(shape: Sequence[int]) -> int:
    return int(min(_MAX_ZOOM, max(1, math.ceil(_VIEW_SIDE / max(1, max(shape[:2]))))))


def _row_caption(row: Mapping[str, Any]) -> str:
    status = row["status"]
    kind = f"{status}:{row['error']}" if isinstance(row["error"], str) else status
    if row["kind"] == "miss":
        return f"{kind} {row['class']}"
    return f"{kind} {row['class']} {row['score']:.2f}"


def _referenced_gt(row: Mapping[str, Any]) -> tuple[int, str]:
    """The annotation id a row is about and how to draw it: a true positive's match and an
    error's gt as ``'gt'``, the gt a detection lost at this IoU as ``'FN'``; ``(0, '')`` for
    none (misses are drawn as themselves)."""
    if row["kind"] == "miss":
        return 0, ""
    if row["lost_gt"]:
        return int(row["gt_id"]), "FN"
    if row["status"] == "TP":
        return int(row["gt_id"]), "gt"
    return (int(row["error_gt_id"]), "gt") if row["error_gt_id"] else (0, "")


def _tint_gt_masks(image: np.ndarray, referenced: Sequence[tuple[int, str]],
                   source: ImageSource) -> np.ndarray:
    """``image`` with the masks of the ``(annotation id, role)`` ground truths that have a
    segmentation tinted in their role's colour."""
    from detlab.viz.draw import _blend_masks

    masks, colors = [], []
    for ann_id, role in referenced:
        mask = source.gt_mask(ann_id, image.shape) if ann_id else None
        if mask is not None:
            masks.append(mask)
            colors.append(STATUS_COLORS[role])
    return _blend_masks(image, np.stack(masks), colors) if masks else image


def draw_rows(image: np.ndarray, rows: pd.DataFrame, source: ImageSource) -> np.ndarray:
    """``image`` (enlarged when small) with ``rows`` of one image drawn: the ground truth they
    are about in blue (orange: missed at this IoU), its mask tinted when it has one, then each
    row in the colour of its ``status``, captioned."""
    from detlab.viz.draw import draw_boxes

    referenced = list(dict.fromkeys(_referenced_gt(r) for r in rows.to_dict("records")))
    image = _tint_gt_masks(image, referenced, source)
    zoom = _zoom(image.shape)
    picture = image.repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else image
    boxes, colors, texts = [], [], []
    for ann_id, role in referenced:
        box = source.gt_box(ann_id) if ann_id else None
        if box is not None:
            boxes.append(box)
            colors.append(STATUS_COLORS[role])
            texts.append("FN" if role == "FN" else "")
    for row in rows.to_dict("records"):
        boxes.append([row["x1"], row["y1"], row["x2"], row["y2"]])
        colors.append(STATUS_COLORS[row["status"]])
        texts.append(_row_caption(row))
    if not boxes:
        return picture
    scaled = np.asarray(boxes, np.float64) * zoom
    return draw_boxes(picture, scaled, labels=np.arange(len(boxes)), texts=texts,
                      colors=colors)


def message_picture(text: str, size: tuple[int, int] = (120, 480)) -> np.ndarray:
    """A grey ``H x W x 3`` picture that says ``text``."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (size[1], size[0]), (235, 235, 235))
    ImageDraw.Draw(canvas).multiline_text((10, 10), text, fill=(60, 60, 60))
    return np.asarray(canvas).copy()


# --------------------------------------------------------------------------------------------
# the widget
# --------------------------------------------------------------------------------------------


class ErrorBrowser(ControlsMixin, WidgetView):
    """Step through the images of a match table, showing the detections and missed ground
    truths that pass a filter.

    Args:
        match_table: :func:`~detlab.evaluation.matching.match_detections`'s table (its
            ``attrs`` give the class names and the evaluated images).
        dataset: the evaluated dataset (a built ``CocoDataset``: its images are drawn and its
            ``coco`` gives the ground-truth boxes); ``None`` draws on blank canvases.
        iou_thr: the IoU of ``TP`` / ``FP`` / ``FN`` (default the table's first threshold).

    Attributes:
        rows: the filtered rows (with ``status`` and ``lost_gt``, see :func:`filter_rows`).
        images: the image ids holding filtered rows, in the chosen order.

    The controls carry CSS classes: ``detlab-errors-error``, ``detlab-errors-class``,
    ``detlab-errors-iou-thr``, ``detlab-errors-sort``, ``detlab-errors-score``,
    ``detlab-errors-iou``, ``detlab-errors-prev``, ``detlab-errors-next``,
    ``detlab-errors-index``, ``detlab-errors-view``, ``detlab-errors-info``,
    ``detlab-errors-rows``, ``detlab-errors-status``.
    """

    def __init__(self, match_table: pd.DataFrame, dataset: Any = None,
                 iou_thr: float | None = None) -> None:
        thresholds = table_thresholds(match_table)
        if not thresholds:
            raise ValueError("match_table has no tp@ columns: pass the table of "
                             "detlab.evaluation.match_detections")
        self.table = match_table
        self.source = ImageSource(dataset)
        self.thresholds = thresholds
        self.class_names = list(match_table.attrs.get("class_names", ())) or list(
            dict.fromkeys(match_table["class"]))
        self.sort = "worst"
        self.settings: dict[str, Any] = {}
        self.rows: pd.DataFrame = match_table.iloc[:0]
        self.images: list[int] = []
        self.current: int | None = None
        self._rankings: dict[tuple[float, float], pd.DataFrame] = {}
        self._syncing = False
        self._png = b""
        if iou_thr is not None:
            find_tp_column(match_table, iou_thr)  # an unknown threshold: say which there are
        self.iou_thr = thresholds[0] if iou_thr is None else min(
            thresholds, key=lambda t: abs(t - float(iou_thr)))
        self._build_widgets()
        self.filter()

    # ---- state ---------------------------------------------------------------------------

    def filter(self, error: str | None = None, cls: str | int | None = None,
               score: tuple[float, float] | None = None, iou: tuple[float, float] | None = None,
               iou_thr: float | None = None) -> pd.DataFrame:
        """Keep the rows passing the filter (see :func:`filter_rows`; each call sets the
        whole filter) and return them. ``iou_thr`` changes the IoU of TP / FP / FN (default:
        the one in use). The image shown stays when it still has rows, else the first."""
        thr = self.iou_thr if iou_thr is None else float(iou_thr)
        rows = filter_rows(self.table, thr, error, cls, score, iou)
        thr = min(self.thresholds, key=lambda t: abs(t - thr))  # the table's own value
        self.iou_thr = thr
        self.settings = dict(error=error, cls=cls, score=score, iou=iou)
        self.rows = rows
        self.images = order_images(rows, self._ranking())
        if self.current not in self.images:
            self.current = self.images[0] if self.images else None
        self._refresh()
        return rows

    def sort_images(self, order: str) -> list[int]:
        """Order the images ``'worst'`` first (most errors at the IoU in use, counting
        detections from the score filter's low end; then lowest AP) or by ``'image id'``."""
        if order not in SORT_ORDERS:
            raise ValueError(f"order must be one of {list(SORT_ORDERS)}, got {order!r}")
        self.sort = order
        self.images = order_images(self.rows, self._ranking())
        self._refresh()
        return self.images

    def _ranking(self) -> pd.DataFrame | None:
        if self.sort != "worst":
            return None
        from detlab.evaluation.curves import image_ranking

        low = (self.settings.get("score") or (0.0, 0.0))[0]
        key = (self.iou_thr, float(low))
        if key not in self._rankings:
            self._rankings[key] = image_ranking(self.table, self.iou_thr, score_thr=float(low))
        return self._rankings[key]

    @property
    def position(self) -> int | None:
        """The place of the image shown among :attr:`images` (None when it is not there)."""
        return self.images.index(self.current) if self.current in self.images else None

    @property
    def current_rows(self) -> pd.DataFrame:
        """The filtered rows of the image shown."""
        return self.rows[self.rows["image_id"] == self.current]

    # ---- navigation ----------------------------------------------------------------------

    def show(self, image_id: int) -> int:
        """Show image ``image_id`` (any image of the table, filtered in or not)."""
        known = self.table.attrs.get("img_ids") or self.table["image_id"].unique()
        if int(image_id) not in {int(i) for i in known}:
            raise KeyError(f"image {image_id} is not in the match table")
        self.current = int(image_id)
        self._refresh()
        return self.current

    def next(self) -> int | None:
        """The next image of :attr:`images`, wrapping around (None when there is none)."""
        return self._step(1)

    def prev(self) -> int | None:
        """The previous image of :attr:`images`, wrapping around (None when there is none)."""
        return self._step(-1)

    def _step(self, offset: int) -> int | None:
        if not self.images:
            return None
        position = self.position
        start = (-1 if offset > 0 else 0) if position is None else position
        return self.show(self.images[(start + offset) % len(self.images)])

    # ---- pictures ------------------------------------------------------------------------

    def view_image(self) -> np.ndarray:
        """The image shown with its filtered rows, as ``H x W x 3`` uint8 RGB."""
        from detlab.viz.draw import image_grid

        if self.current is None:
            return message_picture("no row passes the filter")
        rows = self.current_rows
        boxes = rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        picture = draw_rows(self.source.image(self.current, boxes), rows, self.source)
        return image_grid([picture], titles=[self._title(rows)])

    def _title(self, rows: pd.DataFrame) -> str:
        counts = rows["status"].value_counts().to_dict()
        counts["FN"] = counts.get("FN", 0) + int(rows["lost_gt"].sum())  # missed at this IoU
        parts = [f"{int(counts.get(k, 0))} {k}" for k in ("TP", "FP", "FN", "ignored")
                 if counts.get(k, 0)]
        where = "" if self.position is None else f" ({self.position + 1}/{len(self.images)})"
        return f"image {self.current}{where}: {', '.join(parts) or 'no rows'}"

    def render_png(self) -> bytes:
        """The image shown with its rows, as PNG."""
        return self._png or array_png(self.view_image())

    def summary(self) -> str:
        s = self.settings
        score = "any" if s.get("score") is None else "{:.2f}-{:.2f}".format(*s["score"])
        iou = "any" if s.get("iou") is None else "{:.2f}-{:.2f}".format(*s["iou"])
        where = "none" if self.current is None else (
            f"image {self.current}" + ("" if self.position is None
                                       else f" ({self.position + 1}/{len(self.images)})"))
        return (f"ErrorBrowser: {len(self.rows)} rows in {len(self.images)} images (error "
                f"{s.get('error') or ALL}, class {s.get('cls') or ALL}, score {score}, IoU "
                f"{iou}, at IoU {self.iou_thr:.2f}, {self.sort} first); showing {where}")

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        top = max(1.0, float(np.nan_to_num(self.table["score"].max(), nan=1.0)))
        self._error = w.Dropdown(options=[ALL, *COCO_KINDS, *ERROR_TYPES], value=ALL,
                                 description="error")
        self._class = w.Dropdown(options=[ALL, *self.class_names], value=ALL,
                                 description="class")
        self._iou_thr = w.Dropdown(options=[(f"{t:.2f}", t) for t in self.thresholds],
                                   value=self.iou_thr, description="at IoU")
        self._sort = w.Dropdown(options=list(SORT_ORDERS), value=self.sort, description="order")
        self._score = w.FloatRangeSlider(value=(0.0, top), min=0.0, max=top, step=0.01,
                                         description="score", continuous_update=False)
        self._iou = w.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01,
                                       description="IoU", continuous_update=False)
        self._prev = make_button(w, "prev", "detlab-errors-prev", "arrow-left")
        self._next = make_button(w, "next", "detlab-errors-next", "arrow-right")
        self._index = w.IntSlider(value=1, min=1, max=1, description="image",
                                  continuous_update=False)
        self._image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self._info, self._rows_html, self._status = w.HTML(), w.HTML(), w.HTML()
        self._style_widgets()
        self._connect()
        self.widget = w.VBox([
            control_row(w, [self._error, self._class, self._iou_thr, self._sort]),
            control_row(w, [self._score, self._iou]),
            control_row(w, [self._prev, self._index, self._next]),
            self._status, self._info, self._image, self._rows_html])
        self.widget.add_class("detlab-error-browser")

    def _style_widgets(self) -> None:
        classes = dict(_error="error", _class="class", _iou_thr="iou-thr", _sort="sort",
                       _score="score", _iou="iou", _index="index", _image="view",
                       _info="info", _rows_html="rows", _status="status")
        for attribute, css in classes.items():
            getattr(self, attribute).add_class(f"detlab-errors-{css}")

    def _connect(self) -> None:
        self._prev.on_click(lambda _: self._safely(self.prev))
        self._next.on_click(lambda _: self._safely(self.next))
        for control in (self._error, self._class, self._iou_thr, self._score, self._iou):
            control.observe(self._on_filter, names="value")
        self._sort.observe(self._on_sort, names="value")
        self._index.observe(self._on_index, names="value")

    def _on_filter(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            self._safely(self.filter, **self._control_filter())

    def _control_filter(self) -> dict[str, Any]:
        """The filter the controls describe (a range at its slider's full extent: no limit)."""
        score = tuple(self._score.value)
        iou = tuple(self._iou.value)
        full_score = score == (self._score.min, self._score.max)
        return dict(error=self._error.value, cls=self._class.value,
                    score=None if full_score else score,
                    iou=None if iou == (0.0, 1.0) else iou, iou_thr=self._iou_thr.value)

    def _on_sort(self, change: Mapping[str, Any]) -> None:
        if not self._syncing:
            self._safely(self.sort_images, change["new"])

    def _on_index(self, change: Mapping[str, Any]) -> None:
        if not self._syncing and self.images:
            self._safely(self.show, self.images[int(change["new"]) - 1])

    def _refresh(self) -> None:
        """Bring the controls and the picture in line with the state."""
        self._png = array_png(self.view_image())
        self._sync_controls()
        self._image.value = self._png
        self._info.value = status_html(self.summary().removeprefix("ErrorBrowser: "))
        self._rows_html.value = _rows_table(self.current_rows)
        self._status.value = ""

    def _sync_controls(self) -> None:
        s = self.settings
        with self._quiet():
            self._error.value = s.get("error") or ALL
            cls = s.get("cls")
            if cls is None or cls in self._class.options:
                self._class.value = cls or ALL
            self._iou_thr.value = self.iou_thr
            self._sort.value = self.sort
            self._score.value = tuple(s.get("score") or (self._score.min, self._score.max))
            self._iou.value = tuple(s.get("iou") or (0.0, 1.0))
            self._index.max = max(1, len(self.images))  # 1-based, as "image 5/40" reads
            self._index.value = (self.position or 0) + 1


_ROW_COLUMNS = ["status", "error", "class", "score", "iou", "gt_id", "x1", "y1", "x2", "y2"]


def _rows_table(rows: pd.DataFrame) -> str:
    if rows.empty:
        return ""
    return rows[_ROW_COLUMNS].to_html(index=False, float_format=lambda v: f"{v:.2f}",
                                      na_rep="")




__all__ = ["ErrorBrowser", "ImageSource", "filter_rows", "row_status", "order_images",
           "draw_rows", "COCO_KINDS", "STATUS_COLORS"]

"""Dataset preflight: what is wrong with a detection dataset (and its config) before training.

:func:`check_dataset` reads a COCO annotation file -- or the ``data.<split>`` dataset of a config
-- and returns one row per finding (a :class:`pandas.DataFrame` with :data:`COLUMNS`); the
problems it looks for, their severity and meaning are in :data:`PROBLEMS`. Bad data is reported,
never raised. :func:`format_report` prints a summary.

The box checks run on numpy arrays over all annotations at once. Every image file is opened
(its header gives its size) and decoded as the loader decodes it -- a truncated JPEG would
otherwise stop training mid-epoch -- in a few threads; ``sample=N`` decodes only ``N`` images
spread evenly over the dataset (the others are still opened).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlab.data.converters._common import oriented_size
from detlab.data.transforms.loading import imread

COLUMNS = ("problem", "severity", "image_id", "file", "ann_id", "detail")
SEVERITIES = ("error", "warning", "info")

# problem -> (severity, what it means); the order is the order of the report
PROBLEMS: dict[str, tuple[str, str]] = {
    "missing_ann_file": ("error", "the annotation file of the dataset does not exist"),
    "unreadable_ann_file": ("error", "the annotation file cannot be read as a detection dataset"),
    "no_images": ("error", "the dataset has no images: there is nothing to train or test on"),
    "missing_data_root": ("error", "data_root is not a folder"),
    "missing_img_prefix": ("error", "img_prefix (under data_root) is not a folder"),
    "missing_classes_file": ("error", "the classes file named by the config does not exist"),
    "class_not_in_file": ("error", "a name in the config's classes is not a category of the file"),
    "num_classes_mismatch": ("error", "a head's num_classes differs from the dataset's classes"),
    "missing_image_field": ("error", "an image entry lacks id, file_name, width or height"),
    "duplicate_image_id": ("error", "two images share an id"),
    "duplicate_category": ("error", "two categories share an id or a name"),
    "duplicate_ann_id": ("error", "two annotations share an id"),
    "orphan_annotation": ("error", "an annotation's image_id is not an image of the file"),
    "unknown_category": ("error", "an annotation's category_id is not in categories"),
    "malformed_box": ("error", "bbox is missing, not 4 numbers, or not finite"),
    "degenerate_box": ("error", "box width or height is zero or negative"),
    "box_outside_image": ("error", "box does not overlap its image (training drops it)"),
    "missing_image": ("error", "the image file does not exist"),
    "unreadable_image": ("error", "the image file cannot be opened or decoded as the loader "
                                  "reads it (not an image, damaged or truncated)"),
    "size_mismatch": ("error", "width/height in the file differ from the image on disk"),
    "box_exceeds_image": ("warning", "box extends past the image border by more than 1 px"),
    "tiny_box": ("warning", "box narrower or shorter than 1 px (training drops it)"),
    "duplicate_box": ("warning", "another box of the same class in the image has IoU > 0.95"),
    "class_without_instances": ("warning", "a class has no instance"),
    "class_imbalance": ("warning", "a class has less than 1/10 of the mean instances a class"),
    "image_without_annotations": ("info", "an image has no annotation (filter_empty_gt drops "
                                          "it from training)"),
    "images_not_checked": ("info", "image files were not (all) probed or decoded"),
}

DUPLICATE_IOU = 0.95
IMBALANCE_RATIO = 0.1
BORDER_TOLERANCE = 1.0  # px; boxes a rounding error past the border are normal in COCO
_PAIR_CHUNK = 2_000_000  # box pairs compared at a time in the duplicate search
_PROBE_THREADS = 8  # reads wait on the disk and PIL decodes without the GIL: threads help
_WRAPPER_KEYS = ("dataset", "datasets")


class _Findings:
    """Collects findings, one at a time or many at once (arrays), into one DataFrame."""

    def __init__(self) -> None:
        self._parts: list[dict[str, list]] = []

    def add(self, problem: str, detail: str, image_id: Any = None, file: str | None = None,
            ann_id: Any = None) -> None:
        self.add_many(problem, [detail], [image_id], [file], [ann_id])

    def add_many(self, problem: str, details: Sequence[str], image_ids: Iterable[Any],
                 files: Iterable[str | None], ann_ids: Iterable[Any] | None = None) -> None:
        n = len(details)
        if not n:
            return
        self._parts.append(dict(
            problem=[problem] * n, severity=[PROBLEMS[problem][0]] * n,
            image_id=list(image_ids), file=list(files),
            ann_id=list(ann_ids) if ann_ids is not None else [None] * n, detail=list(details)))

    def frame(self) -> Any:
        """The findings, errors first, then by problem in the order of :data:`PROBLEMS`."""
        import pandas as pd

        columns = {c: [v for part in self._parts for v in part[c]] for c in COLUMNS}
        df = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in columns.items()},
                          columns=list(COLUMNS))
        order = {p: i for i, p in enumerate(PROBLEMS)}
        rank = df["problem"].map(order).astype(int) if len(df) else df["problem"]
        return df.iloc[np.argsort(np.asarray(rank), kind="stable")].reset_index(drop=True)


@dataclass
class _Options:
    check_images: bool = True
    max_images: int | None = None
    sample: int | None = None  # decode only this many images, spread evenly
    source: str | None = None  # config file, named in config-level findings


# --------------------------------------------------------------------------------------------
# Tables of the COCO dict as arrays
# --------------------------------------------------------------------------------------------


def _key(value: Any) -> Any:
    """An id usable as a dict / index key (numpy numbers become Python ones, unhashable ids
    their repr)."""
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, str, float, type(None))) else repr(value)


def _floats(values: Sequence[Any]) -> np.ndarray:
    """``(n,)`` float64 of ``values``; anything that is not a number becomes NaN."""
    try:
        return np.asarray(values, dtype=np.float64).reshape(len(values))
    except (TypeError, ValueError):
        out = np.full(len(values), np.nan)
        for i, v in enumerate(values):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[i] = v
        return out


def _boxes(values: Sequence[Any]) -> np.ndarray:
    """``(n, 4)`` float64 xywh of the ``bbox`` values; a malformed one is a row of NaN."""
    try:
        boxes = np.asarray(values, dtype=np.float64)
        if boxes.shape == (len(values), 4):
            return boxes
    except (TypeError, ValueError):
        pass
    out = np.full((len(values), 4), np.nan)
    for i, v in enumerate(values):
        if isinstance(v, (list, tuple)) and len(v) == 4:
            out[i] = _floats(list(v))
    return out


@dataclass
class _Images:
    ids: list[Any]
    files: list[str]          # paths as the loader opens them (prefix joined)
    width: np.ndarray         # (n,) float64, NaN when missing
    height: np.ndarray
    index: Any = None         # pandas.Index of the unique ids
    first: Any = None         # (k,) int64: position in the images of each id of ``index``


def _image_table(images: Sequence[Any], prefix: str | None, out: _Findings) -> _Images:
    import pandas as pd

    images = [im if isinstance(im, Mapping) else {} for im in images]
    ids = [_key(im.get("id")) for im in images]
    names = [str(im.get("file_name", "")) for im in images]
    files = [os.path.join(prefix, n) if prefix else n for n in names]
    table = _Images(ids, files, _floats([im.get("width") for im in images]),
                    _floats([im.get("height") for im in images]))
    lacking = [(i, [k for k in ("id", "file_name", "width", "height") if k not in im])
               for i, im in enumerate(images)]
    lacking = [(i, keys) for i, keys in lacking if keys]
    out.add_many("missing_image_field", [f"image #{i} has no {', '.join(k)}" for i, k in lacking],
                 [ids[i] for i, _ in lacking], [files[i] for i, _ in lacking])
    index = pd.Index(ids, dtype=object)
    dup = np.flatnonzero(index.duplicated())
    out.add_many("duplicate_image_id", [f"image #{i} repeats id {ids[i]!r}" for i in dup],
                 [ids[i] for i in dup], [files[i] for i in dup])
    table.index = index[~index.duplicated()]
    table.first = np.flatnonzero(~index.duplicated())
    return table


@dataclass
class _Anns:
    ids: np.ndarray           # (n,) object
    image_ids: np.ndarray     # (n,) object
    cat_ids: np.ndarray       # (n,) object
    boxes: np.ndarray         # (n, 4) float64 xywh, NaN rows for malformed ones
    crowd: np.ndarray         # (n,) bool
    img_pos: np.ndarray       # (n,) int64 position in the images, -1 for an orphan
    cat_known: np.ndarray     # (n,) bool

    def __len__(self) -> int:
        return len(self.ids)


def _ann_table(anns: Sequence[Any], images: _Images, cat_ids: list[Any]) -> _Anns:
    import pandas as pd

    anns = [a if isinstance(a, Mapping) else {} for a in anns]
    image_ids = np.array([_key(a.get("image_id")) for a in anns] + [None], dtype=object)[:-1]
    cats = np.array([_key(a.get("category_id")) for a in anns] + [None], dtype=object)[:-1]
    found = images.index.get_indexer(image_ids) if len(anns) else np.zeros(0, np.int64)
    img_pos = np.where(found >= 0, images.first[np.maximum(found, 0)], -1) \
        if len(images.first) else np.full(len(anns), -1)
    return _Anns(ids=np.array([_key(a.get("id")) for a in anns] + [None], dtype=object)[:-1],
                 image_ids=image_ids, cat_ids=cats, boxes=_boxes([a.get("bbox") for a in anns]),
                 crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                 img_pos=np.asarray(img_pos, dtype=np.int64),
                 # hashing (pandas), not numpy's sort, copes with ids of mixed types
                 cat_known=pd.Series(cats, dtype=object).isin(cat_ids).to_numpy(bool))


def _category_table(categories: Sequence[Any], ann_file: str,
                    out: _Findings) -> tuple[list[Any], list[str]]:
    """``(ids, names)`` of the categories; repeated ids or names are findings."""
    cats = [c if isinstance(c, Mapping) else {} for c in categories]
    ids, names = [_key(c.get("id")) for c in cats], [str(c.get("name")) for c in cats]
    for what, values in (("id", ids), ("name", names)):
        seen = set()
        for value in values:
            if value in seen:
                out.add("duplicate_category", f"category {what} {value!r} appears twice",
                        file=ann_file)
            seen.add(value)
    return ids, names


# --------------------------------------------------------------------------------------------
# Annotation checks (vectorized)
# --------------------------------------------------------------------------------------------


def _files_of(anns: _Anns, images: _Images, which: np.ndarray) -> list[str | None]:
    return [images.files[p] if p >= 0 else None for p in anns.img_pos[which]]


def _add_anns(out: _Findings, problem: str, anns: _Anns, images: _Images, which: np.ndarray,
              details: list[str]) -> None:
    """Findings about the annotations at positions ``which``."""
    out.add_many(problem, details, anns.image_ids[which], _files_of(anns, images, which),
                 anns.ids[which])


def _check_ann_ids(anns: _Anns, images: _Images, out: _Findings) -> None:
    import pandas as pd

    dup = np.flatnonzero(pd.Index(anns.ids, dtype=object).duplicated())
    _add_anns(out, "duplicate_ann_id", anns, images, dup,
              [f"annotation id {anns.ids[i]!r} is used again (annotation #{i})" for i in dup])
    orphan = np.flatnonzero(anns.img_pos < 0)
    _add_anns(out, "orphan_annotation", anns, images, orphan,
              [f"image_id {anns.image_ids[i]!r} is not in images" for i in orphan])
    unknown = np.flatnonzero(~anns.cat_known)
    _add_anns(out, "unknown_category", anns, images, unknown,
              [f"category_id {anns.cat_ids[i]!r} is not in categories" for i in unknown])


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _check_boxes(anns: _Anns, images: _Images, out: _Findings) -> None:
    x, y, w, h = anns.boxes.T
    ok = np.isfinite(anns.boxes).all(axis=1)
    bad = np.flatnonzero(~ok)
    _add_anns(out, "malformed_box", anns, images, bad,
              ["bbox must be 4 finite numbers [x, y, w, h]"] * len(bad))
    degenerate = ok & ((w <= 0) | (h <= 0))
    sized = ok & ~degenerate
    pos = np.maximum(anns.img_pos, 0)
    img_w = np.where(anns.img_pos >= 0, images.width[pos] if len(images.ids) else 0, np.nan)
    img_h = np.where(anns.img_pos >= 0, images.height[pos] if len(images.ids) else 0, np.nan)
    inter_w = np.minimum(x + w, img_w) - np.maximum(x, 0)
    inter_h = np.minimum(y + h, img_h) - np.maximum(y, 0)
    outside = sized & ((inter_w <= 0) | (inter_h <= 0))
    tol = BORDER_TOLERANCE
    exceeds = sized & ~outside & ((x < -tol) | (y < -tol) | (x + w > img_w + tol)
                                  | (y + h > img_h + tol))
    tiny = sized & ((w < 1) | (h < 1))
    for problem, mask in (("degenerate_box", degenerate), ("box_outside_image", outside),
                          ("box_exceeds_image", exceeds), ("tiny_box", tiny)):
        which = np.flatnonzero(mask)
        details = [f"bbox (xywh) {_fmt_box(anns.boxes[i])} in a {img_w[i]:g}x{img_h[i]:g} image"
                   for i in which]
        _add_anns(out, problem, anns, images, which, details)


def _group_pairs(group: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``(a, b)``, ``a < b``, of equal ``group`` values among positions
    ``start..stop`` (``group`` sorted, ``(n,)``); ``b`` may reach past ``stop``."""
    ends = np.searchsorted(group, group[start:stop], side="right")
    counts = ends - np.arange(start, stop) - 1
    a = np.repeat(np.arange(start, stop), counts)
    offsets = np.arange(len(a)) - np.repeat(np.cumsum(counts) - counts, counts)
    return a, a + 1 + offsets


def _iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n,)`` IoU of row pairs of two ``(n, 4)`` xywh arrays."""
    iw = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-12)


def duplicate_pairs(image_keys: np.ndarray, class_keys: np.ndarray, boxes: np.ndarray,
                    iou_thr: float = DUPLICATE_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of boxes of the same image and class with IoU above ``iou_thr``.

    ``image_keys``, ``class_keys``: ``(n,)`` int64 codes; ``boxes``: ``(n, 4)`` xywh. Returns
    ``(first, second, iou)``, ``first < second`` as positions in the input, ``iou`` ``(k,)``.
    """
    order = np.lexsort((class_keys, image_keys))
    group = (image_keys[order] * (int(class_keys.max(initial=0)) + 1) + class_keys[order])
    sorted_boxes = boxes[order]
    pairs_after = np.searchsorted(group, group, side="right") - np.arange(len(group)) - 1
    pairs_before = np.cumsum(pairs_after) - pairs_after
    # cut the positions where the pairs before them pass a multiple of the chunk size, so the
    # memory stays bounded however many boxes an image has
    cuts = np.searchsorted(pairs_before, np.arange(_PAIR_CHUNK, int(pairs_after.sum()),
                                                   _PAIR_CHUNK), side="left")
    bounds = np.unique(np.concatenate([[0], cuts, [len(group)]])).astype(np.int64)
    found = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        a, b = _group_pairs(group, int(start), int(stop))
        iou = _iou_xywh(sorted_boxes[a], sorted_boxes[b])
        hit = iou > iou_thr
        found.append((order[a[hit]], order[b[hit]], iou[hit]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    first, second, iou = (np.concatenate(parts) for parts in zip(*found, strict=True))
    swap = first > second
    first[swap], second[swap] = second[swap], first[swap]
    return first, second, iou


def _check_duplicate_boxes(anns: _Anns, images: _Images, out: _Findings) -> None:
    import pandas as pd

    ok = np.isfinite(anns.boxes).all(axis=1) & (anns.boxes[:, 2] > 0) & (anns.boxes[:, 3] > 0)
    keep = np.flatnonzero(ok & ~anns.crowd & (anns.img_pos >= 0))
    if len(keep) < 2:
        return
    cat_codes = pd.factorize(pd.Series(anns.cat_ids[keep], dtype=object))[0]
    first, second, iou = duplicate_pairs(anns.img_pos[keep], cat_codes, anns.boxes[keep])
    order = np.argsort(keep[second], kind="stable")
    first, second, iou = keep[first[order]], keep[second[order]], iou[order]
    details = [f"IoU {v:.3f} with annotation {anns.ids[f]!r} of the same class "
               f"(category_id {anns.cat_ids[f]!r})" for f, v in zip(first, iou, strict=True)]
    _add_anns(out, "duplicate_box", anns, images, second, details)


def _check_empty_images(anns: _Anns, images: _Images, out: _Findings) -> None:
    annotated = np.ones(len(images.ids), dtype=bool)
    # a repeated image id is reported already; its annotations all go to the first image
    annotated[images.first] = False
    annotated[anns.img_pos[anns.img_pos >= 0]] = True
    empty = np.flatnonzero(~annotated)
    out.add_many("image_without_annotations", ["no annotation"] * len(empty),
                 [images.ids[i] for i in empty], [images.files[i] for i in empty])


def _check_class_counts(anns: _Anns, cat_ids: list[Any], cat_names: list[str],
                        ann_file: str, out: _Findings, classes: Sequence[str] | None) -> None:
    """Classes without instances, and classes with < 1/10 of the mean count (crowd regions
    and malformed boxes do not count as instances)."""
    import pandas as pd

    counted = anns.cat_known & ~anns.crowd & np.isfinite(anns.boxes).all(axis=1)
    counts = pd.Series(anns.cat_ids[counted], dtype=object).value_counts()
    chosen = [(i, n) for i, n in zip(cat_ids, cat_names, strict=True)
              if classes is None or n in classes]
    if not chosen:
        return
    per_class = np.array([int(counts.get(i, 0)) for i, _ in chosen])
    mean = per_class.mean()
    for (cat_id, name), count in zip(chosen, per_class, strict=True):
        if count == 0:
            out.add("class_without_instances", f"class {name!r} (category_id {cat_id!r}) has "
                    "no instance", file=ann_file)
        elif count < IMBALANCE_RATIO * mean:
            out.add("class_imbalance", f"class {name!r} (category_id {cat_id!r}) has {count} "
                    f"instances; the mean is {mean:.1f} a class", file=ann_file)


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def _probe(path: str, decode: bool) -> tuple[str, Any]:
    """``('ok', ((w, h), turned))`` as the loader sees the image (EXIF turn applied),
    ``('missing', None)`` or ``('unreadable', message)``. Reads the header, and with ``decode``
    the whole image, as ``LoadImageFromFile`` reads it."""
    from PIL import Image

    if not os.path.isfile(path):
        return "missing", None
    try:
        with Image.open(path) as image:
            width, height, turned = oriented_size(image)
    except Exception as err:  # PIL also raises SyntaxError, DecompressionBombError...
        return "unreadable", f"cannot be opened as an image: {type(err).__name__}: {err}"
    if decode:
        try:
            imread(path)
        except Exception as err:  # what LoadImageFromFile would stop the training with
            return "unreadable", (f"cannot be decoded ({type(err).__name__}: {err}): the "
                                  "loader would fail on it; re-export or remove this image")
    return "ok", ((width, height), turned)


def decode_sample(count: int, sample: int | None) -> np.ndarray:
    """Positions ``(k,)`` of the images to decode among ``count``: all of them, or ``sample``
    spread evenly from the first to the last (the same ones every time)."""
    if sample is None or sample >= count:
        return np.arange(count)
    if sample <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, count - 1, sample).round().astype(np.int64))


def _check_image_files(images: _Images, prefix: str, options: _Options,
                       out: _Findings) -> None:
    todo = list(range(len(images.ids)))
    max_images = options.max_images
    if max_images is not None and len(todo) > max_images:
        out.add("images_not_checked", f"max_images={max_images}: probed the first {max_images} "
                f"of {len(todo)} images")
        todo = todo[:max_images]
    decode = np.zeros(len(todo), dtype=bool)
    decode[decode_sample(len(todo), options.sample)] = True
    if not decode.all():
        out.add("images_not_checked", f"sample={options.sample}: decoded {int(decode.sum())} of "
                f"{len(todo)} images, spread evenly; the others were opened (header) only")
    with ThreadPoolExecutor(_PROBE_THREADS) as pool:
        results = list(pool.map(_probe, [images.files[i] for i in todo], decode.tolist()))
    missing = [i for i, (status, _) in zip(todo, results, strict=True) if status == "missing"]
    if len(missing) > 1 and len(missing) == len(todo):
        out.add("missing_image", f"none of the {len(todo)} images exists under {prefix!r} "
                f"(e.g. {images.files[todo[0]]!r}); check img_prefix / data_root",
                file=prefix or None)
    else:
        out.add_many("missing_image", ["file not found"] * len(missing),
                     [images.ids[i] for i in missing], [images.files[i] for i in missing])
    for i, (status, value) in zip(todo, results, strict=True):
        if status == "unreadable":
            out.add("unreadable_image", value, images.ids[i], images.files[i])
        elif status == "ok":
            _compare_size(images, i, *value, out)


def _compare_size(images: _Images, i: int, size: tuple[int, int], turned: bool,
                  out: _Findings) -> None:
    listed = (images.width[i], images.height[i])
    if np.isnan(listed).any() or listed == size:
        return
    note = " (after its EXIF orientation, which the loader applies)" if turned else ""
    out.add("size_mismatch", f"the file lists {listed[0]:g}x{listed[1]:g}, the image is "
            f"{size[0]}x{size[1]}{note}", images.ids[i], images.files[i])


# --------------------------------------------------------------------------------------------
# One COCO dict
# --------------------------------------------------------------------------------------------


def _is_coco(data: Any) -> bool:
    return isinstance(data, Mapping) and isinstance(data.get("images"), list) \
        and isinstance(data.get("categories"), list) \
        and isinstance(data.get("annotations", []), list)


def _check_coco_dict(data: Mapping[str, Any], ann_file: str, img_prefix: str | None,
                    out: _Findings, options: _Options,
                    classes: Sequence[str] | None = None) -> None:
    """Every check of one COCO dict (boxes ``xywh``), its findings added to ``out``; images
    are probed under ``img_prefix`` unless it is None or ``options.check_images`` is off."""
    if not _is_coco(data):
        out.add("unreadable_ann_file", "not a COCO detection file: it needs 'images', "
                "'annotations' and 'categories' lists", file=ann_file)
        return
    if not data["images"]:
        out.add("no_images", "the file lists no images (its 'images' list is empty)",
                file=ann_file)
        return
    images = _image_table(data["images"], img_prefix, out)
    cat_ids, cat_names = _category_table(data["categories"], ann_file, out)
    anns = _ann_table(data.get("annotations", []), images, cat_ids)
    _check_ann_ids(anns, images, out)
    _check_boxes(anns, images, out)
    _check_duplicate_boxes(anns, images, out)
    _check_empty_images(anns, images, out)
    _check_class_counts(anns, cat_ids, cat_names, ann_file, out, classes)
    if not options.check_images:
        return
    if img_prefix is None:
        out.add("images_not_checked", "no img_prefix: image files were not probed",
                file=ann_file)
    else:
        _check_image_files(images, img_prefix, options, out)


def _read_json(path: str, out: _Findings) -> Any:
    """The parsed json of ``path``; None (and a finding) if it is not valid json."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        out.add("unreadable_ann_file", f"not valid JSON: {err}", file=path)
        return None


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def _join_root(data_root: str | None, path: Any) -> Any:
    """``path`` under ``data_root`` as the datasets join them (absolute paths stay)."""
    if not data_root or not isinstance(path, str) or os.path.isabs(path):
        return path
    return os.path.join(data_root, path)


def dataset_leaves(cfg: Any, path: str) -> list[tuple[str, dict]]:
    """``(config key, dataset config)`` of the datasets that read files below a dataset
    config: wrappers (``dataset=``, ``datasets=[...]``) are opened, and a list of
    ``ann_file`` (with one ``img_prefix`` or a list of them) gives one dataset each."""
    if not isinstance(cfg, Mapping):
        return []
    if isinstance(cfg.get("datasets"), (list, tuple)):
        return [leaf for i, sub in enumerate(cfg["datasets"])
                for leaf in dataset_leaves(sub, f"{path}.datasets.{i}")]
    if isinstance(cfg.get("dataset"), Mapping):
        return dataset_leaves(cfg["dataset"], f"{path}.dataset")
    ann_files, prefixes = cfg.get("ann_file"), cfg.get("img_prefix")
    if not isinstance(ann_files, (list, tuple)):
        return [(path, dict(cfg))]
    return [(f"{path}.ann_file.{i}",
             {**cfg, "ann_file": a,
              "img_prefix": prefixes[i] if isinstance(prefixes, (list, tuple)) else prefixes})
            for i, a in enumerate(ann_files)]


def head_num_classes(model: Any, path: str = "model") -> list[tuple[str, Any]]:
    """``(config key, value)`` of every ``num_classes`` in a model config, RPN heads left out
    (they have one class, foreground)."""
    found: list[tuple[str, Any]] = []
    if isinstance(model, Mapping):
        for key, value in model.items():
            if "rpn" in str(key) or key in ("train_cfg", "test_cfg"):
                continue
            if key == "num_classes":
                found.append((f"{path}.{key}", value))
            else:
                found.extend(head_num_classes(value, f"{path}.{key}"))
    elif isinstance(model, (list, tuple)):
        for i, value in enumerate(model):
            found.extend(head_num_classes(value, f"{path}.{i}"))
    return found


def _registered_classes(dataset_type: Any) -> tuple[str, ...] | None:
    """The default ``CLASSES`` of a dataset type (None for COCO, which reads the file's)."""
    from detlab.registry import DATASETS

    cls = DATASETS.get(dataset_type, None) if isinstance(dataset_type, str) else dataset_type
    return getattr(cls, "CLASSES", None)


def _config_classes(leaf: Mapping, path: str, out: _Findings,
                    options: _Options) -> list[str] | None:
    """The ``classes`` of a dataset config as a list (read from its file), or None."""
    classes = leaf.get("classes")
    if not isinstance(classes, str):
        return None if classes is None else [str(c) for c in classes]
    if not os.path.isfile(classes):
        out.add("missing_classes_file", f"{path}.classes = {classes!r} does not exist",
                file=options.source)
        return None
    with open(classes, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _leaf_coco(leaf: Mapping, path: str, ann_file: str,
               out: _Findings) -> tuple[Any, str | None]:
    """The COCO dict of a dataset config and the image folder its ``file_name`` are under:
    the raw json for a ``.json`` file, else the built dataset's ``to_coco()``."""
    if ann_file.lower().endswith(".json"):
        return _read_json(ann_file, out), None
    from detlab.data.builder import build_dataset

    try:
        dataset = build_dataset({**leaf, "pipeline": [], "test_mode": True}, _path=path)
        return dataset.to_coco(), dataset.img_prefix
    except Exception as err:  # any failure to read the data is a finding, not a crash
        out.add("unreadable_ann_file", f"{path} ({leaf.get('type')}) cannot be read: "
                f"{type(err).__name__}: {err}", file=ann_file)
        return None, None


def _check_paths(leaf: Mapping, path: str, img_prefix: str | None, out: _Findings,
                 options: _Options) -> tuple[str | None, bool]:
    """Report a missing data_root / img_prefix; ``(image folder, whether it exists)``."""
    data_root = leaf.get("data_root")
    if isinstance(data_root, str) and data_root and not os.path.isdir(data_root):
        out.add("missing_data_root", f"{path}.data_root = {data_root!r} is not a folder",
                file=options.source)
    prefix = img_prefix if img_prefix is not None else \
        _join_root(data_root, leaf.get("img_prefix") or "")
    if prefix and not os.path.isdir(prefix):
        out.add("missing_img_prefix", f"{path}.img_prefix: {prefix!r} is not a folder (data_root "
                f"{data_root!r} joined to img_prefix {leaf.get('img_prefix')!r})",
                file=options.source)
        return prefix, False
    return prefix, True


def _check_class_names(names: Sequence[str], file_names: Sequence[str], path: str,
                       ann_file: str, out: _Findings) -> None:
    from detlab.config import did_you_mean

    for name in names:
        if name not in file_names:
            out.add("class_not_in_file", f"{name!r} ({path}.classes) is not a category of the "
                    f"file.{did_you_mean(name, file_names)} The file has {list(file_names)}",
                    file=ann_file)


def _check_leaf(leaf: Mapping, path: str, img_prefix: str | None, out: _Findings,
                options: _Options) -> list[str] | None:
    """Check one dataset config and its data; the names of the classes it trains on."""
    prefix, prefix_ok = _check_paths(leaf, path, img_prefix, out, options)
    classes = _config_classes(leaf, path, out, options)
    default = _registered_classes(leaf.get("type"))
    ann_file = _join_root(leaf.get("data_root"), leaf.get("ann_file"))
    if not isinstance(ann_file, str) or not os.path.isfile(ann_file):
        out.add("missing_ann_file", f"{path}.ann_file: {ann_file!r} does not exist",
                file=options.source)
        return classes or (list(default) if default else None)
    data, dataset_prefix = _leaf_coco(leaf, path, ann_file, out)
    if data is None:
        return classes or (list(default) if default else None)
    file_names = [str(c.get("name")) for c in data.get("categories", []) or []
                  if isinstance(c, Mapping)]
    names = classes or (list(default) if default else file_names)
    if names is not file_names:
        _check_class_names(names, file_names, path, ann_file, out)
    leaf_options = _Options(options.check_images and prefix_ok, options.max_images,
                            options.sample, options.source)
    _check_coco_dict(data, ann_file, dataset_prefix or prefix, out, leaf_options,
                    classes=names)
    return names


def _check_num_classes(cfg: Any, split: str, names: Sequence[str], out: _Findings,
                       options: _Options) -> None:
    shown = ", ".join(map(repr, names[:8])) + (", ..." if len(names) > 8 else "")
    for key, value in head_num_classes(cfg.get("model")):
        if value != len(names):
            out.add("num_classes_mismatch", f"{key} = {value!r}, but data.{split} has "
                    f"{len(names)} classes ({shown}); set {key}={len(names)}",
                    file=options.source)


def _check_config(cfg: Any, split: str, img_prefix: str | None, out: _Findings,
                  options: _Options) -> None:
    from detlab.config import ConfigError

    options.source = cfg.filename
    data = cfg.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get(split), Mapping):
        have = [k for k, v in (data or {}).items() if isinstance(v, Mapping)] \
            if isinstance(data, Mapping) else []
        raise ConfigError(f"{cfg.filename or 'the config'} has no data.{split} dataset to check "
                          f"(it has {', '.join(f'data.{k}' for k in have) or 'no data'}); "
                          "pass split=...")
    # the top-level data_root is only a variable of the file: what counts is each dataset's
    # own data_root (an override may have changed it there alone), checked per leaf below
    names = None
    for path, leaf in dataset_leaves(data[split], f"data.{split}"):
        leaf_names = _check_leaf(leaf, path, img_prefix, out, options)
        names = names if names is not None else leaf_names
    if names:
        _check_num_classes(cfg, split, names, out, options)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

_CONFIG_KEYS = ("_base_", "data", "model")


def _as_coco_input(source: Any, out: _Findings) -> tuple[str, Any] | None:
    """``(name, COCO dict or None)`` when ``source`` is an annotation file (or an in-memory
    COCO dict); None when it is a config."""
    if isinstance(source, Mapping) and not hasattr(source, "filename"):
        if "images" in source or "annotations" in source:
            return "<dict>", source
        return None
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = os.fspath(source)
    if not path.lower().endswith(".json"):
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist (expected a COCO annotation file or "
                                "a config)")
    data = _read_json(path, out)
    if isinstance(data, Mapping) and any(k in data for k in _CONFIG_KEYS) \
            and "images" not in data:
        return None
    return path, data


def check_dataset(config_or_ann_file: Any, img_prefix: str | None = None, split: str = "train",
                  cfg_options: Mapping[str, Any] | Sequence[str] | None = None,
                  check_images: bool = True, max_images: int | None = None,
                  sample: int | None = None) -> Any:
    """Preflight report of a detection dataset: a :class:`pandas.DataFrame`, one finding a row,
    columns :data:`COLUMNS` (``problem``, ``severity`` -- ``'error'``, ``'warning'`` or
    ``'info'`` --, ``image_id``, ``file``, ``ann_id``, ``detail``); see :data:`PROBLEMS`.

    Args:
        config_or_ann_file: a COCO annotation file (``.json``; boxes ``xywh``) or dict, or a
            config (path, dict or :class:`~detlab.config.Config`) whose ``data.<split>`` is
            checked: its raw annotation file (json datasets) or its dataset's ``to_coco()``
            (others), and the config against the data (``num_classes`` of the heads,
            ``classes``, ``data_root``, ``img_prefix``, ``ann_file``).
        img_prefix: folder of the images (for a config: overrides ``img_prefix``). Without it,
            an annotation file's images are not probed.
        split: the ``data`` key of a config to check.
        cfg_options: dotted overrides of the config (``{'a.b': v}`` or ``['a.b=v']``).
        check_images: check the image files: that they exist, that their size is the one
            the annotations give, and that they decode as the loader decodes them (a damaged
            or truncated file would stop training).
        max_images: check only the first ``max_images`` images.
        sample: decode only ``sample`` images, spread evenly over the dataset (the same ones
            every run); the others are opened (header, size) without being decoded. Default:
            decode every image.

    Raises only when the input itself cannot be used: a missing annotation file given
    directly, a config that cannot be loaded, a config without ``data.<split>``. A config's
    missing ``ann_file`` is a finding.
    """
    from detlab.config import load_config

    out = _Findings()
    if sample is not None and sample < 0:
        raise ValueError(f"sample must be a number of images (0 or more), got {sample}")
    options = _Options(check_images, max_images, sample)
    coco_input = _as_coco_input(config_or_ann_file, out)
    if coco_input is not None:
        name, data = coco_input
        if data is not None:
            _check_coco_dict(data, name, img_prefix, out, options)
    else:
        cfg = load_config(config_or_ann_file, cfg_options)
        _check_config(cfg, split, img_prefix, out, options)
    return out.frame()


def format_report(df: Any, max_rows: int = 20) -> str:
    """A printable summary of :func:`check_dataset`'s findings: the count of each problem with
    what it means, then the first ``max_rows`` rows."""
    if df is None or not len(df):
        return "no problems found"
    by_severity = df["severity"].value_counts()
    head = ", ".join(f"{int(by_severity.get(s, 0))} {s}{'s' if s != 'info' else ''}"
                     for s in SEVERITIES)
    counts = df.groupby("problem", sort=False).size()
    width = max(len(p) for p in counts.index)
    lines = [f"{len(df)} findings: {head}", ""]
    for problem, count in counts.items():
        severity, meaning = PROBLEMS.get(problem, ("?", ""))
        lines.append(f"  {severity:<8} {problem:<{width}} {count:>7}  {meaning}")
    shown = df.head(max_rows).fillna("")
    lines += ["", f"first {len(shown)} of {len(df)} rows:",
              shown.to_string(index=False, max_colwidth=70)]
    return "\n".join(lines)


__all__ = ["COLUMNS", "PROBLEMS", "SEVERITIES", "check_dataset", "format_report",
           "dataset_leaves", "decode_sample", "duplicate_pairs", "head_num_classes"]

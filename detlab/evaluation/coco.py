"""COCO metrics the way MMDetection 2.x reports them, computed by pycocotools.

``coco_evaluate(gt, dt)`` takes the ground truth (a COCO json path, its content as a dict, or a
``pycocotools.coco.COCO``) and the detections (a results json path, a list of COCO result rows, or
a list of ``DetResult``), runs ``COCOeval`` and names the numbers as MMDetection's
``CocoDataset.evaluate`` does (``bbox_mAP``, ``bbox_mAP_50`` ..., ``AR@100`` for proposals).

The evaluation engine sits behind ``_BACKENDS`` and receives a plain ``EvalParams``: everything
before it (loading, checking and converting the inputs) and after it (naming the numbers, the
per-class table) does not depend on pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pycocotools.coco import COCO

    from detlab.evaluation.cocoeval import ResultColumns
    from detlab.structures import DetResult

IOU_TYPES = ("bbox", "segm", "proposal")
# the 12 numbers of COCOeval.stats, named as MMDetection names them; the AR names carry the
# proposal numbers, filled in by _stat_names
_STAT_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR@{0}", "AR@{1}",
               "AR@{2}", "AR_s@{2}", "AR_m@{2}", "AR_l@{2}")
_AREAS = ("all", "small", "medium", "large")


@dataclass(frozen=True)
class EvalParams:
    """What an evaluation engine needs besides the ground truth and the result rows.

    Attributes:
        iou_type: ``'bbox'``, ``'segm'`` or ``'proposal'`` (boxes, class-agnostic).
        img_ids: the images to evaluate, in order.
        cat_ids: the categories to evaluate; position ``k`` is label ``k``.
        max_dets: the three detection budgets (``proposal_nums``), increasing.
        iou_thrs: ``(T,)`` IoU thresholds.
    """

    iou_type: str
    img_ids: list[int]
    cat_ids: list[int]
    max_dets: list[int]
    iou_thrs: np.ndarray


@dataclass
class EvalOutput:
    """What an evaluation engine returns.

    Attributes:
        stats: ``(12,)`` the numbers of ``COCOeval.stats``, in that order.
        precision: ``(T, R, K, A, M)`` ``COCOeval.eval['precision']`` (-1 where undefined).
        summary: the printed summary table.
    """

    stats: np.ndarray
    precision: np.ndarray
    summary: str


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stdout_unless(verbose: bool) -> Iterator[None]:
    """Swallow what pycocotools prints, unless ``verbose``."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_coco_gt(gt: str | os.PathLike | dict | COCO, verbose: bool = False) -> COCO:
    """A ``pycocotools.coco.COCO`` from a COCO json path, its content (a dict) or a ``COCO``.

    A dict is not modified: pycocotools writes into the annotations it evaluates (``ignore``,
    masks turned to RLE), so each annotation is copied first. A ``COCO`` is used as it is.
    """
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            gt = json.load(f)
    if not isinstance(gt, dict):
        raise TypeError(f"gt must be a COCO json path, its content (a dict) or a pycocotools "
                        f"COCO, got {type(gt).__name__}")
    missing = [key for key in ("images", "categories") if key not in gt]
    if missing:
        raise ValueError(f"the ground truth is not COCO json: it has no {missing} key(s)")
    dataset = dict(gt, annotations=[dict(ann) for ann in gt.get("annotations", [])])
    coco = COCO()
    coco.dataset = dataset
    with _stdout_unless(verbose):
        coco.createIndex()
    return coco


def _image_ids_of(results: Sequence[DetResult]) -> list[int]:
    """The ``meta['img_id']`` of each result, or an error saying what to pass."""
    ids = []
    for i, result in enumerate(results):
        if "img_id" not in result.meta:
            raise ValueError(f"result {i} has no meta['img_id']: pass img_ids (the COCO image id "
                             f"of each result, in order, e.g. dataset.img_ids)")
        ids.append(int(result.meta["img_id"]))
    return ids


def results_to_coco(results: Sequence[DetResult], img_ids: Sequence[int] | None,
                    cat_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO result rows (``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``,
    ``segmentation`` RLE when there are masks) of one ``DetResult`` per image.

    Args:
        results: the detections, boxes ``(N, 4)`` xyxy in original-image pixels.
        img_ids: the COCO image id of each result, in order; ``None`` reads
            ``result.meta['img_id']``.
        cat_ids: the COCO category id of each label (``cat_ids[label]``).
    """
    img_ids = _image_ids_of(results) if img_ids is None else [int(i) for i in img_ids]
    if len(img_ids) != len(results):
        raise ValueError(f"{len(results)} results but {len(img_ids)} img_ids: pass one image "
                         f"id per result, in order")
    rows = []
    for i, (result, img_id) in enumerate(zip(results, img_ids, strict=True)):
        labels = result.labels
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(cat_ids)):
            found = sorted(set(labels.tolist()))
            raise ValueError(f"result {i} (image {img_id}) has labels {found} but cat_ids maps "
                             f"only labels 0..{len(cat_ids) - 1}: pass the dataset's cat_ids")
        rows.extend(result.to_coco(img_id, cat_ids))
    return rows


def dump_results(results: Sequence[DetResult], img_ids: Sequence[int] | None,
                 cat_ids: Sequence[int], path: str | os.PathLike) -> Path:
    """Write the COCO results json of ``results`` (see ``results_to_coco``) to ``path``,
    creating its folder, e.g. for a test-dev submission. Returns the path."""
    rows = results_to_coco(results, img_ids, cat_ids)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # written next to the target and renamed, so an interrupted dump leaves no half file
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(rows, f)
    os.replace(tmp, path)
    return path


def _as_rows(dt: Any, img_ids: Sequence[int] | None,
             cat_ids: Sequence[int]) -> tuple[list[dict], list[int] | None]:
    """The result rows of ``dt``, and the image ids of the results when ``dt`` holds
    ``DetResult`` (``None`` for rows, which do not say which images were run)."""
    # a DetResult can only exist once its module is loaded: no need to import torch to check
    structures = sys.modules.get("detlab.structures")
    DetResult = structures.DetResult if structures is not None else ()

    if isinstance(dt, (str, os.PathLike)):
        with open(dt) as f:
            dt = json.load(f)
    if not isinstance(dt, (list, tuple)):
        raise TypeError(f"dt must be a results json path, a list of COCO result dicts or a list "
                        f"of DetResult, got {type(dt).__name__}")
    if dt and DetResult and all(isinstance(r, DetResult) for r in dt):
        ids = _image_ids_of(dt) if img_ids is None else [int(i) for i in img_ids]
        return results_to_coco(dt, ids, cat_ids), ids
    if not all(isinstance(r, dict) for r in dt):
        kinds = sorted({type(r).__name__ for r in dt})
        raise TypeError(f"dt must hold only COCO result dicts or only DetResult, got {kinds}")
    return list(dt), None


def _clean_row(row: dict, index: int, iou_type: str) -> dict:
    """A copy of one result row with only what ``iou_type`` evaluates (``loadRes`` writes into
    the rows it gets, and reads a row's ``bbox`` before its mask when both are there)."""
    key = "segmentation" if iou_type == "segm" else "bbox"
    missing = [k for k in ("image_id", "category_id", "score", key) if k not in row]
    if missing:
        hint = (" (segm evaluation needs masks in the results)" if key == "segmentation"
                else "")
        raise ValueError(f"result row {index} has no {missing}{hint}: {_short(row)}")
    clean = dict(image_id=int(row["image_id"]), category_id=int(row["category_id"]),
                 score=float(row["score"]))
    if key == "bbox":
        clean["bbox"] = [float(v) for v in row["bbox"]]
    elif isinstance(row["segmentation"], dict):
        clean["segmentation"] = dict(row["segmentation"])
    else:
        raise ValueError(f"result row {index}: segm results must be RLE dicts (size, counts), "
                         f"got {type(row['segmentation']).__name__}")
    return clean


def _short(row: dict) -> str:
    text = repr(row)
    return text if len(text) < 120 else text[:117] + "..."


def _columns(rows: list[dict], iou_type: str) -> ResultColumns:
    """The rows as columns; a bad row is found and named (by :func:`_clean_row`)."""
    from detlab.evaluation.cocoeval import ResultColumns

    try:
        return ResultColumns.from_rows(rows, iou_type == "segm")
    except (KeyError, ValueError, TypeError, IndexError):
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise TypeError(f"result row {i} is a {type(row).__name__}, not a dict") from None
            _clean_row(row, i, iou_type)
        raise


def _check_ids(coco_gt: COCO, dets: ResultColumns, img_ids: list[int], cat_ids: list[int],
               iou_type: str) -> None:
    """Name the image and category ids that the ground truth does not know."""
    known_imgs = set(coco_gt.getImgIds())
    unknown = sorted(set(img_ids) - known_imgs)
    if unknown:
        raise ValueError(f"img_ids {unknown[:10]} are not images of the ground truth")
    unknown = sorted(set(np.unique(dets.image_id).tolist()) - known_imgs)
    if unknown:
        raise ValueError(f"results for image ids {unknown[:10]} that the ground truth does not "
                         f"have: are the results and the annotation file of the same set?")
    known_cats = set(coco_gt.getCatIds())
    if not cat_ids:
        raise ValueError("there is no category to evaluate: the ground truth has none, or "
                         "cat_ids is empty")
    unknown = sorted(set(cat_ids) - known_cats)
    if unknown:
        raise ValueError(f"cat_ids {unknown} are not categories of the ground truth "
                         f"(it has {sorted(known_cats)})")
    if iou_type == "proposal":
        return  # proposals are class-agnostic: their category ids do not matter
    unknown = sorted(set(np.unique(dets.category_id).tolist()) - known_cats)
    if unknown:
        raise ValueError(f"results with category ids {unknown} that the ground truth does not "
                         f"have (it has {sorted(known_cats)}): map labels with the dataset's "
                         f"cat_ids")


# --------------------------------------------------------------------------------------------
# the pycocotools engine
# --------------------------------------------------------------------------------------------


def _load_results(coco_gt: COCO, rows: list[dict]) -> COCO:
    """``coco_gt.loadRes(rows)``, also for no rows at all (where ``loadRes`` fails)."""
    from pycocotools.coco import COCO

    if rows:
        return coco_gt.loadRes(rows)
    empty = COCO()
    empty.dataset = dict(images=list(coco_gt.dataset["images"]),
                         categories=list(coco_gt.dataset["categories"]), annotations=[])
    empty.createIndex()
    return empty


def _run_pycocotools(coco_gt: COCO, dets: ResultColumns, params: EvalParams,
                     verbose: bool) -> EvalOutput:
    """Evaluate with ``pycocotools.cocoeval.COCOeval``."""
    from pycocotools.cocoeval import COCOeval

    with _stdout_unless(verbose):
        coco_dt = _load_results(coco_gt, dets.to_rows())
        evaluator = COCOeval(coco_gt, coco_dt, "bbox" if params.iou_type == "proposal"
                             else params.iou_type)
        evaluator.params.imgIds = list(params.img_ids)
        evaluator.params.catIds = list(params.cat_ids)
        evaluator.params.maxDets = list(params.max_dets)
        evaluator.params.iouThrs = np.asarray(params.iou_thrs, dtype=np.float64)
        evaluator.params.useCats = int(params.iou_type != "proposal")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return EvalOutput(np.asarray(evaluator.stats, dtype=np.float64).copy(),
                      evaluator.eval["precision"], summary.getvalue())


def _run_detlab(coco_gt: COCO, dets: ResultColumns, params: EvalParams,
                verbose: bool) -> EvalOutput:
    """Evaluate with detlab's vectorized engine (``detlab.evaluation.cocoeval``): the same
    arrays and stats as pycocotools, many times faster."""
    from detlab.evaluation.cocoeval import evaluate

    accumulated, stats, summary = evaluate(coco_gt, dets, params.img_ids, params.cat_ids,
                                           params.max_dets, params.iou_thrs, params.iou_type)
    if verbose:
        print(summary, end="")
    return EvalOutput(stats, accumulated.precision, summary)


_BACKENDS: dict[str, Callable[..., EvalOutput]] = {"pycocotools": _run_pycocotools,
                                                   "detlab": _run_detlab}


# --------------------------------------------------------------------------------------------
# naming the numbers
# --------------------------------------------------------------------------------------------


def _stat_names(proposal_nums: Sequence[int]) -> list[str]:
    return [name.format(*proposal_nums) for name in _STAT_NAMES]


def _selected_items(metric_items: str | Sequence[str] | None, iou_type: str,
                    names: list[str]) -> list[str]:
    """The stats to report: ``metric_items``, checked, or MMDetection's defaults."""
    if metric_items is None:
        return names[6:] if iou_type == "proposal" else names[:6]
    items = [metric_items] if isinstance(metric_items, str) else list(metric_items)
    unknown = [item for item in items if item not in names]
    if unknown:
        raise KeyError(f"metric items {unknown} are not supported; choose from {names}")
    return items


def _mean_valid(precision: np.ndarray) -> float:
    """Mean of the defined (> -1) precisions, nan when there are none."""
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def _classwise_table(precision: np.ndarray, iou_thrs: np.ndarray, cat_ids: list[int],
                     names: list[str]):
    """One row per category: AP over IoUs, AP at IoU .5 and .75, AP per object size, read from
    ``precision (T, R, K, A, M)`` at all areas and the largest detection budget."""
    import pandas as pd

    t50 = np.flatnonzero(np.isclose(iou_thrs, 0.5))
    t75 = np.flatnonzero(np.isclose(iou_thrs, 0.75))
    rows = []
    position = {c: k for k, c in enumerate(np.unique(cat_ids).tolist())}  # precision's order
    for cat_id, name in zip(cat_ids, names, strict=True):
        per_cat = precision[:, :, position[cat_id], :, -1]  # (T, R, A)
        row = {"class": name, "category_id": cat_id, "AP": _mean_valid(per_cat[:, :, 0]),
               "AP50": _mean_valid(per_cat[t50, :, 0]), "AP75": _mean_valid(per_cat[t75, :, 0])}
        for a, suffix in enumerate(("s", "m", "l"), start=1):
            row[f"AP_{suffix}"] = _mean_valid(per_cat[:, :, a])
        rows.append(row)
    return pd.DataFrame(rows, columns=["class", "category_id", "AP", "AP50", "AP75", "AP_s",
                                       "AP_m", "AP_l"])


def _named_metrics(output: EvalOutput, iou_type: str, items: list[str],
                   names: list[str]) -> dict[str, Any]:
    prefix = "" if iou_type == "proposal" else f"{iou_type}_"
    metrics: dict[str, Any] = {prefix + item: float(output.stats[names.index(item)])
                               for item in items}
    if iou_type != "proposal":
        metrics[f"{iou_type}_mAP_copypaste"] = " ".join(f"{v:.3f}" for v in output.stats[:6])
    metrics["stats"] = [float(v) for v in output.stats]
    metrics["summary"] = output.summary
    return metrics


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------


def _checked_settings(iou_type: str, proposal_nums: Sequence[int], iou_thrs: Any,
                      backend: str) -> tuple[list[int], np.ndarray]:
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {list(IOU_TYPES)}, got {iou_type!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
    nums = [int(n) for n in proposal_nums]
    if len(nums) != 3 or nums != sorted(nums) or nums[0] < 1:
        raise ValueError(f"proposal_nums must be three increasing positive numbers (the "
                         f"detection budgets of the summary), got {tuple(proposal_nums)}")
    if iou_type != "proposal" and 100 not in nums:
        warnings.warn(f"proposal_nums {tuple(nums)} has no 100: pycocotools reads "
                      f"{iou_type}_mAP at 100 detections per image, so it will be -1",
                      UserWarning, stacklevel=3)
    if iou_thrs is None:
        # 0.5:0.05:0.95 built as pycocotools builds it, so 0.5 and 0.75 are found exactly
        thrs = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    else:
        thrs = np.atleast_1d(np.asarray(iou_thrs, dtype=np.float64))
        if thrs.ndim != 1 or not thrs.size or thrs.min() < 0 or thrs.max() > 1:
            raise ValueError(f"iou_thrs must be IoU values in [0, 1], got {iou_thrs!r}")
    return nums, thrs


def _images_to_evaluate(coco_gt: COCO, img_ids: Sequence[int] | None,
                        result_ids: list[int] | None) -> list[int]:
    """``img_ids``; else the images of a ``DetResult`` list; else every ground-truth image."""
    if img_ids is not None:
        ids = [int(i) for i in img_ids]
    elif result_ids is not None:
        ids = result_ids
        total = len(coco_gt.getImgIds())
        if len(set(ids)) < total:
            warnings.warn(f"evaluating the {len(set(ids))} images the results belong to, of "
                          f"{total} in the ground truth; pass img_ids to choose the images",
                          UserWarning, stacklevel=3)
    else:
        ids = list(coco_gt.getImgIds())
    return list(dict.fromkeys(ids))  # an image listed twice would be evaluated twice


def _class_names(coco_gt: COCO, cat_ids: list[int],
                 class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [cat["name"] for cat in coco_gt.loadCats(cat_ids)]
    if len(class_names) != len(cat_ids):
        raise ValueError(f"{len(class_names)} class_names for {len(cat_ids)} cat_ids: pass one "
                         f"name per evaluated category")
    return list(class_names)


def coco_evaluate(gt: str | os.PathLike | dict | COCO, dt: Any, iou_type: str = "bbox",
                  classwise: bool = False, proposal_nums: Sequence[int] = (100, 300, 1000),
                  iou_thrs: Sequence[float] | None = None,
                  metric_items: str | Sequence[str] | None = None,
                  cat_ids: Sequence[int] | None = None, img_ids: Sequence[int] | None = None,
                  class_names: Sequence[str] | None = None, verbose: bool = False,
                  logger: logging.Logger | str | None = None,
                  backend: str = "detlab") -> dict[str, Any]:
    """COCO metrics of detections, named and computed as MMDetection 2.x's
    ``CocoDataset.evaluate(metric=iou_type)``.

    Args:
        gt: the ground truth: a COCO json path, its content (a dict, left unmodified) or a
            ``pycocotools.coco.COCO``.
        dt: the detections: a COCO results json path, a list of COCO result dicts (``bbox`` is
            ``[x, y, w, h]``), or a list of ``DetResult`` (boxes ``(N, 4)`` xyxy in original
            image pixels), one per image of ``img_ids`` (default: each ``meta['img_id']``),
            whose labels map to categories through ``cat_ids[label]``.
        iou_type: ``'bbox'``, ``'segm'`` (results with masks / RLE ``segmentation``) or
            ``'proposal'`` (class-agnostic recall of boxes at ``proposal_nums``).
        classwise: add ``classwise``, a pandas DataFrame with one row per category (``class``,
            ``category_id``, ``AP``, ``AP50``, ``AP75``, ``AP_s``, ``AP_m``, ``AP_l``; nan when
            the category has no ground truth). Ignored for proposals.
        proposal_nums: the three detection budgets per image (pycocotools' ``maxDets``), used
            by every ``iou_type`` as in MMDetection: ``mAP`` is read at 100 detections, the
            other AP numbers and the per-class table at the last budget.
        iou_thrs: IoU thresholds (default 0.50:0.05:0.95).
        metric_items: the stats to report, among ``mAP mAP_50 mAP_75 mAP_s mAP_m mAP_l
            AR@100 AR@300 AR@1000 AR_s@1000 AR_m@1000 AR_l@1000`` (the AR names follow
            ``proposal_nums``); default the six ``mAP*`` ones, the six ``AR*`` for proposals.
        cat_ids: the categories to evaluate, position = label (default: all of ``gt``, in
            file order, as a COCO dataset numbers its labels).
        img_ids: the images to evaluate (default: those of a ``DetResult`` list, else all).
        class_names: names for the per-class table (default: the ``gt`` category names).
        verbose: let pycocotools print its progress, and print the summary (and table).
        logger: a ``logging.Logger`` (or its name) that gets the summary (and table) at INFO
            level, as MMDetection's ``logger`` argument; ``None`` or ``'silent'``: not logged.
        backend: the evaluation engine: ``'detlab'`` (vectorized; identical numbers) or
            ``'pycocotools'`` (the reference).

    Returns:
        ``{iou_type}_{item}`` for each metric item (plain ``item`` for proposals) as full
        precision floats (MMDetection rounds them to 3 decimals; the numbers here are not
        rounded), ``{iou_type}_mAP_copypaste`` (the six AP numbers, 3 decimals), ``stats``
        (the 12 numbers of ``COCOeval.stats``, -1 where undefined), ``summary`` (pycocotools'
        printed table) and, with ``classwise``, ``classwise``. Results without any detection
        are evaluated as such (AP 0 wherever there is ground truth), with a warning.
    """
    max_dets, thrs = _checked_settings(iou_type, proposal_nums, iou_thrs, backend)
    names = _stat_names(max_dets)
    items = _selected_items(metric_items, iou_type, names)
    coco_gt = load_coco_gt(gt, verbose)
    cat_ids = list(coco_gt.getCatIds()) if cat_ids is None else [int(c) for c in cat_ids]
    rows, result_ids = _as_rows(dt, img_ids, cat_ids)
    dets = _columns(rows, iou_type)
    if iou_type == "proposal" and cat_ids:
        # COCOeval pools class-agnostic boxes over params.catIds only, so a proposal's category
        # (MMDetection writes 1, which need not exist) must be one of them to count at all
        dets.category_id[:] = cat_ids[0]
    params = EvalParams(iou_type, _images_to_evaluate(coco_gt, img_ids, result_ids), cat_ids,
                        max_dets, thrs)
    _check_ids(coco_gt, dets, params.img_ids, cat_ids, iou_type)
    if not len(dets):
        warnings.warn("the results hold no detection at all: every metric is 0",
                      UserWarning, stacklevel=2)
    table_names = (_class_names(coco_gt, cat_ids, class_names)
                   if classwise and iou_type != "proposal" else None)
    output = _BACKENDS[backend](coco_gt, dets, params, verbose)
    metrics = _named_metrics(output, iou_type, items, names)
    report = output.summary
    if table_names is not None:
        metrics["classwise"] = _classwise_table(output.precision, thrs, cat_ids, table_names)
        report += metrics["classwise"].to_string(index=False) + "\n"
    _report(report, verbose, logger)
    return metrics


def _report(text: str, verbose: bool, logger: logging.Logger | str | None) -> None:
    if verbose:
        print(text, end="")
    if isinstance(logger, str) and logger != "silent":
        logger = logging.getLogger(logger)
    if isinstance(logger, logging.Logger):
        logger.info("\n%s", text.rstrip("\n"))

"""RescoreExplorer: try post-processing settings on cached detections, without inference.

:func:`cache_raw_detections` runs a detector once with its non-maximum suppression switched off
(``nms.iou_threshold=1.0``: no box overlaps another by more than 1.0), a low score floor and a
large budget, and keeps what comes out. :func:`rescore` then applies a score threshold,
class-wise NMS at any IoU (:func:`torchvision.ops.batched_nms`, as the dense heads do) and a
budget per image to those cached boxes: with the detector's own ``test_cfg`` it gives the
detector's own detections. :class:`RescoreExplorer` puts the three settings on sliders and
shows, for each setting, the COCO metrics (:func:`~detlab.evaluation.coco.coco_evaluate`), the
precision-recall curves and the confusion matrix.
"""

from __future__ import annotations

import contextlib
import copy
import html
import io
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from detlab.structures import DetResult
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

NO_SUPPRESSION = 1.0  # NMS drops a box whose IoU with a better one is above this: never
RAW_META_KEYS = ("raw_score_thr", "raw_max_per_img")  # what a cached result remembers
_METRIC_ITEMS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "AR@100")


# --------------------------------------------------------------------------------------------
# caching: the detector's output before NMS
# --------------------------------------------------------------------------------------------


def raw_test_cfg(test_cfg: Mapping[str, Any], score_thr: float,
                 max_per_img: int) -> dict[str, Any]:
    """A copy of a dense head's ``test_cfg`` that keeps what NMS would remove: ``nms`` at IoU
    1.0 (its other keys, e.g. ``class_agnostic``, kept), ``score_thr`` and ``max_per_img``
    replaced; ``nms_pre`` and ``min_bbox_size`` stay, so the candidates are the same."""
    cfg = copy.deepcopy(dict(test_cfg))
    nms_cfg = dict(cfg.get("nms") or {"type": "nms"})
    nms_cfg["iou_threshold"] = NO_SUPPRESSION
    cfg.update(nms=nms_cfg, score_thr=float(score_thr), max_per_img=int(max_per_img))
    return cfg


def _test_cfg_owners(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that hold a ``test_cfg`` mapping (the detector, its heads)."""
    return [m for m in model.modules() if isinstance(getattr(m, "test_cfg", None), Mapping)
            and m.test_cfg]


@contextlib.contextmanager
def raw_detection_mode(model: nn.Module, score_thr: float = 0.01,
                       max_per_img: int = 1000) -> Iterator[nn.Module]:
    """Within the block, every ``test_cfg`` of ``model`` is :func:`raw_test_cfg`'s; the
    originals come back afterwards, also when the block raises."""
    owners = _test_cfg_owners(model)
    if not owners:
        raise ValueError(f"{type(model).__name__} has no test_cfg to change: build it from a "
                         f"config with model.test_cfg (nms_pre, score_thr, nms, max_per_img)")
    saved = [m.test_cfg for m in owners]
    try:
        for module, cfg in zip(owners, saved, strict=True):
            module.test_cfg = raw_test_cfg(cfg, score_thr, max_per_img)
        yield model
    finally:
        for module, cfg in zip(owners, saved, strict=True):
            module.test_cfg = cfg


def _as_loader(data: Any, samples_per_gpu: int) -> Iterable:
    """``data`` itself when it is a data loader, else a sequential loader of the dataset."""
    if isinstance(data, torch.utils.data.DataLoader):
        return data
    from detlab.data import build_dataloader

    return build_dataloader(data, samples_per_gpu=samples_per_gpu, workers_per_gpu=0,
                            shuffle=False, dist=False)


def cache_raw_detections(model: nn.Module, data_loader_or_dataset: Any,
                         score_thr: float = 0.01, max_per_img: int = 1000,
                         samples_per_gpu: int = 2, progress: bool = False) -> list[DetResult]:
    """The detections of ``model`` on every image before non-maximum suppression: the
    ``max_per_img`` best-scoring ones above ``score_thr`` (boxes ``(N, 4)`` xyxy in original
    image pixels), one DetResult per image in the loader's order.

    The model's ``test_cfg`` is changed only while it runs (:func:`raw_detection_mode`).
    :func:`rescore` with the model's own ``test_cfg`` then reproduces its detections,
    provided its ``score_thr`` is at least ``score_thr`` and, per image, the boxes it keeps lie
    within the cached ``max_per_img`` (always so when an image has at most ``max_per_img``
    candidates). With test-time augmentation the cache holds the merged boxes of all
    augmentations, so the detector's two rounds of NMS are not reproduced exactly.

    Args:
        model: a detector whose dense head post-processes by ``test_cfg``.
        data_loader_or_dataset: a test data loader, or a test-mode dataset (then loaded in
            order, ``samples_per_gpu`` images a batch).
        score_thr: the score floor of the cache.
        max_per_img: the most detections kept per image.
        progress: show a progress bar.
    """
    from detlab.engine.tester import single_gpu_test

    loader = _as_loader(data_loader_or_dataset, samples_per_gpu)
    with raw_detection_mode(model, score_thr, max_per_img):
        results = single_gpu_test(model, loader, progress=progress)
    for result in results:
        result.meta.update(zip(RAW_META_KEYS, (float(score_thr), int(max_per_img)), strict=True))
    return results


# --------------------------------------------------------------------------------------------
# re-scoring
# --------------------------------------------------------------------------------------------


def rescore_result(result: DetResult, score_thr: float, nms_iou: float, max_dets: int,
                   class_agnostic: bool = False) -> DetResult:
    """One image's cached detections post-processed as a dense head does: those scoring above
    ``score_thr`` (strictly, as the head), NMS at ``nms_iou`` per class (across classes with
    ``class_agnostic``), the ``max_dets`` best (all when ``max_dets <= 0``)."""
    from torchvision.ops import batched_nms, nms

    kept = result[result.scores > score_thr]
    if class_agnostic:
        keep = nms(kept.boxes, kept.scores, float(nms_iou))
    else:
        keep = batched_nms(kept.boxes, kept.scores, kept.labels, float(nms_iou))
    if max_dets > 0:
        keep = keep[:max_dets]
    return kept[keep]


def rescore(results: Sequence[DetResult], score_thr: float, nms_iou: float, max_dets: int,
            class_agnostic: bool = False) -> list[DetResult]:
    """:func:`rescore_result` of every image."""
    return [rescore_result(r, score_thr, nms_iou, max_dets, class_agnostic) for r in results]


def settings_of(test_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The rescoring settings a dense head's ``test_cfg`` describes (MMDetection's defaults
    for what it leaves out)."""
    cfg = dict(test_cfg or {})
    nms_cfg = dict(cfg.get("nms") or {})
    return dict(score_thr=float(cfg.get("score_thr", 0.05)),
                nms_iou=float(nms_cfg.get("iou_threshold", 0.5)),
                max_dets=int(cfg.get("max_per_img", 100)),
                class_agnostic=bool(nms_cfg.get("class_agnostic", False)))


# --------------------------------------------------------------------------------------------
# evaluation against the dataset
# --------------------------------------------------------------------------------------------


class EvalTarget:
    """What detections are evaluated against: a built dataset (its annotations as COCO, its
    images in order, its ``cat_ids`` and ``CLASSES``), or COCO ground truth (a json path, its
    content or a pycocotools ``COCO``; the images are then the results' ``meta['img_id']``)."""

    def __init__(self, dataset: Any) -> None:
        from detlab.evaluation.coco import load_coco_gt

        self.img_ids: list[int] | None = None
        self.cat_ids: list[int] | None = None
        self.class_names: list[str] | None = None
        if hasattr(dataset, "to_coco") or hasattr(dataset, "coco_image_ids"):
            coco = getattr(dataset, "coco", None)
            self.gt = coco if hasattr(coco, "anns") else load_coco_gt(dataset.to_coco())
            self.img_ids = [int(i) for i in dataset.coco_image_ids()]
            self.cat_ids = [int(c) for c in dataset.cat_ids]
            self.class_names = [str(n) for n in dataset.CLASSES]
        else:
            self.gt = load_coco_gt(dataset)

    def arguments(self) -> dict[str, Any]:
        """The ``img_ids``, ``cat_ids`` and ``class_names`` of an evaluation."""
        return dict(img_ids=self.img_ids, cat_ids=self.cat_ids, class_names=self.class_names)

    def evaluate(self, results: Sequence[DetResult]) -> dict[str, float]:
        """COCO box metrics (``bbox_mAP`` ..., ``bbox_AR@100``) of ``results``."""
        from detlab.evaluation.coco import coco_evaluate

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # no detection left: every metric 0
            out = coco_evaluate(self.gt, list(results), metric_items=list(_METRIC_ITEMS),
                                **self.arguments())
        return {k: v for k, v in out.items() if isinstance(v, float)}


# --------------------------------------------------------------------------------------------
# the widget
# --------------------------------------------------------------------------------------------


class RescoreExplorer(ControlsMixin, WidgetView):
    """Sliders for the score threshold, the NMS IoU and the detections kept per image, applied
    to cached raw detections (:func:`cache_raw_detections`); each setting shows its COCO
    metrics, precision-recall curves and confusion matrix.

    Args:
        raw_results: the cached detections, one per image of ``dataset``, in its order.
        dataset: the evaluated dataset (a built one, in the results' order), or COCO ground
            truth (then each result's ``meta['img_id']`` names its image).
        test_cfg: the starting settings (default MMDetection's ``score_thr=0.05``, NMS at
            0.5, 100 detections); pass the detector's ``test_cfg`` to start from its output.
        pr_iou: the IoU of the precision-recall curves and of the confusion matrix.

    Attributes:
        settings: ``score_thr``, ``nms_iou``, ``max_dets``, ``class_agnostic``.
        results: the re-scored detections.
        metrics: ``bbox_mAP``, ``bbox_mAP_50`` ..., ``bbox_AR@100`` and ``num_boxes``.

    The controls carry CSS classes: ``detlab-rescore-score``, ``detlab-rescore-nms``,
    ``detlab-rescore-max-dets``, ``detlab-rescore-class-agnostic``, ``detlab-rescore-view``,
    ``detlab-rescore-metrics``, ``detlab-rescore-status``.
    """

    def __init__(self, raw_results: Sequence[DetResult], dataset: Any,
                 test_cfg: Mapping[str, Any] | None = None, pr_iou: float = 0.5) -> None:
        self.raw_results = [r.cpu() for r in raw_results]
        self.target = EvalTarget(dataset)
        if self.target.img_ids is not None and len(self.target.img_ids) != len(raw_results):
            raise ValueError(f"{len(raw_results)} cached results for a dataset of "
                             f"{len(self.target.img_ids)} images: cache the same dataset")
        self.pr_iou = float(pr_iou)
        self.floor = max((r.meta.get("raw_score_thr", 0.0) for r in raw_results), default=0.0)
        self.budget = max([100, *(len(r) for r in raw_results)])
        self.settings = settings_of(test_cfg)
        self.results: list[DetResult] = []
        self.metrics: dict[str, float] = {}
        self._table: pd.DataFrame | None = None
        self._syncing = False
        self._png = b""
        self._build_widgets()
        self.set()

    # ---- state ---------------------------------------------------------------------------

    def set(self, score_thr: float | None = None, nms_iou: float | None = None,
            max_dets: int | None = None, class_agnostic: bool | None = None) -> dict[str, float]:
        """Re-score the cached detections with the given settings (the others stay) and
        evaluate them; returns :attr:`metrics`."""
        settings = dict(self.settings)
        given = dict(score_thr=score_thr, nms_iou=nms_iou, max_dets=max_dets,
                     class_agnostic=class_agnostic)
        settings.update({k: v for k, v in given.items() if v is not None})
        if not 0.0 <= settings["nms_iou"] <= 1.0:
            raise ValueError(f"nms_iou must be in [0, 1], got {settings['nms_iou']}")
        self.results = rescore(self.raw_results, settings["score_thr"], settings["nms_iou"],
                               int(settings["max_dets"]), bool(settings["class_agnostic"]))
        self.settings = settings
        self.metrics = self.target.evaluate(self.results)
        self.metrics["num_boxes"] = sum(len(r) for r in self.results)
        self._table = None
        self._refresh()
        return self.metrics

    @property
    def match_table(self) -> pd.DataFrame:
        """The match table of the re-scored detections at ``pr_iou``."""
        if self._table is None:
            from detlab.evaluation.matching import match_detections

            self._table = match_detections(self.target.gt, self.results, iou_thrs=[self.pr_iou],
                                           **self.target.arguments())
        return self._table

    def pr_curves(self) -> pd.DataFrame:
        """Per-class precision-recall curves of the re-scored detections at ``pr_iou``."""
        from detlab.evaluation.curves import pr_curves

        return pr_curves(self.match_table, self.pr_iou)

    def confusion(self) -> pd.DataFrame:
        """The confusion matrix of the re-scored detections (every kept detection counts: they
        all score above the threshold) at ``pr_iou``."""
        from detlab.evaluation.confusion import confusion_matrix

        return confusion_matrix(self.target.gt, self.results, score_thr=0.0,
                                iou_thr=self.pr_iou, **self.target.arguments())

    # ---- pictures ------------------------------------------------------------------------

    def view_image(self) -> np.ndarray:
        """PR curves and confusion matrix side by side, as ``H x W x 3`` uint8 RGB."""
        from detlab.viz.analysis import plot_confusion_matrix, plot_pr_curves
        from detlab.viz.draw import image_grid

        curves = self.pr_curves()
        pr = plot_pr_curves(curves, title=f"precision-recall at IoU {self.pr_iou:.2f}")
        confusion = plot_confusion_matrix(self.confusion(), normalize=False)
        pictures = [_png_array(figure_png(pr)), _png_array(figure_png(confusion))]
        return image_grid(pictures, titles=[self._settings_text(), self._metrics_text()])

    def _settings_text(self) -> str:
        s = self.settings
        nms = "class-agnostic NMS" if s["class_agnostic"] else "NMS"
        return (f"score > {s['score_thr']:.2f}, {nms} IoU {s['nms_iou']:.2f}, "
                f"max {int(s['max_dets'])} per image")

    def _metrics_text(self) -> str:
        m = self.metrics
        return (f"{int(m['num_boxes'])} boxes, mAP {m['bbox_mAP']:.3f}, mAP50 "
                f"{m['bbox_mAP_50']:.3f}, AR@100 {m['bbox_AR@100']:.3f}")

    def render_png(self) -> bytes:
        """The curves and the confusion matrix of the current settings, as PNG."""
        return self._png or array_png(self.view_image())

    def summary(self) -> str:
        return f"RescoreExplorer: {self._settings_text()}: {self._metrics_text()}"

    # ---- widgets -------------------------------------------------------------------------

    def _build_widgets(self) -> None:
        import ipywidgets as w

        s = self.settings
        self._score = w.FloatSlider(value=max(s["score_thr"], self.floor), min=self.floor,
                                    max=1.0, step=0.01, description="score >",
                                    continuous_update=False, readout_format=".2f")
        self._nms = w.FloatSlider(value=s["nms_iou"], min=0.0, max=1.0, step=0.05,
                                  description="NMS IoU", continuous_update=False)
        self._max_dets = w.IntSlider(value=min(int(s["max_dets"]), self.budget), min=1,
                                     max=self.budget, description="max dets",
                                     continuous_update=False)
        self._agnostic = w.Checkbox(value=s["class_agnostic"], description="class-agnostic",
                                    indent=False)
        self._image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self._metrics_html, self._status = w.HTML(), w.HTML()
        for attribute, css in dict(_score="score", _nms="nms", _max_dets="max-dets",
                                   _agnostic="class-agnostic", _image="view",
                                   _metrics_html="metrics", _status="status").items():
            getattr(self, attribute).add_class(f"detlab-rescore-{css}")
        for control in (self._score, self._nms, self._max_dets, self._agnostic):
            control.observe(self._on_control, names="value")
        controls = [self._score, self._nms, self._max_dets, self._agnostic]
        self.widget = w.VBox([control_row(w, controls),
                              self._status, self._metrics_html, self._image])
        self.widget.add_class("detlab-rescore-explorer")

    def _on_control(self, change: Mapping[str, Any]) -> None:
        if self._syncing:
            return
        self._safely(self.set, score_thr=self._score.value, nms_iou=self._nms.value,
                     max_dets=self._max_dets.value, class_agnostic=self._agnostic.value)

    def _refresh(self) -> None:
        """Bring the controls, the metrics and the picture in line with the state."""
        self._png = array_png(self.view_image())
        self._sync_controls()
        self._image.value = self._png
        self._metrics_html.value = _metrics_html(self.metrics)
        below = self.settings["score_thr"] < self.floor
        self._status.value = status_html(
            f"the cache holds no detection scoring {self.floor:.2f} or less: a lower "
            f"threshold gives what it gives at {self.floor:.2f}") if below else ""

    def _sync_controls(self) -> None:
        s = self.settings
        with self._quiet():
            self._score.value = max(float(s["score_thr"]), self.floor)
            self._nms.value = float(s["nms_iou"])
            self._max_dets.value = min(max(int(s["max_dets"]), 1), self.budget)
            self._agnostic.value = bool(s["class_agnostic"])


def _png_array(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).copy()


def _metrics_html(metrics: Mapping[str, float]) -> str:
    cells = "".join(f"<th>{html.escape(k.removeprefix('bbox_'))}</th>" for k in metrics)
    values = "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{v}</td>"
                     for v in metrics.values())
    return f"<table><tr>{cells}</tr><tr>{values}</tr></table>"



__all__ = ["RescoreExplorer", "cache_raw_detections", "rescore", "rescore_result",
           "raw_detection_mode", "raw_test_cfg", "settings_of", "EvalTarget"]

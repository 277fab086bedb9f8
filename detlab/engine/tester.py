"""Testing: run a detector over a dataset (``single_gpu_test``), and ``detlab.test(cfg,
checkpoint)``, which builds the test set and the model from a config, evaluates and saves."""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from detlab import safe_pickle
from detlab.checkpoint import load_checkpoint
from detlab.config import Config, ConfigError, load_config
from detlab.data import build_dataset
from detlab.dist import broadcast_object, get_dist_info, init_dist, select_device
from detlab.engine.loaders import build_test_loader
from detlab.engine.logging import progress_bar
from detlab.models import build_model
from detlab.registry import check_arguments
from detlab.structures import Batch, DetResult


def merge_aug_results(per_aug: Sequence[DetResult], nms_iou: float = 0.5,
                      max_per_img: int = 100) -> DetResult:
    """One image's detections from several test-time augmentations (each already in original
    image pixels), joined and de-duplicated by class-wise NMS; the kept detections keep their
    masks when every augmentation has masks."""
    first = per_aug[0]
    boxes = torch.cat([r.boxes for r in per_aug])
    scores = torch.cat([r.scores for r in per_aug])
    labels = torch.cat([r.labels for r in per_aug])
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
    masks = None
    if all(r.masks is not None for r in per_aug):
        masks = torch.cat([r.masks for r in per_aug])[keep]
    return DetResult(boxes[keep], scores[keep], labels[keep], masks=masks,
                     class_names=first.class_names, meta=dict(first.meta), image=first.image)


def _predict(model: nn.Module, batch: Batch | list[Batch], device: torch.device) -> list[DetResult]:
    if isinstance(batch, Batch):
        return model.predict(batch.to(device))
    batches = [b.to(device) for b in batch]
    if hasattr(model, "predict_aug"):  # a detector with its own merging (CenterNet's flip test)
        return model.predict_aug(batches)
    per_aug = [model.predict(b) for b in batches]  # list over augs of lists over images
    test_cfg = getattr(model, "test_cfg", None) or {}
    test_cfg = test_cfg.get("rcnn") or test_cfg  # a two-stage detector's final settings
    nms = (test_cfg.get("nms") or {}).get("iou_threshold", 0.5)
    max_per_img = test_cfg.get("max_per_img", 100)
    return [merge_aug_results(list(image_results), nms, max_per_img)
            for image_results in zip(*per_aug, strict=True)]


def _show(results: Sequence[DetResult], out_dir: str, score_thr: float) -> None:
    from detlab.viz.draw import show_result

    for result in results:
        filename = result.meta.get("filename")
        if filename is None:
            continue
        name = result.meta.get("ori_filename") or os.path.basename(filename)
        show_result(filename, result, score_thr=score_thr, out_file=os.path.join(out_dir, name))


@torch.no_grad()
def single_gpu_test(model: nn.Module, data_loader: Iterable, show_dir: str | None = None,
                    show_score_thr: float = 0.3, progress: bool = True) -> list[DetResult]:
    """The model's detections for every image of ``data_loader``, in its order (on the CPU).

    Batches of several test-time augmentations are merged per image: by the detector's own
    ``predict_aug(batches)`` when it has one (CenterNet), otherwise by class-wise NMS over the
    augmentations' detections. In a process group each
    process runs its share and the results are gathered (every process gets them all).
    ``show_dir`` receives each image with its detections above ``show_score_thr`` drawn.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = data_loader
    if progress and get_dist_info()[0] == 0:
        batches = progress_bar(data_loader, "test")
    results: list[DetResult] = []
    for batch in batches:
        predicted = [r.cpu() for r in _predict(model, batch, device)]
        if show_dir:
            _show(predicted, show_dir, show_score_thr)
        results.extend(predicted)
    model.train(was_training)
    return _gather(results, len(getattr(data_loader, "dataset", results)))


def _gather(results: list[DetResult], size: int) -> list[DetResult]:
    """Interleave the shares of all processes back into dataset order (DistributedSampler
    deals indices round-robin and pads the last round)."""
    rank, world = get_dist_info()
    if world == 1:
        return results
    import torch.distributed as dist

    shares: list[list[DetResult]] = [[] for _ in range(world)]
    dist.all_gather_object(shares, results)
    ordered = [r for round_ in zip(*shares, strict=False) for r in round_]
    return ordered[:size]


def _mmdet_row(result: DetResult, num_classes: int) -> Any:
    """One image of MMDetection's ``results.pkl``: per-class ``(n, 5)`` arrays; with masks,
    the pair (those arrays, per-class lists of the masks' compressed RLE dicts in the same
    order) that MMDetection's mask models write."""
    boxes = result.to_mmdet(num_classes)
    if result.masks is None:
        return boxes
    from pycocotools import mask as mask_utils

    labels = result.labels.cpu().numpy()
    masks = result.masks.detach().cpu().numpy().astype(np.uint8)
    segms = [[mask_utils.encode(np.asfortranarray(m)) for m in masks[labels == c]]
             for c in range(num_classes)]
    if result.mask_scores is not None:  # Mask Scoring R-CNN's (segms, mask scores) pair
        scores = result.mask_scores.detach().cpu().numpy().astype(np.float32)
        return boxes, (segms, [scores[labels == c] for c in range(num_classes)])
    return boxes, segms


def _is_scored_mask_row(row: Any) -> bool:
    """Whether an image of a ``results.pkl`` is Mask Scoring R-CNN's (per-class boxes,
    (per-class RLE lists, per-class mask scores))."""
    return (isinstance(row, tuple) and len(row) == 2 and isinstance(row[1], tuple)
            and len(row[1]) == 2 and isinstance(row[1][0], list)
            and all(isinstance(c, (list, tuple)) for c in row[1][0])
            and all(isinstance(c, np.ndarray) for c in row[1][1]))


def _is_mask_row(row: Any) -> bool:
    """Whether an image of a ``results.pkl`` is a mask model's (per-class boxes, per-class
    lists of RLE dicts) pair."""
    return (isinstance(row, tuple) and len(row) == 2 and isinstance(row[1], (list, tuple))
            and all(isinstance(c, (list, tuple)) for c in row[1]))


def _from_mask_row(row: tuple, class_names: Sequence[str] | None, index: int) -> DetResult:
    """A DetResult with masks from a mask model's ``(per-class boxes, per-class RLEs)``."""
    from detlab.data.masks import decode_rles

    per_class, segms = row
    arrays = [np.asarray(a, dtype=np.float32).reshape(-1, 5) for a in per_class]
    if [len(a) for a in arrays] != [len(c) for c in segms]:
        raise ValueError(f"image {index} of the results has {[len(a) for a in arrays]} boxes "
                         f"but {[len(c) for c in segms]} masks per class")
    result = DetResult.from_mmdet(arrays, class_names)
    rles = [rle for c in segms for rle in c]
    if not rles:
        return result
    dets = np.concatenate(arrays)
    order = np.argsort(-dets[:, 4], kind="stable")  # from_mmdet's order
    result.masks = torch.from_numpy(decode_rles(rles)[order]).bool()
    return result


def _from_scored_mask_row(row: tuple, class_names: Sequence[str] | None,
                          index: int) -> DetResult:
    """A DetResult with masks and mask scores from Mask Scoring R-CNN's row."""
    per_class, (segms, scores) = row
    result = _from_mask_row((per_class, segms), class_names, index)
    scores = [np.asarray(c, dtype=np.float32).reshape(-1) for c in scores]
    if len(result) and sum(len(c) for c in scores) == len(result):
        dets = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1, 5)
                               for a in per_class])
        order = np.argsort(-dets[:, 4], kind="stable")  # from_mmdet's order
        result.mask_scores = torch.from_numpy(np.concatenate(scores)[order])
    return result


def save_results(results: Sequence[DetResult], path: str, num_classes: int,
                 proposals: bool = False) -> str:
    """Write results as MMDetection 2.x's ``results.pkl``: per image, per class ``(n, 5)``
    (with masks, the pair of those and per-class lists of RLE dicts, as MMDetection's mask
    models); with ``proposals`` (an RPN's results), per image one ``(n, 5)`` array of boxes
    and scores, the proposal file a Fast R-CNN reads (``proposal_file``)."""
    if not path.endswith((".pkl", ".pickle")):
        raise ValueError(f"--out must be a .pkl file, got {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    rows = [np.concatenate([r.boxes.detach().cpu().numpy(),
                            r.scores.detach().cpu().numpy()[:, None]], axis=1)
            .astype(np.float32) if proposals else _mmdet_row(r, num_classes) for r in results]
    with open(tmp, "wb") as f:
        pickle.dump(rows, f)
    os.replace(tmp, path)
    return path


def load_results(path: str, class_names: Sequence[str] | None = None,
                 trust_pickle: bool = False) -> list[DetResult]:
    """Read a ``results.pkl`` (MMDetection 2.x's per-class arrays, with a mask model's RLEs,
    or an RPN's one ``(n, 5)`` array per image, read as detections of class 0) back into
    DetResults.

    The pickle is read with :func:`detlab.safe_pickle.load`: lists and numpy arrays only, so a
    crafted file cannot run code; ``trust_pickle=True`` reads any pickle (a trusted file)."""
    raw = safe_pickle.load(path, trust=trust_pickle)
    if isinstance(raw, list) and raw and all(isinstance(a, np.ndarray) and a.ndim == 2
                                             and a.shape[1] == 5 for a in raw):
        return [DetResult(torch.from_numpy(a[:, :4].astype(np.float32)),
                          torch.from_numpy(a[:, 4].astype(np.float32)),
                          torch.zeros(len(a), dtype=torch.long), class_names=class_names)
                for a in raw]
    if isinstance(raw, list) and raw and all(_is_scored_mask_row(row) for row in raw):
        return [_from_scored_mask_row(row, class_names, i) for i, row in enumerate(raw)]
    if isinstance(raw, list) and raw and all(_is_mask_row(row) for row in raw):
        return [_from_mask_row(row, class_names, i) for i, row in enumerate(raw)]
    if not isinstance(raw, list) or (raw and not isinstance(raw[0], (list, tuple))):
        raise ValueError(f"{path} does not hold MMDetection-style results (a list, per image, of "
                         f"per-class (n, 5) arrays, or of one (n, 5) array of proposals)")
    return [DetResult.from_mmdet([np.asarray(a) for a in per_class], class_names)
            for per_class in raw]


def format_results(dataset: Any, results: Sequence[DetResult], jsonfile_prefix: str
                   ) -> dict[str, str]:
    """Write the results as COCO result json files for a submission (e.g. COCO test-dev):
    ``<jsonfile_prefix>.bbox.json`` (and ``.segm.json`` when there are masks). Returns the paths
    by kind."""
    from detlab.evaluation.coco import dump_results

    if len(results) != len(dataset):
        raise ValueError(f"{len(results)} results for a dataset of {len(dataset)} images")
    img_ids = dataset.coco_image_ids()
    paths = {"bbox": dump_results(results, img_ids, dataset.cat_ids,
                                  f"{jsonfile_prefix}.bbox.json")}
    if any(r.masks is not None for r in results):
        paths["segm"] = paths["bbox"][:-len(".bbox.json")] + ".segm.json"
        dump_results(results, img_ids, dataset.cat_ids, paths["segm"])
    return paths


def check_evaluate_options(dataset: Any, options: Mapping[str, Any], path: str) -> None:
    """Raise a ConfigError naming ``path`` (``evaluation``, ``--eval-options``) if
    ``dataset.evaluate`` would reject one of ``options`` (``metrc=...``, ``clswise=True``), with
    the closest names it takes -- before a run, not after its first epoch."""
    check_arguments(dataset.evaluate, dict(options, results=None),
                    f"{type(dataset).__name__}.evaluate", path)


@torch.no_grad()
def evaluate_model(model: nn.Module, data_loader: Any, logger: Any = None,
                   progress: bool = True, **options: Any) -> dict[str, Any]:
    """Detect on every image of ``data_loader`` (each process its share, gathered) and evaluate
    once, in the main process, with ``dataset.evaluate(results, **options)``; every process gets
    the metrics. ``logger`` receives the per-class tables where the dataset writes them."""
    results = single_gpu_test(model, data_loader, progress=progress)
    metrics: dict[str, Any] | None = None
    if get_dist_info()[0] == 0:
        dataset = data_loader.dataset
        if logger is not None and "logger" in inspect.signature(dataset.evaluate).parameters:
            options = dict(options, logger=options.get("logger", logger))
        metrics = dict(dataset.evaluate(results, **options))
    return broadcast_object(metrics)


def build_test_objects(cfg: Config, checkpoint: str | None, device: torch.device,
                       split: str = "test", allow_partial: bool = False
                       ) -> tuple[nn.Module, Any, Any]:
    """The model (with the checkpoint's weights and classes), dataset and loader of
    ``data.<split>`` in test mode. The checkpoint loads strictly: a mismatch names the first
    offending keys and the config keys to change, unless ``allow_partial`` (then what matches
    loads, and the rest is reported)."""
    loader = build_test_loader(cfg, split, get_dist_info()[1] > 1)
    dataset = loader.dataset
    model = build_model(cfg.model)
    classes = None
    if checkpoint:
        meta = load_checkpoint(model, checkpoint, map_location="cpu",
                               strict=not allow_partial)["meta"]
        classes = meta.get("CLASSES")
    model.CLASSES = tuple(classes or dataset.CLASSES)
    return model.to(device).eval(), dataset, loader


def test(cfg: str | Config | Mapping, checkpoint: str | None, eval: Sequence[str] | str | None = (
        "bbox",), out: str | None = None, classwise: bool = False, show_dir: str | None = None,
         show_score_thr: float = 0.3, device: str | None = None,
         cfg_options: Mapping[str, Any] | Iterable[str] | None = None,
         eval_options: Mapping[str, Any] | None = None, split: str = "test",
         format_only: bool = False, progress: bool = True, allow_partial: bool = False,
         launcher: str | None = None, gpu_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Detect on ``data.<split>`` with the weights of ``checkpoint`` and evaluate.

    Returns the metrics (MMDetection's names, e.g. ``bbox_mAP``) plus ``results`` (the list of
    DetResult). ``out`` saves the results as a ``.pkl``; ``show_dir`` saves pictures;
    ``format_only`` writes COCO result files instead of evaluating (``eval_options`` must give
    ``jsonfile_prefix``), e.g. for a COCO test-dev submission. The checkpoint must match the
    config's model (``allow_partial=True`` loads what matches, with a report). ``launcher``
    (``'pytorch'``, ``'slurm'``, ``'none'``; default: read from the environment) and ``gpu_ids``
    as MMDetection's ``tools/test.py``.
    """
    cfg = load_config(cfg, cfg_options)
    init_dist(launcher, cfg.get("dist_params"))
    device = select_device(device or cfg.get("device"), gpu_ids or cfg.get("gpu_ids"))
    model, dataset, loader = build_test_objects(cfg, checkpoint, device, split, allow_partial)
    options = _metric_options(eval, classwise, eval_options, format_only)
    if options is not None:
        check_evaluate_options(dataset, options, "--eval-options")
    results = single_gpu_test(model, loader, show_dir, show_score_thr, progress)
    output: dict[str, Any] = {}
    if get_dist_info()[0] == 0:
        if out:
            save_results(results, out, len(model.CLASSES),
                         proposals=getattr(model, "returns_proposals", False))
        output.update(_evaluate_or_format(dataset, results, options, eval_options,
                                          format_only))
    output["results"] = results
    return output


def _metric_options(eval: Any, classwise: bool, eval_options: Mapping[str, Any] | None,
                    format_only: bool) -> dict[str, Any] | None:
    """The keyword arguments of ``dataset.evaluate`` (None when nothing is evaluated)."""
    metrics = [eval] if isinstance(eval, str) else list(eval or [])
    if format_only or not metrics:
        return None
    options = dict(eval_options or {})
    options.setdefault("classwise", classwise)
    return dict(options, metric=metrics)


def _evaluate_or_format(dataset: Any, results: Sequence[DetResult],
                        options: Mapping[str, Any] | None,
                        eval_options: Mapping[str, Any] | None, format_only: bool
                        ) -> dict[str, Any]:
    if format_only:
        prefix = dict(eval_options or {}).get("jsonfile_prefix")
        if not prefix:
            raise ConfigError("format_only needs eval_options jsonfile_prefix=PATH/PREFIX (the "
                              "result files become PREFIX.bbox.json ...)")
        return {"result_files": format_results(dataset, results, prefix)}
    if options is None:
        return {}
    return dict(dataset.evaluate(results, **options))


def eval_metric(cfg: str | Config | Mapping, results: str | Sequence[DetResult],
                eval: Sequence[str] | str = ("bbox",), format_only: bool = False,
                eval_options: Mapping[str, Any] | None = None,
                cfg_options: Mapping[str, Any] | Iterable[str] | None = None,
                split: str = "test", trust_pickle: bool = False) -> dict[str, Any]:
    """Evaluate saved results (a ``results.pkl`` from ``test(out=...)``) on ``data.<split>``,
    as MMDetection's ``tools/analysis_tools/eval_metric.py``. The pickle is read with a
    restricted unpickler (arrays and plain data) unless ``trust_pickle``."""
    cfg = load_config(cfg, cfg_options)
    split_cfg = dict(cfg.data[split])
    split_cfg.pop("samples_per_gpu", None)
    dataset = build_dataset(split_cfg, dict(test_mode=True), _path=f"data.{split}")
    options = _metric_options(eval, False, eval_options, format_only)
    if options is not None:
        check_evaluate_options(dataset, options, "--eval-options")
    if isinstance(results, str):
        results = load_results(results, dataset.CLASSES, trust_pickle=trust_pickle)
    return _evaluate_or_format(dataset, results, options, eval_options, format_only)


test.__test__ = False  # a library function, not a test for pytest to collect

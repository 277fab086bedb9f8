"""Look at what a pipeline does to the data.

- :func:`pipeline_steps`: one sample after each pipeline step -- the image as a viewer shows it,
  its boxes, labels and masks, and which boxes the step dropped, clipped or brought in (boxes
  are followed by ``gt_instance_ids``, which every detlab transform keeps in step). The basis
  of a step-through widget.
- :func:`browse_dataset`: pictures of training samples with their boxes, written to a folder,
  as MMDetection's ``tools/misc/browse_dataset.py`` does.
"""

from __future__ import annotations

import bisect
import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detlab.data.transforms.compose import Compose

DEFAULT_SKIP_TYPES = ("DefaultFormatBundle", "Normalize", "Collect")
_BORDER_EPS = 1e-3


# --------------------------------------------------------------------------------------------
# displayable pictures of samples
# --------------------------------------------------------------------------------------------


def _norm_cfg(results: dict[str, Any]) -> dict[str, Any] | None:
    metas = results.get("img_metas")
    if "img_norm_cfg" in results:
        return results["img_norm_cfg"]
    return metas.get("img_norm_cfg") if isinstance(metas, dict) else None


def _first_augmentation(results: dict[str, Any]) -> dict[str, Any]:
    """A test-time-augmented sample (each key a list) reduced to its first augmentation."""
    if isinstance(results.get("img"), list):
        return {k: (v[0] if isinstance(v, list) and v else v) for k, v in results.items()}
    return results


def display_image(results: dict[str, Any], loaded_as_bgr: bool = True) -> np.ndarray | None:
    """The sample's image as ``H x W x 3`` uint8 RGB for display, or None before loading.

    Undoes what formatting did: ``C x H x W`` tensors go back to ``H x W x C``, ``Normalize``
    is reversed from ``img_norm_cfg`` (in the sample or its ``img_metas``), the channels are
    put in RGB order (images load as BGR unless ``loaded_as_bgr`` is False; ``Normalize
    (to_rgb=True)`` swaps them) and values are clipped to ``[0, 255]``."""
    results = _first_augmentation(results)
    img = results.get("img")
    if img is None:
        return None
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
        img = img.transpose(1, 2, 0) if img.ndim == 3 else img
    img = np.asarray(img, dtype=np.float32)
    norm = _norm_cfg(results)
    if norm is not None:
        img = img * np.asarray(norm["std"], np.float32) + np.asarray(norm["mean"], np.float32)
    if img.ndim == 2 or img.shape[2] == 1:
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    bgr = loaded_as_bgr != bool(norm is not None and norm.get("to_rgb"))
    img = img[..., :3][..., ::-1] if bgr else img[..., :3]
    return np.ascontiguousarray(np.rint(img).clip(0, 255).astype(np.uint8))


def _numpy(value: Any, dtype: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _masks_array(masks: Any) -> np.ndarray | None:
    if masks is None:
        return None
    if hasattr(masks, "to_ndarray"):
        masks = masks.to_ndarray()
    return _numpy(masks, bool)


def _image_shape(results: dict[str, Any]) -> tuple[int, int] | None:
    results = _first_augmentation(results)
    shape = results.get("img_shape") or (results.get("img_metas") or {}).get("img_shape")
    return None if shape is None else (int(shape[0]), int(shape[1]))


# --------------------------------------------------------------------------------------------
# following boxes through the steps
# --------------------------------------------------------------------------------------------


def _touches_border(boxes: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    if shape is None or len(boxes) == 0:
        return np.zeros(len(boxes), dtype=bool)
    h, w = shape
    return ((boxes[:, 0] <= _BORDER_EPS) | (boxes[:, 1] <= _BORDER_EPS)
            | (boxes[:, 2] >= w - _BORDER_EPS) | (boxes[:, 3] >= h - _BORDER_EPS))


class _Tracker:
    """Gives boxes ids when they appear and says which ids each step dropped, clipped, added."""

    def __init__(self) -> None:
        self.ids: np.ndarray | None = None
        self.touching: dict[int, bool] = {}

    def ids_of(self, results: dict[str, Any], boxes: np.ndarray) -> tuple[np.ndarray, bool]:
        """The ids of ``boxes`` and whether they could be followed (set them if new)."""
        ids = results.get("gt_instance_ids")
        if ids is not None and len(ids) == len(boxes):
            return _numpy(ids, np.int64), True
        if ids is None and self.ids is not None and len(self.ids) == len(boxes):
            return self.ids, True  # formatting dropped the key but kept the boxes in order
        # boxes seen for the first time, or changed by a step that does not keep the ids
        followed = self.ids is None
        self.ids, self.touching = None, {}
        fresh = np.arange(len(boxes), dtype=np.int64)
        if isinstance(results.get("gt_bboxes"), np.ndarray):
            results["gt_instance_ids"] = fresh
        return fresh, followed

    def update(self, ids: np.ndarray, boxes: np.ndarray, shape: tuple[int, int] | None
               ) -> dict[str, list[int]]:
        before = set() if self.ids is None else set(self.ids.tolist())
        touching = dict(zip(ids.tolist(), _touches_border(boxes, shape).tolist(), strict=True))
        now = set(ids.tolist())
        changes = dict(dropped=sorted(before - now), added=sorted(now - before),
                       clipped=sorted(i for i in now & before
                                      if touching[i] and not self.touching.get(i, False)))
        if self.ids is None:
            changes["added"] = []
        self.ids, self.touching = ids, touching
        return changes


def _record(step: int, transform: Any, results: dict[str, Any] | None, tracker: _Tracker,
            loaded_as_bgr: bool) -> dict[str, Any]:
    record: dict[str, Any] = dict(step=step, name=type(transform).__name__,
                                  repr=repr(transform), dropped_sample=results is None)
    if results is None:
        return record
    view = _first_augmentation(results)
    boxes = _numpy(view.get("gt_bboxes"), np.float32)
    record.update(image=display_image(results, loaded_as_bgr), shape=_image_shape(results),
                  boxes=boxes, labels=_numpy(view.get("gt_labels"), np.int64),
                  masks=_masks_array(view.get("gt_masks")), ids=None, tracked=True,
                  dropped=[], clipped=[], added=[])
    if boxes is not None:
        boxes = boxes.reshape(-1, 4)
        ids, tracked = tracker.ids_of(results, boxes)
        record.update(boxes=boxes, ids=ids, tracked=tracked,
                      **tracker.update(ids, boxes, record["shape"]))
    return record


# --------------------------------------------------------------------------------------------
# datasets and their pipelines
# --------------------------------------------------------------------------------------------


def _transforms_of(pipeline: Any) -> list[Callable]:
    if isinstance(pipeline, Compose):
        return list(pipeline.transforms)
    if isinstance(pipeline, (list, tuple)):
        return [t if callable(t) else Compose([t]).transforms[0] for t in pipeline]
    raise TypeError(f"cannot read the transforms of pipeline {pipeline!r}")


def _inner(dataset: Any, index: int) -> tuple[Any, int] | None:
    """The wrapped dataset and index behind ``dataset[index]`` for the wrappers that only pick
    (concatenation, repetition, class balancing), else None."""
    if hasattr(dataset, "datasets") and hasattr(dataset, "cumulative_sizes"):
        which = bisect.bisect_right(dataset.cumulative_sizes, index)
        start = dataset.cumulative_sizes[which - 1] if which else 0
        return dataset.datasets[which], index - start
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # detlab's, torch's Subset
        return dataset.dataset, int(dataset.indices[index])
    if hasattr(dataset, "repeat_indices") and hasattr(dataset, "dataset"):
        return dataset.dataset, int(dataset.repeat_indices[index])
    if hasattr(dataset, "times") and hasattr(dataset, "dataset"):
        return dataset.dataset, index % len(dataset.dataset)
    return None


def _is_mix_wrapper(dataset: Any) -> bool:
    return hasattr(dataset, "dataset") and hasattr(dataset, "pipeline") \
        and not hasattr(dataset, "data_infos")


def _initial_results(dataset: Any, index: int) -> dict[str, Any]:
    """What a detection dataset hands its pipeline for ``index`` (before any transform)."""
    for name in ("data_infos", "pre_pipeline"):
        if not hasattr(dataset, name):
            raise TypeError(f"{type(dataset).__name__} is not a detection dataset (it has no "
                            f"{name}); pipeline_steps takes detlab / MMDetection datasets")
    results: dict[str, Any] = dict(img_info=dataset.data_infos[index])
    if not getattr(dataset, "test_mode", False):
        results["ann_info"] = dataset.get_ann_info(index)
    proposals = getattr(dataset, "proposals", None)
    if proposals is not None:
        results["proposals"] = proposals[index]
    dataset.pre_pipeline(results)
    return results


def _skipped_by_wrapper(dataset: Any, transform: Any) -> bool:
    skip = getattr(dataset, "_skip_type_keys", None) or getattr(dataset, "skip_type_keys", None)
    return bool(skip) and type(transform).__name__ in skip


def _run(transforms: Sequence[Callable], results: dict[str, Any], tracker: _Tracker,
         loaded_as_bgr: bool, mixer: Any = None, start: int = 0
         ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Run ``transforms`` one by one, recording each; ``mixer`` is the mixing wrapper whose
    wrapped dataset gives ``mix_results`` (and whose dynamic scale goes into ``scale``)."""
    records = []
    for step, transform in enumerate(transforms, start=start):
        if mixer is not None and hasattr(transform, "get_indexes"):
            indexes = transform.get_indexes(mixer.dataset)
            indexes = [indexes] if isinstance(indexes, int) else list(indexes)
            results["mix_results"] = [copy.deepcopy(mixer.dataset[int(i)]) for i in indexes]
        if mixer is not None and getattr(mixer, "_dynamic_scale", None) is not None:
            results["scale"] = mixer._dynamic_scale
        try:
            results = transform(results)
        except Exception as err:
            err.add_note(f"detlab: raised by pipeline step {step} ({type(transform).__name__})")
            raise
        if results is not None:
            results.pop("mix_results", None)
        records.append(_record(step, transform, results, tracker, loaded_as_bgr))
        if results is None:
            break
    return records, results


def _steps(dataset: Any, index: int, tracker: _Tracker, loaded_as_bgr: bool
           ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    inner = _inner(dataset, index)
    if inner is not None:
        return _steps(*inner, tracker, loaded_as_bgr)
    if _is_mix_wrapper(dataset):
        records, results = _steps(dataset.dataset, index, tracker, loaded_as_bgr)
        if results is None:
            return records, None
        transforms = [t for t in _transforms_of(dataset.pipeline)
                      if not _skipped_by_wrapper(dataset, t)]
        more, results = _run(transforms, results, tracker, loaded_as_bgr, dataset,
                             start=len(records))
        return records + more, results
    return _run(_transforms_of(dataset.pipeline), _initial_results(dataset, index), tracker,
                loaded_as_bgr)


def _walk_transforms(dataset: Any) -> list[Any]:
    """Every transform of ``dataset``'s pipelines: wrappers, wrapped datasets and nested
    pipelines (``MultiScaleFlipAug``) included."""
    found: list[Any] = []
    parts = [dataset]
    while parts:
        part = parts.pop(0)
        if part is None:
            continue
        parts += [getattr(part, "dataset", None), *getattr(part, "datasets", [])]
        pending = _transforms_of(part.pipeline) if hasattr(part, "pipeline") else []
        while pending:
            transform = pending.pop(0)
            found.append(transform)
            inner = getattr(transform, "transforms", None)
            if isinstance(inner, Compose):
                pending.extend(inner.transforms)
    return found


def loads_bgr(dataset: Any) -> bool:
    """Whether ``dataset`` loads images in BGR order (its ``LoadImageFromFile``'s
    ``channel_order``; BGR, MMDetection's default, when it has none)."""
    for transform in _walk_transforms(dataset):
        order = getattr(transform, "channel_order", None)
        if order is not None:
            return order == "bgr"
    return True


def pipeline_steps(dataset: Any, index: int) -> list[dict[str, Any]]:
    """Sample ``index`` of ``dataset`` after each step of its pipeline.

    Works for detection datasets (``data_infos``, ``get_ann_info``, ``pre_pipeline``,
    ``pipeline``) and the wrappers around them: concatenation, repetition, class balancing and
    subsets pick the wrapped sample; ``MultiImageMixDataset`` steps through the wrapped
    dataset's pipeline first, then its own, filling ``mix_results`` for ``Mosaic`` / ``MixUp``
    through their ``get_indexes`` (a step that drops the sample is shown dropping it, where
    the wrapper would retry with other partners). Random transforms draw from NumPy's global
    generator: seed it for a repeatable walk.

    Returns one dict per step that ran: ``step`` (0-based), ``name`` (the transform's class),
    ``repr``, ``dropped_sample`` (the step returned None: the walk stops there) and, for a
    sample, ``image`` (``H x W x 3`` uint8 RGB for display, or None before loading), ``shape``
    (``img_shape[:2]``), ``boxes`` (``(n, 4)`` float32 xyxy, or None before annotations),
    ``labels`` (``(n,)`` int64), ``masks`` (``(n, H, W)`` bool or None), ``ids`` (``(n,)``
    the id of each box, its row in the annotations unless a mixing step brought it in),
    ``dropped`` / ``clipped`` / ``added`` (ids the step removed, newly pushed against the image
    border -- the sign of a cut -- or brought in from other images) and ``tracked`` (False
    when a step changed the boxes without keeping ``gt_instance_ids``: ids restart there).
    """
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} is out of range for a dataset of {len(dataset)}")
    records, _ = _steps(dataset, index, _Tracker(), loads_bgr(dataset))
    return records


# --------------------------------------------------------------------------------------------
# browse_dataset
# --------------------------------------------------------------------------------------------


def _strip_steps(cfg: Any, skip_type: Sequence[str]) -> Any:
    """A copy of a dataset config without the pipeline steps of ``skip_type``, in wrappers and
    wrapped datasets too."""
    if isinstance(cfg, dict):
        out = {k: _strip_steps(v, skip_type) for k, v in cfg.items() if k != "pipeline"}
        if "pipeline" in cfg:
            out["pipeline"] = [copy.deepcopy(t) for t in cfg["pipeline"]
                               if not (isinstance(t, dict) and t.get("type") in skip_type)]
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_strip_steps(v, skip_type) for v in cfg)
    return copy.deepcopy(cfg)


def _dataset_from_config(config: Any, split: str, skip_type: Sequence[str],
                         cfg_options: dict[str, Any] | None) -> Any:
    from detlab.config import Config
    from detlab.data.builder import build_dataset

    cfg = config.copy() if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    data = cfg.get("data") or {}
    if split not in data:
        raise KeyError(f"the config has no data.{split}; its data has "
                       f"{sorted(k for k in data if isinstance(data[k], dict))}")
    plain = data[split].to_dict() if hasattr(data[split], "to_dict") else dict(data[split])
    return build_dataset(_strip_steps(plain, skip_type), _path=f"data.{split}")


def _strip_dataset(dataset: Any, skip_type: Sequence[str]) -> Any:
    """A shallow copy of a built dataset whose pipelines leave out ``skip_type`` steps."""
    dataset = copy.copy(dataset)
    if hasattr(dataset, "pipeline"):
        transforms = _transforms_of(dataset.pipeline)
        keep = [type(t).__name__ not in skip_type for t in transforms]
        kept = [t for t, k in zip(transforms, keep, strict=True) if k]
        types = getattr(dataset, "pipeline_types", None)
        if isinstance(types, list) and len(types) == len(transforms):
            dataset.pipeline_types = [t for t, k in zip(types, keep, strict=True) if k]
        dataset.pipeline = Compose(kept) if isinstance(dataset.pipeline, Compose) else kept
    if getattr(dataset, "dataset", None) is not None:
        dataset.dataset = _strip_dataset(dataset.dataset, skip_type)
    if isinstance(getattr(dataset, "datasets", None), list):
        dataset.datasets = [_strip_dataset(d, skip_type) for d in dataset.datasets]
    return dataset


def _class_names(dataset: Any) -> Sequence[str] | None:
    while dataset is not None:
        names = getattr(dataset, "CLASSES", None)
        if names:
            return names
        dataset = getattr(dataset, "dataset", None)
    return None


def draw_sample(results: dict[str, Any], class_names: Sequence[str] | None = None,
                loaded_as_bgr: bool = True) -> np.ndarray:
    """The picture of a pipeline output: its image (see :func:`display_image`) with masks
    tinted and boxes drawn and named (``detlab.viz.draw.draw_boxes``)."""
    from detlab.viz.draw import draw_boxes, palette_color

    view = _first_augmentation(results)
    image = display_image(results, loaded_as_bgr)
    if image is None:
        raise ValueError("the sample has no image: the pipeline must load it")
    boxes = _numpy(view.get("gt_bboxes"), np.float32)
    boxes = np.zeros((0, 4), np.float32) if boxes is None else boxes.reshape(-1, 4)
    labels = _numpy(view.get("gt_labels"), np.int64)
    labels = np.zeros(len(boxes), np.int64) if labels is None else labels.reshape(-1)
    masks = _masks_array(view.get("gt_masks"))
    if masks is not None and len(masks) and masks.shape[1:] == image.shape[:2]:
        tinted = image.astype(np.float32)
        for mask, label in zip(masks, labels, strict=True):
            tinted[mask] = 0.6 * tinted[mask] + 0.4 * np.asarray(palette_color(int(label)))
        image = tinted.round().astype(np.uint8)
    names = [class_names[i] if class_names and 0 <= i < len(class_names) else str(i)
             for i in labels.tolist()]
    return draw_boxes(image, boxes, labels, texts=names)


def _output_path(results: dict[str, Any], index: int, output_dir: str, used: set[str]) -> str:
    view = _first_augmentation(results)
    filename = view.get("filename") or (view.get("img_metas") or {}).get("filename")
    name = Path(str(filename)).name if filename else f"{index:06d}.png"
    stem, suffix = os.path.splitext(name)
    if name in used:  # the same file twice (repeated datasets): keep both pictures
        name = f"{stem}_{index}{suffix}"
    used.add(name)
    return os.path.join(output_dir, name)


def _show(picture: np.ndarray) -> None:
    from PIL import Image

    try:
        from IPython.display import display
    except ImportError:
        Image.fromarray(picture).show()
        return
    display(Image.fromarray(picture))


def browse_dataset(config_or_dataset: Any, output_dir: str | os.PathLike | None = None,
                   not_show: bool = True, skip_type: Sequence[str] = DEFAULT_SKIP_TYPES,
                   split: str = "train", max_images: int | None = None,
                   cfg_options: dict[str, Any] | None = None) -> list[str]:
    """Draw the ground truth of samples after the pipeline, as MMDetection's
    ``tools/misc/browse_dataset.py``.

    Args:
        config_or_dataset: a config (file path or :class:`~detlab.config.Config`), whose
            ``data[split]`` is built, or a built dataset.
        output_dir: where to write one picture per sample (named after the image file); None
            writes nothing.
        not_show: do not display the pictures (in a notebook they are displayed inline).
        skip_type: pipeline steps left out, so the pictures show plain images.
        split: the key of ``data`` to build from a config.
        max_images: how many samples (all when None).
        cfg_options: dotted overrides for the config (``--cfg-options``).

    Returns:
        The paths written, in order.
    """
    if output_dir is None and not_show:
        raise ValueError("browse_dataset with output_dir=None and not_show=True would do "
                         "nothing; give output_dir or not_show=False")
    if isinstance(config_or_dataset, (str, os.PathLike)) or type(
            config_or_dataset).__name__ == "Config":
        dataset = _dataset_from_config(config_or_dataset, split, skip_type, cfg_options)
    else:
        dataset = _strip_dataset(config_or_dataset, skip_type)
    from detlab.engine.logging import progress_bar
    from detlab.viz.draw import save_rgb

    count = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    names, bgr, used, written = _class_names(dataset), loads_bgr(dataset), set(), []
    for index in progress_bar(range(count), "browse_dataset", disable=count < 2):
        results = dataset[index]
        picture = draw_sample(results, names, bgr)
        if output_dir is not None:
            path = _output_path(results, index, os.fspath(output_dir), used)
            written.append(str(save_rgb(picture, path)))
        if not not_show:
            _show(picture)
    return written

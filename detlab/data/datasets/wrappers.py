"""Dataset wrappers, as MMDetection 2.x's: concatenate, repeat, class-balance, and mix images.

Each wrapper takes a built dataset or its config dict (built through ``build_dataset``), and
exposes ``CLASSES``, ``flag`` (the aspect-ratio groups, one per sample), ``get_cat_ids(idx)``
and ``evaluate(results, ...)`` delegated to the wrapped dataset(s). Results are given per
image of the wrapped dataset (a repeated image is evaluated once).
"""

from __future__ import annotations

import bisect
import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from detlab.registry import DATASETS, TRANSFORMS


def _built(dataset: Any) -> Any:
    """A dataset, building it when it is a config dict."""
    if isinstance(dataset, Mapping):
        from detlab.data.builder import build_dataset

        return build_dataset(dataset)
    return dataset


def _flag_of(dataset: Any) -> np.ndarray:
    """The aspect-ratio groups of ``dataset`` (all 0 when it has none)."""
    flag = getattr(dataset, "flag", None)
    return (np.zeros(len(dataset), dtype=np.uint8) if flag is None
            else np.asarray(flag, dtype=np.uint8))


# --------------------------------------------------------------------------------------------
# concatenation
# --------------------------------------------------------------------------------------------


@DATASETS.register_module()
class ConcatDataset(Dataset):
    """Datasets one after the other (a list under ``data.train``, or a list of ``ann_file``).

    Args:
        datasets: built datasets or their configs; they should share ``CLASSES`` (the first
            one's are used).
        separate_eval: evaluate each dataset on its part of the results, with keys prefixed by
            the dataset's position (``0_bbox_mAP``); else evaluate them as one dataset (their
            annotations together: classes must match).
    """

    def __init__(self, datasets: Sequence[Any], separate_eval: bool = True) -> None:
        self.datasets = [_built(d) for d in datasets]
        if not self.datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        self.separate_eval = separate_eval
        self.CLASSES = getattr(self.datasets[0], "CLASSES", None)
        if not separate_eval:
            differ = [i for i, d in enumerate(self.datasets) if tuple(d.CLASSES or ()) !=
                      tuple(self.CLASSES or ())]
            if differ:
                raise ValueError(f"ConcatDataset(separate_eval=False) evaluates the datasets "
                                 f"as one, so they need the same classes; datasets {differ} "
                                 "differ from the first")
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()
        self.flag = np.concatenate([_flag_of(d) for d in self.datasets])
        self.eval_mode = getattr(self.datasets[0], "eval_mode", "area")
        self.legacy_coordinate = getattr(self.datasets[0], "legacy_coordinate", False)

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def locate(self, idx: int) -> tuple[int, int]:
        """``(dataset index, index inside it)`` of sample ``idx``."""
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for ConcatDataset of {len(self)}")
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[which - 1] if which else 0
        return which, idx - start

    def __getitem__(self, idx: int) -> Any:
        which, inner = self.locate(idx)
        return self.datasets[which][inner]

    def get_cat_ids(self, idx: int) -> list[int]:
        """The category ids of sample ``idx``, as its dataset gives them."""
        which, inner = self.locate(idx)
        return self.datasets[which].get_cat_ids(inner)

    def get_ann_info(self, idx: int) -> dict[str, Any]:
        """The annotations of sample ``idx``, as its dataset gives them."""
        which, inner = self.locate(idx)
        return self.datasets[which].get_ann_info(inner)

    def to_coco(self) -> dict[str, Any]:
        """One COCO dict of all datasets: images and annotations renumbered ``1..N`` in
        order, categories of the first dataset (matched to the others by name)."""
        from detlab.data.datasets.export import merge_coco

        return merge_coco([d.to_coco() for d in self.datasets])

    def evaluate(self, results: Sequence[Any], logger: Any = None,
                 **kwargs: Any) -> dict[str, Any]:
        """Evaluate each dataset on its part of ``results`` (``separate_eval``; keys prefixed
        ``'{i}_'``) or all of them as one. ``kwargs`` go to each dataset's ``evaluate``."""
        if len(results) != len(self):
            raise ValueError(f"evaluate needs one result per image of the ConcatDataset: "
                             f"{len(self)} images, got {len(results)} results")
        if not self.separate_eval:
            from detlab.data.datasets.export import evaluate_dataset

            metric = kwargs.pop("metric", getattr(self.datasets[0], "default_metric", "bbox"))
            return evaluate_dataset(self, results, metric, logger=logger, **kwargs)
        out: dict[str, Any] = {}
        starts = [0] + self.cumulative_sizes[:-1]
        for i, (dataset, start) in enumerate(zip(self.datasets, starts, strict=True)):
            part = results[start:start + len(dataset)]
            metrics = dataset.evaluate(part, logger=logger, **kwargs)
            out.update({f"{i}_{key}": value for key, value in metrics.items()})
        return out


# --------------------------------------------------------------------------------------------
# repetition
# --------------------------------------------------------------------------------------------


class _Delegating(Dataset):
    """What the one-dataset wrappers share: an index map onto ``self.dataset``."""

    dataset: Any
    indices: np.ndarray  # (len,) index into the wrapped dataset of each sample

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx: int) -> Any:
        return self.dataset[int(self.indices[idx])]

    def get_cat_ids(self, idx: int) -> list[int]:
        """The category ids of sample ``idx``, as the wrapped dataset gives them."""
        return self.dataset.get_cat_ids(int(self.indices[idx]))

    def get_ann_info(self, idx: int) -> dict[str, Any]:
        """The annotations of sample ``idx``, as the wrapped dataset gives them."""
        return self.dataset.get_ann_info(int(self.indices[idx]))

    def to_coco(self) -> dict[str, Any]:
        """The wrapped dataset's COCO dict (each image once)."""
        return self.dataset.to_coco()

    def evaluate(self, results: Sequence[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The wrapped dataset's metrics; ``results`` has one entry per image of the wrapped
        dataset (not per repeated sample)."""
        return self.dataset.evaluate(results, *args, **kwargs)


@DATASETS.register_module()
class RepeatDataset(_Delegating):
    """``dataset`` repeated ``times`` (sample ``i`` is image ``i % len(dataset)``), so that an
    "epoch" of a small dataset is long enough."""

    def __init__(self, dataset: Any, times: int) -> None:
        self.dataset = _built(dataset)
        if not isinstance(times, (int, np.integer)) or times < 1:
            raise ValueError(f"RepeatDataset times must be a positive integer, got {times!r}")
        self.times = int(times)
        self.CLASSES = getattr(self.dataset, "CLASSES", None)
        self._ori_len = len(self.dataset)
        self.indices = np.tile(np.arange(self._ori_len), self.times)
        self.flag = np.tile(_flag_of(self.dataset), self.times)


def repeat_factors(cat_ids_per_image: Sequence[Sequence[int]], oversample_thr: float,
                   empty_category: int | None = None) -> np.ndarray:
    """``(N,)`` LVIS repeat factor of each image: ``r(c) = max(1, sqrt(t / f(c)))`` with
    ``f(c)`` the fraction of images holding category ``c``, and an image's factor the largest
    ``r`` of its categories (1 without any). ``empty_category`` stands in for the categories
    of an image without annotations (so that empty images are balanced too), or None."""
    sets = [set(ids) or ({empty_category} if empty_category is not None else set())
            for ids in cat_ids_per_image]
    num = max(len(sets), 1)
    counts: dict[int, int] = {}
    for ids in sets:
        for c in ids:
            counts[c] = counts.get(c, 0) + 1
    per_cat = {c: max(1.0, math.sqrt(oversample_thr / (n / num))) for c, n in counts.items()}
    return np.array([max((per_cat[c] for c in ids), default=1.0) for ids in sets],
                    dtype=np.float64)


@DATASETS.register_module()
class ClassBalancedDataset(_Delegating):
    """Images of rare categories repeated (LVIS repeat-factor sampling), as MMDetection 2.x.

    Args:
        dataset: the dataset (built or a config).
        oversample_thr: ``t``: categories in fewer than this fraction of the images are
            oversampled (see :func:`repeat_factors`).
        filter_empty_gt: without it, images without annotations form one more category and
            are oversampled when rare.
        rounding: how a fractional factor becomes a number of copies: ``'ceil'``
            (MMDetection 2.x: ``ceil(r)`` copies) or ``'stochastic'`` (LVIS / Detectron2:
            ``floor(r)`` copies plus one with probability ``r - floor(r)``, drawn once here
            with ``seed``).
        seed: the random draw of ``'stochastic'`` rounding.

    ``repeat_factors`` holds each image's factor; ``indices`` (``repeat_indices``) each
    sample's image.
    """

    def __init__(self, dataset: Any, oversample_thr: float, filter_empty_gt: bool = True,
                 rounding: str = "ceil", seed: int = 0) -> None:
        if rounding not in ("ceil", "stochastic"):
            raise ValueError(f"rounding must be 'ceil' or 'stochastic', got {rounding!r}")
        self.dataset = _built(dataset)
        self.oversample_thr = oversample_thr
        self.filter_empty_gt = filter_empty_gt
        self.CLASSES = getattr(self.dataset, "CLASSES", None)
        cat_ids = [self.dataset.get_cat_ids(i) for i in range(len(self.dataset))]
        empty = None if filter_empty_gt else len(self.CLASSES or ())
        self.repeat_factors = repeat_factors(cat_ids, oversample_thr, empty)
        if rounding == "ceil":
            copies = np.ceil(self.repeat_factors).astype(np.int64)
        else:
            floor = np.floor(self.repeat_factors)
            draw = np.random.default_rng(seed).random(len(floor))
            copies = (floor + (draw < self.repeat_factors - floor)).astype(np.int64)
        self.indices = np.repeat(np.arange(len(self.dataset)), copies)
        self.repeat_indices = self.indices  # MMDetection's name
        self.flag = np.repeat(_flag_of(self.dataset), copies)


# --------------------------------------------------------------------------------------------
# multi-image mixing (Mosaic, MixUp)
# --------------------------------------------------------------------------------------------


def _is_int_pair(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, np.integer)) for v in value))


@DATASETS.register_module()
class MultiImageMixDataset(Dataset):
    """Runs a pipeline of mixing transforms (Mosaic, MixUp ...) over samples of ``dataset``.

    The wrapped dataset's own pipeline should only load (image and annotations). For each
    transform here that has ``get_indexes(dataset) -> list[int]``, the samples at those indexes
    (the wrapped dataset's output, copied) are put in ``results['mix_results']`` before the
    transform runs, and removed after.

    Args:
        dataset: the dataset (built or a config).
        pipeline: the transforms, as config dicts or callables.
        dynamic_scale: ``(w, h)`` put in ``results['scale']`` before each transform (for
            transforms that read their output size from the sample); see
            :meth:`update_dynamic_scale`.
        skip_type_keys: names of transform types to skip (e.g. the last epochs of YOLOX run
            without ``Mosaic``); see :meth:`update_skip_type_keys`.
        max_refetch: times a transform that drops a sample (returns None) is retried, with new
            mixing partners, before giving up.
    """

    def __init__(self, dataset: Any, pipeline: Sequence[Mapping | Callable],
                 dynamic_scale: tuple[int, int] | None = None,
                 skip_type_keys: Sequence[str] | None = None, max_refetch: int = 15) -> None:
        self.dataset = _built(dataset)
        self.CLASSES = getattr(self.dataset, "CLASSES", None)
        self.flag = _flag_of(self.dataset)
        self.pipeline = [TRANSFORMS.build(t) if isinstance(t, Mapping) else t for t in pipeline]
        self.pipeline_types = [t["type"] if isinstance(t, Mapping) and isinstance(
            t["type"], str) else type(built).__name__ for t, built in zip(
            pipeline, self.pipeline, strict=True)]
        self._skip_type_keys: list[str] | None = None
        self._dynamic_scale: tuple[int, int] | None = None
        if skip_type_keys is not None:
            self.update_skip_type_keys(skip_type_keys)
        if dynamic_scale is not None:
            self.update_dynamic_scale(dynamic_scale)
        self.max_refetch = max_refetch

    def __len__(self) -> int:
        return len(self.dataset)

    def _mix_partners(self, transform: Any) -> list[dict]:
        """Copies of the samples ``transform.get_indexes`` asks for."""
        indexes = transform.get_indexes(self.dataset)
        if not isinstance(indexes, Sequence):
            indexes = [indexes]
        return [copy.deepcopy(self.dataset[int(i)]) for i in indexes]

    def _apply(self, transform: Any, results: dict) -> dict:
        """``transform`` on ``results``, retried with new partners if it drops the sample."""
        for _ in range(self.max_refetch):
            # a copy per try: a transform may change the arrays it gets before dropping them
            trial = copy.deepcopy(results)
            if hasattr(transform, "get_indexes"):
                trial["mix_results"] = self._mix_partners(transform)
            if self._dynamic_scale is not None:
                trial["scale"] = self._dynamic_scale
            out = transform(trial)
            if out is not None:
                out.pop("mix_results", None)
                return out
        raise RuntimeError(f"{type(transform).__name__} dropped the sample {self.max_refetch} "
                           "times in a row; check the dataset and the transform's settings")

    def __getitem__(self, idx: int) -> dict:
        results = self.dataset[idx]
        for transform, kind in zip(self.pipeline, self.pipeline_types, strict=True):
            if self._skip_type_keys is not None and kind in self._skip_type_keys:
                continue
            results = self._apply(transform, results)
        return results

    def update_skip_type_keys(self, skip_type_keys: Sequence[str]) -> None:
        """Skip the transforms of these type names from now on (e.g. from a hook)."""
        if not all(isinstance(k, str) for k in skip_type_keys):
            raise TypeError(f"skip_type_keys must be transform type names, got "
                            f"{skip_type_keys!r}")
        self._skip_type_keys = list(skip_type_keys)

    def update_dynamic_scale(self, dynamic_scale: tuple[int, int]) -> None:
        """Set the ``(w, h)`` given to the transforms as ``results['scale']``."""
        if not _is_int_pair(dynamic_scale):
            raise TypeError(f"dynamic_scale must be a (w, h) pair of ints, got "
                            f"{dynamic_scale!r}")
        self._dynamic_scale = tuple(int(v) for v in dynamic_scale)

    def get_cat_ids(self, idx: int) -> list[int]:
        """The category ids of image ``idx`` of the wrapped dataset."""
        return self.dataset.get_cat_ids(idx)

    def get_ann_info(self, idx: int) -> dict[str, Any]:
        """The annotations of image ``idx`` of the wrapped dataset."""
        return self.dataset.get_ann_info(idx)

    def to_coco(self) -> dict[str, Any]:
        """The wrapped dataset's COCO dict."""
        return self.dataset.to_coco()

    def evaluate(self, results: Sequence[Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The wrapped dataset's metrics of ``results``."""
        return self.dataset.evaluate(results, *args, **kwargs)

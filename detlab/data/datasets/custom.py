"""CustomDataset: what every detection dataset shares (paths, classes, filtering, the pipeline).

A dataset subclass reads its annotation file in :meth:`CustomDataset.load_annotations` (a list of
image dicts with ``filename``, ``width``, ``height``) and parses one image's annotations in
:meth:`CustomDataset.get_ann_info` (``bboxes`` ``(n, 4)`` float32 xyxy, ``labels`` ``(n,)`` int64,
``bboxes_ignore`` ``(k, 4)``). Everything else -- joining ``data_root``, picking ``classes``,
dropping small or unannotated images at training time, the aspect-ratio group ``flag``, running
the pipeline and replacing a sample the pipeline drops -- lives here, as in MMDetection 2.x.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from detlab.data.transforms.compose import Compose

_MAX_REDRAWS = 100  # samples tried in a row before concluding the pipeline drops everything


def _join_root(data_root: str | None, path: str | None) -> str | None:
    """``path`` under ``data_root`` unless it is absolute (or either is unset)."""
    if data_root is None or path is None or os.path.isabs(path):
        return path
    return os.path.join(data_root, path)


class CustomDataset(Dataset):
    """Base class of the detection datasets; see the module docstring for what a subclass adds.

    Args:
        ann_file: annotation file (relative paths are taken under ``data_root``).
        pipeline: transforms run on each sample: config dicts or callables.
        classes: names of the classes to use: a list, a text file of one name a line, or None
            for the class's ``CLASSES`` (or the file's categories).
        data_root: folder that relative ``ann_file``, ``img_prefix``, ``seg_prefix`` and
            ``proposal_file`` are joined to.
        img_prefix: folder of the images (joined to each image's ``filename``).
        seg_prefix: folder of semantic segmentation maps.
        proposal_file: precomputed proposals (not supported yet).
        test_mode: keep every image and skip annotations in samples.
        filter_empty_gt: at training time, drop images without annotations of the classes.
    """

    CLASSES: tuple[str, ...] | None = None

    def __init__(self, ann_file: str, pipeline: Sequence[Mapping | Callable],
                 classes: str | Sequence[str] | None = None, data_root: str | None = None,
                 img_prefix: str = "", seg_prefix: str | None = None,
                 proposal_file: str | None = None, test_mode: bool = False,
                 filter_empty_gt: bool = True) -> None:
        self.data_root = data_root
        self.ann_file = _join_root(data_root, os.fspath(ann_file))
        self.img_prefix = _join_root(data_root, img_prefix)
        self.seg_prefix = _join_root(data_root, seg_prefix)
        self.proposal_file = _join_root(data_root, proposal_file)
        if self.proposal_file is not None:
            raise NotImplementedError(
                f"proposal_file={self.proposal_file!r}: precomputed proposals are not supported "
                "yet; remove proposal_file from the dataset config")
        self.test_mode = test_mode
        self.filter_empty_gt = filter_empty_gt
        self.CLASSES = self.get_classes(classes)
        if not os.path.isfile(self.ann_file):
            raise FileNotFoundError(self._missing_ann_file_message())
        self.data_infos: list[dict] = self.load_annotations(self.ann_file)
        if not test_mode:
            keep = self._filter_imgs()
            if self.data_infos and not keep:
                warnings.warn(f"{self.ann_file}: no image is left for training after dropping "
                              "images without annotations of the classes or smaller than 32 "
                              "pixels", stacklevel=2)
            self.data_infos = [self.data_infos[i] for i in keep]
        self._set_group_flag()
        self.pipeline = Compose(pipeline)

    def _missing_ann_file_message(self) -> str:
        hint = (f" (data_root={self.data_root!r} was joined to it)" if self.data_root
                else " (relative paths start from the current directory "
                     f"{os.getcwd()!r}; set data_root or give an absolute path)")
        return f"annotation file {self.ann_file!r} does not exist{hint}"

    # ---- what a subclass provides --------------------------------------------------------

    def load_annotations(self, ann_file: str) -> list[dict]:
        """The image dicts of ``ann_file`` (``filename``, ``width``, ``height`` ...)."""
        raise NotImplementedError(f"{type(self).__name__} does not read annotation files")

    def get_ann_info(self, idx: int) -> dict[str, Any]:
        """Annotations of image ``idx``: ``bboxes`` ``(n, 4)`` float32 xyxy, ``labels`` ``(n,)``
        int64, ``bboxes_ignore`` ``(k, 4)`` float32 xyxy."""
        raise NotImplementedError(f"{type(self).__name__} does not parse annotations")

    def get_cat_ids(self, idx: int) -> list[int]:
        """The labels (0-based) present in image ``idx``."""
        return self.get_ann_info(idx)["labels"].astype(np.int64).tolist()

    # ---- classes, filtering, groups --------------------------------------------------------

    @classmethod
    def get_classes(cls, classes: str | Sequence[str] | None = None) -> tuple[str, ...] | None:
        """Class names from ``classes`` (a sequence, or a text file of one name a line), or
        the class's ``CLASSES`` when it is None."""
        if classes is None:
            return cls.CLASSES
        if isinstance(classes, (str, os.PathLike)):
            if not os.path.isfile(classes):
                raise FileNotFoundError(f"classes file {os.fspath(classes)!r} does not exist "
                                        "(give a list of names or a file of one name a line)")
            with open(classes, encoding="utf-8") as f:
                return tuple(line.strip() for line in f if line.strip())
        if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"classes must be a list of names or a file path, got {classes!r}")
        return tuple(classes)

    def _filter_imgs(self, min_size: int = 32) -> list[int]:
        """Indices of the images to train on: shorter side at least ``min_size``."""
        return [i for i, info in enumerate(self.data_infos)
                if min(info["width"], info["height"]) >= min_size]

    def _set_group_flag(self) -> None:
        """``self.flag[i]`` = 1 for images wider than tall, else 0 (batches group by it)."""
        ratios = np.array([info["width"] / info["height"] for info in self.data_infos],
                          dtype=np.float64).reshape(-1)
        self.flag = (ratios > 1).astype(np.uint8)

    # ---- samples ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.data_infos)

    def pre_pipeline(self, results: dict) -> None:
        """Add the keys every pipeline expects: prefixes and the empty field lists."""
        results["img_prefix"] = self.img_prefix
        results["seg_prefix"] = self.seg_prefix
        results["proposal_file"] = self.proposal_file
        results["bbox_fields"] = []
        results["mask_fields"] = []
        results["seg_fields"] = []
        if "id" in results["img_info"]:
            results["img_id"] = results["img_info"]["id"]

    def prepare_train_img(self, idx: int) -> dict | None:
        """Image ``idx`` with its annotations through the pipeline (None if it dropped it)."""
        results = dict(img_info=self.data_infos[idx], ann_info=self.get_ann_info(idx))
        self.pre_pipeline(results)
        return self.pipeline(results)

    def prepare_test_img(self, idx: int) -> dict | None:
        """Image ``idx`` through the pipeline, without annotations."""
        results = dict(img_info=self.data_infos[idx])
        self.pre_pipeline(results)
        return self.pipeline(results)

    def _rand_another(self, idx: int) -> int:
        """A random image of the same aspect-ratio group as ``idx``."""
        pool = np.flatnonzero(self.flag == self.flag[idx])
        return int(np.random.choice(pool))

    def __getitem__(self, idx: int) -> dict:
        """Sample ``idx`` through the pipeline. In training, a sample that the pipeline drops
        (e.g. a crop without boxes) is replaced by a random one of the same group."""
        if self.test_mode:
            return self.prepare_test_img(idx)
        first = idx
        for _ in range(_MAX_REDRAWS):
            data = self.prepare_train_img(idx)
            if data is not None:
                return data
            idx = self._rand_another(idx)
        raise RuntimeError(
            f"the pipeline dropped {_MAX_REDRAWS} samples in a row (starting from index {first}, "
            f"image {self.data_infos[first].get('filename')!r}); check that its transforms can "
            "keep a sample")

    def __repr__(self) -> str:
        mode = "test" if self.test_mode else "train"
        return (f"{type(self).__name__}({mode}, {len(self)} images, "
                f"{len(self.CLASSES or ())} classes, ann_file={self.ann_file!r})")

"""Albu: run an albumentations pipeline inside a detlab pipeline (albumentations is optional)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detlab.config import did_you_mean
from detlab.data.masks import BitmapMasks
from detlab.data.transforms.instances import (
    clip_to_image,
    companions,
    inside_image,
    nondegenerate,
    select_instances,
)
from detlab.registry import TRANSFORMS

_INDEX_FIELD = "detlab_box_index"  # rides along the boxes to tell which ones albumentations kept
_DEFAULT_KEYMAP = {"img": "image", "gt_masks": "masks", "gt_bboxes": "bboxes"}


def import_albumentations() -> Any:
    """The albumentations module, or an ImportError saying how to install it."""
    try:
        import albumentations
    except ImportError as err:
        raise ImportError("the Albu transform needs albumentations, which is not installed: "
                          "pip install albumentations") from err
    return albumentations


def build_albu(cfg: Any, module: Any) -> Any:
    """An albumentations object from ``dict(type='Name', ...)`` (nested ``transforms`` too);
    an object that is not a dict is returned as it is."""
    if not isinstance(cfg, Mapping):
        return cfg
    args = dict(cfg)
    kind = args.pop("type", None)
    if isinstance(kind, str):
        if not hasattr(module, kind):
            names = [n for n in dir(module) if n[:1].isupper()]
            raise ValueError(f"albumentations has no {kind!r}.{did_you_mean(kind, names)}")
        kind = getattr(module, kind)
    if not callable(kind):
        raise TypeError(f"an albumentations config needs type=NAME or a class, got {cfg!r}")
    if "transforms" in args:
        args["transforms"] = [build_albu(t, module) for t in args["transforms"]]
    return kind(**args)


@TRANSFORMS.register_module()
class Albu:
    """Apply albumentations transforms (``transforms``: their config dicts) to the sample.

    With ``bbox_params`` (e.g. ``dict(type='BboxParams', format='pascal_voc',
    label_fields=['gt_labels'], min_visibility=0.0, filter_lost_elements=True)``) the boxes go
    through albumentations too, clipped to the image first (albumentations refuses boxes that
    stick out) and without the degenerate ones. Boxes that albumentations drops, or leaves
    without area, take their labels, masks and instance ids with them -- always, whether or
    not ``filter_lost_elements`` is set. Without ``bbox_params`` boxes are not passed: use it
    whenever the transforms move pixels (an error is raised if the image size changes).

    Masks go through as bitmaps (polygon masks are rasterized first; MMDetection refuses them).
    ``keymap`` renames sample keys to albumentations' (``img`` -> ``image``, ``gt_bboxes`` ->
    ``bboxes``, ``gt_masks`` -> ``masks`` by default); any other key it names goes through
    too -- semantic maps (``seg_fields``) only that way, e.g. ``keymap=dict(img='image',
    gt_bboxes='bboxes', gt_masks='masks', gt_semantic_seg='mask')``.

    Updates ``img``, ``img_shape`` (MMDetection leaves it stale), ``gt_bboxes`` and its
    companions, ``gt_masks``, the ``label_fields``, the other keys of ``keymap``, and
    ``pad_shape`` with ``update_pad_shape``. Returns None when no box is left and
    ``skip_img_without_anno``.

    Args:
        transforms: albumentations transforms as config dicts (``type`` is the class name).
        bbox_params: ``albumentations.BboxParams`` as a config dict; ``label_fields`` name keys
            of the sample.
        keymap: sample key -> albumentations key.
        update_pad_shape: set ``pad_shape`` to the new image shape.
        skip_img_without_anno: drop the sample when no box is left.
    """

    def __init__(self, transforms: Sequence[Mapping[str, Any]],
                 bbox_params: Mapping[str, Any] | None = None,
                 keymap: Mapping[str, str] | None = None, update_pad_shape: bool = False,
                 skip_img_without_anno: bool = False) -> None:
        module = import_albumentations()
        self.transforms = copy.deepcopy(list(transforms))
        params = copy.deepcopy(dict(bbox_params)) if bbox_params else None
        self.label_fields: list[str] = []
        if params is not None:
            params.pop("filter_lost_elements", None)  # detlab always filters: see above
            self.label_fields = list(params.get("label_fields", []))
            params["label_fields"] = [*self.label_fields, _INDEX_FIELD]
        self.bbox_params = build_albu(params, module) if params is not None else None
        self.aug = module.Compose([build_albu(t, module) for t in self.transforms],
                                  bbox_params=self.bbox_params)
        self.keymap_to_albu = dict(keymap) if keymap else dict(_DEFAULT_KEYMAP)
        self.keymap_back = {v: k for k, v in self.keymap_to_albu.items()}
        self.update_pad_shape = update_pad_shape
        self.skip_img_without_anno = skip_img_without_anno

    def _key(self, albu_key: str) -> str:
        return self.keymap_back.get(albu_key, albu_key)

    def _inputs(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results[self._key("image")]
        inputs: dict[str, Any] = {"image": img}
        box_key = self._key("bboxes")
        if self.bbox_params is not None and box_key in results:
            select_instances(results, box_key, nondegenerate(results[box_key]))
            inputs["bboxes"] = clip_to_image(results[box_key], *img.shape[:2])
            for field in self.label_fields:
                inputs[field] = np.asarray(results[self._key(field)])
            inputs[_INDEX_FIELD] = np.arange(len(results[box_key]))
        masks = results.get(self._key("masks"))
        if masks is not None and len(masks):
            inputs["masks"] = np.asarray(masks.to_ndarray())
        for key, albu_key in self.keymap_to_albu.items():
            if albu_key not in ("image", "bboxes", "masks") and key in results:
                inputs[albu_key] = results[key]  # e.g. a semantic map as 'mask'
        return inputs

    def _outputs(self, results: dict[str, Any], inputs: dict[str, Any],
                 out: dict[str, Any]) -> None:
        img = out["image"]
        box_key, mask_key = self._key("bboxes"), self._key("masks")
        kept = None
        if "bboxes" in inputs:
            kept = np.asarray(out[_INDEX_FIELD], dtype=np.int64).reshape(-1)
            results[box_key] = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            for key in companions(results, box_key):
                if key != mask_key:
                    results[key] = results[key][kept]
            for field in self.label_fields:
                results[self._key(field)] = np.asarray(out[field]).reshape(-1).astype(
                    np.asarray(inputs[field]).dtype)
        if results.get(mask_key) is not None:
            bitmaps = out["masks"] if "masks" in inputs else []
            masks = BitmapMasks(np.asarray(bitmaps), *img.shape[:2])
            results[mask_key] = masks if kept is None or not len(masks) else masks[kept]
        if kept is not None:  # albumentations may keep boxes squeezed to nothing
            boxes = results[box_key]
            select_instances(results, box_key,
                             nondegenerate(boxes) & inside_image(boxes, *img.shape[:2]))

    def __call__(self, results: dict[str, Any]) -> dict[str, Any] | None:
        img_key = self._key("image")
        before = results[img_key].shape
        inputs = self._inputs(results)
        out = self.aug(**inputs)
        boxes = results.get(self._key("bboxes"))
        if "bboxes" not in inputs and boxes is not None and len(boxes) \
                and out["image"].shape[:2] != before[:2]:
            raise ValueError("Albu changed the image size but has no bbox_params, so the boxes "
                             "would not follow; add bbox_params=dict(type='BboxParams', "
                             "format='pascal_voc', label_fields=['gt_labels'])")
        self._outputs(results, inputs, out)
        for albu_key in set(inputs) - {"image", "bboxes", "masks", _INDEX_FIELD,
                                       *self.label_fields}:
            results[self._key(albu_key)] = out[albu_key]
        results[img_key] = out["image"]
        results["img_shape"] = out["image"].shape
        if self.update_pad_shape:
            results["pad_shape"] = out["image"].shape
        if self.skip_img_without_anno and "bboxes" in inputs \
                and not len(results[self._key("bboxes")]):
            return None
        return results

    def __repr__(self) -> str:
        return f"Albu(transforms={self.transforms})"

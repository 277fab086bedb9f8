"""CornerNet / CenterNet's RandomCenterCropPad: a crop around a random centre, padded all round.

Unlike :class:`~detlab.data.transforms.crop.RandomCrop` the output is a canvas of its own size
(``crop_size`` times a random ratio in training, the image grown by ``test_pad_mode`` in
testing) filled with the mean pixel, and the image is pasted into it with the chosen centre at
the canvas centre; padding therefore lies on every side, not only bottom-right. Random numbers
come from NumPy's global generator in MMDetection 2.28's order, so a seed gives its crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detlab.data.transforms.instances import select_instances
from detlab.registry import TRANSFORMS

TEST_PAD_MODES = ("logical_or", "size_divisor")


def centers_in_patch(boxes: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """``(n,)`` bool: the box centre lies strictly inside ``patch`` ``[x1, y1, x2, y2]``."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    return ((center[:, 0] > patch[0]) & (center[:, 1] > patch[1])
            & (center[:, 0] < patch[2]) & (center[:, 1] < patch[3]))


def center_border(border: int, size: int) -> float:
    """How far from the image edges a random centre must stay on a side of ``size`` pixels:
    ``border`` halved (by powers of two) until twice the result fits in ``size``, so that a
    small image still has room for centres (CornerNet's rule, kept for MMDetection's draws)."""
    k = 2 * border / size
    return border // pow(2, np.ceil(np.log2(np.ceil(k))) + (k == int(k)))


@TRANSFORMS.register_module()
class RandomCenterCropPad:
    """Cut a window around a centre and paste it into a mean-filled canvas, centres aligned.

    Training (``test_mode=False``): draw a ratio from ``ratios``; the canvas is
    ``int(crop_size * ratio)`` ``(h, w)``; draw centres in the image, ``center_border`` of
    ``border`` away from its edges, until the window (the canvas laid over the image) holds at
    least one ``gt_bboxes`` centre, or at once when there is no box. Boxes whose centre falls
    outside the window are dropped with their labels and ids; the others move into the canvas,
    are clipped to it (``bbox_clip_border``) and dropped when left without area.

    Testing (``test_mode=True``): no randomness; the canvas grows the image to
    ``(h | value) + test_pad_add_pix`` per side for ``test_pad_mode=('logical_or', value)``, or
    to the next multiple of ``value`` for ``('size_divisor', value)``, with the image centre at
    the canvas centre. ``border`` ``[top, bottom, left, right]`` (float32) tells where the
    image lies in the canvas: CenterNet's head subtracts it from its boxes.

    The canvas is filled with ``mean`` (given in the order of :class:`Normalize`, reversed when
    ``to_rgb`` as the image is still BGR here); the image must be float32 (load it with
    ``to_float32=True``). Masks and semantic maps are not supported (as in MMDetection).

    Updates ``img``, ``img_shape``, ``pad_shape``, every key of ``bbox_fields`` with its
    companions (training: labels and instance ids); adds ``border`` (testing).

    Args:
        crop_size: canvas ``(h, w)`` before the ratio; training only, None in testing.
        ratios: the ratios to draw from; training only, None in testing.
        border: the margin kept between centres and the image edges; training only, None in
            testing.
        mean: the three channel means of :class:`Normalize` (fill value).
        std: the three channel stds of :class:`Normalize` (kept for the record).
        to_rgb: as :class:`Normalize`'s ``to_rgb``.
        test_mode: pad without cropping, see above.
        test_pad_mode: ``('logical_or', value)`` or ``('size_divisor', value)``; testing only,
            None in training.
        test_pad_add_pix: extra pixels per side in ``'logical_or'`` mode (CenterNet uses 1).
        bbox_clip_border: clip boxes to the canvas.
    """

    def __init__(self, crop_size: Sequence[int] | None = None,
                 ratios: Sequence[float] | None = (0.9, 1.0, 1.1), border: int | None = 128,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 to_rgb: bool | None = None, test_mode: bool = False,
                 test_pad_mode: Sequence[Any] | None = ("logical_or", 127),
                 test_pad_add_pix: int = 0, bbox_clip_border: bool = True) -> None:
        if test_mode:
            for key, value in (("crop_size", crop_size), ("ratios", ratios),
                               ("border", border)):
                if value is not None:
                    raise ValueError(f"RandomCenterCropPad: {key} is for training; set {key}="
                                     f"None with test_mode=True (got {value!r})")
            if (not isinstance(test_pad_mode, (list, tuple)) or len(test_pad_mode) != 2
                    or test_pad_mode[0] not in TEST_PAD_MODES):
                raise ValueError(f"RandomCenterCropPad: test_pad_mode is a pair (mode, value) "
                                 f"with mode in {TEST_PAD_MODES}, got {test_pad_mode!r}")
        else:
            if (not isinstance(crop_size, (list, tuple)) or len(crop_size) != 2
                    or not all(v > 0 for v in crop_size)):
                raise ValueError(f"RandomCenterCropPad: crop_size must be a positive (h, w) in "
                                 f"training (test_mode=False), got {crop_size!r}")
            if not isinstance(ratios, (list, tuple)) or not ratios:
                raise ValueError(f"RandomCenterCropPad: ratios must be a list of ratios in "
                                 f"training, got {ratios!r}")
            if test_pad_mode is not None:
                raise ValueError(f"RandomCenterCropPad: test_pad_mode is for testing; set "
                                 f"test_pad_mode=None with test_mode=False (got "
                                 f"{test_pad_mode!r})")
        missing = [k for k, v in (("mean", mean), ("std", std), ("to_rgb", to_rgb)) if v is None]
        if missing:
            raise ValueError(f"RandomCenterCropPad needs {', '.join(missing)}: give the same "
                             f"values as the pipeline's Normalize")
        self.crop_size = crop_size
        self.ratios = ratios
        self.border = border
        self.input_mean = mean
        self.input_std = std
        self.to_rgb = to_rgb
        # the image is BGR until Normalize: fill with the means in the image's channel order
        self.mean = list(mean)[::-1] if to_rgb else list(mean)
        self.std = list(std)[::-1] if to_rgb else list(std)
        self.test_mode = test_mode
        self.test_pad_mode = test_pad_mode
        self.test_pad_add_pix = test_pad_add_pix
        self.bbox_clip_border = bbox_clip_border

    def paste(self, image: np.ndarray, center: tuple[int, int], size: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Paste ``image`` into a mean-filled canvas of ``size`` ``(h, w)`` with the image point
        ``center`` ``(y, x)`` at the canvas centre. Returns the canvas, where the pasted part
        lies in it (``[top, bottom, left, right]``, float32) and the part of the image taken
        (``patch`` ``[x1, y1, x2, y2]``)."""
        center_y, center_x = center
        target_h, target_w = size
        img_h, img_w, channels = image.shape
        x0, x1 = max(0, center_x - target_w // 2), min(center_x + target_w // 2, img_w)
        y0, y1 = max(0, center_y - target_h // 2), min(center_y + target_h // 2, img_h)
        patch = np.array((int(x0), int(y0), int(x1), int(y1)))
        left, right = center_x - x0, x1 - center_x
        top, bottom = center_y - y0, y1 - center_y
        mid_y, mid_x = target_h // 2, target_w // 2
        canvas = np.zeros((target_h, target_w, channels), dtype=image.dtype)
        canvas += np.asarray(self.mean, dtype=image.dtype)
        canvas[mid_y - top:mid_y + bottom, mid_x - left:mid_x + right] = image[y0:y1, x0:x1]
        border = np.array([mid_y - top, mid_y + bottom, mid_x - left, mid_x + right],
                          dtype=np.float32)
        return canvas, border, patch

    def _train(self, results: dict[str, Any]) -> dict[str, Any]:
        for key in ("mask_fields", "seg_fields"):
            if results.get(key):
                raise NotImplementedError(f"RandomCenterCropPad crops boxes only; this sample "
                                          f"has {key}={results[key]} (drop the masks or use "
                                          f"RandomCrop)")
        img = results["img"]
        h, w = img.shape[:2]
        boxes = results["gt_bboxes"]
        while True:
            ratio = np.random.choice(self.ratios)
            new_h, new_w = int(self.crop_size[0] * ratio), int(self.crop_size[1] * ratio)
            h_border = center_border(self.border, h)
            w_border = center_border(self.border, w)
            for _ in range(50):
                center_x = np.random.randint(low=w_border, high=w - w_border)
                center_y = np.random.randint(low=h_border, high=h - h_border)
                canvas, _, patch = self.paste(img, (center_y, center_x), (new_h, new_w))
                if len(boxes) and not centers_in_patch(boxes, patch).any():
                    continue
                results["img"] = canvas
                results["img_shape"] = canvas.shape
                results["pad_shape"] = canvas.shape
                # image point (x, y) lands at (x - center_x + new_w // 2, y - ...)
                shift = np.array([new_w // 2 - center_x, new_h // 2 - center_y] * 2,
                                 dtype=np.float32)
                for key in [k for k in results.get("bbox_fields", []) if k in results]:
                    select_instances(results, key, centers_in_patch(results[key], patch))
                    moved = results[key] + shift
                    if self.bbox_clip_border:
                        moved[:, 0::2] = moved[:, 0::2].clip(0, new_w)
                        moved[:, 1::2] = moved[:, 1::2].clip(0, new_h)
                    results[key] = moved
                    select_instances(results, key, (moved[:, 2] > moved[:, 0])
                                     & (moved[:, 3] > moved[:, 1]))
                return results

    def _test(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results["img"]
        h, w = img.shape[:2]
        results["img_shape"] = img.shape
        mode, value = self.test_pad_mode
        if mode == "logical_or":
            target = ((h | value) + self.test_pad_add_pix, (w | value) + self.test_pad_add_pix)
        else:
            target = (int(np.ceil(h / value)) * value, int(np.ceil(w / value)) * value)
        canvas, border, _ = self.paste(img, (h // 2, w // 2), target)
        results["img"] = canvas
        results["pad_shape"] = canvas.shape
        results["border"] = border
        return results

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results["img"]
        if img.dtype != np.float32:
            raise TypeError(f"RandomCenterCropPad needs a float32 image (got {img.dtype}): set "
                            f"to_float32=True in the pipeline's LoadImageFromFile")
        if img.ndim != 3 or img.shape[2] != len(self.mean):
            raise ValueError(f"RandomCenterCropPad: the image has shape {img.shape} but mean "
                             f"has {len(self.mean)} channels")
        return self._test(results) if self.test_mode else self._train(results)

    def __repr__(self) -> str:
        return (f"RandomCenterCropPad(crop_size={self.crop_size}, ratios={self.ratios}, "
                f"border={self.border}, mean={self.input_mean}, std={self.input_std}, "
                f"to_rgb={self.to_rgb}, test_mode={self.test_mode}, test_pad_mode="
                f"{self.test_pad_mode}, bbox_clip_border={self.bbox_clip_border})")

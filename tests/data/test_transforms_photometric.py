"""Colour transforms: OpenCV's HSV formulas (checked against Python's colorsys), and
PhotoMetricDistortion / YOLOXHSVRandomAug / CutOut replayed step by step."""

import colorsys

import numpy as np
import pytest

from detlab.data.transforms import CutOut, PhotoMetricDistortion, YOLOXHSVRandomAug
from detlab.data.transforms.colorspace import (
    bgr_to_hsv,
    bgr_to_hsv_uint8,
    hsv_to_bgr,
    hsv_to_bgr_uint8,
)

rng = np.random.default_rng(0)
PIXELS = rng.uniform(60, 200, size=(4, 5, 3)).astype(np.float32)  # BGR


def _reference_hsv(bgr):
    """Hue in degrees, saturation, value of BGR pixels, by colorsys."""
    out = np.zeros_like(bgr, dtype=np.float64)
    for index in np.ndindex(bgr.shape[:2]):
        b, g, r = bgr[index]
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        out[index] = h * 360, s, v
    return out


def _reference_bgr(hsv):
    out = np.zeros_like(hsv, dtype=np.float64)
    for index in np.ndindex(hsv.shape[:2]):
        h, s, v = hsv[index]
        r, g, b = colorsys.hsv_to_rgb(h / 360, s, v)
        out[index] = b, g, r
    return out


def test_float_hsv_matches_colorsys_and_round_trips():
    hsv = bgr_to_hsv(PIXELS)
    np.testing.assert_allclose(hsv, _reference_hsv(PIXELS), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(hsv_to_bgr(hsv), PIXELS, rtol=1e-5, atol=1e-3)
    gray = np.full((1, 1, 3), 77, np.float32)
    assert bgr_to_hsv(gray).tolist() == [[[0, 0, 77]]]
    shifted = hsv.copy()
    shifted[..., 0] = (shifted[..., 0] + 100) % 360
    np.testing.assert_allclose(hsv_to_bgr(shifted), _reference_bgr(shifted), rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("bgr, hsv", [
    ((255, 0, 0), (120, 255, 255)),  # blue
    ((0, 255, 0), (60, 255, 255)),  # green
    ((0, 0, 255), (0, 255, 255)),  # red
    ((0, 255, 255), (30, 255, 255)),  # yellow
    ((128, 128, 128), (0, 0, 128)),
    ((10, 200, 100), (46, 242, 200)),  # hue 91.6 degrees / 2, saturation 190 / 200 * 255
])
def test_uint8_hsv_has_opencv_ranges(bgr, hsv):
    pixel = np.array([[bgr]], dtype=np.uint8)
    assert bgr_to_hsv_uint8(pixel).tolist() == [[list(hsv)]]


def test_uint8_hsv_round_trip_is_within_opencv_rounding():
    pixels = rng.integers(0, 256, size=(16, 16, 3)).astype(np.uint8)
    back = hsv_to_bgr_uint8(bgr_to_hsv_uint8(pixels)).astype(int)
    # hue is kept in 2-degree steps: up to 255 / 60 levels off, as OpenCV
    assert np.abs(back - pixels).max() <= 5


def _replay_photometric(img, seed, delta=32, contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                        hue=18):
    """PhotoMetricDistortion by hand, in MMDetection's order, with colorsys for HSV."""
    np.random.seed(seed)
    img = img.astype(np.float64)
    if np.random.randint(2):
        img = img + np.random.uniform(-delta, delta)
    contrast_first = np.random.randint(2) == 1
    if contrast_first and np.random.randint(2):
        img = img * np.random.uniform(*contrast)
    hsv = _reference_hsv(img)
    if np.random.randint(2):
        hsv[..., 1] *= np.random.uniform(*saturation)
    if np.random.randint(2):
        hsv[..., 0] += np.random.uniform(-hue, hue)
        hsv[..., 0] = np.where(hsv[..., 0] > 360, hsv[..., 0] - 360, hsv[..., 0])
        hsv[..., 0] = np.where(hsv[..., 0] < 0, hsv[..., 0] + 360, hsv[..., 0])
    img = _reference_bgr(hsv)
    if not contrast_first and np.random.randint(2):
        img = img * np.random.uniform(*contrast)
    if np.random.randint(2):
        img = img[..., np.random.permutation(3)]
    return img


@pytest.mark.parametrize("seed", range(8))
def test_photometric_distortion_replayed(seed):
    img = PIXELS.astype(np.uint8)
    expected = _replay_photometric(img, seed, delta=20, saturation=(0.5, 1.0))
    np.random.seed(seed)
    out = PhotoMetricDistortion(brightness_delta=20, saturation_range=(0.5, 1.0))(
        dict(img=img, img_fields=["img"]))
    assert out["img"].dtype == np.float32
    np.testing.assert_allclose(out["img"], expected, rtol=1e-4, atol=0.05)


def test_photometric_distortion_checks_its_input():
    with pytest.raises(ValueError, match="3-channel"):
        PhotoMetricDistortion()(dict(img=np.zeros((4, 4), np.uint8)))
    with pytest.raises(ValueError, match="one image per sample"):
        PhotoMetricDistortion()(dict(img=PIXELS, img_fields=["img", "img2"]))


def test_yolox_hsv_identity_and_value_shift(monkeypatch):
    pixels = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    same = YOLOXHSVRandomAug(0, 0, 0)(dict(img=pixels.copy()))["img"]
    assert same.dtype == np.uint8 and np.abs(same.astype(int) - pixels).max() <= 5
    # gains: hue 0, saturation 0, value +30 (drawn 1 * 30, selected)
    monkeypatch.setattr(np.random, "uniform", lambda *a: np.array([0.0, 0.0, 1.0]))
    monkeypatch.setattr(np.random, "randint", lambda *a: np.array([1, 1, 1]))
    gray = np.full((2, 2, 3), 100, np.uint8)
    assert YOLOXHSVRandomAug()(dict(img=gray))["img"].tolist() == [[[130] * 3] * 2] * 2
    floats = YOLOXHSVRandomAug()(dict(img=gray.astype(np.float32)))["img"]
    assert floats.dtype == np.float32 and floats[0, 0, 0] == 130


def test_cutout_fills_holes_and_leaves_boxes():
    img = np.full((20, 30, 3), 200, np.uint8)
    boxes = np.array([[1, 2, 10, 12]], np.float32)
    np.random.seed(0)
    out = CutOut(n_holes=1, cutout_shape=(4, 3), fill_in=(1, 2, 3))(
        dict(img=img, gt_bboxes=boxes))
    holes = (out["img"] == [1, 2, 3]).all(axis=-1)
    rows, cols = np.nonzero(holes)
    assert 0 < holes.sum() <= 12 and cols.max() - cols.min() < 4 and rows.max() - rows.min() < 3
    assert (img == 200).all()  # the input stays as it was
    np.testing.assert_array_equal(out["gt_bboxes"], boxes)
    np.random.seed(1)
    ratio = CutOut(n_holes=(2, 4), cutout_ratio=[(0.1, 0.1), (0.2, 0.2)])(dict(img=img))
    assert (ratio["img"] == 0).all(axis=-1).any()


def test_cutout_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        CutOut(1)
    with pytest.raises(ValueError, match="exactly one"):
        CutOut(1, cutout_shape=(2, 2), cutout_ratio=(0.1, 0.1))
    with pytest.raises(ValueError, match="low <= high"):
        CutOut((3, 1), cutout_shape=(2, 2))
    assert "cutout_ratio" in repr(CutOut([1, 2], cutout_ratio=[0.1, 0.2]))

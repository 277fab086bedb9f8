"""Transforms: MMDetection 2.x's arguments and numbers, and boxes that follow the image."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.config import Config
from detlab.data import Compose
from detlab.data.transforms import (
    Collect,
    DefaultFormatBundle,
    ImageToTensor,
    LoadAnnotations,
    LoadImageFromFile,
    MultiScaleFlipAug,
    Normalize,
    Pad,
    RandomFlip,
    Resize,
    ToTensor,
)
from detlab.data.transforms.imageops import rescale_size
from detlab.registry import TRANSFORMS

BOX = [20, 12, 53, 41]  # xyxy in pixels of the 90 x 60 test image


@pytest.fixture
def sample(tmp_path):
    """A loaded sample: a 90 x 60 image, black but for a white rectangle exactly at BOX (and a
    crowd box half its size), with its annotations."""
    img = np.zeros((60, 90, 3), dtype=np.uint8)
    x1, y1, x2, y2 = BOX
    img[y1:y2, x1:x2] = 255
    Image.fromarray(img).save(tmp_path / "rect.png")
    results = dict(img_info=dict(filename="rect.png", width=90, height=60, id=7),
                   ann_info=dict(bboxes=np.array([BOX], dtype=np.float32),
                                 labels=np.array([2]),
                                 bboxes_ignore=np.array([[0, 0, 45, 30]], dtype=np.float32)),
                   img_prefix=str(tmp_path), bbox_fields=[], mask_fields=[], seg_fields=[],
                   img_id=7)
    return LoadAnnotations()(LoadImageFromFile()(results))


def _drawn_box(img):
    """xyxy of the bright pixels of ``img`` (edges blurred by resizing count from half)."""
    bright = np.asarray(img)[..., 0] > 127
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def _assert_box_follows(results):
    np.testing.assert_allclose(results["gt_bboxes"][0], _drawn_box(results["img"]), atol=1)
    h, w = results["img_shape"][:2]
    assert results["img"].shape[:2] == (h, w) or "pad_shape" in results


# ---- loading -------------------------------------------------------------------------------


def test_load_image_adds_mmdetection_keys_in_bgr(tmp_path):
    Image.fromarray(np.full((5, 7, 3), (255, 0, 0), dtype=np.uint8)).save(tmp_path / "red.png")
    base = dict(img_info=dict(filename="red.png", id=1), img_prefix=str(tmp_path))
    out = LoadImageFromFile()(dict(base))
    assert out["img"].dtype == np.uint8 and out["img"].shape == (5, 7, 3)
    assert out["img"][0, 0].tolist() == [0, 0, 255]  # BGR, as mmcv reads it
    assert out["img_shape"] == out["ori_shape"] == (5, 7, 3)
    assert out["filename"] == str(tmp_path / "red.png") and out["ori_filename"] == "red.png"
    assert out["img_fields"] == ["img"]
    rgb = LoadImageFromFile(to_float32=True, channel_order="rgb")(dict(base))
    assert rgb["img"].dtype == np.float32 and rgb["img"][0, 0].tolist() == [255, 0, 0]


def test_grayscale_files_load_as_three_channels(tmp_path):
    Image.fromarray(np.full((4, 6), 9, dtype=np.uint8)).save(tmp_path / "g.png")
    base = dict(img_info=dict(filename="g.png"), img_prefix=str(tmp_path))
    assert LoadImageFromFile()(dict(base))["img"].shape == (4, 6, 3)
    assert LoadImageFromFile(color_type="grayscale")(dict(base))["img"].shape == (4, 6)


def test_load_image_errors(tmp_path):
    (tmp_path / "bad.png").write_text("not an image")
    load = LoadImageFromFile()
    with pytest.raises(FileNotFoundError, match=r"nope.png.*image id 3"):
        load(dict(img_info=dict(filename="nope.png", id=3), img_prefix=str(tmp_path)))
    with pytest.raises(OSError, match=r"bad.png.*image id 4.*cannot be read"):
        load(dict(img_info=dict(filename="bad.png", id=4), img_prefix=str(tmp_path)))
    with pytest.raises(ValueError, match="backend 'petrel'"):
        LoadImageFromFile(file_client_args=dict(backend="petrel"))


def test_load_annotations(sample):
    assert sample["gt_bboxes"].dtype == np.float32 and sample["gt_labels"].dtype == np.int64
    assert sample["bbox_fields"] == ["gt_bboxes", "gt_bboxes_ignore"]
    assert sample["gt_bboxes"] is not sample["ann_info"]["bboxes"]  # a copy to transform
    with pytest.raises(KeyError, match="test_mode"):
        LoadAnnotations()(dict(img_info={}, bbox_fields=[]))
    with pytest.raises(KeyError, match="no 'masks'"):
        LoadAnnotations(with_mask=True)(dict(sample, ann_info=dict(bboxes=[], labels=[])))


# ---- Resize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size, scale, expected", [
    ((640, 480), (1333, 800), (1067, 800)),  # factor min(1333/640, 800/480) = 5/3
    ((500, 375), (1333, 800), (1067, 800)),
    ((300, 900), (1333, 800), (444, 1333)),  # tall: the long edge limits, 1333/900
    ((2000, 500), (1333, 800), (1333, 333)),  # 1333/2000 * 500 = 333.25
    ((640, 480), (800, 1333), (1067, 800)),  # the order of the pair does not matter
    ((640, 480), 0.5, (320, 240)),
    ((101, 51), 0.5, (51, 26)),  # rounded half up: 50.5 -> 51, 25.5 -> 26
])
def test_rescale_size_follows_mmcv(size, scale, expected):
    assert rescale_size(size, scale)[0] == expected


def test_resize_keep_ratio_scale_factor_and_shapes(sample):
    out = Resize(img_scale=(200, 100))(sample)
    # 90 x 60 -> factor min(200/90, 100/60) = 5/3 -> 150 x 100
    assert out["img_shape"] == out["pad_shape"] == (100, 150, 3)
    assert out["scale_factor"].dtype == np.float32
    np.testing.assert_allclose(out["scale_factor"], [150 / 90, 100 / 60] * 2)
    assert out["scale"] == (200, 100) and out["scale_idx"] == 0 and out["keep_ratio"]
    np.testing.assert_allclose(out["gt_bboxes"], [np.array(BOX) * 5 / 3], rtol=1e-5)
    np.testing.assert_allclose(out["gt_bboxes_ignore"], [[0, 0, 75, 50]], rtol=1e-5)
    _assert_box_follows(out)


@pytest.mark.parametrize("resize", [
    dict(img_scale=(1333, 800)), dict(img_scale=(40, 30)), dict(img_scale=(61, 200)),
    dict(img_scale=(200, 100), keep_ratio=False), dict(img_scale=(45, 90), keep_ratio=False),
    dict(img_scale=(90, 60), ratio_range=(0.5, 1.5)),
])
def test_boxes_follow_the_image_through_resize(sample, resize):
    np.random.seed(1)
    _assert_box_follows(Resize(**resize)(sample))


def test_resize_without_keep_ratio_uses_w_h(sample):
    out = Resize(img_scale=(200, 100), keep_ratio=False)(sample)
    assert out["img_shape"] == (100, 200, 3)
    np.testing.assert_allclose(out["scale_factor"], [200 / 90, 100 / 60] * 2)


def test_multiscale_modes(sample):
    np.random.seed(0)
    chosen = {Resize(img_scale=[(100, 50), (120, 80)], multiscale_mode="value")(dict(sample))[
        "scale"] for _ in range(20)}
    assert chosen == {(100, 50), (120, 80)}
    for _ in range(20):
        long, short = Resize(img_scale=[(100, 50), (120, 80)])(dict(sample))["scale"]
        assert 100 <= long <= 120 and 50 <= short <= 80
        w, h = Resize(img_scale=(100, 50), ratio_range=(0.5, 2.0))(dict(sample))["scale"]
        assert 50 <= w <= 200 and abs(h - w / 2) <= 1


def test_resize_from_a_scale_factor_and_override(sample):
    out = Resize(keep_ratio=True)(dict(sample, scale_factor=0.5))
    assert out["img_shape"] == (30, 45, 3)
    with pytest.raises(ValueError, match="both 'scale' and 'scale_factor'"):
        Resize(img_scale=(10, 10))(dict(out))
    again = Resize(img_scale=(180, 120), override=True)(dict(out))
    assert again["img_shape"] == (120, 180, 3)
    with pytest.raises(ValueError, match="no img_scale"):
        Resize()(dict(sample))


def test_resize_argument_errors():
    with pytest.raises(ValueError, match="img_scale"):
        Resize(img_scale=1333)
    with pytest.raises(ValueError, match="multiscale_mode"):
        Resize(img_scale=(1, 2), multiscale_mode="any")
    with pytest.raises(ValueError, match="one img_scale"):
        Resize(img_scale=[(1, 2), (3, 4)], ratio_range=(0.5, 1))
    assert Resize(img_scale=[1333, 800]).img_scale == [(1333, 800)]  # lists from JSON configs


# ---- RandomFlip -----------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_boxes_follow_the_image_through_flips(sample, direction):
    out = RandomFlip(flip_ratio=1.0, direction=direction)(sample)
    assert out["flip"] and out["flip_direction"] == direction
    assert out["img"].flags["C_CONTIGUOUS"]
    _assert_box_follows(out)


def test_flip_ratio_forms(sample):
    np.random.seed(0)
    never = RandomFlip(flip_ratio=0.0)(dict(sample))
    assert never["flip"] is False and never["flip_direction"] is None
    assert RandomFlip()(dict(sample))["flip"] is False
    seen = {RandomFlip(flip_ratio=[0.3, 0.3], direction=["horizontal", "vertical"])(dict(sample))[
        "flip_direction"] for _ in range(40)}
    assert seen == {"horizontal", "vertical", None}
    kept = RandomFlip(flip_ratio=1.0)(dict(sample, flip=False, flip_direction=None))
    assert kept["flip"] is False  # a decision already made (MultiScaleFlipAug) stays


def test_flip_argument_errors():
    with pytest.raises(ValueError, match="direction"):
        RandomFlip(0.5, direction="sideways")
    with pytest.raises(ValueError, match="flip_ratio"):
        RandomFlip(1.5)
    with pytest.raises(ValueError, match="one ratio per direction"):
        RandomFlip([0.5], direction=["horizontal", "vertical"])


# ---- Pad, Normalize -------------------------------------------------------------------------


def test_pad_bottom_right_and_boxes_stay(sample):
    out = Pad(size_divisor=32)(Resize(img_scale=(100, 70))(dict(sample)))
    assert out["img_shape"][:2] == (67, 100) and out["pad_shape"][:2] == (96, 128)
    assert out["pad_size_divisor"] == 32 and out["pad_fixed_size"] is None
    assert not out["img"][67:].any() and not out["img"][:, 100:].any()
    _assert_box_follows(out)
    fixed = Pad(size=(70, 100), pad_val=dict(img=5))(dict(sample))
    assert fixed["pad_shape"] == (70, 100, 3) and fixed["img"][69, 99, 0] == 5
    assert fixed["pad_fixed_size"] == (70, 100)
    square = Pad(pad_to_square=True, pad_val=3)(dict(sample))
    assert square["pad_shape"] == (90, 90, 3) and square["img"][80, 0, 0] == 3
    with pytest.raises(ValueError, match="smaller"):
        Pad(size=(10, 10))(dict(sample))
    with pytest.raises(ValueError, match="exactly one"):
        Pad()


def test_normalize_turns_bgr_to_rgb(sample):
    img = sample["img"].copy()
    img[0, 0] = (10, 20, 30)  # B, G, R
    out = Normalize(mean=[1, 2, 3], std=[2, 2, 2])(dict(sample, img=img))
    assert out["img"].dtype == np.float32
    np.testing.assert_allclose(out["img"][0, 0], [(30 - 1) / 2, (20 - 2) / 2, (10 - 3) / 2])
    assert out["img_norm_cfg"]["to_rgb"] is True
    np.testing.assert_allclose(out["img_norm_cfg"]["mean"], [1, 2, 3])
    same = Normalize(mean=[0, 0, 0], std=[1, 1, 1], to_rgb=False)(dict(sample, img=img))
    np.testing.assert_allclose(same["img"][0, 0], [10, 20, 30])


# ---- formatting ---------------------------------------------------------------------------


def test_default_format_bundle_and_collect(sample):
    out = DefaultFormatBundle()(dict(sample))
    assert isinstance(out["img"], torch.Tensor) and out["img"].dtype == torch.float32
    assert out["img"].shape == (3, 60, 90) and out["img"].is_contiguous()
    assert out["gt_bboxes"].dtype == torch.float32 and out["gt_labels"].dtype == torch.int64
    assert out["gt_bboxes_ignore"].shape == (1, 4)
    assert out["pad_shape"] == (60, 90, 3)
    np.testing.assert_array_equal(out["scale_factor"], np.ones(4, dtype=np.float32))
    assert out["img_norm_cfg"]["to_rgb"] is False
    out["flip"], out["flip_direction"] = False, None
    data = Collect(keys=["img", "gt_bboxes", "gt_labels"])(out)
    assert set(data) == {"img", "gt_bboxes", "gt_labels", "img_metas"}
    assert set(data["img_metas"]) == {"filename", "ori_filename", "ori_shape", "img_shape",
                                      "pad_shape", "scale_factor", "flip", "flip_direction",
                                      "img_norm_cfg", "img_id"}
    assert data["img_metas"]["img_id"] == 7


def test_collect_names_what_is_missing(sample):
    with pytest.raises(KeyError, match=r"\['flip', 'flip_direction'\] \(set by RandomFlip\)"):
        Collect(keys=["img"])(DefaultFormatBundle()(dict(sample)))
    with pytest.raises(KeyError, match=r"keys \['gt_masks'\]"):
        Collect(keys=["gt_masks"], meta_keys=())(dict(sample))


def test_to_tensor_transforms(sample):
    out = ImageToTensor(keys=["img"])(dict(sample))
    assert out["img"].shape == (3, 60, 90) and out["img"].dtype == torch.uint8
    out = ToTensor(keys=["gt_labels", "img_id"])(dict(sample))
    assert out["gt_labels"].tolist() == [2] and out["img_id"].tolist() == [7]


# ---- Compose, MultiScaleFlipAug -----------------------------------------------------------


def test_compose_builds_dicts_keeps_callables_and_drops_on_none():
    pipeline = Compose([dict(type="ToTensor", keys=["a"]), lambda r: dict(r, b=1)])
    assert pipeline(dict(a=[1, 2]))["b"] == 1
    assert isinstance(pipeline.transforms[0], ToTensor)
    calls = []
    dropping = Compose([lambda r: None, lambda r: calls.append(r)])
    assert dropping(dict(a=1)) is None and calls == []
    with pytest.raises(TypeError, match="list of transforms"):
        Compose(dict(type="ToTensor", keys=["a"]))
    with pytest.raises(TypeError, match="a dict or a callable"):
        Compose([3])


def _tta(**kwargs):
    return MultiScaleFlipAug(transforms=[
        dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
        dict(type="Normalize", mean=[0, 0, 0], std=[1, 1, 1]),
        dict(type="Pad", size_divisor=32), dict(type="ImageToTensor", keys=["img"]),
        dict(type="Collect", keys=["img"])], **kwargs)


def test_multi_scale_flip_aug_structure(sample):
    out = _tta(img_scale=[(180, 120), (90, 60)], flip=True,
               flip_direction=["horizontal", "vertical"])(sample)
    assert set(out) == {"img", "img_metas"}
    assert len(out["img"]) == len(out["img_metas"]) == 6
    metas = out["img_metas"]
    assert [m["flip_direction"] for m in metas] == [None, "horizontal", "vertical"] * 2
    assert [m["flip"] for m in metas] == [False, True, True] * 2
    assert [m["img_shape"][:2] for m in metas] == [(120, 180)] * 3 + [(60, 90)] * 3
    assert out["img"][0].shape == (3, 128, 192) and all(m["img_id"] == 7 for m in metas)
    assert "flip" not in sample  # each augmentation works on its own copy


def test_multi_scale_flip_aug_scale_factor_and_errors(sample):
    out = _tta(scale_factor=[0.5, 1.0])(sample)
    assert [m["img_shape"][:2] for m in out["img_metas"]] == [(30, 45), (60, 90)]
    with pytest.raises(ValueError, match="exactly one of img_scale and scale_factor"):
        _tta()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MultiScaleFlipAug(transforms=[], img_scale=(10, 10), flip=True)
    assert "no RandomFlip" in str(caught[0].message)


def test_the_mmdetection_coco_pipelines_build_and_keep_boxes(sample):
    cfg = Config.fromfile("configs/_base_/datasets/coco_detection.py")
    train = [TRANSFORMS.build(t) for t in cfg.train_pipeline]
    results = dict(sample)
    np.random.seed(3)
    for transform in train[2:5]:  # Resize, RandomFlip, Normalize
        results = transform(results)
    results = train[5](results)  # Pad
    assert results["img_shape"][:2] == (800, 1200) and results["pad_shape"][:2] == (800, 1216)
    data = Compose(cfg.train_pipeline[6:])(results)
    assert set(data) == {"img", "gt_bboxes", "gt_labels", "img_metas"}
    test = Compose(cfg.test_pipeline[1:])(dict(sample))
    assert len(test["img"]) == 1 and test["img"][0].shape == (3, 800, 1216)

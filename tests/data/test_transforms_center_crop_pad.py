"""RandomCenterCropPad: MMDetection 2.28's crops for the same seed, the canvas arithmetic by
hand, and CenterNet's shipped pipelines."""

import copy

import numpy as np
import pytest
from transform_scenes import make_sample

from detlab.config import Config
from detlab.data import Compose
from detlab.data.transforms import RandomCenterCropPad
from detlab.data.transforms.center_crop_pad import center_border
from detlab.registry import TRANSFORMS

NORM = dict(mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True)
BOXES = [[5, 5, 20, 25], [40, 10, 70, 30], [10, 35, 35, 55]]  # in a 60 x 80 (h x w) image


def _sample(boxes=BOXES, ignore=None):
    sample = make_sample((60, 80), boxes, ignore=ignore)
    sample["img"] = sample["img"].astype(np.float32)
    del sample["gt_masks"]
    sample["mask_fields"] = []
    return sample


def _mmdet_transform(**kwargs):
    from reference.mmdet_reference import import_mmdet

    import_mmdet()
    from mmdet.datasets.pipelines import RandomCenterCropPad as MMRandomCenterCropPad

    return MMRandomCenterCropPad(**kwargs)


TRAIN = dict(crop_size=(40, 50), ratios=(0.6, 0.8, 1.0, 1.2), border=16, test_pad_mode=None,
             **NORM)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("boxes", [BOXES, np.zeros((0, 4))], ids=["boxes", "no-boxes"])
def test_train_crops_equal_mmdetection_s(seed, boxes):
    ours, theirs = RandomCenterCropPad(**TRAIN), _mmdet_transform(**TRAIN)
    sample = _sample(boxes, ignore=[[0, 0, 30, 30]])
    sample["img"] += np.random.default_rng(seed).uniform(0, 50, sample["img"].shape).astype(
        np.float32)
    reference = copy.deepcopy(sample)
    reference.pop("gt_instance_ids")
    np.random.seed(seed)
    out = ours(sample)
    np.random.seed(seed)
    expected = theirs(reference)
    for key in ("img", "gt_bboxes", "gt_labels", "gt_bboxes_ignore"):
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)
        assert out[key].dtype == expected[key].dtype, key
    assert out["img_shape"] == expected["img_shape"] == out["pad_shape"]
    # instance ids follow the labels (labels are arange here)
    assert out["gt_instance_ids"].tolist() == out["gt_labels"].tolist()


@pytest.mark.parametrize("shape", [(60, 80), (37, 101), (64, 64)])
@pytest.mark.parametrize("pad_mode, add", [(("logical_or", 31), 1), (("logical_or", 127), 0),
                                           (("size_divisor", 32), 0)])
def test_test_mode_pads_as_mmdetection(shape, pad_mode, add):
    kwargs = dict(crop_size=None, ratios=None, border=None, test_mode=True,
                  test_pad_mode=pad_mode, test_pad_add_pix=add, **NORM)
    img = np.random.default_rng(0).uniform(0, 255, (*shape, 3)).astype(np.float32)
    out = RandomCenterCropPad(**kwargs)(dict(img=img.copy()))
    expected = _mmdet_transform(**kwargs)(dict(img=img.copy()))
    np.testing.assert_array_equal(out["img"], expected["img"])
    np.testing.assert_array_equal(out["border"], expected["border"])
    assert out["border"].dtype == np.float32
    assert out["img_shape"] == img.shape and out["pad_shape"] == expected["pad_shape"]


def test_test_mode_by_hand():
    img = np.ones((60, 80, 3), np.float32)
    pad = RandomCenterCropPad(crop_size=None, ratios=None, border=None, mean=[1, 2, 3],
                              std=[1, 1, 1], to_rgb=True, test_mode=True,
                              test_pad_mode=["logical_or", 31], test_pad_add_pix=1)
    out = pad(dict(img=img))
    # 60 | 31 = 63, 80 | 31 = 95, plus one pixel
    assert out["pad_shape"] == (64, 96, 3) and out["img_shape"] == (60, 80, 3)
    # the image centre (30, 40) sits at the canvas centre (32, 48)
    np.testing.assert_array_equal(out["border"], [2, 62, 8, 88])
    assert out["img"][0, 0].tolist() == [3, 2, 1]  # the mean, BGR like the image
    assert out["img"][2:62, 8:88].min() == 1 == out["img"][2:62, 8:88].max()


def test_train_boxes_by_hand():
    np.random.seed(0)
    out = RandomCenterCropPad(**TRAIN)(_sample())
    h, w = out["img"].shape[:2]
    assert (h, w) in [(int(40 * r), int(50 * r)) for r in TRAIN["ratios"]]
    # each kept box is its rectangle of colour, moved and clipped into the canvas
    for box, label in zip(out["gt_bboxes"], out["gt_labels"], strict=True):
        x1, y1, x2, y2 = box.astype(int)
        patch = out["img"][y1:y2, x1:x2]
        assert patch.size and (patch == patch[0, 0]).all() and patch[0, 0].any(), label
    assert len(out["gt_labels"]) >= 1


def test_center_border_halves_until_it_fits():
    assert center_border(128, 512) == 128
    assert center_border(128, 200) == 64  # 2 * 128 > 200
    assert center_border(128, 100) == 32
    assert center_border(16, 60) == 16  # 2 * 16 fits in 60


def test_arguments_and_inputs():
    with pytest.raises(ValueError, match="crop_size is for training"):
        RandomCenterCropPad(crop_size=(4, 4), test_mode=True, **NORM)
    with pytest.raises(ValueError, match="test_pad_mode is for testing"):
        RandomCenterCropPad(crop_size=(4, 4), **NORM)
    with pytest.raises(ValueError, match="test_pad_mode is a pair"):
        RandomCenterCropPad(ratios=None, border=None, test_mode=True, test_pad_mode=("x", 3),
                            **NORM)
    with pytest.raises(ValueError, match="crop_size must be a positive"):
        RandomCenterCropPad(test_pad_mode=None, **NORM)
    with pytest.raises(ValueError, match="needs mean, std"):
        RandomCenterCropPad(crop_size=(4, 4), test_pad_mode=None)
    pad = RandomCenterCropPad(crop_size=(4, 4), test_pad_mode=None, **NORM)
    with pytest.raises(TypeError, match="to_float32=True"):
        pad(dict(img=np.zeros((5, 5, 3), np.uint8)))
    sample = make_sample((60, 80), BOXES)
    sample["img"] = sample["img"].astype(np.float32)
    with pytest.raises(NotImplementedError, match="mask_fields"):
        pad(sample)


def test_centernet_pipelines_build_and_run():
    cfg = Config.fromfile("configs/centernet/centernet_resnet18_dcnv2_140e_coco.py")
    train = Compose(cfg.train_pipeline[2:])  # after loading
    assert isinstance(train.transforms[1], RandomCenterCropPad)
    sample = _sample()
    sample.update(bbox_fields=["gt_bboxes"], img_info={}, pad_shape=sample["img"].shape)
    np.random.seed(1)
    data = train(sample)
    assert data["img"].data.shape[1:] == (512, 512)
    test = Compose(cfg.test_pipeline[1:])
    data = test(dict(img=np.zeros((60, 80, 3), np.float32), img_shape=(60, 80, 3),
                     ori_shape=(60, 80, 3), filename="a.png", ori_filename="a.png",
                     img_fields=["img"]))
    meta = data["img_metas"][0]
    assert data["img"][0].shape == (3, 64, 96)
    np.testing.assert_array_equal(meta["border"], [2, 62, 8, 88])
    assert isinstance(TRANSFORMS.build(cfg.test_pipeline[1]["transforms"][1]), RandomCenterCropPad)

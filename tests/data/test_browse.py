"""pipeline_steps (a sample after each step, boxes followed by id) and browse_dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detlab.data import CocoDataset
from detlab.data.browse import browse_dataset, display_image, pipeline_steps

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
BOXES = [[4, 4, 20, 16], [30, 6, 58, 20], [8, 26, 40, 44]]  # xyxy in 64 x 48 (w x h) images
COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]


@pytest.fixture
def coco(tmp_path):
    """Three 64 x 48 images with three coloured rectangles each, and their COCO file."""
    images, anns = [], []
    for i in range(3):
        pixels = np.full((48, 64, 3), 40, np.uint8)
        for color, (x1, y1, x2, y2) in zip(COLORS, BOXES, strict=True):
            pixels[y1:y2, x1:x2] = color
        Image.fromarray(pixels).save(tmp_path / f"im{i}.png")
        images.append(dict(id=i + 1, file_name=f"im{i}.png", width=64, height=48))
        for j, (x1, y1, x2, y2) in enumerate(BOXES):
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=j + 1, iscrowd=0,
                             bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1),
                             segmentation=[[x1, y1, x2, y1, x2, y2, x1, y2]]))
    cats = [dict(id=j + 1, name=name) for j, name in enumerate(["red", "green", "blue"])]
    (tmp_path / "ann.json").write_text(json.dumps(dict(images=images, annotations=anns,
                                                       categories=cats)))
    return tmp_path


def _pipeline(*middle):
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_mask=True),
            *middle, dict(type="Normalize", **NORM), dict(type="Pad", size_divisor=32),
            dict(type="DefaultFormatBundle"),
            dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_masks"],
                 meta_keys=("filename", "img_shape", "img_norm_cfg"))]


def _dataset(root, pipeline):
    return CocoDataset(str(root / "ann.json"), pipeline, img_prefix=str(root))


def test_steps_show_each_transform_and_follow_the_boxes(coco):
    crop = dict(type="RandomCrop", crop_size=(48, 34))  # h x w: cuts the right part away
    steps = pipeline_steps(_dataset(coco, _pipeline(crop, dict(type="Resize",
                                                                img_scale=(68, 96)))), 0)
    names = [s["name"] for s in steps]
    assert names == ["LoadImageFromFile", "LoadAnnotations", "RandomCrop", "Resize",
                     "Normalize", "Pad", "DefaultFormatBundle", "Collect"]
    assert [s["step"] for s in steps] == list(range(8))
    loaded = np.asarray(Image.open(coco / "im0.png"))
    np.testing.assert_array_equal(steps[0]["image"], loaded)  # RGB, as a viewer shows it
    assert steps[0]["boxes"] is None and steps[1]["ids"].tolist() == [0, 1, 2]
    assert steps[1]["masks"].shape == (3, 48, 64) and steps[1]["labels"].tolist() == [0, 1, 2]
    cropped = steps[2]
    assert cropped["image"].shape == (48, 34, 3)
    kept = cropped["ids"].tolist()
    assert set(kept) | set(cropped["dropped"]) == {0, 1, 2} and 2 in kept
    assert set(cropped["clipped"]) <= set(kept) and not cropped["added"]
    for later in steps[3:]:  # formatting undone for display: the same picture
        assert later["ids"].tolist() == kept and not later["dropped"]
    resized, *formatted = steps[3:]
    for step in formatted:
        view = step["image"][:resized["shape"][0], :resized["shape"][1]]
        assert np.abs(view.astype(int) - resized["image"]).max() <= 1
        np.testing.assert_allclose(step["boxes"], resized["boxes"])
    assert steps[-1]["masks"].dtype == bool and "RandomCrop(crop_size=(48, 34)" in \
        cropped["repr"]


def test_a_dropped_sample_ends_the_walk(coco):
    crop = dict(type="RandomCrop", crop_size=(3, 3))  # finds no box at this seed
    dataset = _dataset(coco, _pipeline(crop))
    np.random.seed(0)
    steps = pipeline_steps(dataset, 1)
    assert steps[-1]["dropped_sample"] and steps[-1]["name"] == "RandomCrop"
    assert "image" not in steps[-1] and len(steps) == 3


def test_a_step_that_loses_ids_restarts_them(coco):
    def drop_first(results):
        for key in ("gt_bboxes", "gt_labels"):
            results[key] = results[key][1:]
        results.pop("gt_instance_ids")
        results["gt_masks"] = results["gt_masks"][1:]
        return results

    dataset = _dataset(coco, _pipeline(drop_first))
    dataset.pipeline.transforms[2] = drop_first
    steps = pipeline_steps(dataset, 0)
    assert steps[2]["tracked"] is False and steps[2]["ids"].tolist() == [0, 1]
    assert steps[3]["tracked"] is True


class _Repeat:
    def __init__(self, dataset, times):
        self.dataset, self.times = dataset, times

    def __len__(self):
        return self.times * len(self.dataset)


class _MixWrapper:
    """The shape of MultiImageMixDataset: a pipeline of built transforms over a dataset that
    loads."""

    def __init__(self, dataset, pipeline):
        from detlab.data.transforms import Compose

        self.dataset, self.pipeline = dataset, Compose(pipeline).transforms
        self._skip_type_keys = None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        raise AssertionError("pipeline_steps runs the steps itself")


def test_mix_wrapper_steps_and_fresh_ids(coco):
    loading = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_mask=True)]
    mixed = _MixWrapper(_dataset(coco, loading), [
        dict(type="Mosaic", img_scale=(48, 64), center_ratio_range=(1, 1)),
        dict(type="Resize", img_scale=(64, 48))])
    steps = pipeline_steps(_Repeat(mixed, 2), 4)  # the second round: image 1 again
    assert [s["name"] for s in steps] == ["LoadImageFromFile", "LoadAnnotations", "Mosaic",
                                          "Resize"]
    mosaic = steps[2]
    assert mosaic["image"].shape == (96, 128, 3)
    assert mosaic["ids"].tolist() == list(range(12)) and mosaic["added"] == list(range(3, 12))
    assert mosaic["masks"].shape == (12, 96, 128)
    mixed._skip_type_keys = ("Mosaic",)
    assert [s["name"] for s in pipeline_steps(mixed, 0)][-1] == "Resize"
    with pytest.raises(IndexError, match="out of range"):
        pipeline_steps(mixed, 3)


def test_detlab_wrappers(coco):
    from detlab.data import MultiImageMixDataset, RepeatDataset

    loading = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
    mixed = MultiImageMixDataset(_dataset(coco, loading), [
        dict(type="Mosaic", img_scale=(48, 64)), dict(type="RandomAffine", border=(-24, -32)),
        dict(type="MixUp", img_scale=(48, 64))])
    np.random.seed(0)
    steps = pipeline_steps(RepeatDataset(mixed, 2), 5)
    assert [s["name"] for s in steps][2:] == ["Mosaic", "RandomAffine", "MixUp"]
    assert steps[3]["image"].shape == (48, 64, 3)
    mixed_up = steps[4]
    assert set(mixed_up["added"]).isdisjoint(steps[3]["ids"].tolist())
    assert len(mixed_up["ids"]) == len(set(mixed_up["ids"].tolist()))


def test_display_image_undoes_formatting():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.float32)
    mean, std = np.array(NORM["mean"], np.float32), np.array(NORM["std"], np.float32)
    tensor = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1).copy())
    sample = dict(img=tensor, img_metas=dict(img_norm_cfg=dict(NORM, mean=mean, std=std)))
    np.testing.assert_allclose(display_image(sample), rgb, atol=1)
    bgr = dict(img=rgb[..., ::-1].astype(np.uint8))
    np.testing.assert_array_equal(display_image(bgr), rgb.astype(np.uint8))
    assert display_image(dict(img=rgb.astype(np.uint8)), loaded_as_bgr=False).shape == (4, 5, 3)
    assert display_image(dict(img=np.zeros((4, 5), np.uint8))).shape == (4, 5, 3)
    assert display_image(dict(img_info={})) is None


def _config(root):
    text = f"""
dataset_type = 'CocoDataset'
img_norm_cfg = {NORM!r}
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', img_scale=(128, 96), keep_ratio=True),
    dict(type='RandomFlip', flip_ratio=0.0),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels']),
]
data = dict(
    samples_per_gpu=2, workers_per_gpu=0,
    train=dict(type=dataset_type, ann_file={str(root / 'ann.json')!r},
               img_prefix={str(root)!r}, pipeline=train_pipeline))
"""
    path = root / "browse_cfg.py"
    path.write_text(text)
    return path


def test_browse_dataset_from_a_config(coco, tmp_path):
    written = browse_dataset(str(_config(coco)), output_dir=tmp_path / "out", max_images=2)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["im0.png", "im1.png"]
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (96, 128, 3)  # resized, not padded: Pad is kept, 96 x 128 fits
    assert picture[94, 126].tolist() == [40, 40, 40]  # plain pixels: no normalization left
    blue = picture[70, 48]  # inside the blue box, tinted by its mask
    assert blue[2] > 150 and blue[2] > blue[0] + 50
    more = browse_dataset(_config(coco), output_dir=tmp_path / "more",
                          cfg_options={"data.train.pipeline.2.img_scale": (64, 48)})
    assert len(more) == 3 and np.asarray(Image.open(more[0])).shape == (64, 64, 3)


def test_browse_dataset_from_a_dataset(coco, tmp_path):
    dataset = _dataset(coco, _pipeline())
    written = browse_dataset(dataset, tmp_path / "pics")
    assert len(written) == 3
    assert len(dataset.pipeline.transforms) == 6  # the dataset itself is left as it was
    picture = np.asarray(Image.open(written[0]))
    assert picture.shape == (64, 64, 3)  # Pad is not among the skipped steps
    assert picture[46, 62].tolist() == [40, 40, 40] and picture[60, 10].tolist() == [0, 0, 0]


def test_browse_dataset_errors(coco, tmp_path):
    with pytest.raises(ValueError, match="would do nothing"):
        browse_dataset(_config(coco))
    with pytest.raises(KeyError, match="no data.val"):
        browse_dataset(_config(coco), tmp_path, split="val")

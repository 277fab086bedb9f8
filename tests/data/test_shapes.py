"""The embedded shapes dataset: deterministic bytes, valid COCO files, tight boxes."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from detlab.data import make_shapes_dataset
from detlab.data.datasets.shapes import SHAPES

# pycocotools' mask decoding under NumPy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_shapes_dataset(root, num_train=12, num_val=4, image_size=96)


def test_returns_the_paths_it_wrote(shapes):
    assert shapes["data_root"].endswith("/")
    for split in ("train", "val"):
        assert Path(shapes[f"{split}_ann_file"]).name == f"instances_{split}.json"
        assert Path(shapes[f"{split}_ann_file"]).parent.name == "annotations"
        assert len(list(Path(shapes[f"{split}_img_prefix"]).glob("*.png"))) == (
            12 if split == "train" else 4)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    runs = [make_shapes_dataset(tmp_path / name, num_train=5, num_val=2, image_size=64, seed=s)
            for name, s in (("a", 3), ("b", 3), ("c", 4))]
    digests = [_digest(Path(run["data_root"])) for run in runs]
    assert len(digests[0]) == 5 + 2 + 2
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_val_split_does_not_depend_on_num_train(tmp_path):
    small = make_shapes_dataset(tmp_path / "a", num_train=1, num_val=2, image_size=64)
    large = make_shapes_dataset(tmp_path / "b", num_train=4, num_val=2, image_size=64)
    assert Path(small["val_ann_file"]).read_bytes() == Path(large["val_ann_file"]).read_bytes()


def test_coco_files_are_valid_for_pycocotools(shapes):
    coco = COCO(shapes["train_ann_file"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square",
                                                                   "triangle"]
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    for img in coco.loadImgs(coco.getImgIds()):
        assert (img["width"], img["height"]) == (96, 96)
        pixels = Image.open(Path(shapes["train_img_prefix"]) / img["file_name"])
        assert pixels.size == (96, 96) and pixels.mode == "RGB"
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert 1 <= len(anns) <= 6
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
            assert ann["category_id"] in (1, 2, 3) and ann["iscrowd"] == 0
            assert 0 < ann["area"] <= w * h
            assert 0.08 * 96 - 2 <= max(w, h) <= 0.45 * 96 + 2


def test_boxes_are_tight_around_the_polygons(shapes):
    coco = COCO(shapes["val_ann_file"])
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        polygon_box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        x, y, w, h = ann["bbox"]
        assert np.allclose(polygon_box, [x, y, x + w, y + h], atol=1)
        assert abs(mask.sum() - ann["area"]) <= 0.05 * ann["area"] + 2


def test_objects_stand_out_from_their_surroundings(shapes):
    """The pixels of an object differ from the ring just outside its box (visible objects)."""
    coco = COCO(shapes["val_ann_file"])
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(Path(shapes["val_img_prefix"]) / img["file_name"]),
                            dtype=np.float32)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            inside = pixels[coco.annToMask(ann).astype(bool)].mean(0)
            x, y, w, h = (int(v) for v in ann["bbox"])
            ring = np.concatenate([pixels[max(y - 2, 0), x:x + w], pixels[min(y + h + 1, 95),
                                                                           x:x + w]])
            assert np.linalg.norm(inside - ring.mean(0)) > 20


def test_more_shapes_and_other_sizes(tmp_path):
    paths = make_shapes_dataset(tmp_path, num_train=3, num_val=0, image_size=(80, 64),
                                classes=SHAPES, objects_per_image=(2, 3))
    data = json.loads(Path(paths["train_ann_file"]).read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPES)
    assert all((i["width"], i["height"]) == (80, 64) for i in data["images"])
    assert json.loads(Path(paths["val_ann_file"]).read_text())["images"] == []


@pytest.mark.parametrize("kwargs, match", [
    (dict(classes=("circle", "hexagon")), "classes"),
    (dict(objects_per_image=(3, 1)), "objects_per_image"),
    (dict(size_range=(0.5, 0.2)), "size_range"),
    (dict(max_occlusion=1.0), "max_occlusion"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_dataset(tmp_path, num_train=1, num_val=1, image_size=64, **kwargs)

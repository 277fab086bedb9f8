"""LoadImageFromFile on odd and broken files: grey, RGBA, palette, 16-bit, EXIF-rotated,
truncated, not an image, missing -- each loads as mmcv's 'color' flag does or fails naming the
file and the image id."""

import warnings

import numpy as np
import pytest
from PIL import Image

from detlab.data.transforms import ImageReadError, LoadImageFromFile
from detlab.data.transforms.loading import imread


def _load(tmp_path, name, image_id=5, **kwargs):
    results = dict(img_info=dict(filename=name, id=image_id), img_prefix=str(tmp_path))
    return LoadImageFromFile(**kwargs)(results)


def test_grayscale_loads_as_three_equal_channels(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    img = _load(tmp_path, "gray.png")["img"]
    assert img.shape == (3, 4, 3) and img.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(img[..., channel], gray)
    np.testing.assert_array_equal(_load(tmp_path, "gray.png", color_type="grayscale")["img"],
                                  gray)


def test_rgba_drops_the_alpha_channel(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the colour is kept
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = _load(tmp_path, "rgba.png")
    assert out["img"].shape == (2, 3, 3) and out["img_shape"] == (2, 3, 3)
    assert out["img"][0, 0].tolist() == [0, 0, 200]  # BGR
    assert _load(tmp_path, "rgba.png", color_type="unchanged")["img"].shape == (2, 3, 4)


def test_palette_images_load_as_colour(tmp_path):
    Image.fromarray(np.full((2, 2, 3), (10, 20, 30), np.uint8)).convert(
        "P", palette=Image.Palette.ADAPTIVE).save(
        tmp_path / "palette.png")
    img = _load(tmp_path, "palette.png", channel_order="rgb")["img"]
    assert img.shape == (2, 2, 3) and img[0, 0].tolist() == [10, 20, 30]


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 255, 256, 1000], [32768, 65280, 65535, 4095]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(tmp_path / "deep.png")
    img = _load(tmp_path, "deep.png")["img"]
    assert img.dtype == np.uint8 and img.shape == (2, 4, 3)
    np.testing.assert_array_equal(img[..., 0], values >> 8)  # as OpenCV's IMREAD_COLOR
    raw = _load(tmp_path, "deep.png", color_type="unchanged")["img"]
    assert raw.dtype == np.uint16 and np.array_equal(raw, values)
    as_float = _load(tmp_path, "deep.png", to_float32=True)["img"]
    assert as_float.dtype == np.float32 and as_float.max() == 255


def _exif_rotated_jpeg(path):
    """A 20 x 10 (w x h) JPEG with a red block top left, stored with EXIF orientation 6
    (turn 90 degrees clockwise to display): upright it is 10 wide and 20 high, the block top
    right."""
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied_as_mmcv_does(tmp_path):
    _exif_rotated_jpeg(tmp_path / "turned.jpg")
    upright = _load(tmp_path, "turned.jpg", channel_order="rgb")["img"]
    assert upright.shape == (20, 10, 3)
    assert upright[1, 8, 0] > 200 and upright[1, 1, 0] < 50  # the block is now top right
    raw = _load(tmp_path, "turned.jpg", color_type="color_ignore_orientation")["img"]
    assert raw.shape == (10, 20, 3)
    assert _load(tmp_path, "turned.jpg", color_type="unchanged")["img"].shape == (10, 20, 3)
    assert _load(tmp_path, "turned.jpg", color_type="grayscale")["img"].shape == (20, 10)


def test_a_size_that_disagrees_with_the_annotations_is_reported(tmp_path):
    _exif_rotated_jpeg(tmp_path / "turned.jpg")
    results = dict(img_info=dict(filename="turned.jpg", id=9, width=20, height=10),
                   img_prefix=str(tmp_path))
    with pytest.warns(UserWarning, match=r"image id 9.*sides are swapped.*EXIF"):
        LoadImageFromFile()(results)
    results["img_info"].update(width=10, height=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoadImageFromFile()(results)
    results["img_info"].update(width=50, height=50)
    load = LoadImageFromFile()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(7):
            load(dict(results))
    assert len(caught) == 5 and "not reported" in str(caught[-1].message)


@pytest.mark.parametrize("kind", ["png", "jpg"])
def test_truncated_images_fail_naming_file_and_id(tmp_path, kind):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / f"full.{kind}")
    data = (tmp_path / f"full.{kind}").read_bytes()
    (tmp_path / f"cut.{kind}").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match=rf"cut\.{kind}.*image id 5.*truncated.*re-export"):
        _load(tmp_path, f"cut.{kind}")


def test_files_that_are_not_images(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not pixels")
    with pytest.raises(OSError, match=r"notes\.jpg.*image id 5.*not an image.*annotation file"):
        _load(tmp_path, "notes.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        _load(tmp_path, "empty.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageReadError, match="is a folder"):
        _load(tmp_path, "folder.png")


def test_a_missing_image_names_file_and_id_and_what_to_check(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.png.*image id 5.*img_prefix"):
        _load(tmp_path, "gone.png")
    results = dict(img_info=dict(filename="gone.png"), img_prefix=str(tmp_path), img_id=77)
    with pytest.raises(FileNotFoundError, match="image id 77"):
        LoadImageFromFile()(results)


def test_imread_and_arguments(tmp_path):
    Image.fromarray(np.full((2, 2, 3), (1, 2, 3), np.uint8)).save(tmp_path / "c.png")
    assert imread(str(tmp_path / "c.png"))[0, 0].tolist() == [3, 2, 1]
    assert imread(str(tmp_path / "c.png"), channel_order="rgb")[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="color_type"):
        LoadImageFromFile(color_type="colour")
    with pytest.raises(ValueError, match="channel_order"):
        LoadImageFromFile(channel_order="gbr")
    assert "color_type='color'" in repr(LoadImageFromFile())

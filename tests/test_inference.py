"""init_detector / inference_detector / show_result on a checkpoint trained here."""

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from detlab.data import make_shapes_dataset
from detlab.engine.setup import train
from detlab.inference import inference_detector, init_detector, show_result
from detlab.structures import DetResult


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_inference")
    make_shapes_dataset(root, num_train=8, num_val=4, image_size=64, seed=1)
    cfg = tiny_config(str(root), epochs=1)
    run = train(cfg, work_dir=str(root / "work"), progress=False, validate=False)
    return cfg, run.checkpoint, root


def test_init_detector_takes_classes_from_the_checkpoint(trained):
    cfg, checkpoint, _ = trained
    model = init_detector(cfg, checkpoint)
    assert model.CLASSES == ("circle", "square", "triangle") and not model.training
    assert model.cfg.model.bbox_head.num_classes == 3


def test_inference_on_paths_arrays_and_lists(trained):
    cfg, checkpoint, root = trained
    model = init_detector(cfg, checkpoint)
    path = str(next((root / "val").glob("*.png")))
    rgb = np.asarray(Image.open(path).convert("RGB"))
    from_path = inference_detector(model, path)
    from_array = inference_detector(model, rgb)
    assert isinstance(from_path, DetResult) and from_path.class_names == model.CLASSES
    assert np.array_equal(from_path.image, rgb)
    assert from_path.boxes.shape == from_array.boxes.shape
    assert np.allclose(from_path.scores.numpy(), from_array.scores.numpy(), atol=1e-5)
    both = inference_detector(model, [path, rgb])
    assert isinstance(both, list) and len(both) == 2
    if len(from_path):  # boxes are in the pixels of the original 64-pixel image
        assert float(from_path.boxes.max()) <= 64.0 + 1e-3


def test_inference_rejects_bad_images(trained):
    cfg, checkpoint, _ = trained
    model = init_detector(cfg, checkpoint)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        inference_detector(model, "nope.png")
    with pytest.raises(ValueError, match="H x W x 3"):
        inference_detector(model, np.zeros((4, 4, 5), dtype=np.uint8))


def test_show_result_writes_a_picture(trained, tmp_path):
    cfg, checkpoint, root = trained
    model = init_detector(cfg, checkpoint)
    path = str(next((root / "val").glob("*.png")))
    result = inference_detector(model, path)
    out = tmp_path / "drawn" / "out.png"
    drawn = show_result(path, result, score_thr=0.0, out_file=str(out))
    assert out.exists() and drawn.shape == (64, 64, 3)
    assert result._repr_png_().startswith(b"\x89PNG")


def test_inference_on_a_folder(trained, tmp_path):
    from detlab.inference import inference_folder

    cfg, checkpoint, root = trained
    model = init_detector(cfg, checkpoint)
    results = inference_folder(model, str(root / "val"), out_dir=str(tmp_path / "drawn"),
                               batch_size=3)
    names = sorted(p.name for p in (root / "val").glob("*.png"))
    assert sorted(results) == names and all(isinstance(r, DetResult) for r in results.values())
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == names
    with pytest.raises(FileNotFoundError, match="no images"):
        inference_folder(model, str(tmp_path / "drawn" / "nothing-here"))


def _write_video(path, frames, rate=5):
    import av

    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=rate)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for rgb in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def test_inference_on_a_video(trained, tmp_path):
    import av

    from detlab.inference import inference_video

    cfg, checkpoint, root = trained
    model = init_detector(cfg, checkpoint)
    paths = sorted((root / "val").glob("*.png"))
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in paths] * 2  # 8 frames
    video = tmp_path / "shapes.mp4"
    _write_video(video, frames)
    out = tmp_path / "drawn.mp4"
    results = inference_video(model, str(video), out_file=str(out), frame_stride=2)
    assert [r.meta["frame"] for r in results] == [0, 2, 4, 6]
    with av.open(str(out)) as written:
        assert sum(1 for _ in written.decode(video=0)) == 4
    assert len(inference_video(model, str(video), max_frames=3)) == 3
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        inference_video(model, str(tmp_path / "missing.mp4"))

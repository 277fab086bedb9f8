"""Inference on images: ``init_detector`` and ``inference_detector``, as in MMDetection.

>>> model = init_detector('configs/quickstart/retinanet_r18_fpn_shapes.py', 'latest.pth')
>>> result = inference_detector(model, 'image.png')     # a DetResult; shows itself in Jupyter
>>> show_result('image.png', result, score_thr=0.3, out_file='out.png')

Arrays are taken as RGB (what PIL, matplotlib and imageio give); the test pipeline's channel
order (BGR for MMDetection configs) is applied inside.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from detlab.config import Config, ConfigError, load_config
from detlab.structures import DetResult

ImageInput = Any  # str | os.PathLike | np.ndarray (H x W x 3 RGB) | PIL.Image.Image


def init_detector(config: str | Config | Mapping, checkpoint: str | None = None,
                  device: str | torch.device = "cpu",
                  cfg_options: Mapping[str, Any] | None = None,
                  allow_partial: bool = False) -> nn.Module:
    """The detector a config describes, with ``checkpoint``'s weights and class names, in eval
    mode on ``device``; ``model.cfg`` keeps the config (its test pipeline is used).

    The checkpoint must match the model (a mismatch names the first offending keys and the
    config keys to change); ``allow_partial=True`` loads what matches and reports the rest."""
    from detlab.checkpoint import load_checkpoint
    from detlab.models import build_model

    cfg = load_config(config, cfg_options)
    model = build_model(cfg.model)
    classes = None
    if checkpoint is not None:
        classes = load_checkpoint(model, checkpoint, map_location="cpu",
                                  strict=not allow_partial)["meta"].get("CLASSES")
    if classes is None:
        classes = _classes_from_config(cfg)
    model.CLASSES = tuple(classes) if classes is not None else None
    model.cfg = cfg
    return model.to(device).eval()


def _classes_from_config(cfg: Config) -> Sequence[str] | None:
    test_cfg = cfg.get("data", {}).get("test", {})
    classes = test_cfg.get("classes")
    return list(classes) if isinstance(classes, (list, tuple)) else None


class LoadImageFromArray:
    """The first step of a test pipeline for images given in memory: like LoadImageFromFile
    (same keys: img, img_shape, ori_shape, filename, ori_filename, img_fields), from
    ``results['img']`` (RGB) converted to ``channel_order``."""

    def __init__(self, to_float32: bool = False, channel_order: str = "bgr") -> None:
        self.to_float32, self.channel_order = to_float32, channel_order

    def __call__(self, results: dict[str, Any]) -> dict[str, Any]:
        img = results["img"]
        if self.channel_order == "bgr":
            img = img[..., ::-1]
        img = np.ascontiguousarray(img, dtype=np.float32 if self.to_float32 else img.dtype)
        results.update(img=img, img_shape=img.shape, ori_shape=img.shape, img_fields=["img"])
        results.setdefault("filename", None)
        results.setdefault("ori_filename", None)
        return results


def _as_rgb(image: ImageInput) -> tuple[np.ndarray, str | None]:
    from PIL import Image, ImageOps

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image not found: {path}")
        with Image.open(path) as pil:
            return np.asarray(ImageOps.exif_transpose(pil).convert("RGB")), path
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")), None
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"an image array must be H x W x 3 (RGB), got shape {array.shape}")
    return array[..., :3], None


def _test_pipeline(cfg: Config) -> Any:
    """The config's test pipeline, its loading step replaced by one that takes arrays."""
    from detlab.data import Compose

    steps = copy.deepcopy(list(cfg.data.test.pipeline))
    if not steps or steps[0].get("type") not in ("LoadImageFromFile", "LoadImageFromWebcam"):
        raise ConfigError("data.test.pipeline must start with LoadImageFromFile for inference")
    first = steps[0]
    loader = LoadImageFromArray(first.get("to_float32", False),
                                first.get("channel_order", "bgr"))
    return Compose([loader] + steps[1:])


@torch.no_grad()
def inference_detector(model: nn.Module, imgs: ImageInput | Sequence[ImageInput],
                       ) -> DetResult | list[DetResult]:
    """Detect objects in an image (path, RGB array or PIL image) or a list of them.

    A list gives a list of DetResult; each keeps its original RGB image for display.
    """
    from detlab.data import collate
    from detlab.engine.tester import _predict

    single = not isinstance(imgs, (list, tuple))
    images = [imgs] if single else list(imgs)
    if not hasattr(model, "cfg"):
        raise ValueError("the model has no .cfg: build it with init_detector(config, checkpoint)")
    pipeline = _test_pipeline(model.cfg)
    device = next(model.parameters()).device
    results = []
    for image in images:
        rgb, path = _as_rgb(image)
        sample = pipeline({"img": rgb, "filename": path,
                           "ori_filename": os.path.basename(path) if path else None})
        result = _predict(model, collate([sample]), device)[0].cpu()
        result.image = rgb
        results.append(result)
    return results[0] if single else results


def show_result(img: ImageInput, result: DetResult, score_thr: float = 0.3,
                out_file: str | None = None, class_names: Sequence[str] | None = None
                ) -> np.ndarray:
    """The image with the detections above ``score_thr`` drawn (also written to ``out_file``)."""
    from detlab.viz.draw import show_result as draw_and_save

    return draw_and_save(img, result, score_thr=score_thr, out_file=out_file,
                         class_names=class_names)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def inference_folder(model: nn.Module, folder: str, out_dir: str | None = None,
                     score_thr: float = 0.3, batch_size: int = 8) -> dict[str, DetResult]:
    """Detect objects in every image of ``folder`` (searched recursively, sorted by name).

    Returns ``{relative path: DetResult}``; with ``out_dir``, also writes each image with its
    detections above ``score_thr`` drawn, under the same relative path.
    """
    paths = sorted(os.path.relpath(os.path.join(root, name), folder)
                   for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    results: dict[str, DetResult] = {}
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        detected = inference_detector(model, [os.path.join(folder, p) for p in chunk])
        for rel, result in zip(chunk, detected, strict=True):
            results[rel] = result
            if out_dir is not None:
                show_result(result.image, result, score_thr=score_thr,
                            out_file=os.path.join(out_dir, rel))
    return results


def _open_video(path: str) -> Any:
    try:
        import av
    except ImportError as err:
        raise ImportError("video inference reads videos with PyAV: pip install av") from err
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {path}")
    return av.open(path)


def inference_video(model: nn.Module, video: str, out_file: str | None = None,
                    score_thr: float = 0.3, frame_stride: int = 1,
                    max_frames: int | None = None) -> list[DetResult]:
    """Detect objects in the frames of a video file (every ``frame_stride``-th frame, at most
    ``max_frames``). With ``out_file``, writes a video of the processed frames with their
    detections above ``score_thr`` drawn (same frame rate divided by the stride). Each result's
    ``meta['frame']`` is its frame index. Needs PyAV (``pip install av``)."""
    container = _open_video(video)
    stream = container.streams.video[0]
    writer = None
    results: list[DetResult] = []
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index % frame_stride:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            result = inference_detector(model, rgb)
            result.meta["frame"] = index
            results.append(result)
            if out_file is not None:
                writer = writer or _video_writer(out_file, rgb.shape, stream, frame_stride)
                _write_frame(writer, show_result(rgb, result, score_thr=score_thr))
            if max_frames is not None and len(results) >= max_frames:
                break
    finally:
        container.close()
        if writer is not None:
            _close_writer(writer)
    return results


def _video_writer(path: str, shape: tuple, stream: Any, stride: int) -> tuple[Any, Any]:
    import fractions

    import av

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    container = av.open(path, mode="w")
    rate = fractions.Fraction(stream.average_rate or 25) / stride
    out = container.add_stream("mpeg4", rate=rate)
    out.height, out.width = shape[0] - shape[0] % 2, shape[1] - shape[1] % 2
    out.pix_fmt = "yuv420p"
    return container, out


def _write_frame(writer: tuple[Any, Any], rgb: np.ndarray) -> None:
    import av

    container, stream = writer
    frame = av.VideoFrame.from_ndarray(
        np.ascontiguousarray(rgb[:stream.height, :stream.width]), format="rgb24")
    for packet in stream.encode(frame):
        container.mux(packet)


def _close_writer(writer: tuple[Any, Any]) -> None:
    container, stream = writer
    for packet in stream.encode():
        container.mux(packet)
    container.close()

"""Drawing detections and ground truth on images with PIL: labelled boxes, masks, grids.

Every function takes an ``H x W x 3`` uint8 RGB array and returns a new one; the input is never
modified. Boxes are ``(N, 4)`` xyxy in pixels of that image.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import ImageFont

    from detlab.structures import DetResult

Color = tuple[int, int, int]
# golden-ratio hue steps keep neighbouring class indices far apart in hue, for any class count
_GOLDEN = 0.618033988749895


def palette_color(index: int) -> Color:
    """The fixed colour of class ``index`` (the same in every picture)."""
    hue = (0.07 + index * _GOLDEN) % 1.0
    value = 0.95 if index % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _as_rgb(image: Any) -> np.ndarray:
    """``image`` as ``H x W x 3`` uint8 (grey images repeated, an alpha channel dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB (H x W x 3), got dtype {image.dtype}; "
                         f"convert e.g. with (img * 255).clip(0, 255).astype(np.uint8)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"images must be H x W x 3 RGB arrays, got shape {image.shape}")
    return image[:, :, :3]


def _font(size: int) -> ImageFont.ImageFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def _default_font_size(shape: Sequence[int]) -> int:
    return max(10, min(shape[0], shape[1]) // 40)


def _box_colors(n: int, labels: np.ndarray | None, colors: Any) -> list[Color]:
    """One colour per box: ``colors`` is ``None`` (the palette by label), one ``(r, g, b)`` for
    every box, or a sequence of colours indexed by label."""
    labels = np.zeros(n, dtype=np.int64) if labels is None else labels
    if colors is None:
        return [palette_color(int(label)) for label in labels]
    if len(colors) == 3 and all(np.isscalar(c) for c in colors):
        return [tuple(int(c) for c in colors)] * n
    return [tuple(int(c) for c in colors[int(label) % len(colors)]) for label in labels]


def _text_color(background: Color) -> Color:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _pixel_rect(box: Sequence[float], size: tuple[int, int], thickness: int) -> list[int] | None:
    """The inclusive pixel rectangle covering the xyxy box ``[x1, x2) x [y1, y2)``; sides far
    outside the image are pulled in only to just beyond the border, so they stay invisible."""
    if not np.all(np.isfinite(box)):
        return None
    w, h = size
    x1, y1, x2, y2 = (int(np.floor(v + 0.5)) for v in box)  # halves round up, not to even
    x1, x2 = np.clip([x1, x2 - 1], -thickness, w + thickness)
    y1, y2 = np.clip([y1, y2 - 1], -thickness, h + thickness)
    return [int(x1), int(y1), int(max(x1, x2)), int(max(y1, y2))]


def _draw_label(draw: Any, rect: list[int], text: str, color: Color, font: Any,
                size: tuple[int, int]) -> None:
    """``text`` on a filled ``color`` background above the box, or inside it at the top when
    there is no room above."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 2
    x = min(max(rect[0], 0), max(size[0] - tw, 0))
    y = rect[1] - th if rect[1] - th >= 0 else max(rect[1], 0)
    draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=color)
    draw.text((x + 2 - left, y + 1 - top), text, fill=_text_color(color), font=font)


def draw_boxes(image: np.ndarray, boxes: Any, labels: Any = None,
               texts: Sequence[str] | None = None, colors: Any = None, thickness: int = 2,
               font_size: int | None = None) -> np.ndarray:
    """A copy of ``image`` with boxes drawn on it.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        boxes: ``(N, 4)`` xyxy pixels (NumPy or torch); the outline lies inside each box.
        labels: ``(N,)`` class indices, which pick the palette colour (default all 0).
        texts: a caption per box, drawn on a filled background above it (default none).
        colors: ``None`` (the fixed palette), one ``(r, g, b)``, or a colour per label.
        thickness: outline width in pixels.
        font_size: caption size (default about 1/40 of the shorter image side).
    """
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(_as_rgb(image)))
    boxes = np.asarray(_numpy(boxes), dtype=np.float64).reshape(-1, 4)
    labels = None if labels is None else np.asarray(_numpy(labels), dtype=np.int64).reshape(-1)
    if texts is not None and len(texts) != len(boxes):
        raise ValueError(f"{len(texts)} texts for {len(boxes)} boxes")
    box_colors = _box_colors(len(boxes), labels, colors)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size or _default_font_size((canvas.height, canvas.width)))
    for i, box in enumerate(boxes):
        rect = _pixel_rect(box, canvas.size, thickness)
        if rect is None:
            continue
        draw.rectangle(rect, outline=box_colors[i], width=thickness)
        if texts is not None and texts[i]:
            _draw_label(draw, rect, texts[i], box_colors[i], font, canvas.size)
    return np.asarray(canvas).copy()


def _numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, possibly on a GPU
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _blend_masks(image: np.ndarray, masks: np.ndarray, colors: list[Color],
                 alpha: float = 0.4) -> np.ndarray:
    """``image`` with each ``(N, H, W)`` bool mask tinted by its colour."""
    out = image.astype(np.float32)
    for mask, color in zip(masks, colors, strict=True):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float32)
    return out.round().astype(np.uint8)


def _captions(result: DetResult, class_names: Sequence[str] | None,
              show_scores: bool) -> list[str]:
    names = class_names if class_names is not None else result.class_names
    captions = []
    for label, score in zip(result.labels.tolist(), result.scores.tolist(), strict=True):
        name = names[label] if names is not None and 0 <= label < len(names) else str(label)
        captions.append(f"{name} {score:.2f}" if show_scores else name)
    return captions


def draw_detections(image: np.ndarray, result: DetResult,
                    class_names: Sequence[str] | None = None, score_thr: float = 0.0,
                    colors: Any = None, thickness: int = 2, font_size: int | None = None,
                    show_scores: bool = True) -> np.ndarray:
    """A copy of ``image`` (``H x W x 3`` uint8 RGB) with the detections of ``result`` scoring
    at least ``score_thr``: one colour per class, masks tinted, boxes captioned ``"name 0.87"``.

    ``class_names`` defaults to ``result.class_names`` (the label number when unknown);
    ``colors`` is as in ``draw_boxes``. Low scores are drawn first, so the best stay on top.
    """
    image = _as_rgb(image)
    result = result.cpu().filter(score_thr)
    result = result[result.scores.argsort()]
    labels = _numpy(result.labels)
    if result.masks is not None and len(result):
        masks = _numpy(result.masks)
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"masks of shape {masks.shape[1:]} for an image of shape "
                             f"{image.shape[:2]}: masks must be of the original image size")
        image = _blend_masks(image, masks, _box_colors(len(result), labels, colors))
    texts = _captions(result, class_names, show_scores)
    return draw_boxes(image, result.boxes, labels, texts, colors, thickness, font_size)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file at ``path`` as ``H x W x 3`` uint8 RGB."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).copy()


def save_rgb(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``image`` (``H x W x 3`` uint8 RGB) to ``path`` (format from the extension),
    creating its folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(_as_rgb(image))).save(path)
    return path


def show_result(img: str | os.PathLike | np.ndarray, result: DetResult, score_thr: float = 0.3,
                out_file: str | os.PathLike | None = None,
                class_names: Sequence[str] | None = None, colors: Any = None,
                thickness: int = 2, font_size: int | None = None,
                show_scores: bool = True) -> np.ndarray:
    """The picture of ``result`` on ``img`` (a path, read as RGB, or an ``H x W x 3`` uint8 RGB
    array), as MMDetection's ``show_result``; written to ``out_file`` when given (its folder is
    created). Returns the drawn RGB array; the other arguments are those of
    ``draw_detections``."""
    image = read_rgb(img) if isinstance(img, (str, os.PathLike)) else img
    drawn = draw_detections(image, result, class_names=class_names, score_thr=score_thr,
                            colors=colors, thickness=thickness, font_size=font_size,
                            show_scores=show_scores)
    if out_file is not None:
        save_rgb(drawn, out_file)
    return drawn


def image_grid(images: Sequence[np.ndarray], ncols: int | None = None,
               titles: Sequence[str] | None = None, pad: int = 4,
               background: Color = (255, 255, 255)) -> np.ndarray:
    """The ``images`` (``H x W x 3`` uint8 RGB, any sizes) tiled row by row, ``ncols`` per row
    (default all in one row), each top-left in a cell of the largest size, ``pad`` pixels apart,
    with its title (if given) written above it. Returns one RGB array."""
    images = [_as_rgb(image) for image in images]
    if not images:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    ncols = len(images) if ncols is None else max(1, min(int(ncols), len(images)))
    nrows = -(-len(images) // ncols)
    cell_h = max(image.shape[0] for image in images)
    cell_w = max(image.shape[1] for image in images)
    font_size = _default_font_size((cell_h, cell_w))
    title_h = font_size + 6 if titles is not None else 0
    step_y, step_x = title_h + cell_h + pad, cell_w + pad
    grid = np.empty((nrows * step_y - pad, ncols * step_x - pad, 3), dtype=np.uint8)
    grid[:] = background
    for i, image in enumerate(images):
        y, x = (i // ncols) * step_y + title_h, (i % ncols) * step_x
        grid[y:y + image.shape[0], x:x + image.shape[1]] = image
    if titles is not None:
        grid = _draw_titles(grid, titles, ncols, step_y, step_x, font_size)
    return grid


def _draw_titles(grid: np.ndarray, titles: Sequence[str], ncols: int, step_y: int, step_x: int,
                 font_size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(grid)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for i, title in enumerate(titles):
        y, x = (i // ncols) * step_y, (i % ncols) * step_x
        draw.text((x + 2, y + 2), str(title), fill=(0, 0, 0), font=font)
    return np.asarray(canvas).copy()

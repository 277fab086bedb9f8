"""The embedded default data: a generated COCO-format dataset of simple shapes.

``make_shapes_dataset(out_dir)`` writes PNG images and COCO ``instances_*.json`` files of
circles, squares and triangles (optionally stars and crosses) on textured, noisy backgrounds
with clutter (lines, small blobs) that is not an object. It needs nothing from the network, is
deterministic for a seed (the same bytes on every run) and fast enough to make on the fly in a
test or a notebook::

    paths = make_shapes_dataset('data/shapes', num_train=300, num_val=60)
    # paths['data_root'] = 'data/shapes/', paths['train_ann_file'], paths['train_img_prefix'] ...

Every annotation's ``segmentation`` is its shape's outline polygon (the whole shape, as its box
is), so the data trains instance segmentation too: load it with
``LoadAnnotations(with_bbox=True, with_mask=True)`` as
``configs/quickstart/mask_rcnn_r18_fpn_shapes.py`` does.

Layout of ``out_dir``::

    annotations/instances_train.json   annotations/instances_val.json
    train/000000.png ...               val/000000.png ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
DEFAULT_CLASSES = ("circle", "square", "triangle")
_SPLIT_CODES = {"train": 1, "val": 2}
_MIN_CONTRAST = 110.0  # RGB distance between an object and what lies under it
_PLACEMENT_TRIES = 25


@dataclass
class ShapesSpec:
    """What the generator draws; see :func:`make_shapes_dataset` for the meaning of each."""

    width: int
    height: int
    classes: tuple[str, ...] = DEFAULT_CLASSES
    objects_per_image: tuple[int, int] = (1, 6)
    size_range: tuple[float, float] = (0.08, 0.45)
    max_occlusion: float = 0.25


@dataclass
class _Canvas:
    """One image being drawn: the picture, the owner of each pixel, and the objects so far."""

    pixels: np.ndarray  # (H, W, 3) float32, the picture
    background: np.ndarray  # (H, W, 3) float32, before clutter and objects: for contrast
    owner: np.ndarray  # (H, W) int16, 0 = background, k = k-th object (1-based) on top there
    objects: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Shapes as polygons
# --------------------------------------------------------------------------------------------


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """``(N, 2)`` points rotated by ``angle`` radians about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _on_circle(angles: np.ndarray, radii: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.reshape(radii, (-1, 1))


def unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """``(N, 2)`` vertices of a randomly varied ``shape`` around the origin, about unit size.

    Circles are 48-gons (slightly elliptic at times), squares turn by up to 15 degrees, triangles
    take any orientation with jittered corners, stars have five points, crosses are plus signs.
    """
    if shape == "circle":
        points = _on_circle(np.linspace(0, 2 * np.pi, 48, endpoint=False), 1.0)
        points[:, 1] *= rng.uniform(0.85, 1.0)
        return _rotate(points, rng.uniform(0, np.pi))
    if shape == "square":
        points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        return _rotate(points, np.deg2rad(rng.uniform(-15, 15)))
    if shape == "triangle":
        angles = rng.uniform(0, 2 * np.pi) + np.deg2rad([0, 120, 240] + rng.uniform(-8, 8, 3))
        return _on_circle(angles, rng.uniform(0.9, 1.1, 3))
    if shape == "star":
        angles = np.linspace(0, 2 * np.pi, 10, endpoint=False) + rng.uniform(0, 2 * np.pi)
        return _on_circle(angles, np.tile([1.0, rng.uniform(0.4, 0.5)], 5))
    if shape == "cross":
        a = rng.uniform(0.3, 0.4)  # half the width of an arm
        points = np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
                           [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)
        return _rotate(points, np.deg2rad(rng.uniform(-15, 15)))
    raise ValueError(f"unknown shape {shape!r}; the generator draws {', '.join(SHAPES)}")


def _place(polygon: np.ndarray, extent: float, width: int, height: int,
           rng: np.random.Generator) -> np.ndarray:
    """Scale ``polygon`` to ``extent`` pixels (its larger side) and move it to a random spot
    where it lies fully inside the image, one pixel from the border."""
    span = polygon.max(axis=0) - polygon.min(axis=0)
    points = polygon * (extent / span.max())
    low, high = points.min(axis=0), points.max(axis=0)
    cx = rng.uniform(1 - low[0], width - 2 - high[0])
    cy = rng.uniform(1 - low[1], height - 2 - high[1])
    return points + np.array([cx, cy])


def rasterize_polygon(points: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The pixels whose centre lies inside the polygon ``points`` ``(N, 2)`` (even-odd rule),
    as a bool mask of its bounding window, and the window's top-left ``(x0, y0)``.

    Pixel ``(i, j)`` covers ``[i, i + 1] x [j, j + 1]``: the rule pycocotools uses to turn a
    polygon ``segmentation`` into a mask, so the drawn shape and its annotation agree.
    """
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int)
    ys = y0 + np.arange(y1 - y0 + 1) + 0.5  # (h,) row centres
    xs = x0 + np.arange(x1 - x0 + 1) + 0.5  # (w,) column centres
    xa, ya = points[:, 0], points[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    # (h, N): where each row centre line crosses each edge (inf when it does not)
    crosses = (ya <= ys[:, None]) != (yb <= ys[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        at = xa + (ys[:, None] - ya) * (xb - xa) / (yb - ya)
    at = np.where(crosses, at, np.inf)
    # (h, w): crossings left of each pixel centre; odd = inside
    inside = (at[:, None, :] < xs[None, :, None]).sum(axis=-1) % 2 == 1
    return inside, int(x0), int(y0)


# --------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------


def _gradient(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` float32 linear gradient between two random colours."""
    c0, c1 = rng.uniform(25, 230, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    # (H, 1) + (1, W) -> (H, W) position along the gradient's direction
    t = (np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(angle))
         + np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(angle)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return c0 + t[..., None] * (c1 - c0)


def _texture(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` float32 smooth colour blotches around 0 (low-frequency noise)."""
    cells = rng.integers(4, 10)
    small = rng.normal(128, rng.uniform(10, 30), (cells, cells, 3)).clip(0, 255).astype(np.uint8)
    big = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) - 128


def _draw_clutter(image: Image.Image, rng: np.random.Generator) -> None:
    """Lines and small blobs that are not objects: a detector has to learn to skip them."""
    draw = ImageDraw.Draw(image)
    w, h = image.size
    side = min(w, h)
    for _ in range(rng.integers(2, 7)):
        points = rng.uniform(0, 1, (rng.integers(2, 4), 2)) * (w, h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([tuple(p) for p in points], fill=colour, width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(0, 6)):
        # blobs stay below the smallest object size, so that none reads as a circle
        rx, ry = rng.uniform(0.005, 0.03, 2) * side
        cx, cy = rng.uniform(0, 1, 2) * (w, h)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([cx - rx, cy - ry / 2, cx + rx, cy + ry / 2], fill=colour)


def _new_canvas(width: int, height: int, rng: np.random.Generator) -> _Canvas:
    background = _gradient(width, height, rng) + _texture(width, height, rng)
    background = background.clip(0, 255)
    image = Image.fromarray(background.astype(np.uint8))
    _draw_clutter(image, rng)
    return _Canvas(np.array(image, dtype=np.float32), background,
                   np.zeros((height, width), dtype=np.int16))


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------


def _keeps_shape(owner: np.ndarray, obj: dict, index: int) -> bool:
    """Whether object ``index`` (1-based) still shows enough of itself under ``owner``: at least
    ``1 - max_occlusion`` of its pixels, and a pixel on each side of its box."""
    x1, y1, x2, y2 = obj["box"]
    visible = owner[y1:y2, x1:x2] == index
    touches_sides = (visible[:, 0].any() and visible[:, -1].any()
                     and visible[0].any() and visible[-1].any())
    return bool(touches_sides) and int(visible.sum()) >= obj["min_visible"]


def _occlusion_ok(canvas: _Canvas, mask: np.ndarray, x0: int, y0: int) -> tuple[bool, list[int]]:
    """Whether painting ``mask`` at ``(x0, y0)`` leaves every earlier object recognisable, and
    the objects it overlaps (1-based indices)."""
    h, w = mask.shape
    under = canvas.owner[y0:y0 + h, x0:x0 + w][mask]
    touched = [int(i) for i in np.unique(under) if i]
    if not touched:
        return True, touched
    trial = canvas.owner.copy()
    trial[y0:y0 + h, x0:x0 + w][mask] = len(canvas.objects) + 1
    ok = all(_keeps_shape(trial, canvas.objects[i - 1], i) for i in touched)
    return ok, touched


def _pick_colour(canvas: _Canvas, mask: np.ndarray, x0: int, y0: int, touched: list[int],
                 rng: np.random.Generator) -> np.ndarray:
    """A fill colour far from the background under the object and from the objects it touches."""
    h, w = mask.shape
    under = canvas.background[y0:y0 + h, x0:x0 + w][mask].mean(axis=0)
    avoid = np.stack([under] + [canvas.objects[i - 1]["colour"] for i in touched])
    candidates = rng.integers(0, 256, (16, 3)).astype(np.float32)
    # (16, k) distances of every candidate to every colour to avoid
    distance = np.linalg.norm(candidates[:, None] - avoid[None], axis=-1).min(axis=1)
    good = np.flatnonzero(distance >= _MIN_CONTRAST)
    return candidates[good[0] if good.size else int(distance.argmax())]


def _add_object(canvas: _Canvas, spec: ShapesSpec, rng: np.random.Generator) -> bool:
    """Try a few random placements of one random shape; draw the first acceptable one."""
    side = min(spec.width, spec.height)
    label = int(rng.integers(len(spec.classes)))
    polygon = unit_polygon(spec.classes[label], rng)
    for _ in range(_PLACEMENT_TRIES):
        extent = rng.uniform(*spec.size_range) * side
        points = _place(polygon, extent, spec.width, spec.height, rng)
        mask, x0, y0 = rasterize_polygon(points)
        ok, touched = _occlusion_ok(canvas, mask, x0, y0)
        if not ok or not mask.any():
            continue
        colour = _pick_colour(canvas, mask, x0, y0, touched, rng)
        h, w = mask.shape
        canvas.pixels[y0:y0 + h, x0:x0 + w][mask] = colour
        canvas.owner[y0:y0 + h, x0:x0 + w][mask] = len(canvas.objects) + 1
        canvas.objects.append(_describe(label, points, mask, x0, y0, colour, spec))
        return True
    return False


def _describe(label: int, points: np.ndarray, mask: np.ndarray, x0: int, y0: int,
              colour: np.ndarray, spec: ShapesSpec) -> dict:
    """The facts of a drawn object: tight pixel box, pixel area and outline polygon."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
    area = int(mask.sum())
    outline = np.round(points, 2).reshape(-1).tolist()
    return dict(label=label, box=box, area=area, polygon=outline, colour=colour,
                min_visible=int(np.ceil((1 - spec.max_occlusion) * area)))


def render_image(spec: ShapesSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One RGB image ``(H, W, 3)`` uint8 and its objects (``label``, ``box`` xyxy pixels,
    ``area``, ``polygon``)."""
    canvas = _new_canvas(spec.width, spec.height, rng)
    low, high = spec.objects_per_image
    for _ in range(rng.integers(low, high + 1)):
        _add_object(canvas, spec, rng)
    noise = rng.standard_normal(canvas.pixels.shape, dtype=np.float32) * rng.uniform(2, 8)
    image = (canvas.pixels + noise).clip(0, 255).astype(np.uint8)
    return image, canvas.objects


# --------------------------------------------------------------------------------------------
# The dataset on disk
# --------------------------------------------------------------------------------------------


def _coco_annotation(obj: dict, ann_id: int, image_id: int) -> dict:
    x1, y1, x2, y2 = obj["box"]
    return dict(id=ann_id, image_id=image_id, category_id=obj["label"] + 1,
                bbox=[x1, y1, x2 - x1, y2 - y1], area=float(obj["area"]), iscrowd=0,
                segmentation=[obj["polygon"]])


def _make_image(out_dir: str, split: str, index: int, spec: ShapesSpec, seed: int,
                compress_level: int) -> list[dict]:
    """Render and save image ``index`` of ``split``; its objects."""
    # one stream per image: images do not depend on each other (nor val on num_train), so
    # they can be made in any order, in threads
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    pixels, objects = render_image(spec, rng)
    Image.fromarray(pixels).save(os.path.join(out_dir, split, f"{index:06d}.png"),
                                 compress_level=compress_level)
    return objects


def _write_split(out_dir: str, split: str, count: int, spec: ShapesSpec, seed: int,
                 compress_level: int) -> dict:
    """Render and save the images of one split; its COCO dict."""
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    # PNG encoding and large NumPy operations release the GIL: threads use every core
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        per_image = list(pool.map(
            lambda i: _make_image(out_dir, split, i, spec, seed, compress_level), range(count)))
    for index, objects in enumerate(per_image):
        file_name = f"{index:06d}.png"
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, width=spec.width,
                           height=spec.height))
        annotations += [_coco_annotation(obj, len(annotations) + k + 1, image_id)
                        for k, obj in enumerate(objects)]
    categories = [dict(id=i + 1, name=name, supercategory="shape")
                  for i, name in enumerate(spec.classes)]
    info = dict(description=f"detlab shapes ({split})", version="1.0", year=2024,
                seed=seed)
    return dict(info=info, licenses=[], images=images, annotations=annotations,
                categories=categories)


def _check_spec(spec: ShapesSpec) -> None:
    unknown = [c for c in spec.classes if c not in SHAPES]
    if unknown or not spec.classes or len(set(spec.classes)) != len(spec.classes):
        raise ValueError(f"classes must be distinct names among {SHAPES}, got {spec.classes}")
    low, high = spec.objects_per_image
    if not 0 <= low <= high:
        raise ValueError(f"objects_per_image must be (low, high) with 0 <= low <= high, "
                         f"got {spec.objects_per_image}")
    small, large = spec.size_range
    if not 0 < small <= large < 0.95:
        raise ValueError(f"size_range must be fractions of the image side with "
                         f"0 < low <= high < 0.95, got {spec.size_range}")
    if min(spec.width, spec.height) * small < 4:
        raise ValueError(f"objects of {small} x {min(spec.width, spec.height)} pixels are too "
                         f"small to draw; use a larger image_size or size_range")
    if not 0 <= spec.max_occlusion < 1:
        raise ValueError(f"max_occlusion must be in [0, 1), got {spec.max_occlusion}")


def make_shapes_dataset(out_dir: str | os.PathLike, num_train: int = 200, num_val: int = 50,
                        image_size: int | Sequence[int] = 256, seed: int = 0,
                        classes: Sequence[str] = DEFAULT_CLASSES,
                        objects_per_image: tuple[int, int] = (1, 6),
                        size_range: tuple[float, float] = (0.08, 0.45),
                        max_occlusion: float = 0.25, compress_level: int = 1) -> dict[str, str]:
    """Write a COCO-format detection dataset of shapes to ``out_dir``; the paths it wrote.

    Args:
        out_dir: folder to write (created if needed; files of an earlier run are overwritten).
        num_train, num_val: number of images in each split.
        image_size: side of the square images, or ``(width, height)``.
        seed: the same seed writes the same bytes.
        classes: shapes to draw, a subset of ``SHAPES``; category ids are ``1..K`` in this order.
        objects_per_image: ``(low, high)`` objects tried per image (a placement that would hide
            too much of an earlier object is retried, and rarely given up).
        size_range: larger side of an object as a fraction of the shorter image side.
        max_occlusion: the largest fraction of an object that later objects may cover; each
            object also keeps a visible pixel on every side of its box, so boxes stay tight.
        compress_level: PNG zlib level (1 is fast; the images are noisy anyway).

    Returns:
        ``data_root`` (with a trailing separator, as MMDetection configs write it),
        ``train_ann_file``, ``train_img_prefix``, ``val_ann_file``, ``val_img_prefix``.
    """
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    spec = ShapesSpec(int(width), int(height), tuple(classes), tuple(objects_per_image),
                      tuple(size_range), float(max_occlusion))
    _check_spec(spec)
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    paths = dict(data_root=os.path.join(out_dir, ""))
    for split, count in (("train", num_train), ("val", num_val)):
        coco = _write_split(out_dir, split, int(count), spec, seed, compress_level)
        ann_file = os.path.join(out_dir, "annotations", f"instances_{split}.json")
        with open(ann_file, "w", encoding="utf-8") as f:
            json.dump(coco, f, separators=(",", ":"))
        paths[f"{split}_ann_file"] = ann_file
        paths[f"{split}_img_prefix"] = os.path.join(out_dir, split, "")
    return paths

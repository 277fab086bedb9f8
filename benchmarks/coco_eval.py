"""COCO bbox evaluation time: detlab's engine next to pycocotools (and faster-coco-eval when it
is installed), on one synthetic set, in one run.

    .venv/bin/python benchmarks/coco_eval.py [--images 5000] [--dets 100] [--repeat 1]

The set has 80 classes with non-contiguous ids, about 7 ground truths per image (some crowd), and
about ``--dets`` detections per image (jittered copies of the ground truth, wrong classes and
background boxes, scores rounded so that ties occur). Each engine starts from the same ground
truth (a pycocotools ``COCO``, index built) and the same list of result rows, and ends with the
12 stats; the stats of every engine are checked against pycocotools'. Target: detlab at most 1/8
of pycocotools' time, and no slower than faster-coco-eval.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np


def synthetic_set(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list]:
    """A COCO ground-truth dict and result rows (see the module docstring)."""
    rng = np.random.default_rng(seed)
    cat_ids = np.sort(rng.choice(np.arange(1, 200), 80, replace=False))
    images, anns, rows = [], [], []
    for img_id in range(1, num_images + 1):
        images.append(dict(id=img_id, width=640, height=480, file_name=f"{img_id}.jpg"))
        n = rng.poisson(7)
        wh = rng.uniform(4, 300, (n, 2))
        xy = rng.uniform(0, 400, (n, 2))
        cats = rng.choice(cat_ids, n)
        for box, cat in zip(np.c_[xy, wh], cats, strict=True):
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=int(cat),
                             bbox=box.tolist(), area=float(box[2] * box[3] * 0.8),
                             iscrowd=int(rng.random() < 0.02)))
        rows += _detections(rng, img_id, np.c_[xy, wh], cats, cat_ids, dets_per_image)
    gt = dict(images=images, annotations=anns,
              categories=[dict(id=int(c), name=f"class{c}") for c in cat_ids])
    return gt, rows


def _detections(rng: np.random.Generator, img_id: int, boxes: np.ndarray, cats: np.ndarray,
                cat_ids: np.ndarray, count: int) -> list[dict]:
    count = int(rng.poisson(count))
    from_gt = rng.random(count) < 0.5 if len(boxes) else np.zeros(count, bool)
    picked = rng.integers(0, max(len(boxes), 1), count)
    jitter = rng.normal(0, 0.08, (count, 4))
    out = np.c_[rng.uniform(0, 400, (count, 2)), rng.uniform(4, 300, (count, 2))]
    labels = rng.choice(cat_ids, count)
    if len(boxes):
        base = boxes[picked]
        moved = base + jitter * np.c_[base[:, 2:], base[:, 2:]]
        out[from_gt] = moved[from_gt]
        keep_class = from_gt & (rng.random(count) < 0.8)
        labels[keep_class] = cats[picked][keep_class]
    scores = np.round(rng.random(count), 3)
    return [dict(image_id=img_id, category_id=int(c), bbox=b.tolist(), score=float(s))
            for b, c, s in zip(out, labels, scores, strict=True)]


def run_pycocotools(coco_gt, rows: list[dict]) -> np.ndarray:
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in rows])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def run_detlab(coco_gt, rows: list[dict]) -> np.ndarray:
    from detlab.evaluation.coco import coco_evaluate

    metrics = coco_evaluate(coco_gt, rows, proposal_nums=(1, 10, 100), backend="detlab")
    return np.asarray(metrics["stats"])


def run_faster_coco_eval(gt: dict, rows: list[dict]) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes([dict(r) for r in rows])
        evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def _timed(fn, *args, repeat: int = 1) -> tuple[float, np.ndarray]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    from pycocotools.coco import COCO

    gt, rows = synthetic_set(args.images, args.dets)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
    print(f"{args.images} images, {len(gt['annotations'])} ground truths, {len(rows)} detections")
    t_ref, ref = _timed(run_pycocotools, coco_gt, rows, repeat=args.repeat)
    timings = {"pycocotools": t_ref}
    t_ours, ours = _timed(run_detlab, coco_gt, rows, repeat=args.repeat)
    timings["detlab"] = t_ours
    print(f"detlab stats == pycocotools stats: {np.array_equal(ours, ref)} "
          f"(max |diff| {np.abs(ours - ref).max():.1e})")
    try:
        t_fast, fast = _timed(run_faster_coco_eval, gt, rows, repeat=args.repeat)
        timings["faster-coco-eval"] = t_fast
        print(f"faster-coco-eval max |diff| vs pycocotools: {np.abs(fast - ref).max():.1e}")
    except ImportError:
        print("faster-coco-eval is not installed: skipped")
    print(f"\n{'engine':<18} {'seconds':>8} {'vs pycocotools':>15}")
    for name, seconds in timings.items():
        print(f"{name:<18} {seconds:8.2f} {seconds / t_ref:14.3f}x")
    print(f"\ndetlab / pycocotools = {t_ours / t_ref:.3f} (target <= 0.125)")
    if "faster-coco-eval" in timings:
        print(f"detlab / faster-coco-eval = {t_ours / timings['faster-coco-eval']:.2f} "
              f"(target <= 1)")


if __name__ == "__main__":
    main()

"""Every error-analysis plot returns a figure and writes its file."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from detlab.evaluation.confusion import confusion_matrix  # noqa: E402
from detlab.evaluation.curves import (  # noqa: E402
    class_average_precision,
    pr_curves,
    threshold_curves,
)
from detlab.evaluation.errors import coco_error_analysis, tide_errors  # noqa: E402
from detlab.evaluation.matching import match_detections  # noqa: E402
from detlab.viz.analysis import (  # noqa: E402
    plot_class_ap,
    plot_confusion_matrix,
    plot_error_analysis,
    plot_f1_threshold,
    plot_pr_curves,
    plot_tide,
)


@pytest.fixture(scope="module")
def small_case():
    rng = np.random.default_rng(0)
    images, anns, rows = [], [], []
    for i in range(6):
        images.append(dict(id=i + 1, width=320, height=240))
        xy = rng.uniform(0, 200, (4, 2))
        boxes = np.c_[xy, rng.uniform(10, 80, (4, 2))]
        cats = rng.integers(1, 4, 4)
        for box, cat in zip(boxes, cats, strict=True):
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(cat),
                             bbox=box.tolist(), area=float(box[2] * box[3]), iscrowd=0))
            jitter = box * (1 + rng.normal(0, 0.1, 4))
            rows.append(dict(image_id=i + 1, category_id=int(cat), bbox=np.abs(jitter).tolist(),
                             score=float(rng.random())))
        rows.append(dict(image_id=i + 1, category_id=1, bbox=[250.0, 150.0, 30.0, 30.0],
                         score=float(rng.random())))
    cats = [dict(id=c, name=n, supercategory="animal") for c, n in ((1, "cat"), (2, "dog"),
                                                                   (3, "cow"))]
    gt = dict(images=images, annotations=anns, categories=cats)
    return gt, rows, match_detections(gt, rows)


def check(fig, path):
    assert fig.axes and path.exists() and path.stat().st_size > 0
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_pr_curves_plot(small_case, tmp_path):
    _, _, table = small_case
    check(plot_pr_curves(pr_curves(table), out_file=str(tmp_path / "pr.png")),
          tmp_path / "pr.png")
    with pytest.raises(ValueError, match="no classes"):
        plot_pr_curves(pr_curves(table), classes=["horse"])


def test_error_analysis_plot(small_case, tmp_path):
    gt, rows, _ = small_case
    analysis = coco_error_analysis(gt, rows)
    check(plot_error_analysis(analysis, out_file=str(tmp_path / "all.png")),
          tmp_path / "all.png")
    check(plot_error_analysis(analysis, "dog", "small", out_file=str(tmp_path / "d" / "dog.png")),
          tmp_path / "d" / "dog.png")


def test_tide_plot(small_case, tmp_path):
    _, _, table = small_case
    check(plot_tide(tide_errors(table), out_file=str(tmp_path / "tide.png")),
          tmp_path / "tide.png")


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_plot(small_case, tmp_path, normalize):
    gt, rows, _ = small_case
    matrix = confusion_matrix(gt, rows, score_thr=0.0)
    path = tmp_path / f"cm_{normalize}.png"
    check(plot_confusion_matrix(matrix, normalize=normalize, out_file=str(path)), path)


def test_class_ap_and_f1_plots(small_case, tmp_path):
    _, _, table = small_case
    check(plot_class_ap(class_average_precision(table), out_file=str(tmp_path / "ap.png")),
          tmp_path / "ap.png")
    curves = threshold_curves(table)
    check(plot_f1_threshold(curves, classes=["all", "cat"], out_file=str(tmp_path / "f1.png")),
          tmp_path / "f1.png")

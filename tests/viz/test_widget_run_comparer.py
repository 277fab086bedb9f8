"""RunComparer: hand-written run folders, and the folder of a real tiny training run."""

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from PIL import Image

from detlab import train
from detlab.config import Config
from detlab.engine.logging import JsonLog
from detlab.engine.tester import save_results
from detlab.structures import DetResult
from detlab.viz.widgets.run_comparer import RunComparer, training_time

NAMES = ["red", "green"]
BOXES = [[4, 4, 20, 16], [30, 6, 58, 20]]


def _coco(root):
    """Two 64 x 48 images with one red and one green box each, and their COCO file."""
    images, anns = [], []
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 40, np.uint8)).save(root / f"im{i}.png")
        images.append(dict(id=i + 1, file_name=f"im{i}.png", width=64, height=48))
        for c, (x1, y1, x2, y2) in enumerate(BOXES):
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=c + 1, iscrowd=0,
                             bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1)))
    cats = [dict(id=j + 1, name=n) for j, n in enumerate(NAMES)]
    (root / "ann.json").write_text(json.dumps(dict(images=images, annotations=anns,
                                                   categories=cats)))


def _write_run(folder, lr, maps, data_root):
    """A run folder: config.py, and a log of two iterations logged twice an epoch (0.5 s
    each) and a validation per epoch with ``maps``."""
    folder.mkdir()
    test = dict(type="CocoDataset", ann_file=str(data_root / "ann.json"),
                img_prefix=str(data_root), pipeline=[dict(type="LoadImageFromFile")])
    Config(dict(model=dict(type="RetinaNet", backbone=dict(depth=18)),
                optimizer=dict(type="AdamW", lr=lr), data=dict(test=test),
                work_dir=str(folder))).dump(str(folder / "config.py"))
    log = JsonLog(str(folder / "20240101_000000.log.json"), head=dict(seed=0))
    for epoch, value in enumerate(maps, start=1):
        for it in (2, 4):
            log.write(dict(mode="train", epoch=epoch, iter=it, lr=lr, time=0.5,
                           loss=1.0 / (epoch * it), loss_cls=0.5 / (epoch * it)))
        log.write(dict(mode="val", epoch=epoch, iter=4, lr=lr, bbox_mAP=value,
                       bbox_mAP_50=value + 0.1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs a (with classwise.csv), b (with results.pkl: red found, green missed), c (none)."""
    root = tmp_path_factory.mktemp("runs")
    _coco(root)
    for name, lr, maps in (("a", 1e-3, [0.1, 0.3]), ("b", 2e-3, [0.2, 0.4]),
                           ("c", 1e-3, [0.05])):
        _write_run(root / name, lr, maps, root)
    pd.DataFrame({"class": NAMES, "AP": [0.7, 0.2]}).to_csv(root / "a" / "classwise.csv",
                                                            index=False)
    found = [DetResult([BOXES[0]], [0.9], [0], meta=dict(img_id=i + 1)) for i in range(2)]
    save_results(found, str(root / "b" / "results.pkl"), num_classes=2)
    return [root / name for name in ("a", "b", "c")]


def test_table_of_differences_metrics_and_time(runs):
    comparer = RunComparer(runs)
    table = comparer.table()
    assert list(table.index) == ["a", "b", "c"]
    assert table["optimizer.lr"].tolist() == [1e-3, 2e-3, 1e-3]
    assert not any(c.startswith("work_dir") for c in table.columns)
    assert table["bbox_mAP"].tolist() == [0.3, 0.4, 0.05]  # the last validation
    assert table["epoch"].tolist() == [2, 2, 1]
    assert table["train_time"].tolist() == [4.0, 4.0, 2.0]  # 4 iterations an epoch, 0.5 s
    assert table["iter_time"].tolist() == [0.5, 0.5, 0.5]
    assert comparer.summary() == "RunComparer: 3 runs, final bbox_mAP: a 0.3, b 0.4, c 0.05"
    assert training_time([]) == {"train_time": None, "iter_time": None}


def test_curves_and_class_ap(runs):
    comparer = RunComparer({"first": runs[0], "second": runs[1], "third": runs[2]})
    assert comparer.keys == ["loss", "bbox_mAP"]
    figure = comparer.plot(["loss_cls", "bbox_mAP_50", "memory"])
    axes = figure.axes
    assert [len(ax.lines) for ax in axes] == [3, 3, 0]  # no run logged memory
    assert axes[0].get_xlabel() == "iteration" and axes[1].get_xlabel() == "epoch"
    assert axes[1].lines[1].get_ydata().tolist() == pytest.approx([0.3, 0.5])  # run b
    assert axes[0].lines[0].get_xdata().tolist() == [2, 4, 6, 8]
    assert "no memory in first, second, third" in axes[2].texts[0].get_text()
    ap = comparer.class_ap()
    assert list(ap.columns) == ["first", "second"] and list(ap.index) == NAMES
    assert ap["first"].tolist() == [0.7, 0.2]
    assert ap.loc["red", "second"] == pytest.approx(1.0) and ap.loc["green", "second"] == 0
    assert "third" in comparer.class_ap_note and "results.pkl" in comparer.class_ap_note


def test_widget_controls_and_display_data(runs):
    comparer = RunComparer(runs[:2])
    for css in ("keys", "reload", "table", "view", "class-ap", "status"):
        found = [c for c in _walk(comparer.widget) if f"detlab-runs-{css}" in c._dom_classes]
        assert len(found) == 1, css
    bundle = comparer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    before = comparer.render_png()
    comparer._keys.value = ("lr",)
    assert comparer.keys == ["lr"] and comparer.render_png() != before
    assert "bbox_mAP" in comparer._table_html.value and "<table" in comparer._class_html.value
    # the live view shows the table as HTML only; the static picture (for reports) draws it
    live = np.asarray(Image.open(io.BytesIO(comparer._image.value)))
    static = np.asarray(Image.open(io.BytesIO(comparer.render_png())))
    assert live.shape[0] < static.shape[0] and live.shape[1] <= static.shape[1]


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def test_a_real_training_run(shapes_root, tmp_path):
    """A run of detlab.train, and a copy of it whose config says another learning rate."""
    first = tmp_path / "real"
    train(tiny_config(shapes_root, epochs=1), work_dir=str(first), progress=False, seed=0)
    second = tmp_path / "real_lr"
    shutil.copytree(first, second)
    cfg = Config.fromfile(second / "config.py")
    cfg.merge_from_dict({"optimizer.lr": cfg.optimizer.lr * 2})
    cfg.dump(str(second / "config.py"))
    comparer = RunComparer([first, second])
    table = comparer.table()
    assert [c for c in table.columns if "." in c] == ["optimizer.lr"]
    assert table["bbox_mAP"].notna().all() and (table["train_time"] > 0).all()
    assert comparer.class_ap() is None and "detlab test" in comparer.class_ap_note
    assert comparer.render_png()

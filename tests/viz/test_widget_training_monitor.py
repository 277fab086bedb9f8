"""TrainingMonitor: fed by its hook during a real (tiny) training, and tailing a JSON log."""

import base64
import json
import os
import time

import pytest
from conftest import tiny_config

from detlab import train
from detlab.engine.logging import read_json_log
from detlab.viz.widgets.training_monitor import TrainingMonitor, newest_log

HEAD = {"env_info": {}, "seed": 0, "exp_name": "x.py",
        "config": "data = dict(samples_per_gpu=2, workers_per_gpu=0)\n"
                  "runner = dict(type='EpochBasedRunner', max_epochs=3)\n"}


def _train_row(epoch, it, loss=1.0):
    return {"mode": "train", "epoch": epoch, "iter": it, "lr": 0.01, "time": 0.5,
            "data_time": 0.01, "memory": 10, "loss_cls": loss / 2, "loss_bbox": loss / 2,
            "loss": loss}


def _lines(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


class _DisplayHandle:
    """Stands for IPython's DisplayHandle: keeps the PNG of each update of the output."""

    def __init__(self) -> None:
        self.pictures = []

    def update(self, obj) -> None:
        self.pictures.append(obj._repr_mimebundle_()["image/png"])


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    """Two epochs of two iterations, watched by a monitor's hook that redraws every iteration;
    the monitor's progress is recorded at each redraw."""
    monitor = TrainingMonitor(interval=1)
    handle = _DisplayHandle()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("IPython.display.display", lambda obj, display_id: handle)
        monitor.display()
    snapshots = []
    draw = monitor.update_view

    def recording_update() -> None:
        snapshots.append(monitor.progress())
        draw()

    monitor.update_view = recording_update
    work_dir = tmp_path_factory.mktemp("monitored")
    run = train(tiny_config(shapes_root, epochs=2), work_dir=str(work_dir), seed=0,
                progress=False, hooks=[monitor.hook()])
    return monitor, snapshots, run, handle


def test_the_hook_follows_a_training_run(trained):
    monitor, snapshots, run, handle = trained
    assert monitor.hook().priority == "VERY_LOW"
    # every iteration (4), after each evaluation (2) and at the end; 1 more when made
    assert len(snapshots) == 7 and monitor.view_updates == 8
    first, last = snapshots[0], snapshots[-1]
    assert (first.epoch, first.iter, first.done_iters, first.total_iters) == (1, 1, 1, 4)
    assert not first.finished and first.eta_seconds == pytest.approx(
        3 * first.seconds_per_iter)
    assert first.images_per_second == pytest.approx(4 / first.seconds_per_iter)
    assert last.finished and last.eta_seconds == 0 and last.done_iters == 4
    assert last.metric == pytest.approx(run.metrics["bbox_mAP"])
    train_rows, val_rows = monitor.frame("train"), monitor.frame("val")
    assert train_rows["step"].tolist() == [1, 2, 3, 4] and len(val_rows) == 2
    assert {"loss", "loss_cls", "loss_bbox", "lr", "time"} <= set(train_rows.columns)
    assert monitor._image.value == monitor.render_png()
    # the output shown by display() follows the view (the end of the run adds no row)
    assert len(handle.pictures) == 7 and len(set(handle.pictures)) == 6
    assert handle.pictures[-1] == base64.b64encode(monitor.render_png()).decode()
    assert "finished" in monitor.summary() and "bbox_mAP" in monitor._status.value
    bundle = monitor._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle


def test_tailing_a_finished_work_dir(trained):
    hooked, _, run, _ = trained
    monitor = TrainingMonitor(run.work_dir)
    assert monitor.log_path == run.json_log == newest_log(run.work_dir)
    logged = read_json_log(run.json_log)
    assert len(monitor.rows("train")) == sum(r["mode"] == "train" for r in logged) == 4
    assert len(monitor.rows("val")) == 2
    progress = monitor.progress()
    assert (progress.max_epochs, progress.iters_per_epoch) == (2, 2)
    assert monitor.samples_per_iter == 4 and progress.finished
    assert progress.metric == hooked.progress().metric
    png = monitor.render_png()
    assert png[:4] == b"\x89PNG" and monitor._image.value == png


def test_tailing_reads_whole_lines_and_follows_the_newest_log(tmp_path):
    log = tmp_path / "20240101_000000.log.json"
    third = json.dumps(_train_row(1, 3))
    log.write_text(_lines(HEAD, _train_row(1, 1), _train_row(1, 2)) + third[:20])
    monitor = TrainingMonitor(tmp_path)
    progress = monitor.progress()
    assert len(monitor.rows()) == 2 and progress.iters_per_epoch is None
    assert progress.eta_seconds is None and progress.max_epochs == 3
    assert progress.images_per_second == pytest.approx(4.0)  # 2 images in 0.5 s
    with open(log, "a") as f:
        f.write(third[20:] + "\n" + json.dumps({"mode": "val", "epoch": 1, "iter": 3,
                                                "lr": 0.01, "bbox_mAP": 0.25}) + "\n")
    png = monitor.render_png()
    monitor._refresh_button.click()
    progress = monitor.progress()
    assert len(monitor.rows()) == 3 and progress.iters_per_epoch == 3
    assert (progress.done_iters, progress.total_iters) == (3, 9)
    assert progress.eta_seconds == pytest.approx(6 * 0.5) and progress.metric == 0.25
    assert monitor.render_png() != png and "ETA 0:00:03" in monitor.summary()
    newer = tmp_path / "20240102_000000.log.json"
    newer.write_text(_lines(HEAD, _train_row(1, 1, loss=3.0)))
    os.utime(newer, (time.time() + 5, time.time() + 5))
    monitor.refresh()
    assert monitor.log_path == str(newer) and [r["loss"] for r in monitor.rows()] == [3.0]


def test_polling_in_a_background_thread(tmp_path):
    monitor = TrainingMonitor(tmp_path)  # nothing logged yet
    assert monitor.rows() == [] and monitor.progress().epoch == 0
    monitor.start(period=0.05)
    try:
        assert monitor.polling and monitor._auto.value
        (tmp_path / "run.log.json").write_text(_lines(HEAD, _train_row(1, 1)))
        deadline = time.time() + 20
        while not monitor.rows() and time.time() < deadline:
            time.sleep(0.05)
        assert len(monitor.rows()) == 1
    finally:
        monitor.stop()
    assert not monitor.polling and not monitor._auto.value
    monitor._auto.value = True  # the toggle starts and stops polling too
    assert monitor.polling
    monitor._auto.value = False
    assert not monitor.polling
    with pytest.raises(ValueError, match="has none"):
        TrainingMonitor().start()

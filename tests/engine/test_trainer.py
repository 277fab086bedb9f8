"""detlab.train / detlab.test end to end on a tiny shapes dataset: the work_dir, the logs,
checkpoints, resuming, loading, and the errors that stop a run early."""

import json
import os

import pytest
import torch
from conftest import tiny_config

from detlab.checkpoint import read_checkpoint
from detlab.config import Config, ConfigError
from detlab.engine.hooks import Hook
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.engine.tester import load_results, test
from detlab.registry import HOOKS

TRAIN_KEYS = {"mode", "epoch", "iter", "lr", "time", "data_time", "memory", "loss_cls",
              "loss_bbox", "loss", "grad_norm"}


@pytest.fixture
def shapes(shapes_root):
    return shapes_root


@HOOKS.register_module()
class InterruptAtEpoch(Hook):
    """Raises KeyboardInterrupt at the start of an epoch (counted from 1), like a Ctrl-C."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def before_train_epoch(self, trainer):
        if trainer.epoch + 1 == self.epoch:
            raise KeyboardInterrupt


@HOOKS.register_module()
class PoisonWeights(Hook):
    """Makes the loss NaN at the first iteration."""

    def before_train_iter(self, trainer):
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("nan"))


def test_train_writes_logs_checkpoints_and_config(shapes, tmp_path):
    run = train(tiny_config(shapes), work_dir=str(tmp_path), seed=0, progress=False)
    files = os.listdir(tmp_path)
    assert {"config.py", "epoch_1.pth", "epoch_2.pth", "latest.pth"} <= set(files)
    assert Config.fromfile(tmp_path / "config.py").model.bbox_head.num_classes == 3
    with open(run.json_log) as f:
        head = json.loads(f.readline())
    assert {"env_info", "config", "seed", "exp_name"} <= set(head)
    rows = read_json_log(run.json_log)
    train_rows = [r for r in rows if r["mode"] == "train"]
    val_rows = [r for r in rows if r["mode"] == "val"]
    assert [(r["epoch"], r["iter"]) for r in train_rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert set(train_rows[0]) == TRAIN_KEYS
    assert train_rows[-1]["loss"] == pytest.approx(train_rows[-1]["loss_cls"]
                                                   + train_rows[-1]["loss_bbox"], rel=1e-5)
    assert [r["epoch"] for r in val_rows] == [1, 2]
    assert {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m",
            "bbox_mAP_l"} <= set(val_rows[0])
    assert run.metrics["bbox_mAP"] == val_rows[-1]["bbox_mAP"]
    checkpoint = read_checkpoint(run.checkpoint)
    assert checkpoint["meta"]["epoch"] == 2 and checkpoint["meta"]["iter"] == 4
    assert checkpoint["meta"]["CLASSES"] == ["circle", "square", "triangle"]
    assert "optimizer" in checkpoint and not any(f.endswith(".tmp") for f in files)
    with open(run.text_log) as f:
        assert "Epoch [2][2/2]" in f.read()


def test_interrupted_run_resumes_and_finishes_its_schedule(shapes, tmp_path):
    cfg = tiny_config(shapes, epochs=3, custom_hooks=[dict(type="InterruptAtEpoch", epoch=3)])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=str(tmp_path), seed=0, progress=False)
    saved = read_checkpoint(str(tmp_path / "latest.pth"))
    assert saved["meta"]["epoch"] == 2 and saved["meta"]["iter"] == 4
    run = train(tiny_config(shapes, epochs=3), work_dir=str(tmp_path), seed=0, progress=False,
                resume_from=str(tmp_path / "latest.pth"))
    rows = [r for r in read_json_log(run.json_log) if r["mode"] == "train"]
    assert [r["epoch"] for r in rows] == [3, 3]  # only the missing epoch ran
    assert rows[0]["lr"] == pytest.approx(0.0001)  # after step=[2] the lr is 0.1 x 0.001
    final = read_checkpoint(run.checkpoint)
    assert final["meta"]["epoch"] == 3 and final["meta"]["iter"] == 6
    # the optimizer state continued: AdamW's step counter went on from 4 to 6
    steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {6}


def test_load_from_reports_shape_mismatches(shapes, tmp_path, caplog):
    first = train(tiny_config(shapes, epochs=1), work_dir=str(tmp_path / "a"), progress=False,
                  validate=False)
    cfg = tiny_config(shapes, epochs=1, **{"model.bbox_head.anchor_generator.ratios": [0.5, 1.0]})
    run = train(cfg, work_dir=str(tmp_path / "b"), load_from=first.checkpoint, progress=False,
                validate=False)
    with open(run.text_log) as f:
        text = f.read()
    assert "shape mismatch for bbox_head.retina_cls.weight" in text
    assert os.path.exists(run.checkpoint)


def test_num_classes_mismatch_stops_before_training(shapes, tmp_path):
    cfg = tiny_config(shapes, **{"model.bbox_head.num_classes": 5})
    with pytest.raises(ConfigError, match=r"num_classes is 5 but the training dataset has 3"):
        train(cfg, work_dir=str(tmp_path), progress=False)
    assert not os.path.exists(tmp_path / "latest.pth")


def test_nan_loss_stops_with_advice(shapes, tmp_path):
    cfg = tiny_config(shapes, custom_hooks=[dict(type="PoisonWeights")])
    with pytest.raises(FloatingPointError, match="lower optimizer.lr"):
        train(cfg, work_dir=str(tmp_path), progress=False)


def test_crash_in_evaluation_keeps_the_epoch(shapes, tmp_path, monkeypatch):
    from detlab.data import CocoDataset

    def broken(self, results, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(CocoDataset, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        train(tiny_config(shapes), work_dir=str(tmp_path), progress=False)
    assert read_checkpoint(str(tmp_path / "latest.pth"))["meta"]["epoch"] == 1
    assert os.path.exists(tmp_path / "epoch_1.pth")


def test_test_api_and_saved_results(shapes, tmp_path):
    run = train(tiny_config(shapes, epochs=1), work_dir=str(tmp_path), progress=False,
                validate=False)
    out = tmp_path / "results.pkl"
    output = test(tiny_config(shapes), run.checkpoint, eval=["bbox"], out=str(out),
                  classwise=True, progress=False, show_dir=str(tmp_path / "show"))
    assert 0.0 <= output["bbox_mAP"] <= 1.0
    assert list(output["classwise"]["class"]) == ["circle", "square", "triangle"]
    results = output["results"]
    assert len(results) == 4 and results[0].class_names == ("circle", "square", "triangle")
    saved = load_results(str(out), results[0].class_names)
    assert len(saved) == 4
    assert torch.allclose(saved[0].scores, results[0].scores.sort(descending=True).values)
    assert len(os.listdir(tmp_path / "show")) == 4

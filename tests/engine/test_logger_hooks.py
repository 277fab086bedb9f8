"""TensorBoard, MLflow and W&B logger hooks in real training runs: what each tracker stored, read
back with the tracker's own reader, against the rows of the run's ``.log.json``; and the error
that names the package when it is missing."""

import glob
import json
import os
import struct
import sys
import time

import pytest
import torch
from conftest import tiny_config

from detlab.checkpoint import read_checkpoint
from detlab.engine.hooks.logger.tags import NOT_TAGGED
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.registry import HOOKS

ITERS_PER_EPOCH = 2  # tiny_config: 8 images, 4 a batch


def run_with_loggers(shapes_root, work_dir, *hooks, epochs=2):
    """Train with these logger hooks besides the text logger; the run and its log rows."""
    cfg = tiny_config(shapes_root, epochs=epochs, **{
        "log_config.hooks": [dict(type="TextLoggerHook"), *hooks]})
    run = train(cfg, work_dir=str(work_dir), seed=0, progress=False)
    return run, [r for r in read_json_log(run.json_log) if r.get("mode") in ("train", "val")]


def row_step(row):
    """mmcv's step of a JSON row: iter + 1, for an evaluation the step after its epoch."""
    if row["mode"] == "train":
        return (row["epoch"] - 1) * ITERS_PER_EPOCH + row["iter"]
    return row["epoch"] * ITERS_PER_EPOCH + 1


def expected_scalars(rows):
    """{tag: {step: value}} as mmcv's loggers name them, from the JSON rows in the order they
    were written. An evaluation's step (iter + 1) is also the next epoch's first step, as with
    mmcv; TensorBoard's and MLflow's readers keep the later value."""
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        step = row_step(row)
        for key, value in row.items():
            if key not in NOT_TAGGED:
                expected.setdefault(f"{row['mode']}/{key}", {})[step] = value
        expected.setdefault("learning_rate", {})[step] = row["lr"]
    return expected


# ---- TensorBoard ---------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_json_rows(shapes_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, rows = run_with_loggers(
        shapes_root, tmp_path, dict(type="TensorboardLoggerHook"))
    events = EventAccumulator(str(tmp_path / "tf_logs"))  # mmcv's default folder
    events.Reload()
    stored = {tag: {e.step: e.value for e in events.Scalars(tag)}
              for tag in events.Tags()["scalars"]}
    expected = expected_scalars(rows)
    assert {"train/loss", "train/loss_cls", "train/loss_bbox", "learning_rate", "momentum",
            "val/bbox_mAP", "val/bbox_mAP_50"} <= set(stored)
    assert set(stored) == set(expected) | {"momentum"}
    for tag, values in expected.items():
        assert set(stored[tag]) == set(values), tag
        for step, value in values.items():
            assert stored[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-12), (tag, step)
    assert all(v == pytest.approx(0.9) for v in stored["momentum"].values())  # AdamW's beta1


def test_tensorboard_without_the_package_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    hook = HOOKS.build(dict(type="TensorboardLoggerHook"))
    trainer = type("T", (), {"rank": 0, "work_dir": str(tmp_path)})()
    with pytest.raises(ImportError, match="pip install tensorboard"):
        hook.before_run(trainer)


# ---- MLflow --------------------------------------------------------------------------------


def test_mlflow_local_store_holds_the_rows_params_and_model(shapes_root, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's local file store
    run, rows = run_with_loggers(
        shapes_root, tmp_path / "work", dict(type="MlflowLoggerHook", exp_name="shapes",
                                             tags=dict(team="vision"), params=dict(depth=18)))
    assert mlflow.active_run() is None  # the hook ended the run it started
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.get_experiment_by_name("shapes")
    (record,) = client.search_runs([experiment.experiment_id])
    assert record.data.params == {"depth": "18"}
    assert record.data.tags["team"] == "vision"
    for tag, values in expected_scalars(rows).items():
        history = {m.step: m.value for m in client.get_metric_history(record.info.run_id, tag)}
        assert set(history) == set(values), tag
        for step, value in values.items():
            assert history[step] == pytest.approx(value, rel=1e-9), (tag, step)
    # the model logged at the end is the trained model: the last checkpoint's weights
    logged = [m for m in mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id], output_format="list")
        if m.source_run_id == record.info.run_id]
    (model_record,) = logged
    model = mlflow.pytorch.load_model(f"models:/{model_record.model_id}")
    saved = read_checkpoint(run.checkpoint)["state_dict"]
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), saved[key]), key


def test_mlflow_without_the_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match="MlflowLoggerHook needs the mlflow package.*"
                                          "pip install mlflow"):
        HOOKS.build(dict(type="MlflowLoggerHook"))


# ---- Weights & Biases ------------------------------------------------------------------------


def read_wandb_log(path):
    """The records of a ``run-*.wandb`` file: a LevelDB-style log (32 KiB blocks of checksum,
    length, type and data) of protobuf ``Record`` messages, the format wandb's own reader read
    in its Python days."""
    from wandb.proto import wandb_internal_pb2

    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_records(folder, timeout=30.0):
    """The records of the one offline run under ``folder``, once its ``exit`` record is written
    (wandb's service may still be writing when ``wandb.finish`` has returned)."""
    (path,) = glob.glob(os.path.join(folder, "wandb", "offline-run-*", "run-*.wandb"))
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_log(path)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def wandb_history(records):
    """{step: {key: value}} of the run's history records."""
    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            history.setdefault(items["_step"], {}).update(items)
    return history


@pytest.fixture
def wandb_offline(monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb


def test_wandb_offline_run_holds_the_rows_and_the_logs(shapes_root, tmp_path, wandb_offline):
    work = tmp_path / "work"
    run, rows = run_with_loggers(shapes_root, work, dict(
        type="WandbLoggerHook", init_kwargs=dict(mode="offline", dir=str(tmp_path),
                                                 project="detlab-tests")))
    records = wandb_records(str(tmp_path))
    history = wandb_history(records)
    assert sorted(history) == [1, 2, 3, 4, 5]
    # W&B keeps the first row logged at a step and drops or merges the next one there (the
    # first training row after an evaluation), depending on when it flushed: compare the
    # steps of one row exactly, and the evaluation's own tags at a shared step
    steps = [row_step(row) for row in rows]
    for row, step in zip(rows, steps, strict=True):
        shared = steps.count(step) > 1
        if shared and row["mode"] == "train":
            continue
        expected = {f"{row['mode']}/{k}": v for k, v in row.items() if k not in NOT_TAGGED}
        if not shared:
            expected["learning_rate"] = row["lr"]
        for tag, value in expected.items():
            assert history[step][tag] == pytest.approx(value, rel=1e-9), (tag, step)
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.name == "artifacts"
    logged = {entry.path for entry in artifact.manifest.contents}
    assert {"config.py", os.path.basename(run.json_log), os.path.basename(run.text_log)} <= logged


def test_mmdet_wandb_hook_logs_checkpoints_with_their_metrics(shapes_root, tmp_path,
                                                             wandb_offline):
    run, rows = run_with_loggers(shapes_root, tmp_path / "work", dict(
        type="MMDetWandbHook", init_kwargs=dict(mode="offline", dir=str(tmp_path)),
        log_checkpoint=True, log_checkpoint_metadata=True, num_eval_images=0))
    records = wandb_records(str(tmp_path))
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [a.name.rsplit("_", 1)[-1] for a in artifacts] == ["model", "model"]
    val_rows = [r for r in rows if r["mode"] == "val"]
    for epoch, (artifact, val_row) in enumerate(zip(artifacts, val_rows, strict=True), 1):
        assert [e.path for e in artifact.manifest.contents] == [f"epoch_{epoch}.pth"]
        metadata = json.loads(artifact.metadata)
        assert metadata["epoch"] == epoch
        assert metadata["bbox_mAP"] == val_row["bbox_mAP"]
        assert set(artifact.aliases) >= {f"epoch_{epoch}", "latest"}
    config = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    keys = {item.key for c in config for item in c.update}
    assert {"model", "data", "optimizer", "log_config"} <= keys


def test_wandb_without_the_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    for kind in ("WandbLoggerHook", "MMDetWandbHook"):
        with pytest.raises(ImportError, match=f"{kind} needs the wandb package.*"
                                              "pip install wandb"):
            HOOKS.build(dict(type=kind))

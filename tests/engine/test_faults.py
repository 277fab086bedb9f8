"""Faults lose nothing: crashes end the logs, a diverged model never reaches a checkpoint, a full
disk names the path, temporary files do not outlive their writer, Ctrl-C prints one line, and
checkpoints that do not match the model are refused where a silent zero mAP would follow."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny_config

from detlab.checkpoint import (
    CheckpointMismatchError,
    CheckpointWriteError,
    read_checkpoint,
    save_checkpoint,
)
from detlab.config import ConfigError
from detlab.engine.hooks import Hook
from detlab.engine.logging import read_json_log, read_run_status
from detlab.engine.setup import train
from detlab.engine.tester import test
from detlab.inference import init_detector
from detlab.registry import HOOKS

QUIET = dict(progress=False, seed=0)


@HOOKS.register_module()
class DivergeAfterLastStep(Hook):
    """Makes the weights NaN right after the optimizer step of the last iteration of ``epoch``
    (counted from 1), as an exploding gradient would, while every loss stays finite."""

    priority = "NORMAL"  # after the optimizer hook (ABOVE_NORMAL), before the checkpoint

    def __init__(self, epoch: int):
        self.epoch = epoch

    def after_train_iter(self, trainer):
        if trainer.epoch + 1 == self.epoch and self.end_of_epoch(trainer):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))


@HOOKS.register_module()
class FailInEpoch(Hook):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def before_train_epoch(self, trainer):
        if trainer.epoch + 1 == self.epoch:
            raise RuntimeError("an unreadable image")


def _status(run_dir):
    (log,) = [p for p in run_dir.iterdir() if p.name.endswith(".log.json")]
    return read_run_status(str(log)), log.with_suffix("").read_text()


def test_a_crash_is_written_to_the_logs(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, custom_hooks=[dict(type="FailInEpoch", epoch=2)])
    with pytest.raises(RuntimeError, match="unreadable"):
        train(cfg, work_dir=str(tmp_path), **QUIET)
    status, text = _status(tmp_path)
    assert status["status"] == "crashed" and status["final_epoch"] == 1
    assert status["error"] == "RuntimeError: an unreadable image"
    assert "the run stopped in epoch 2" in text and "Traceback" in text  # the traceback too
    assert read_checkpoint(str(tmp_path / "latest.pth"))["meta"]["epoch"] == 1


def test_a_finished_run_says_so(shapes_root, tmp_path):
    run = train(tiny_config(shapes_root, epochs=1), work_dir=str(tmp_path), **QUIET)
    assert run.status == "finished" and read_run_status(run.json_log)["status"] == "finished"
    assert os.path.islink(tmp_path / "latest.pth")
    assert os.readlink(tmp_path / "latest.pth") == "epoch_1.pth"
    # resuming a finished run trains nothing and points at a checkpoint that exists
    again = train(tiny_config(shapes_root, epochs=1), work_dir=str(tmp_path / "again"),
                  resume_from=str(tmp_path / "latest.pth"), progress=False)
    assert again.status == "finished" and os.path.exists(again.checkpoint)
    assert read_checkpoint(again.checkpoint)["meta"]["epoch"] == 1


def test_diverged_weights_never_reach_a_checkpoint(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, epochs=2,
                      custom_hooks=[dict(type="DivergeAfterLastStep", epoch=2)])
    with pytest.raises(FloatingPointError, match="no longer finite"):
        train(cfg, work_dir=str(tmp_path), **QUIET)
    for name in os.listdir(tmp_path):
        if name.endswith(".pth"):
            state = read_checkpoint(str(tmp_path / name))["state_dict"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert read_checkpoint(str(tmp_path / "latest.pth"))["meta"]["epoch"] == 1
    assert _status(tmp_path)[0]["status"] == "crashed"


def test_a_full_disk_names_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    path = str(tmp_path / "epoch_3.pth")
    with pytest.raises(CheckpointWriteError, match="MiB free") as info:
        save_checkpoint(path, torch.nn.Linear(2, 2))
    assert path in str(info.value) and "resume from the newest" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_temporary_files_of_dead_writers_are_removed_at_the_next_start(shapes_root, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f"epoch_1.pth.tmp{dead}"
    orphan.write_bytes(b"half a checkpoint")
    mine = tmp_path / f"notes.tmp{os.getpid()}"  # a live process's file stays
    mine.write_text("x")
    train(tiny_config(shapes_root, epochs=1), work_dir=str(tmp_path), validate=False, **QUIET)
    assert not orphan.exists() and mine.exists()


def test_config_typos_stop_before_the_first_iteration(shapes_root, tmp_path):
    with pytest.raises(ConfigError, match=r"metrc.*(at evaluation\.metrc).*metric"):
        train(tiny_config(shapes_root, **{"evaluation.metrc": "bbox"}),
              work_dir=str(tmp_path / "a"), **QUIET)
    with pytest.raises(ConfigError, match=r"data\.samples_per_gup .*Did you mean "
                                          r"'samples_per_gpu'"):
        train(tiny_config(shapes_root, **{"data.samples_per_gup": 2}),
              work_dir=str(tmp_path / "b"), **QUIET)
    assert not any(p.suffix == ".pth" for d in tmp_path.iterdir() for p in d.iterdir())
    run = train(tiny_config(shapes_root, epochs=1, optimzer=dict(lr=0.01)),
                work_dir=str(tmp_path / "c"), validate=False, **QUIET)
    with open(run.text_log) as f:
        assert "'optimzer'" in f.read()  # a did-you-mean warning in the run's log


@pytest.fixture(scope="module")
def three_class_run(shapes_root, tmp_path_factory):
    return train(tiny_config(shapes_root, epochs=1), validate=False,
                 work_dir=str(tmp_path_factory.mktemp("three")), **QUIET)


def test_testing_with_a_checkpoint_of_another_model_is_an_error(shapes_root, three_class_run):
    other = tiny_config(shapes_root, **{"model.bbox_head.num_classes": 5})
    with pytest.raises(CheckpointMismatchError) as info:
        test(other, three_class_run.checkpoint, eval="bbox", progress=False)
    message = str(info.value)
    assert "bbox_head.retina_cls" in message and "model.bbox_head" in message
    assert "num_classes" in message and "allow_partial" in message
    with pytest.raises(CheckpointMismatchError):
        init_detector(other, three_class_run.checkpoint)
    partial = test(other, three_class_run.checkpoint, eval="bbox", progress=False,
                   allow_partial=True)
    assert "bbox_mAP" in partial


def test_eval_options_are_checked_before_testing(shapes_root, three_class_run):
    with pytest.raises(ConfigError, match=r"clswise.*Did you mean 'classwise'"):
        test(tiny_config(shapes_root), three_class_run.checkpoint, eval="bbox",
             eval_options={"clswise": True}, progress=False)


def test_auto_resume_takes_the_newest_checkpoint_that_reads(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, epochs=2)
    train(cfg, work_dir=str(tmp_path), validate=False, **QUIET)
    (tmp_path / "latest.pth").unlink()
    (tmp_path / "epoch_2.pth").write_bytes(b"truncated")
    run = train(tiny_config(shapes_root, epochs=3), work_dir=str(tmp_path), validate=False,
                auto_resume=True, progress=False)
    rows = [r for r in read_json_log(run.json_log) if r["mode"] == "train"]
    assert sorted({r["epoch"] for r in rows}) == [2, 3]  # resumed from epoch_1.pth


HOOK_MODULE = """
import os, signal
from detlab.engine.hooks import Hook
from detlab.registry import HOOKS

@HOOKS.register_module()
class CtrlC(Hook):
    def before_train_epoch(self, trainer):
        if trainer.epoch == 1:  # a Ctrl-C: SIGINT to the whole process group, workers too
            os.killpg(os.getpgid(0), signal.SIGINT)
"""


@pytest.mark.slow
def test_ctrl_c_prints_one_line(shapes_root, tmp_path):
    (tmp_path / "ctrl_c_hook.py").write_text(textwrap.dedent(HOOK_MODULE))
    config = tmp_path / "tiny.py"
    tiny_config(shapes_root, **{"data.workers_per_gpu": 2,
                                "custom_imports": dict(imports=["ctrl_c_hook"]),
                                "custom_hooks": [dict(type="CtrlC")]}).dump(config)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-m", "detlab", "train", str(config), "--work-dir",
                           str(tmp_path / "work"), "--no-progress", "--seed", "0"],
                          env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "detlab train: interrupted"
    assert done.stdout.count("interrupted in epoch 2") == 1
    assert "resume_from=" in done.stdout
    (log,) = (tmp_path / "work").glob("*.log.json")
    assert json.loads(log.read_text().splitlines()[-1])["status"] == "interrupted"


def test_checkpoints_go_to_out_dir_under_the_work_dirs_name(shapes_root, tmp_path):
    store = tmp_path / "store"
    cfg = tiny_config(shapes_root, epochs=2, **{"checkpoint_config.out_dir": str(store),
                                                "checkpoint_config.max_keep_ckpts": 1})
    run = train(cfg, work_dir=str(tmp_path / "run7"), validate=False, **QUIET)
    assert sorted(os.listdir(store / "run7")) == ["epoch_2.pth", "latest.pth"]
    assert run.checkpoint == str(store / "run7" / "latest.pth")
    assert not any(name.endswith(".pth") for name in os.listdir(tmp_path / "run7"))

"""The runtime keys of MMDetection's configs that are not hooks: runner, workflow, auto_scale_lr,
launchers and their environment, auto_resume's choice of checkpoint."""

import os

import pytest
from conftest import tiny_config

from detlab.checkpoint import read_checkpoint
from detlab.config import Config, ConfigError
from detlab.dist import init_dist, launched_by
from detlab.engine.setup import find_latest_checkpoint, run_length, train


@pytest.mark.parametrize("runner, expected", [
    (dict(type="EpochBasedRunner", max_epochs=12), dict(max_epochs=12)),
    (dict(type="IterBasedRunner", max_iters=90000), dict(max_iters=90000)),
    (dict(max_epochs=3), dict(max_epochs=3)),
])
def test_run_length(runner, expected):
    assert run_length(Config(dict(runner=runner))) == expected
    assert run_length(Config(dict(total_epochs=7))) == dict(max_epochs=7)


@pytest.mark.parametrize("runner, message", [
    (dict(type="IterBasedRunner", max_epochs=12), "IterBasedRunner takes runner.max_iters, not "
                                                  "max_epochs"),
    (dict(type="EpochRunner", max_epochs=12), "not a runner; use one of EpochBasedRunner"),
    (dict(type="IterBasedRunner"), "runner needs max_iters"),
    (dict(type="EpochBasedRunner", max_epochs=0), "runner.max_epochs must be a positive int"),
])
def test_runner_mistakes(runner, message):
    with pytest.raises(ConfigError, match=message):
        run_length(Config(dict(runner=runner)))


def test_workflow_with_validation_losses_and_auto_scale_lr(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, epochs=1, workflow=[("train", 1), ("val", 1)],
                      auto_scale_lr=dict(enable=False, base_batch_size=16))
    run = train(cfg, work_dir=str(tmp_path), validate=False, progress=False, seed=0,
                auto_scale_lr=True)
    lr = read_checkpoint(run.checkpoint)["optimizer"]["param_groups"][0]["initial_lr"]
    assert lr == pytest.approx(cfg.optimizer.lr * 4 / 16)  # a batch of 4 against 16
    with open(run.text_log) as f:
        assert "auto_scale_lr: lr" in f.read()
    from detlab.engine.logging import read_json_log

    val = [r for r in read_json_log(run.json_log) if r["mode"] == "val"]
    assert len(val) == 1 and val[0]["loss"] > 0 and "loss_cls" in val[0]


def test_an_iteration_workflow_alternates_training_and_validation_losses(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, workflow=[("train", 2), ("val", 1)], **{
        "runner": dict(_delete_=True, type="IterBasedRunner", max_iters=5),
        "checkpoint_config": dict(by_epoch=False, interval=5), "log_config.interval": 1})
    run = train(cfg, work_dir=str(tmp_path), validate=False, progress=False, seed=0)
    from detlab.engine.logging import read_json_log

    rows = [(r["mode"], r["iter"]) for r in read_json_log(run.json_log)]
    assert rows == [("train", 1), ("train", 2), ("val", 2), ("train", 3), ("train", 4),
                    ("val", 4), ("train", 5)]
    assert read_checkpoint(run.checkpoint)["meta"]["iter"] == 5


def test_settings_sections_are_checked(shapes_root, tmp_path):
    with pytest.raises(ConfigError, match=r"auto_scale_lr.base_batch .*Did you mean "
                                          r"'base_batch_size'"):
        train(tiny_config(shapes_root, auto_scale_lr=dict(enable=True, base_batch=16)),
              work_dir=str(tmp_path), progress=False)


def test_workflow_mistakes(shapes_root, tmp_path):
    with pytest.raises(ConfigError, match=r"workflow step \('test', 1\)"):
        train(tiny_config(shapes_root, workflow=[("train", 1), ("test", 1)]),
              work_dir=str(tmp_path), progress=False)


def test_find_latest_checkpoint(tmp_path):
    assert find_latest_checkpoint(str(tmp_path / "nothing")) is None
    import torch

    for epoch in (1, 2, 10):
        torch.save({"meta": {"epoch": epoch}, "state_dict": {}}, tmp_path / f"epoch_{epoch}.pth")
    assert find_latest_checkpoint(str(tmp_path)).endswith("epoch_10.pth")  # by number
    (tmp_path / "epoch_10.pth").write_bytes(b"")
    assert find_latest_checkpoint(str(tmp_path)).endswith("epoch_2.pth")


def test_launchers_read_the_environment(monkeypatch):
    for key in ("WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    assert launched_by() == "none" and init_dist(None) is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by() == "pytorch"
    with pytest.warns(UserWarning, match="launcher='none' in a process started by pytorch"):
        assert init_dist("none") is False
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert launched_by() == "slurm"
    with pytest.raises(ValueError, match="launcher must be one of none, pytorch, slurm"):
        init_dist("mpi")


def test_slurm_variables_become_torch_distributed_ones(monkeypatch):
    import detlab.dist as dist

    for key, value in dict(SLURM_NODELIST="node[1-2]", SLURM_NTASKS="4", SLURM_PROCID="3",
                           SLURM_LOCALID="1").items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.setenv(key, "")  # recorded, so that the variables set below are undone
        monkeypatch.delenv(key)
    monkeypatch.setattr(dist.subprocess, "getoutput", lambda command: "node1")
    dist._slurm_environment(29600)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("node1", "29600")
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == \
        ("4", "3", "1")

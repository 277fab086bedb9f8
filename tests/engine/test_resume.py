"""Exact resume: a run stopped and resumed is, bit for bit on a CPU, the run that never stopped --
by epochs and by iterations (mid-epoch), with 0, 1 and 2 loader workers, with the augmentations of
the quickstart (random flips) and the evaluation that runs between epochs."""

import pytest
import torch
from conftest import tiny_config

from detlab.checkpoint import read_checkpoint
from detlab.engine.hooks import Hook
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.registry import HOOKS


@HOOKS.register_module()
class StopAt(Hook):
    """A Ctrl-C before iteration ``iter`` (counted from 0 over the run)."""

    priority = "HIGHEST"

    def __init__(self, iter: int):
        self.at = iter

    def before_train_iter(self, trainer):
        if trainer.iter == self.at:
            raise KeyboardInterrupt


def _weights(path):
    return read_checkpoint(path)["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, first {different[:3]}"


def _train_rows(run):
    return [(r["epoch"], r["iter"], r["loss"]) for r in read_json_log(run.json_log)
            if r["mode"] == "train"]


def _straight_and_resumed(cfg, tmp_path, stop_iter):
    straight = train(cfg, work_dir=str(tmp_path / "straight"), seed=3, progress=False)
    stopped = cfg.copy()
    stopped.custom_hooks = [dict(type="StopAt", iter=stop_iter)]
    with pytest.raises(KeyboardInterrupt):
        train(stopped, work_dir=str(tmp_path / "resumed"), seed=3, progress=False)
    resumed = train(cfg, work_dir=str(tmp_path / "resumed"), progress=False, auto_resume=True)
    return straight, resumed


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_an_epoch_run_resumed_is_the_run_that_never_stopped(shapes_root, tmp_path, workers):
    cfg = tiny_config(shapes_root, epochs=3, **{"data.samples_per_gpu": 2,
                                                "data.workers_per_gpu": workers})
    # 4 iterations an epoch: stop at the start of epoch 3 (the checkpoint of epoch 2 is newest)
    straight, resumed = _straight_and_resumed(cfg, tmp_path, stop_iter=8)
    assert read_checkpoint(resumed.checkpoint)["meta"]["epoch"] == 3
    _assert_same_weights(_weights(straight.checkpoint), _weights(resumed.checkpoint))
    assert _train_rows(resumed) == _train_rows(straight)[-4:]  # epoch 3, loss for loss
    assert resumed.metrics == straight.metrics


@pytest.mark.slow
def test_an_iteration_run_resumes_in_the_middle_of_an_epoch(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, epochs=1, **{
        "data.samples_per_gpu": 2,
        "runner": dict(_delete_=True, type="IterBasedRunner", max_iters=10),
        "checkpoint_config": dict(by_epoch=False, interval=3),
        "evaluation": dict(interval=5, metric="bbox"), "log_config.interval": 1,
        "lr_config": dict(policy="step", step=[6], by_epoch=False, warmup="linear",
                          warmup_iters=2, warmup_ratio=0.1)})
    # iter_6.pth is written after iteration 6: the second of the 4 of epoch 2
    straight, resumed = _straight_and_resumed(cfg, tmp_path, stop_iter=7)
    files = sorted(p.name for p in (tmp_path / "straight").glob("*.pth"))
    assert files == ["iter_10.pth", "iter_3.pth", "iter_6.pth", "iter_9.pth", "latest.pth"]
    assert (tmp_path / "straight" / "latest.pth").resolve().name == "iter_10.pth"
    _assert_same_weights(_weights(straight.checkpoint), _weights(resumed.checkpoint))
    assert _train_rows(resumed) == _train_rows(straight)[-4:]
    assert [r["iter"] for r in read_json_log(straight.json_log) if r["mode"] == "val"] == [5, 10]

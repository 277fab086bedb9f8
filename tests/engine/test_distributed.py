"""Training and testing in a process group, as `torchrun` starts it: two CPU processes (gloo)."""

import os
import subprocess
import sys

import pytest
import torch

from detlab.checkpoint import read_checkpoint
from detlab.engine.logging import read_json_log


@pytest.mark.slow
def test_torchrun_two_processes_train_and_evaluate(shapes_root, make_config, tmp_path):
    config = tmp_path / "tiny.py"
    make_config(shapes_root, epochs=2, **{"data.samples_per_gpu": 2}).dump(config)
    work_dir = tmp_path / "work"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29517", "-m", "detlab", "train", str(config), "--work-dir",
               str(work_dir), "--no-progress", "--seed", "0", "--device", "cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = read_checkpoint(str(work_dir / "latest.pth"))
    # 8 images over 2 processes of 2 images: 2 iterations an epoch
    assert checkpoint["meta"]["epoch"] == 2 and checkpoint["meta"]["iter"] == 4
    logs = [name for name in os.listdir(work_dir) if name.endswith(".log.json")]
    assert len(logs) == 1, "only the main process writes logs"
    rows = read_json_log(str(work_dir / logs[0]))
    val = [r for r in rows if r["mode"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2] and "bbox_mAP" in val[0]


HEAD_MODULE = '''
from dataclasses import replace

import torch

from detlab.dist import reduce_mean
from detlab.models.heads.retina_head import RetinaHead
from detlab.registry import MODELS


@MODELS.register_module()
class ProcessMeanRetinaHead(RetinaHead):
    """RetinaHead whose loss is divided by the positives averaged over processes (ATSS's rule),
    so that N processes compute the gradient of one process's batch."""

    def get_targets(self, *args, **kwargs):
        targets = super().get_targets(*args, **kwargs)
        return replace(targets, avg_factor=float(reduce_mean(torch.tensor(targets.avg_factor))))
'''


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_their_global_batch(shapes_root, make_config,
                                                                      tmp_path):
    """Same images per step (the distributed group sampler), same augmentations (seeded per
    sample), frozen BN statistics and a loss normalized over processes: 2 x 2 images = 1 x 4."""
    (tmp_path / "process_mean_head.py").write_text(HEAD_MODULE)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    options = {"model.bbox_head.type": "ProcessMeanRetinaHead", "model.backbone.norm_eval": True,
               "custom_imports": dict(imports=["process_mean_head"])}
    one, two = tmp_path / "one", tmp_path / "two"
    make_config(shapes_root, epochs=2, **options, **{"data.samples_per_gpu": 4}).dump(
        tmp_path / "one.py")
    make_config(shapes_root, epochs=2, **options, **{"data.samples_per_gpu": 2}).dump(
        tmp_path / "two.py")
    single = [sys.executable, "-m", "detlab", "train", str(tmp_path / "one.py"), "--work-dir",
              str(one), "--no-progress", "--seed", "0", "--device", "cpu"]
    done = subprocess.run(single, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", "29519", "-m", "detlab", "train", str(tmp_path / "two.py"),
               "--work-dir", str(two), "--no-progress", "--seed", "0", "--device", "cpu",
               "--launcher", "pytorch"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a = read_checkpoint(str(one / "latest.pth"))
    b = read_checkpoint(str(two / "latest.pth"))
    assert a["meta"]["iter"] == b["meta"]["iter"] == 4
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
    losses = [[r["loss"] for r in read_json_log(str(next(d.glob("*.log.json"))))
               if r["mode"] == "train"] for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)

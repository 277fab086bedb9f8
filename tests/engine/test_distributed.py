"""Training and testing in a process group, as `torchrun` starts it: two CPU processes (gloo)."""

import os
import subprocess
import sys

import pytest

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

"""notebooks/00_quickstart.ipynb executed headless with papermill, with tiny parameters."""

import json
import os

import pytest
from conftest import REPO

from detlab.notebooks import records_from_notebook, run_notebook

NOTEBOOK = REPO / "notebooks" / "00_quickstart.ipynb"


def test_committed_without_outputs_and_with_a_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert all(len("".join(c["source"]).splitlines()) <= 15 for c in code)


@pytest.mark.slow
def test_quickstart_runs_headless(tmp_path):
    work_dir = tmp_path / "work_dir"
    run = run_notebook(str(NOTEBOOK), str(tmp_path), cwd=str(REPO), parameters=dict(
        work_dir=str(work_dir), data_root=str(tmp_path / "shapes"), epochs=2, num_train=8,
        num_val=4, image_size=64, seed=0), timeout=600)
    assert run.status == "ok", run.error
    records = run.records
    assert set(records) >= {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "train_seconds",
                            "inputs", "work_dir"}
    assert 0.0 <= records["bbox_mAP"] <= 1.0 and records["train_seconds"] > 0
    assert records_from_notebook(run.output) == records  # the executed notebook keeps them
    with open(work_dir / "metrics.json") as f:
        assert json.load(f)["bbox_mAP"] == records["bbox_mAP"]
    files = set(os.listdir(work_dir))
    assert {"config.py", "latest.pth", "predictions.png"} <= files
    assert any(name.endswith(".log.json") for name in files)
    executed = json.loads(open(run.output).read())
    images = [o for c in executed["cells"] for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # samples, curves, predictions, the DetResult itself
    capsule = json.loads((tmp_path / "run.json").read_text())
    assert len(capsule["inputs"]) == 2 and all(v.startswith("sha256:")
                                               for v in capsule["inputs"].values())
    assert any(name.endswith("latest.pth") for name in capsule["checkpoints"])
    assert (tmp_path / "config.py").exists() and "epochs 2" in capsule["command"]

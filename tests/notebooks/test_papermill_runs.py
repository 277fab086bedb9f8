"""notebooks.run / record / sweep: parameters (tuples included), records, failures, capsules."""

import json
import os
import shlex

import nbformat
import pandas as pd
import pytest

from detlab import notebooks
from detlab.cli import main
from detlab.notebooks import grid_points, sweep


def write_notebook(path, parameters, code):
    """A notebook of a ``parameters`` cell and one code cell, with kernelspec metadata."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))
    return str(path)


def tiny_notebook(path):
    return write_notebook(
        path, "a = 1\nscale = (1, 2)\nfail = False\ncfg_options = {}\nwork_dir = 'shared'",
        "from detlab.notebooks import record\n"
        "record('a2', a * 2)\n"
        "record('scale_type', type(scale).__name__)\n"
        "record('options', cfg_options)\n"
        "record('work_dir', work_dir)\n"
        "assert not fail, 'asked to fail'")


def test_grid_points():
    assert grid_points({"a": [1, 2], "b": "x"}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert grid_points([{"a": 1}, {"a": 5}]) == [{"a": 1}, {"a": 5}]


@pytest.mark.slow
def test_run_keeps_tuples_and_records_and_writes_a_capsule(tmp_path):
    notebook = tiny_notebook(tmp_path / "tiny.ipynb")
    run = notebooks.run(notebook, str(tmp_path / "out"), dict(
        a=3, scale=(640, 480), cfg_options={"optimizer.lr": 0.01, "data.img_scale": (1, 2)}))
    assert run.status == "ok"
    assert run.records == {"a2": 6, "scale_type": "tuple", "work_dir": "shared",
                           "options": {"optimizer.lr": 0.01, "data.img_scale": [1, 2]}}
    capsule = json.loads((tmp_path / "out" / "run.json").read_text())
    assert capsule["environment"]["torch"] and capsule["environment"]["detlab"]
    assert capsule["command"].startswith("detlab nb run ") and "'(640, 480)'" in capsule["command"]
    assert capsule["records"]["a2"] == 6
    # the capsule's command runs it again, to the same records
    argv = shlex.split(capsule["command"])
    assert argv[:3] == ["detlab", "nb", "run"]
    argv[4] = str(tmp_path / "again" / "tiny.ipynb")  # the executed notebook goes elsewhere
    assert main(argv[1:]) == 0
    again = json.loads((tmp_path / "again" / "run.json").read_text())
    assert again["records"] == capsule["records"] and again["parameters"] == capsule["parameters"]


@pytest.mark.slow
def test_sweep_goes_on_after_a_failing_run(tmp_path):
    notebook = tiny_notebook(tmp_path / "tiny.ipynb")
    frame = sweep(notebook, {"a": [1, 2], "fail": [False, True]}, str(tmp_path / "sweep"),
                  run_folders=["work_dir"])
    assert len(frame) == 4 and list(frame["status"]) == ["ok", "failed", "ok", "failed"]
    ok = frame[frame.status == "ok"]
    assert list(ok["a2"]) == [2, 4] and ok["error"].isna().all()
    failed = frame[frame.status == "failed"]
    assert failed["error"].str.contains("asked to fail").all()
    assert (failed["failed_cell"] == 3).all()  # after the parameters and injected cells
    assert failed["failed_source"].str.contains("assert not fail").all()
    assert (tmp_path / "sweep" / "sweep.csv").exists()
    for run_dir in frame["run_dir"]:
        assert json.loads(open(f"{run_dir}/run.json").read())["parameters"]
    # each run had a work folder of its own, inside its run folder
    assert list(ok["work_dir"]) == [os.path.join(d, "work_dir") for d in ok["run_dir"]]


@pytest.mark.slow
def test_nb_run_and_nb_sweep_on_the_command_line(tmp_path, capsys):
    notebook = tiny_notebook(tmp_path / "tiny.ipynb")
    out = tmp_path / "run" / "tiny_out.ipynb"
    assert main(["nb", "run", notebook, str(out), "-p", "a", "4", "-p", "scale", "(3,4)"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("ok: ") and "a2: 8" in printed and "scale_type: tuple" in printed
    assert out.exists() and (tmp_path / "run" / "run.json").exists()
    # a failing run makes the command fail, and every run is still in the table
    status = main(["nb", "sweep", notebook, "--grid", "a=1,2", "fail=false,true", "--out",
                   str(tmp_path / "sweep"), "-p", "scale", "(5,6)", "--run-folders", "work_dir"])
    assert status == 1
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert list(table["status"]) == ["ok", "failed", "ok", "failed"]
    # a failed run keeps what it recorded before the failing line
    assert list(table["a2"]) == [2, 2, 4, 4] and set(table["scale_type"]) == {"tuple"}
    assert table["work_dir"].str.endswith("work_dir").all() and table["work_dir"].nunique() == 4
    shown = capsys.readouterr().out  # the table printed: each error as its last line
    assert shown.count("AssertionError: asked to fail") == 2 and "Traceback" not in shown


@pytest.mark.slow
def test_sweep_goes_on_after_a_timeout_and_a_dead_kernel(tmp_path):
    path = write_notebook(
        tmp_path / "fragile.ipynb", "how = 'ok'",
        "import os, time\n"
        "from detlab.notebooks import record\n"
        "record('started', how)\n"
        "if how == 'hang':\n"
        "    time.sleep(60)\n"
        "if how == 'die':\n"
        "    os._exit(1)\n"
        "record('finished', True)")
    frame = sweep(path, {"how": ["hang", "die", "ok"]}, str(tmp_path / "sweep"), timeout=5)
    hang, die, ok = (frame.iloc[i] for i in range(3))
    assert list(frame["status"]) == ["failed", "failed", "ok"]
    assert "Timeout" in hang["error"] and hang["started"] == "hang" and hang["duration"] < 50
    assert "DeadKernel" in die["error"] and die["started"] == "die"
    assert ok["finished"] is True or ok["finished"] == 1.0
    for row in (hang, die):  # the failing cell is named, with its source
        assert row["failed_cell"] == 3 and "how ==" in row["failed_source"]


def test_progress_bars_iterate_once_and_not_in_headless_runs(monkeypatch):
    """A bar iterates its loader once. A notebook executed by run_notebook keeps only a
    progress bar's first state ("0%"): bars are left out there, and the log lines tell the
    progress."""
    from tqdm import tqdm

    from detlab.engine.logging import progress_bar
    from detlab.notebooks import RUN_DIR_ENV

    class Loader:  # like a DataLoader: every iter() starts workers and draws an epoch order
        calls = 0

        def __len__(self):
            return 3

        def __iter__(self):
            Loader.calls += 1
            return iter([1, 2, 3])

    items = Loader()
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    bar = progress_bar(items, "train")
    assert isinstance(bar, tqdm) and list(bar) == [1, 2, 3] and bar.total == 3
    assert Loader.calls == 1  # tqdm.auto's bar would have called iter() twice
    monkeypatch.setenv(RUN_DIR_ENV, "/tmp/run")
    assert progress_bar(items, "train") is items

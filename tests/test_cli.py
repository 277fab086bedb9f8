"""The ``detlab`` command line."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from detlab.cli import main
from detlab.config import Config


def test_print_config_is_loadable_python(configs, capsys):
    assert main(["print-config", str(configs / "chain" / "level3.py")]) == 0
    text = capsys.readouterr().out
    assert Config.fromstring(text) == Config.fromfile(configs / "chain" / "level3.py")


def test_print_config_with_cfg_options(configs, capsys):
    status = main(["print-config", str(configs / "chain" / "level1.py"), "--cfg-options",
                   "model.bbox_head.num_classes=3", "data.train.pipeline.2.img_scale=(640,480)",
                   "optimizer.lr=0.5"])
    assert status == 0
    cfg = Config.fromstring(capsys.readouterr().out)
    assert cfg.model.bbox_head.num_classes == 3
    assert cfg.data.train.pipeline[2].img_scale == (640, 480)
    assert cfg.optimizer.lr == 0.5


def test_print_config_json_and_provenance(configs, capsys):
    main(["print-config", str(configs / "chain" / "level2.py"), "--format", "json"])
    assert json.loads(capsys.readouterr().out)["optimizer"]["lr"] == 0.005
    main(["print-config", str(configs / "chain" / "level2.py"), "--provenance",
          "--cfg-options", "optimizer.momentum=0.8"])
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["optimizer.lr"].strip().endswith("level2.py")
    assert lines["optimizer.momentum"].strip() == "cfg_options"


def test_config_error_is_a_message_not_a_traceback(configs, capsys):
    assert main(["print-config", str(configs / "dup" / "child.py")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "a.py" in err and "b.py" in err and "Traceback" not in err
    assert main(["print-config", str(configs / "chain" / "level1.py"), "--cfg-options",
                 "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_python_dash_m_and_console_script(configs):
    out = subprocess.run([sys.executable, "-m", "detlab", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("detlab ")
    script = Path(sys.executable).parent / "detlab"
    assert script.exists(), "the console script is installed with the package"
    out = subprocess.run([str(script), "print-config", str(configs / "chain" / "level1.py")],
                         capture_output=True, text=True, check=True).stdout
    assert "model = dict(" in out


def test_make_shapes(tmp_path, capsys):
    assert main(["make-shapes", str(tmp_path), "--num-train", "3", "--num-val", "2",
                 "--image-size", "64"]) == 0
    assert "train_ann_file" in capsys.readouterr().out
    train = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert len(train["images"]) == 3 and len(list((tmp_path / "val").glob("*.png"))) == 2


def test_train_then_test_from_the_command_line(shapes_root, make_config, tmp_path, capsys):
    config = tmp_path / "tiny.py"
    make_config(shapes_root, epochs=1).dump(config)
    work_dir = tmp_path / "work"
    assert main(["train", str(config), "--work-dir", str(work_dir), "--no-progress",
                 "--cfg-options", "optimizer.lr=0.0005"]) == 0
    out = capsys.readouterr().out
    assert "bbox_mAP:" in out and (work_dir / "latest.pth").exists()
    assert Config.fromfile(work_dir / "config.py").optimizer.lr == 0.0005
    results = tmp_path / "results.pkl"
    assert main(["test", str(config), str(work_dir / "latest.pth"), "--eval", "bbox",
                 "--out", str(results), "--eval-options", "classwise=True",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bbox_mAP:" in out and "circle" in out and results.exists()
    assert main(["test", str(config), str(work_dir / "latest.pth")]) == 2
    assert "--eval bbox" in capsys.readouterr().err


def test_format_only_eval_metric_and_analyze_logs(shapes_root, make_config, tmp_path, capsys):
    config = tmp_path / "tiny.py"
    make_config(shapes_root, epochs=2).dump(config)
    work_dir = tmp_path / "work"
    assert main(["train", str(config), "--work-dir", str(work_dir), "--no-progress"]) == 0
    checkpoint = str(work_dir / "latest.pth")
    results = tmp_path / "results.pkl"
    keep_all = ["--cfg-options", "model.test_cfg.score_thr=0.0"]  # an untrained model's scores
    assert main(["test", str(config), checkpoint, "--eval", "bbox", "--out", str(results),
                 "--no-progress", *keep_all]) == 0
    tested = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()
                  if line.startswith("bbox_mAP"))
    prefix = tmp_path / "submission" / "shapes"
    assert main(["test", str(config), checkpoint, "--format-only", "--eval-options",
                 f"jsonfile_prefix={prefix}", "--no-progress", *keep_all]) == 0
    rows = json.loads((tmp_path / "submission" / "shapes.bbox.json").read_text())
    assert rows and all(set(r) >= {"image_id", "category_id", "bbox", "score"} for r in rows)
    assert {r["category_id"] for r in rows} <= {1, 2, 3}
    capsys.readouterr()
    assert main(["eval-metric", str(config), str(results), "--eval", "bbox"]) == 0
    again = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()
                 if line.startswith("bbox_mAP"))
    assert again == tested  # saved results evaluate the same
    log = next(work_dir.glob("*.log.json"))
    out = tmp_path / "curves.png"
    assert main(["analyze-logs", "plot_curve", str(log), "--keys", "loss_cls", "bbox_mAP",
                 "--out", str(out)]) == 0 and out.stat().st_size > 0
    assert main(["analyze-logs", "cal_train_time", str(log)]) == 0
    text = capsys.readouterr().out
    assert "slowest epoch" in text and "average iter time" in text


def test_data_verbs(shapes_root, make_config, tmp_path, capsys):
    config = tmp_path / "tiny.py"
    make_config(shapes_root).dump(config)
    shown = tmp_path / "browse"
    assert main(["browse-dataset", str(config), "--output-dir", str(shown), "--not-show",
                 "--max-images", "3"]) == 0
    assert len(list(shown.iterdir())) == 3
    assert main(["check-dataset", str(config), "--out", str(tmp_path / "findings.csv")]) == 0
    assert "findings" in capsys.readouterr().out
    yolo = tmp_path / "yolo"
    ann = f"{shapes_root}/annotations/instances_train.json"
    assert main(["convert", "coco2yolo", ann, f"{shapes_root}/train", str(yolo),
                 "--copy-images", "symlink"]) == 0
    back = tmp_path / "back"
    assert main(["convert", "yolo2coco", str(yolo / "data.yaml"), str(back)]) == 0
    written = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("train")]
    original = json.loads(open(ann).read())
    converted = json.loads(open(written[-1]).read())
    assert len(converted["annotations"]) == len(original["annotations"])


# ---- MMDetection's flags, passed to the library (the library call is replaced) ----------------


class Recorder:
    """Stands in for a library function: records its keywords, returns ``result``."""

    def __init__(self, result):
        self.result, self.calls = result, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


@pytest.fixture
def fake_train(monkeypatch):
    import detlab

    fake = Recorder(SimpleNamespace(work_dir="w", checkpoint="w/latest.pth", metrics={}))
    monkeypatch.setattr(detlab, "train", fake)
    return fake


@pytest.fixture
def fake_test(monkeypatch):
    import detlab

    fake = Recorder({"bbox_mAP": 0.5})
    monkeypatch.setattr(detlab, "test", fake)
    return fake


def test_train_passes_launcher_gpu_and_auto_resume(fake_train, capsys):
    assert main(["train", "c.py", "--launcher", "pytorch", "--gpu-id", "1", "--auto-resume"]) == 0
    _, kwargs = fake_train.calls[-1]
    assert (kwargs["launcher"], kwargs["gpu_ids"], kwargs["auto_resume"]) == ("pytorch", [1], True)
    assert main(["train", "c.py"]) == 0
    _, kwargs = fake_train.calls[-1]
    assert (kwargs["launcher"], kwargs["gpu_ids"], kwargs["auto_resume"]) == (None, None, False)
    assert main(["train", "c.py", "--gpu-ids", "2", "3"]) == 0
    assert fake_train.calls[-1][1]["gpu_ids"] == [2]  # MMDetection uses the first one too
    assert "--gpu-ids is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "c.py", "--launcher", "mpi"])


def test_options_is_the_deprecated_alias_of_cfg_options_for_train(fake_train, capsys):
    assert main(["train", "c.py", "--options", "optimizer.lr=0.1", "seed=3"]) == 0
    assert fake_train.calls[-1][1]["cfg_options"] == ["optimizer.lr=0.1", "seed=3"]
    assert "--options is deprecated in favor of --cfg-options" in capsys.readouterr().err
    assert main(["train", "c.py", "--options", "a=1", "--cfg-options", "b=2"]) == 2
    assert "cannot both be given" in capsys.readouterr().err


def test_test_passes_launcher_gpu_and_allow_partial(fake_test, capsys):
    assert main(["test", "c.py", "x.pth", "--eval", "bbox", "--launcher", "slurm",
                 "--gpu-id", "0", "--allow-partial"]) == 0
    _, kwargs = fake_test.calls[-1]
    assert (kwargs["launcher"], kwargs["gpu_ids"], kwargs["allow_partial"]) == \
        ("slurm", [0], True)
    assert main(["test", "c.py", "x.pth", "--eval", "bbox"]) == 0
    _, kwargs = fake_test.calls[-1]
    assert (kwargs["launcher"], kwargs["gpu_ids"], kwargs["allow_partial"]) == \
        (None, None, False)
    assert "bbox_mAP: 0.5000" in capsys.readouterr().out


def test_options_is_the_deprecated_alias_of_eval_options_for_test(fake_test, capsys):
    # MMDetection's tools/test.py: "--options is deprecated in favor of --eval-options"
    assert main(["test", "c.py", "x.pth", "--eval", "bbox", "--options", "classwise=True"]) == 0
    assert fake_test.calls[-1][1]["eval_options"] == {"classwise": True}
    assert "--options is deprecated in favor of --eval-options" in capsys.readouterr().err


def test_a_config_error_of_the_library_is_one_line_without_traceback(monkeypatch, capsys):
    import detlab
    from detlab.config import ConfigError

    def rejects(*args, **kwargs):
        raise ConfigError("--eval-options: dataset.evaluate has no option 'clswise'. Did you "
                          "mean 'classwise'? It accepts: classwise, iou_thrs, proposal_nums.")

    monkeypatch.setattr(detlab, "test", rejects)
    assert main(["test", "c.py", "x.pth", "--eval", "bbox", "--eval-options",
                 "clswise=True"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("detlab test: error: --eval-options: ") and "'classwise'" in err


def test_eval_metric_refuses_a_pickle_that_names_code(shapes_root, make_config, tmp_path,
                                                      capsys, monkeypatch):
    config = tmp_path / "tiny.py"
    make_config(shapes_root).dump(config)
    marker = tmp_path / "ran"
    evil = tmp_path / "results.pkl"
    evil.write_bytes(pickle.dumps([[RunsCommand(f"touch {marker}")]]))
    assert main(["eval-metric", str(config), str(evil)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"detlab eval-metric: error: {evil}: refusing to load this pickle")
    assert "--trust-pickle" in err and "Traceback" not in err and not marker.exists()
    assert main(["eval-metric", str(config), str(evil), "--eval-options", "clswise=True"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "clswise" in err and "Traceback" not in err
    from detlab.engine import tester

    fake = Recorder({"bbox_mAP": 0.25})
    monkeypatch.setattr(tester, "eval_metric", fake)
    assert main(["eval-metric", str(config), str(evil), "--trust-pickle"]) == 0
    assert fake.calls[-1][1]["trust_pickle"] is True and not marker.exists()


class RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_check_dataset_decodes_images_and_fails_without_any(tmp_path, capsys):
    from PIL import Image

    Image.effect_noise((64, 48), 50).convert("RGB").save(tmp_path / "a.jpg", quality=90)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[:len(data) // 2])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(
        images=[dict(id=7, file_name="a.jpg", width=64, height=48)],
        annotations=[dict(id=1, image_id=7, category_id=1, bbox=[1, 1, 9, 9], iscrowd=0)],
        categories=[dict(id=1, name="a")])))
    assert main(["check-dataset", str(ann), "--img-prefix", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "unreadable_image" in out and "truncated" in out
    assert main(["check-dataset", str(ann), "--img-prefix", str(tmp_path), "--sample", "0"]) == 0
    assert "sample=0: decoded 0 of 1" in capsys.readouterr().out
    ann.write_text(json.dumps(dict(images=[], annotations=[], categories=[dict(id=1,
                                                                               name="a")])))
    assert main(["check-dataset", str(ann)]) == 1
    assert "no_images" in capsys.readouterr().out

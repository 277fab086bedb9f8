"""The ``detlab`` command line."""

import json
import subprocess
import sys
from pathlib import Path

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

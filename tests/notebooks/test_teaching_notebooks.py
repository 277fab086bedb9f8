"""The teaching notebooks (01-10) executed headless with tiny parameters, and the rules every
notebook of notebooks/ follows: committed without outputs, a ``parameters`` cell first, kernelspec
metadata, no code cell over 15 lines."""

import json
import math
import os

import nbformat
import pytest
from conftest import REPO, tiny_config

from detlab.notebooks import run_notebook

NOTEBOOKS = REPO / "notebooks"
COURSE = ["00_quickstart", "01_browse_dataset", "02_edit_config", "03_train",
          "04_evaluate_and_analyze_errors", "05_compare_runs", "06_custom_components",
          "07_inference", "08_sweep", "09_model_zoo", "10_two_stage_and_masks"]
MAX_CELL_LINES = 15
TIMEOUT = 300  # seconds a cell may take
# 8 training images of 64 pixels, 2 iterations an epoch, no loader processes, every epoch
# logged, evaluated and saved
TINY = dict(num_train=8, num_val=4, image_size=64, seed=0)
TINY_OPTIONS = {"data.workers_per_gpu": 0, "data.samples_per_gpu": 4, "log_config.interval": 1,
                "lr_config.warmup_iters": 2, "evaluation.interval": 1,
                "checkpoint_config.interval": 1}
CLASSES = ["circle", "square", "triangle"]


# --------------------------------------------------------------------------------------------
# every notebook, as committed
# --------------------------------------------------------------------------------------------


def test_the_course_is_complete():
    names = sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb"))
    assert set(COURSE) <= set(names), sorted(set(COURSE) - set(names))


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_without_outputs_with_parameters_first(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), \
        "the first code cell must be tagged 'parameters'"
    assert not any("parameters" in c.metadata.get("tags", []) for c in code[1:])
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, cell.source[:80]
        lines = len(cell.source.splitlines())
        assert lines <= MAX_CELL_LINES, f"a {lines}-line cell: make it a library function\n" \
                                        f"{cell.source}"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


# --------------------------------------------------------------------------------------------
# the teaching notebooks, executed
# --------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread(monkeypatch):
    """Kernels started by the test use one math thread each: on a small machine shared with
    other work, torch's default of one thread per core makes tiny runs many times slower."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")


def execute(name, tmp_path, **parameters):
    """Run ``notebooks/<name>.ipynb`` with ``parameters`` from the repository root; its
    records."""
    run = run_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / "run"),
                       parameters=parameters, cwd=str(REPO), timeout=TIMEOUT)
    assert run.status == "ok", run.error
    assert (tmp_path / "run" / "run.json").exists()
    return run.records


def is_metric(value):
    return isinstance(value, float) and 0.0 <= value <= 1.0


def val_ground_truths(data_root):
    with open(os.path.join(data_root, "annotations", "instances_val.json")) as f:
        return len(json.load(f)["annotations"])


@pytest.mark.slow
def test_01_browse_dataset(tmp_path, one_thread):
    records = execute("01_browse_dataset", tmp_path, data_root=str(tmp_path / "shapes"),
                      num_train=6, num_val=2, image_size=64, index=2)
    assert records["num_images"] == 6 and records["errors"] == 0
    assert records["classes"] == CLASSES
    assert records["steps"][0] == "LoadImageFromFile" and "Resize" in records["steps"]
    assert records["steps"][-1] == "Collect"


@pytest.mark.slow
def test_02_edit_config(tmp_path, one_thread):
    records = execute("02_edit_config", tmp_path, work_dir=str(tmp_path / "configs"))
    assert records["merged_optimizer"] == dict(type="SGD", lr=0.01, momentum=0.9,
                                               weight_decay=0.0001)
    assert records["pipeline_steps"] == {"variable only": 2, "passed again": 1}
    assert records["deleted_optimizer"] == dict(type="AdamW", lr=0.001)
    [typo] = records["typo_problems"]
    assert typo.startswith("model.bbox_head.loss_cls.gama") and "Did you mean 'gamma'" in typo
    assert "expects lr" in records["wrong_type_problems"][0]
    assert records["changed_keys"] == ["model.bbox_head.loss_cls.gamma", "optimizer.lr",
                                       "runner.max_epochs"]
    with open(records["saved_config"]) as f:
        assert f.read().startswith("_base_ = ")
    assert records["reloaded"] == dict(lr=0.0005, max_epochs=3, gamma=1.5,
                                       depth_from="retinanet_r18_fpn_shapes.py")


@pytest.mark.slow
def test_03_train_and_resume(tmp_path, one_thread):
    records = execute("03_train", tmp_path, work_dir=str(tmp_path / "work_dir"),
                      data_root=str(tmp_path / "shapes"), epochs=2, more_epochs=1,
                      samples_per_gpu=4, warmup_iters=2, log_interval=2,
                      cfg_options={"data.workers_per_gpu": 0}, **TINY)
    assert records["iters_per_epoch"] == 2 and records["schedule_matches"] is True
    assert records["resume_matches_straight"] is True  # bit for bit
    assert records["first_run_epochs"] == 2 and records["resumed_epochs"] == 3
    assert records["resumed_train_rows"] == 2  # the monitor saw the resumed epoch only
    assert [row[0] for row in records["epoch_summary"]] == [1, 2]
    files = records["files"]
    assert {"config.py", "epoch_1.pth", "epoch_2.pth", "epoch_3.pth", "latest.pth"} <= set(files)
    assert sum(name.endswith(".log.json") for name in files) == 2  # the run and its resumption
    assert is_metric(records["bbox_mAP"])


@pytest.mark.slow
def test_04_evaluate_and_analyze_errors(tmp_path, one_thread):
    data_root = tmp_path / "shapes"
    records = execute("04_evaluate_and_analyze_errors", tmp_path, epochs=2,
                      work_dir=str(tmp_path / "work_dir"), data_root=str(data_root),
                      cfg_options=TINY_OPTIONS, **TINY)
    assert is_metric(records["bbox_mAP"]) and is_metric(records["bbox_mAP_50"])
    assert records["classwise_rows"] == 3
    # every ground truth is either a true positive at IoU 0.5 or a miss
    assert records["tp50"] + records["match_rows"].get("miss", 0) == val_ground_truths(data_root)
    assert records["tide_ap50"] == pytest.approx(records["bbox_mAP_50"], abs=1e-9)
    assert records["analysis_types"] == ["C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"]
    assert records["confusion_shape"] == [4, 4] and records["ranked_images"] == 4
    assert records["browser"]["Miss"] == records["tide_counts"]["Miss"]
    assert records["rescore_reproduces_test"] is True
    # the executed notebook reads as a report: each widget left a picture, and no progress
    # bar was frozen at 0%
    executed = nbformat.read(tmp_path / "run" / "04_evaluate_and_analyze_errors.ipynb", 4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    view = "application/vnd.jupyter.widget-view+json"
    widgets = [o for o in outputs if view in o.get("data", {})]
    assert len(widgets) >= 3 and all("image/png" in o["data"] for o in widgets)
    assert not any("0%|" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert len(records["rescored_maps"]) == 6 and all(map(is_metric, records["rescored_maps"]))


@pytest.mark.slow
def test_05_compare_runs(tmp_path, one_thread):
    records = execute("05_compare_runs", tmp_path, work_dir=str(tmp_path / "runs"),
                      data_root=str(tmp_path / "shapes"), epochs=2, n_boot=200,
                      cfg_options=TINY_OPTIONS, **TINY)
    names = ["lr=0.001", "lr=0.0003"]
    assert records["runs"] == names and records["class_ap_runs"] == names
    assert all(is_metric(records["bbox_mAP"][n]) for n in names)
    for name in names:  # the match tables give the COCO mAP of the test
        assert records["compared_map"][name] == pytest.approx(records["bbox_mAP"][name])
    [diff], [(low, high)], [p_value] = records["diff"], records["ci"], records["p_value"]
    assert low <= diff <= high and 0.0 <= p_value <= 1.0
    assert records["comparer_rows"] == 2 and records["differing_keys"] == ["optimizer.lr"]


@pytest.mark.slow
def test_06_custom_components(tmp_path, one_thread):
    records = execute("06_custom_components", tmp_path, work_dir=str(tmp_path / "work_dir"),
                      data_root=str(tmp_path / "shapes"), epochs=2, cfg_options=TINY_OPTIONS,
                      **TINY)
    assert records["backbone"] == "TinyConvNet" and records["loss_bbox"] == "LogCoshLoss"
    assert records["train_pipeline"][2] == "RandomGrayscale" and records["problems"] == []
    assert records["feature_shapes"] == [[2, 32, 8, 8], [2, 64, 4, 4], [2, 128, 2, 2]]
    log_cosh = math.log(math.cosh(0.5)), math.log(math.cosh(2.0))
    reductions = records["reductions"]
    assert reductions["mean"] == pytest.approx(sum(log_cosh) / 2, rel=1e-5)
    assert reductions["sum"] == pytest.approx(4 * sum(log_cosh), rel=1e-5)
    assert reductions["weighted sum / avg_factor=1"] == pytest.approx(4 * log_cosh[0], rel=1e-5)
    assert "defined again" in records["reregistered"] and is_metric(records["bbox_mAP"])
    assert os.path.exists(os.path.join(records["work_dir"], "latest.pth"))
    # section 7: the tutorial's Double-Head R-CNN, written in cells under its own names, trains
    assert records["double_head"] == {"roi_head": "MyDoubleHeadRoIHead",
                                      "bbox_head": "MyDoubleConvFCBBoxHead"}
    assert records["double_head_without_grad"] == []  # every parameter learns
    losses = records["double_head_losses"]
    assert len(losses) == 2  # two iterations
    for step in losses:
        assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "acc"} <= set(step)
        assert all(math.isfinite(v) for v in step.values()) and step["loss_cls"] > 0
    assert "DoubleHeadRoIHead" in records["builtin_refused"]  # the library's name is taken
    assert records["forced_and_restored"] == [True, True]


@pytest.fixture
def tiny_checkpoint(shapes_root, tmp_path):
    """A checkpoint of the quickstart config trained for one epoch on the tiny dataset."""
    import torch

    import detlab

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = tiny_config(shapes_root, epochs=1, **{"data.workers_per_gpu": 0})
        return detlab.train(cfg, work_dir=str(tmp_path / "trained"), progress=False,
                            validate=False).checkpoint
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_07_inference(tmp_path, one_thread, tiny_checkpoint):
    records = execute("07_inference", tmp_path, work_dir=str(tmp_path / "work_dir"),
                      data_root=str(tmp_path / "shapes"), checkpoint=tiny_checkpoint,
                      num_frames=6, fps=4, score_thr=0.05, **TINY)
    assert records["classes"] == CLASSES and records["batch_results"] == 4
    assert records["folder_images"] == records["folder_pictures"] == TINY["num_val"]
    assert os.path.exists(records["shown_file"])
    assert records["video_frames"] == records["video_results"] == 6
    assert records["video_frame_indices"] == list(range(6))
    assert records["out_video_frames"] == 6


@pytest.mark.slow
def test_08_sweep_of_four_quickstart_runs(tmp_path, one_thread):
    grid = {"image_size": [64, 96], "epochs": [1, 2]}
    records = execute("08_sweep", tmp_path, output_dir=str(tmp_path / "sweep"), grid=grid,
                      base_parameters=dict(num_train=8, num_val=4, seed=0), timeout=TIMEOUT)
    assert records["num_runs"] == 4 and records["statuses"] == ["ok"] * 4
    assert len(records["bbox_mAP"]) == 4 and all(map(is_metric, records["bbox_mAP"]))
    assert records["points"] == [dict(image_size=s, epochs=e) for s in (64, 96) for e in (1, 2)]
    with open(records["sweep_csv"]) as f:
        assert len(f.read().strip().splitlines()) == 5  # a header and a row per run


@pytest.mark.slow
def test_09_model_zoo(tmp_path, one_thread):
    records = execute("09_model_zoo", tmp_path, data_root=str(tmp_path / "shapes"),
                      num_images=2, image_size=128, channels=64)
    assert list(records["parameters"]) == ["backbone", "neck", "bbox_head"]
    assert all(n > 0 for n in records["parameters"].values())
    assert records["num_levels"] == 5 and records["level_shapes"][0] == [1, 3, 16, 16]
    assert records["assigners"] == ["MaxIoUAssigner", "ATSSAssigner"]
    per_gt = records["positives_per_gt"]
    assert len(per_gt["ATSS"]) == records["num_gts"] > 0
    assert all(n > 0 for n in per_gt["ATSS"])  # ATSS gives every box positives
    # section 4: the cross-family config builds with MMDetection's count and warns once
    assert records["cross_params"]["as written"] == 10_080_971
    assert records["cross_params"]["true strides"] == 8_900_811
    assert len(records["cross_warnings"]) == 1 and records["fixed_warnings"] == []
    warning = records["cross_warnings"][0]
    for text in ("model.bbox_head.strides=[8, 16, 32]", "model.neck.num_outs=5",
                 "Set model.bbox_head.strides=[16, 32, 32] and model.neck.num_outs=3."):
        assert text in warning, text
    assert records["assumed_strides"] == [8, 16, 32]
    assert records["real_strides"] == [16, 32, 32]
    assert records["fixed_strides"] == [[16, 16], [32, 32], [32, 32]]
    # the assigner-inspector widget: four assigners, SimOTA's positives in its table
    assert records["inspector_assigners"] == ["MaxIoU (RetinaNet)", "ATSS", "SimOTA (YOLOX)",
                                              "TaskAligned (TOOD)"]
    assert records["inspector_simota_rows"] > 0


@pytest.mark.slow
def test_10_two_stage_and_masks(tmp_path, one_thread):
    records = execute("10_two_stage_and_masks", tmp_path, work_dir=str(tmp_path / "work_dir"),
                      data_root=str(tmp_path / "shapes"), epochs=1, cfg_options=TINY_OPTIONS,
                      scale=1, **TINY)
    assert is_metric(records["bbox_mAP"]) and is_metric(records["segm_mAP"])
    counts = records["counts"]
    # the proposals are what the config says: test_cfg.rpn / train_cfg.rpn_proposal max_per_img
    assert records["proposal_limits"] == {"test": 300, "train": 300}
    assert counts["proposals"] == records["train_proposals"] == 300
    # the sampler draws train_cfg.rcnn.sampler.num RoIs, at most a quarter positive, and the
    # ground truths are among the positives (add_gt_as_proposals)
    sampled = records["sampled"]
    assert sampled["num"] == 128 and sampled["positives"] + sampled["negatives"] == 128
    assert counts["ground_truths"] <= sampled["positives"] <= 32
    # the RoI head keeps at most test_cfg.rcnn.max_per_img of its NMS candidates, and each kept
    # box has 28 x 28 logits per class and a mask pasted at the image's size
    assert records["max_per_img"] == 50
    assert 0 < counts["kept"] <= min(50, counts["candidates"])
    assert counts["mask_logits"] == [counts["kept"], 3, 28, 28]
    assert records["mask_shape"] == [counts["kept"], 64, 64]
    assert records["image_shape"] == [64, 64, 3]
    assert os.path.exists(os.path.join(records["work_dir"], "latest.pth"))

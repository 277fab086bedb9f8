"""The ``detlab`` command line: ``detlab <verb> ...`` (also ``python -m detlab``).

Each verb is a pair of functions: ``_add_<verb>(subparsers)`` declares its arguments and
``_run_<verb>(args)`` calls into the library, which does the work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from detlab import __version__


def _add_cfg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. optimizer.lr=0.01 data.train.pipeline.2.img_scale="
             "(640,480) model.backbone.out_indices=[1,2,3]; values follow MMDetection's rules "
             "(numbers, true/false/none, a,b and [a,b] lists, (a,b) tuples, else strings)")


def _add_options_alias(parser: argparse.ArgumentParser, replaced: str) -> None:
    """MMDetection's tools still take ``--options`` for ``--cfg-options`` (train.py) or
    ``--eval-options`` (test.py), with a deprecation warning."""
    parser.add_argument("--options", nargs="+", metavar="KEY=VALUE",
                        help=f"deprecated alias of {replaced}, as in MMDetection's tools")


def _use_options_alias(args: argparse.Namespace, dest: str) -> None:
    """Move a deprecated ``--options`` to ``args.<dest>``, warning on stderr as MMDetection
    does; both at once is an error."""
    if args.options is None:
        return
    flag = "--" + dest.replace("_", "-")
    if getattr(args, dest):
        raise ValueError(f"--options and {flag} cannot both be given: --options is deprecated "
                         f"in favor of {flag}; put all the KEY=VALUE pairs after {flag}")
    print(f"detlab {args.verb}: warning: --options is deprecated in favor of {flag} (same "
          "KEY=VALUE pairs)", file=sys.stderr)
    setattr(args, dest, args.options)


def _add_launch(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """``--launcher`` and ``--gpu-id`` (MMDetection's names); returns the GPU group."""
    parser.add_argument("--launcher", choices=("none", "pytorch", "slurm"),
                        help="how the processes were started: pytorch (torchrun), slurm, or "
                             "none (one process); default: read from the environment")
    gpus = parser.add_mutually_exclusive_group()
    gpus.add_argument("--gpu-id", type=int,
                      help="the GPU of a run without a launcher (default: the first)")
    return gpus


def _gpu_ids(args: argparse.Namespace) -> list[int] | None:
    """``--gpu-id N`` -> ``[N]``; the deprecated ``--gpu-ids`` keeps its first id, as
    MMDetection's train.py does (a run without a launcher uses one GPU)."""
    if args.gpu_id is not None:
        return [args.gpu_id]
    ids = getattr(args, "gpu_ids", None)
    if not ids:
        return None
    print(f"detlab {args.verb}: warning: --gpu-ids is deprecated, use --gpu-id: a run without "
          f"a launcher uses one GPU, so GPU {ids[0]} is used", file=sys.stderr)
    return ids[:1]


def _add_print_config(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "print-config", help="print a config with its _base_ files and overrides resolved",
        description="Print the resolved config: every _base_ merged, every override applied.")
    parser.add_argument("config", help="config file (.py, .json, .yaml)")
    _add_cfg_options(parser)
    parser.add_argument("--format", choices=("py", "json", "yaml"), default="py",
                        help="output format (default: py)")
    parser.add_argument("--provenance", action="store_true",
                        help="print, for each key, the file or override that set it")


def _run_print_config(args: argparse.Namespace) -> int:
    from detlab.config import load_config

    cfg = load_config(args.config, args.cfg_options)
    if args.provenance:
        records = cfg.provenance()
        width = max((len(k) for k in records), default=0)
        for key, source in records.items():
            print(f"{key:<{width}}  {_short_path(source)}")
        return 0
    print(cfg.dump(file_format=args.format), end="")
    return 0


def _short_path(path: str) -> str:
    """``path`` relative to the current directory when it lies below it."""
    import os

    if os.path.isabs(path):
        rel = os.path.relpath(path)
        return path if rel.startswith("..") else rel
    return path


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the model a config describes",
                                   description="Train a detector (MMDetection's tools/train.py).")
    parser.add_argument("config", help="config file")
    parser.add_argument("--work-dir", help="where logs and checkpoints go")
    parser.add_argument("--resume-from", help="checkpoint to continue (weights, optimizer, epoch)")
    parser.add_argument("--load-from", help="checkpoint whose weights to start from")
    parser.add_argument("--no-validate", action="store_true",
                        help="do not evaluate on data.val during training")
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: CUDA when present)")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--auto-resume", action="store_true",
                        help="resume from the newest checkpoint of the work dir, if any")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic cuDNN kernels")
    parser.add_argument("--auto-scale-lr", action="store_true",
                        help="scale optimizer.lr to the actual batch (the config's "
                             "auto_scale_lr.base_batch_size is the batch its lr was set for)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    gpus = _add_launch(parser)
    gpus.add_argument("--gpu-ids", type=int, nargs="+", metavar="ID",
                      help="deprecated (use --gpu-id): the first id is used")
    _add_cfg_options(parser)
    _add_options_alias(parser, "--cfg-options")


def _run_train(args: argparse.Namespace) -> int:
    from detlab import train

    _use_options_alias(args, "cfg_options")
    run = train(args.config, work_dir=args.work_dir, device=args.device,
                resume_from=args.resume_from, load_from=args.load_from,
                validate=not args.no_validate, seed=args.seed, deterministic=args.deterministic,
                cfg_options=args.cfg_options, progress=not args.no_progress,
                launcher=args.launcher, gpu_ids=_gpu_ids(args), auto_resume=args.auto_resume,
                auto_scale_lr=args.auto_scale_lr)
    print(f"work_dir: {run.work_dir}\ncheckpoint: {run.checkpoint}")
    for key, value in run.metrics.items():
        print(f"{key}: {value:.4f}")
    return 0


def _add_test(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("test", help="detect on the test set and evaluate",
                                   description="Test a checkpoint (MMDetection's tools/test.py).")
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--out", help="save the results as a .pkl (MMDetection's format)")
    parser.add_argument("--eval", nargs="+", default=[], help="metrics, e.g. bbox")
    parser.add_argument("--show-dir", help="save each image with its detections drawn here")
    parser.add_argument("--show-score-thr", type=float, default=0.3,
                        help="score threshold for --show-dir (default 0.3)")
    parser.add_argument("--eval-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="options of dataset.evaluate, e.g. classwise=True")
    parser.add_argument("--format-only", action="store_true",
                        help="write COCO result files (--eval-options jsonfile_prefix=PREFIX) "
                             "instead of evaluating, e.g. for a test-dev submission")
    parser.add_argument("--device", help="cuda, cpu ... (default: CUDA when present)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a checkpoint that does not match the model: what matches "
                             "loads, the rest is reported (default: such a checkpoint fails)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_launch(parser)
    _add_cfg_options(parser)
    _add_options_alias(parser, "--eval-options")


def _print_metrics(output: dict) -> None:
    for key, value in output.items():
        if key == "classwise":
            print(value.to_string(index=False))
        elif key == "result_files":
            for kind, path in value.items():
                print(f"{kind} results: {path}")
        elif isinstance(value, float):
            print(f"{key}: {value:.4f}")
        elif isinstance(value, str) and key != "summary":
            print(f"{key}: {value}")


def _run_test(args: argparse.Namespace) -> int:
    from detlab import test
    from detlab.config import parse_cfg_options

    _use_options_alias(args, "eval_options")
    if not (args.eval or args.out or args.show_dir or args.format_only):
        raise ValueError("say what to do with the results: --eval bbox, --out results.pkl, "
                         "--format-only and/or --show-dir DIR")
    output = test(args.config, args.checkpoint, eval=args.eval, out=args.out,
                  show_dir=args.show_dir, show_score_thr=args.show_score_thr, device=args.device,
                  cfg_options=args.cfg_options, eval_options=parse_cfg_options(args.eval_options),
                  format_only=args.format_only, progress=not args.no_progress,
                  launcher=args.launcher, gpu_ids=_gpu_ids(args),
                  allow_partial=args.allow_partial)
    _print_metrics(output)
    return 0


def _add_eval_metric(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-metric", help="evaluate saved results (a .pkl from `detlab test --out`)",
        description="Evaluate saved results (MMDetection's eval_metric.py).")
    parser.add_argument("config", help="config file (its data.test is evaluated)")
    parser.add_argument("results", help="results .pkl (MMDetection's format)")
    parser.add_argument("--eval", nargs="+", default=["bbox"], help="metrics, e.g. bbox")
    parser.add_argument("--format-only", action="store_true",
                        help="write COCO result files (--eval-options jsonfile_prefix=PREFIX)")
    parser.add_argument("--eval-options", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read a results file that holds more than arrays (a pickle can "
                             "run code: only for files from a trusted source)")
    _add_cfg_options(parser)


def _run_eval_metric(args: argparse.Namespace) -> int:
    from detlab.config import parse_cfg_options
    from detlab.engine.tester import eval_metric

    _print_metrics(eval_metric(args.config, args.results, eval=args.eval,
                               format_only=args.format_only,
                               eval_options=parse_cfg_options(args.eval_options),
                               cfg_options=args.cfg_options, trust_pickle=args.trust_pickle))
    return 0


def _add_analyze_logs(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze-logs", help="plot curves from JSON logs, or compute training speed",
        description="Analyze training logs (MMDetection's analyze_logs.py).")
    actions = parser.add_subparsers(dest="task", metavar="TASK")
    actions.required = True
    plot = actions.add_parser("plot_curve", help="plot keys of one or more JSON logs")
    plot.add_argument("json_logs", nargs="+", help="*.log.json files")
    plot.add_argument("--keys", nargs="+", default=["bbox_mAP"], help="keys to plot")
    plot.add_argument("--legend", nargs="+", help="a name per log")
    plot.add_argument("--title", help="figure title")
    plot.add_argument("--out", help="save the figure here (else: show it)")
    speed = actions.add_parser("cal_train_time", help="slowest/fastest epoch, mean iter time")
    speed.add_argument("json_logs", nargs="+", help="*.log.json files")
    speed.add_argument("--include-outliers", action="store_true",
                       help="keep the first logged iteration of each epoch")


def _run_analyze_logs(args: argparse.Namespace) -> int:
    if args.task == "plot_curve":
        from detlab.viz.plots import plot_curves

        if args.legend and len(args.legend) != len(args.json_logs):
            raise ValueError(f"--legend has {len(args.legend)} names for "
                             f"{len(args.json_logs)} logs")
        figure = plot_curves(args.json_logs, keys=args.keys, legend=args.legend,
                             title=args.title, out_file=args.out)
        if args.out:
            print(f"saved {args.out}")
        else:
            figure.show()
        return 0
    from detlab.engine.logging import cal_train_time

    for path in args.json_logs:
        speed = cal_train_time(path, args.include_outliers)
        print(f"-----Analyze train time of {path}-----")
        print(f"slowest epoch {speed['slowest_epoch']}, average time is "
              f"{speed['slowest_time']:.4f} s/iter")
        print(f"fastest epoch {speed['fastest_epoch']}, average time is "
              f"{speed['fastest_time']:.4f} s/iter")
        print(f"time std over epochs is {speed['epoch_time_std']:.4f}")
        print(f"average iter time: {speed['mean_iter_time']:.4f} s/iter")
    return 0


def _add_make_shapes(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shapes", help="write the embedded shapes dataset (COCO format)",
        description="Generate the shapes detection dataset: images and COCO annotations.")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)


def _run_make_shapes(args: argparse.Namespace) -> int:
    from detlab.data import make_shapes_dataset

    paths = make_shapes_dataset(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                                image_size=args.image_size, seed=args.seed)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0


def _add_nb(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("nb", help="run parameterized notebooks with papermill",
                                   description="Run notebooks headless (papermill).")
    actions = parser.add_subparsers(dest="nb_action", metavar="ACTION")
    actions.required = True
    run = actions.add_parser("run", help="execute a notebook with parameters")
    run.add_argument("notebook", help="the notebook to run")
    run.add_argument("output", help="where the executed notebook goes (.ipynb)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                     metavar=("KEY", "VALUE"),
                     help="a parameter; VALUE follows the --cfg-options rules (1, 0.5, true, "
                          "none, [1,2], (1,2), {'a.b': 1}, text)")
    run.add_argument("--cwd", default=".", help="working directory of the kernel")
    run.add_argument("--timeout", type=float, help="seconds a cell may run")
    grid = actions.add_parser("sweep", help="run a notebook over a grid of parameters")
    grid.add_argument("notebook", help="the notebook to run")
    grid.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                      help="parameter values to combine, e.g. epochs=2,4 seed=0,1 "
                           "img_scale=(640,480),(800,600)")
    grid.add_argument("--out", required=True, help="folder of the runs (one subfolder each)")
    grid.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                      metavar=("KEY", "VALUE"), help="a parameter shared by every run")
    grid.add_argument("--run-folders", nargs="+", default=[], metavar="PARAM",
                      help="parameters that are folders each run needs to itself (work_dir): "
                           "each run gets OUT/<run>/PARAM")
    grid.add_argument("--cwd", default=".", help="working directory of the kernels")
    grid.add_argument("--timeout", type=float, help="seconds a cell may run")


def _last_line(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text


def _run_nb(args: argparse.Namespace) -> int:
    import os

    from detlab.config import parse_cfg_options, parse_value
    from detlab.notebooks import run_notebook, sweep

    parameters = {key: parse_value(value) for key, value in args.parameter}
    if args.nb_action == "sweep":
        frame = sweep(args.notebook, parse_cfg_options(args.grid), args.out,
                      base_parameters=parameters, cwd=args.cwd, timeout=args.timeout,
                      run_folders=args.run_folders)
        shown = frame[[c for c in frame.columns
                       if c not in ("output", "run_dir", "failed_source")]].copy()
        if "error" in shown:  # a traceback's last line says what failed; the csv keeps it all
            shown["error"] = shown["error"].map(_last_line)
        print(shown.to_string(index=False))
        print(f"table: {os.path.join(args.out, 'sweep.csv')}")
        return 0 if (frame["status"] == "ok").all() else 1
    output_dir = os.path.dirname(os.path.abspath(args.output))
    run = run_notebook(args.notebook, output_dir, parameters,
                       output_name=os.path.basename(args.output), cwd=args.cwd,
                       timeout=args.timeout, raise_on_error=False)
    print(f"{run.status}: {run.output} ({run.duration:.0f} s)")
    for key, value in run.records.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if run.status != "ok":
        print(f"error in cell {run.failed_cell}: {run.error}", file=sys.stderr)
        return 1
    return 0


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert datasets between VOC, YOLO, Cityscapes and COCO",
        description="Convert a dataset's annotations (MMDetection's dataset_converters).")
    formats = parser.add_subparsers(dest="conversion", metavar="CONVERSION")
    formats.required = True
    voc = formats.add_parser("voc2coco", help="a VOCdevkit -> COCO jsons")
    voc.add_argument("devkit_root", help="folder holding VOC2007/ and/or VOC2012/")
    voc.add_argument("out_dir")
    voc.add_argument("--years", nargs="+", default=["2007"], help="2007 2012 or 2007+2012")
    voc.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    yolo = formats.add_parser("yolo2coco", help="a YOLO images/labels tree -> COCO jsons")
    yolo.add_argument("source", help="the data yaml, or the root of images/ and labels/")
    yolo.add_argument("out_dir")
    yolo.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    coco = formats.add_parser("coco2yolo", help="a COCO json + images -> a YOLO tree")
    coco.add_argument("ann_file")
    coco.add_argument("img_prefix", help="folder of the images")
    coco.add_argument("out_dir")
    coco.add_argument("--copy-images", choices=("no", "copy", "symlink"), default="no")
    coco.add_argument("--split", help="name of the split folder (default: from the json name)")
    city = formats.add_parser("cityscapes2coco", help="Cityscapes gtFine -> COCO jsons")
    city.add_argument("cityscapes_root")
    city.add_argument("out_dir")
    city.add_argument("--splits", nargs="+", default=["train", "val"])
    city.add_argument("--mask-format", choices=("rle", "polygon"), default="rle")


def _run_convert(args: argparse.Namespace) -> int:
    from detlab.data import converters

    if args.conversion == "voc2coco":
        years = [tuple(y.split("+")) if "+" in y else y for y in args.years]
        written = converters.voc2coco(args.devkit_root, args.out_dir, years, args.splits)
    elif args.conversion == "yolo2coco":
        written = converters.yolo2coco(args.source, args.out_dir, args.splits)
    elif args.conversion == "coco2yolo":
        copy = {"no": False, "copy": True, "symlink": "symlink"}[args.copy_images]
        written = {"data.yaml": converters.coco2yolo(args.ann_file, args.img_prefix,
                                                     args.out_dir, copy, split=args.split)}
    else:
        written = converters.cityscapes2coco(args.cityscapes_root, args.out_dir, args.splits,
                                             mask_format=args.mask_format)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _add_check_dataset(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-dataset", help="a preflight report on a dataset before a long run",
        description="Find what is wrong with a dataset (missing images, bad boxes, class "
                    "mismatches ...) before training on it.")
    parser.add_argument("source", help="a config, or a COCO annotation file")
    parser.add_argument("--img-prefix", help="image folder (with an annotation file)")
    parser.add_argument("--split", default="train", help="data.<split> of a config")
    parser.add_argument("--no-images", action="store_true", help="do not open the images")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="decode only N images, spread evenly (default: decode all)")
    parser.add_argument("--out", help="also save the findings as a CSV file")
    _add_cfg_options(parser)


def _run_check_dataset(args: argparse.Namespace) -> int:
    from detlab.data.checks import check_dataset, format_report

    findings = check_dataset(args.source, img_prefix=args.img_prefix, split=args.split,
                             cfg_options=args.cfg_options, check_images=not args.no_images,
                             sample=args.sample)
    print(format_report(findings))
    if args.out:
        findings.to_csv(args.out, index=False)
        print(f"findings: {args.out}")
    return 1 if (findings["severity"] == "error").any() else 0


def _add_browse_dataset(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "browse-dataset", help="save images after the train pipeline with their boxes",
        description="Draw the ground truth of samples after the pipeline (MMDetection's "
                    "browse_dataset.py).")
    parser.add_argument("config", help="config file")
    parser.add_argument("--output-dir", help="where to save the pictures")
    parser.add_argument("--not-show", action="store_true", help="do not open a window")
    parser.add_argument("--skip-type", nargs="+",
                        default=["DefaultFormatBundle", "Normalize", "Collect"],
                        help="pipeline steps to leave out")
    parser.add_argument("--split", default="train", help="data.<split> to browse")
    parser.add_argument("--max-images", type=int, help="how many samples (default: all)")
    _add_cfg_options(parser)


def _run_browse_dataset(args: argparse.Namespace) -> int:
    from detlab.config import parse_cfg_options
    from detlab.data.browse import browse_dataset

    written = browse_dataset(args.config, output_dir=args.output_dir, not_show=args.not_show,
                             skip_type=args.skip_type, split=args.split,
                             max_images=args.max_images,
                             cfg_options=parse_cfg_options(args.cfg_options))
    print(f"{len(written)} pictures" + (f" in {args.output_dir}" if args.output_dir else ""))
    return 0


VERBS = {
    "print-config": (_add_print_config, _run_print_config),
    "train": (_add_train, _run_train),
    "test": (_add_test, _run_test),
    "make-shapes": (_add_make_shapes, _run_make_shapes),
    "nb": (_add_nb, _run_nb),
    "eval-metric": (_add_eval_metric, _run_eval_metric),
    "analyze-logs": (_add_analyze_logs, _run_analyze_logs),
    "convert": (_add_convert, _run_convert),
    "check-dataset": (_add_check_dataset, _run_check_dataset),
    "browse-dataset": (_add_browse_dataset, _run_browse_dataset),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``detlab`` command."""
    parser = argparse.ArgumentParser(
        prog="detlab", description="detlab: object-detection experiments, MMDetection 2.x configs.")
    parser.add_argument("--version", action="version", version=f"detlab {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for add, _ in VERBS.values():
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``detlab`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    A config or data error prints its message (which names the file and key) without a traceback
    and exits with status 2; a run that stopped on its own account (a diverged loss, a full disk:
    the run's log has the details) with status 1; a Ctrl-C prints one line and exits with 130.
    """
    from detlab.config import ConfigError

    args = build_parser().parse_args(argv)
    _, run = VERBS[args.verb]
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"detlab {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except (FloatingPointError, OSError) as err:
        print(f"detlab {args.verb}: stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"detlab {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``detlab`` command line: ``detlab <verb> ...`` (also ``python -m detlab``).

Each verb is a pair of functions: ``_add_<verb>(subparsers)`` declares its arguments and
``_run_<verb>(args)`` calls into the library, which does the work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from detlab import __version__


def _add_cfg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
        help="override config keys, e.g. optimizer.lr=0.01 data.train.pipeline.2.img_scale="
             "(640,480) model.backbone.out_indices=[1,2,3]; values follow MMDetection's rules "
             "(numbers, true/false/none, a,b and [a,b] lists, (a,b) tuples, else strings)")


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


VERBS = {
    "print-config": (_add_print_config, _run_print_config),
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
    and exits with status 2.
    """
    from detlab.config import ConfigError

    args = build_parser().parse_args(argv)
    _, run = VERBS[args.verb]
    try:
        return run(args)
    except (ConfigError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"detlab {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

"""How much of MMDetection 2.28's model zoo detlab builds: every zoo config, read unchanged from
the ``mmdet`` 2.28.2 wheel, built by detlab on the ``meta`` device and compared with what
MMDetection itself builds (trainable parameter count from ``shared/mmdet-zoo/params.json``,
state_dict keys and shapes from the manifest in ``tests/models/zoo/state_dicts``).

    .venv/bin/python benchmarks/zoo_coverage.py [--markdown] [--family retinanet ...]

Prints one row per family (config folder): configs that build and match, configs that build but
differ, configs whose parts detlab lacks (and which parts), and the total. ``--markdown`` prints
the table as the README has it. MMDetection is not imported: only its config files are read
(``make reference-deps`` installs the wheel).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import lzma
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import torch

from detlab.config import Config
from detlab.models import build_model
from detlab.registry import BuildArgumentError, UnknownTypeError

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "tests" / "models" / "zoo"


def zoo_config_dir() -> Path:
    """``mmdet/.mim/configs`` of the installed wheel, found without importing MMDetection."""
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MMDetection 2.28's configs are not installed: run `make reference-deps`")
    return Path(next(iter(spec.submodule_search_locations))) / ".mim" / "configs"


def _manifest(folder: str) -> dict[str, dict[str, list[int]]]:
    with lzma.open(ZOO / "state_dicts" / f"{folder}.json.xz", "rt", encoding="utf-8") as f:
        return json.load(f)


def check(row: dict, configs: Path) -> tuple[str, str]:
    """``(status, detail)`` of one zoo row: ``match``, ``differs`` or ``missing``."""
    cfg = Config.fromfile(configs / row["config"], import_custom_modules=False)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                with torch.device("meta"):
                    model = build_model(cfg.model)
            except (RuntimeError, NotImplementedError) as err:
                if "meta" not in str(err):
                    raise
                model = build_model(cfg.model)
    except UnknownTypeError as err:
        return "missing", str(err).split("'")[1] if "'" in str(err) else str(err)
    except BuildArgumentError as err:
        return "missing", str(err).split(" (at")[0]
    except Exception as err:  # a config that detlab refuses: counted, not fatal
        return "differs", f"{type(err).__name__}: {str(err)[:80]}"
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if count != row["trainable_params"]:
        return "differs", f"{count:,} trainable parameters, MMDetection {row['trainable_params']:,}"
    expected = _manifest(row["config"].split("/")[0])[row["config"]]
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    if actual != expected:
        return "differs", "state_dict keys or shapes"
    return "match", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the README's table")
    parser.add_argument("--family", nargs="*", help="only these config folders")
    args = parser.parse_args()
    configs = zoo_config_dir()
    rows = json.loads((ZOO / "params.json").read_text())
    if args.family:
        rows = [r for r in rows if r["config"].split("/")[0] in args.family]
    start = time.perf_counter()
    per_family: dict[str, Counter] = defaultdict(Counter)
    lacking: dict[str, Counter] = defaultdict(Counter)
    differing = []
    for row in rows:
        family = row["config"].split("/")[0]
        status, detail = check(row, configs)
        per_family[family][status] += 1
        if status == "missing":
            lacking[family][detail] += 1
        elif status == "differs":
            differing.append((row["config"], detail))
    seconds = time.perf_counter() - start
    total = Counter()
    for counts in per_family.values():
        total.update(counts)
    not_listed = sorted(str(p.relative_to(configs)) for p in configs.rglob("*.py")
                        if "_base_" not in p.parts) if not args.family else []
    not_listed = [c for c in not_listed if c not in {r["config"] for r in rows}]
    if args.markdown:
        print("| family | build and match | of | missing parts |")
        print("| --- | --- | --- | --- |")
        for family in sorted(per_family):
            c = per_family[family]
            parts = ", ".join(f"`{p}`" for p, _ in lacking[family].most_common(3))
            print(f"| {family} | {c['match']} | {sum(c.values())} | {parts} |")
        print(f"| **total** | **{total['match']}** | **{sum(total.values())}** | |")
    else:
        print(f"{'family':24} {'match':>6} {'differ':>6} {'missing':>7}  missing parts")
        for family in sorted(per_family):
            c = per_family[family]
            parts = ", ".join(f"{p} ({n})" for p, n in lacking[family].most_common(3))
            print(f"{family:24} {c['match']:6} {c['differs']:6} {c['missing']:7}  {parts}")
        print(f"{'total':24} {total['match']:6} {total['differs']:6} {total['missing']:7}  "
              f"of {sum(total.values())} configs MMDetection builds on CPU, in {seconds:.0f} s")
        for config, detail in differing:
            print(f"differs: {config}: {detail}")
        if not_listed:
            print(f"{len(not_listed)} more zoo configs are not in params.json: MMDetection 2.28 "
                  f"does not build them on a CPU without more packages or files (MMClassification "
                  f"backbones, teacher checkpoints ...)")


if __name__ == "__main__":
    main()

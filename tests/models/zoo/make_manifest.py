"""Write the manifest of MMDetection 2.28's model zoo that tests/models/test_zoo.py checks detlab
against, so that a clone checks parameter names and shapes without running MMDetection.

What it writes, next to this file:

- ``params.json`` -- the zoo's rows (config path relative to the wheel's ``configs`` folder,
  detector / backbone / neck / head types, ``trainable_params``), one per line: a copy of
  ``shared/mmdet-zoo/params.json``, whose counts this script checks against MMDetection's.
- ``state_dicts/<folder>.json.xz`` -- one file per config folder of the zoo (``retinanet``,
  ``faster_rcnn`` ...): ``{config: {state_dict key: shape}}`` in MMDetection's key order, as
  ``build_detector(cfg.model).state_dict()`` has them before ``init_weights`` (xz-compressed
  JSON: the configs of a folder share most keys, so the whole zoo packs into about 200 kB).

Each model is built on the ``meta`` device (names and shapes, no memory, in about a tenth of a
second), or on CPU where MMDetection makes a tensor the ``meta`` device refuses (the
transformer backbones' drop-path rates).

To regenerate (after ``make reference-deps``; about two minutes for the whole zoo)::

    .venv/bin/python tests/models/zoo/make_manifest.py                 # every config
    .venv/bin/python tests/models/zoo/make_manifest.py retinanet atss  # some folders only
    .venv/bin/python tests/models/zoo/make_manifest.py --params PATH   # another params.json

Only the folders named (all by default) are rewritten; the output of an unchanged zoo is
byte-identical, so a regeneration shows up in ``git status`` only where something changed.
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
DEFAULT_PARAMS = TESTS.parent.parent / "shared" / "mmdet-zoo" / "params.json"
PARAMS = HERE / "params.json"
STATE_DICTS = HERE / "state_dicts"
ROW_KEYS = ("config", "detector", "backbone", "neck", "head", "trainable_params")


def state_dict_file(config: str) -> Path:
    """The manifest file of ``config`` (``retinanet/retinanet_r50_fpn_1x_coco.py``) or of a
    folder (``retinanet``)."""
    return STATE_DICTS / f"{config.split('/')[0]}.json.xz"


def read_rows(path: Path = PARAMS) -> list[dict]:
    """The zoo's rows, as ``params.json`` lists them."""
    return json.loads(path.read_text())


def read_state_dicts(path: Path) -> dict[str, dict[str, list[int]]]:
    """``{config: {key: shape}}`` of one manifest file."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _encode_rows(rows: list[dict]) -> str:
    lines = [json.dumps({k: row[k] for k in ROW_KEYS}, separators=(", ", ": ")) for row in rows]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def _encode_state_dicts(configs: dict[str, dict[str, list[int]]]) -> bytes:
    # one config a line, keys in MMDetection's order: xz finds the repeats across configs
    lines = [json.dumps(config) + ": " + json.dumps(state, separators=(",", ":"))
             for config, state in sorted(configs.items())]
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    return lzma.compress(text.encode(), format=lzma.FORMAT_XZ,
                         preset=9 | lzma.PRESET_EXTREME)


def _reference_state(config: str) -> tuple[dict[str, list[int]], int, str]:
    """MMDetection's ``{key: shape}`` for ``config``, its trainable count, the device used."""
    from reference.mmdet_reference import build_mmdet_model, trainable_params

    try:
        model, device = build_mmdet_model(config, device="meta"), "meta"
    except (RuntimeError, NotImplementedError):  # a tensor made with .item() or from numpy
        model, device = build_mmdet_model(config, device="cpu"), "cpu"
    state = {key: list(value.shape) for key, value in model.state_dict().items()}
    return state, trainable_params(model), device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*",
                        help="zoo folders to (re)write, e.g. retinanet atss (default: all)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                        help=f"the zoo's params.json (default: {DEFAULT_PARAMS})")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(TESTS))  # the reference package lives in tests/
    from reference.mmdet_reference import import_mmdet

    import_mmdet()
    rows = read_rows(args.params)
    wanted = set(args.folders) or {row["config"].split("/")[0] for row in rows}
    unknown = wanted - {row["config"].split("/")[0] for row in rows}
    if unknown:
        parser.error(f"no config of the zoo is in {', '.join(sorted(unknown))}")

    by_folder: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(dict)
    wrong = []
    start = time.perf_counter()
    for row in rows:
        folder = row["config"].split("/")[0]
        if folder not in wanted:
            continue
        state, trainable, device = _reference_state(row["config"])
        if trainable != row["trainable_params"]:
            wrong.append(f"{row['config']}: MMDetection builds {trainable} trainable parameters, "
                         f"{args.params} says {row['trainable_params']}")
        by_folder[folder][row["config"]] = state
        print(f"{row['config']}: {len(state)} keys ({device})", flush=True)
    if wrong:
        print("\n".join(["not written, the counts disagree:", *wrong]), file=sys.stderr)
        return 1

    STATE_DICTS.mkdir(exist_ok=True)
    PARAMS.write_text(_encode_rows(rows))
    for folder, configs in sorted(by_folder.items()):
        state_dict_file(folder).write_bytes(_encode_state_dicts(configs))
    size = sum(p.stat().st_size for p in STATE_DICTS.glob("*.json.xz"))
    print(f"{sum(map(len, by_folder.values()))} configs in {len(by_folder)} folders written in "
          f"{time.perf_counter() - start:.0f} s; state_dicts/ holds {size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/zoo_coverage.py, on two families: it reads the zoo's configs unchanged, builds them
and reports each family's configs that build and match MMDetection's count and keys."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_reports_built_and_missing_families():
    if importlib.util.find_spec("mmdet") is None:
        pytest.skip("MMDetection's configs come with its wheel (make reference-deps)")
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "zoo_coverage.py"),
                          "--family", "atss", "yolact"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()
            if line.split() and line.split()[0] in ("atss", "yolact", "total")}
    assert rows["atss"] == ["2", "0", "0"]  # both ATSS configs build with MMDetection's count
    assert sum(map(int, rows["yolact"])) == 3  # YOLACT's 3 configs, whatever their state
    assert [int(a) + int(b) for a, b in zip(rows["atss"], rows["yolact"], strict=True)] == \
        list(map(int, rows["total"]))

"""How long ``import detlab`` takes, next to ``import torch, torchvision``, in one run.

    .venv/bin/python benchmarks/import_time.py [--repeat 9]

Each statement runs in a fresh interpreter ``--repeat`` times; the median wall time is printed,
with the ratio to the torch baseline (target: ``import detlab`` <= 1.3x the baseline).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

STATEMENTS = {
    "python (empty)": "pass",
    "import torch, torchvision": "import torch, torchvision",
    "import detlab": "import detlab",
    "import detlab + Config.fromfile": (
        "import detlab; detlab.Config.fromfile('configs/_base_/default_runtime.py')"),
    "import detlab + optimizers registered": "import detlab; detlab.OPTIMIZERS.list()",
}


def time_statement(code: str, repeat: int) -> float:
    """Median seconds of ``python -c code`` over ``repeat`` fresh interpreters."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    results = {name: time_statement(code, args.repeat) for name, code in STATEMENTS.items()}
    baseline = results["import torch, torchvision"]
    print(f"{'statement':<40} {'median s':>9} {'vs torch+tv':>12}")
    for name, seconds in results.items():
        print(f"{name:<40} {seconds:9.3f} {seconds / baseline:11.2f}x")
    ratio = results["import detlab"] / baseline
    verdict = "meets" if ratio <= 1.3 else "MISSES"
    print(f"\nimport detlab / import torch, torchvision = {ratio:.2f} ({verdict} the 1.3x target)")


if __name__ == "__main__":
    main()

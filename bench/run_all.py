"""Run every benchmark in bench/ one after the other (`make bench`; `make bench ARGS=--quick` for the small runs).

Each script prints its own table and writes JSON under bench/results/; this runner only sequences them, passes
``--quick`` through, and prints how long each took and whether it failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["embed", "knn", "label_issues", "duplicates", "clusters", "active", "ui", "scale", "scale_cli"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--only", default=None, help=f"comma list out of {','.join(ORDER)}")
    args = ap.parse_args()
    names = [n for n in ORDER if (HERE / f"{n}.py").exists()]
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; pick from {', '.join(names)}")
        names = [n for n in names if n in wanted]
    status = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py")] + (["--quick"] if args.quick else [])
        print(f"\n=== bench/{name}.py {'--quick' if args.quick else ''}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        status.append((name, rc, time.perf_counter() - t0))
    print("\n| benchmark | exit | seconds |\n|---|---|---|")
    for name, rc, secs in status:
        print(f"| {name} | {rc} | {secs:.0f} |")
    return 1 if any(rc for _, rc, _ in status) else 0


if __name__ == "__main__":
    sys.exit(main())

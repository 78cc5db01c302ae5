"""Compare two sets of benchmark results (e.g. before and after a refactor): `python bench/compare.py BEFORE AFTER`.

BEFORE and AFTER are folders of the JSON files the benchmarks write (bench/results/ of two checkouts, or copies of
it).  For every file present in both, every numeric leaf present in both is paired by its JSON path.  Quality
numbers (precision, recall, F1, ACC, NMI, ARI, AUROC, accuracy, ...) are reported as differences; times and memory
(lower is better) and throughputs (higher is better) as ratios after/before.  The table lists the quality numbers that moved by more than --tolerance
and a per-file summary of both kinds; the full pairing goes to --json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

QUALITY = re.compile(r"(precision|recall|f1|\bacc|accuracy|nmi|ari\b|auroc|auc|purity|silhouette|hit|agree)", re.I)
SPEED = re.compile(r"(img_s|per_s|throughput|speedup|per_second)", re.I)  # higher is better
COST = re.compile(r"(second|time|_s$|_ms$|\bms\b|peak|mb\b|_mb|bytes|rss)", re.I)  # lower is better


def leaves(obj, path: str = ""):
    """(json path, number) for every int/float leaf; list items are keyed by a 'name'-like field when present."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaves(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            key = str(i)
            if isinstance(v, dict):
                tag = [str(v[f]) for f in ("dataset", "name", "method", "strategy", "encoder", "n", "noise", "setting",
                                           "transform", "k") if f in v and not isinstance(v[f], (dict, list))]
                key = ",".join(tag) or key
            yield from leaves(v, f"{path}[{key}]")
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, (int, float)) and math.isfinite(obj):
        yield path, float(obj)


def kind(path: str) -> str | None:
    last = path.rsplit("/", 1)[-1]
    if QUALITY.search(last):
        return "quality"
    if SPEED.search(last):
        return "speed"
    if COST.search(last):
        return "cost"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.01, help="quality change worth listing (absolute)")
    ap.add_argument("--json", type=Path, default=None, help="write every pair here")
    args = ap.parse_args()
    files = sorted(p.name for p in args.before.glob("*.json") if (args.after / p.name).exists())
    if not files:
        print(f"no JSON file is in both {args.before} and {args.after}", file=sys.stderr)
        return 1
    pairs, summary = [], []
    for name in files:
        a = dict(leaves(json.loads((args.before / name).read_text())))
        b = dict(leaves(json.loads((args.after / name).read_text())))
        q, c, v = [], [], []
        for path in sorted(set(a) & set(b)):
            k = kind(path)
            if k is None:
                continue
            row = {"file": name, "path": path, "kind": k, "before": a[path], "after": b[path]}
            pairs.append(row)
            if k == "quality":
                q.append(b[path] - a[path])
            elif a[path] > 0 and b[path] > 0:
                (v if k == "speed" else c).append(b[path] / a[path])
        summary.append({"file": name, "quality_numbers": len(q),
                        "quality_max_abs_change": max((abs(d) for d in q), default=0.0),
                        "quality_mean_change": statistics.fmean(q) if q else 0.0,
                        "cost_numbers": len(c), "cost_median_ratio": statistics.median(c) if c else float("nan"),
                        "speed_numbers": len(v), "speed_median_ratio": statistics.median(v) if v else float("nan")})
    print("| file | quality numbers | mean change | max abs change | time/memory numbers | median after/before "
          "| throughputs | median after/before |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['file']} | {s['quality_numbers']} | {s['quality_mean_change']:+.4f} | "
              f"{s['quality_max_abs_change']:.4f} | {s['cost_numbers']} | {s['cost_median_ratio']:.2f} | "
              f"{s['speed_numbers']} | {s['speed_median_ratio']:.2f} |")
    moved = [p for p in pairs if p["kind"] == "quality" and abs(p["after"] - p["before"]) > args.tolerance]
    print(f"\nquality numbers that moved by more than {args.tolerance}: {len(moved)} of "
          f"{sum(p['kind'] == 'quality' for p in pairs)}")
    for p in moved:
        print(f"  {p['file']} {p['path']}: {p['before']:.4f} -> {p['after']:.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"before": str(args.before), "after": str(args.after), "summary": summary,
                                         "moved": moved, "pairs": pairs}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

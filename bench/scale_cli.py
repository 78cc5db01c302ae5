"""The `curate` commands themselves at scale: out of core vs in memory on one synthetic project.

Where ``bench/scale.py`` times the out-of-core building blocks (Python API), this script runs the real CLI
commands a user runs (``curate index``, ``curate audit labels|outliers|duplicates``, ``curate cluster``,
``curate query``), each as its own process, on a catalog with N samples, their labels (5% planted noise, every 10th
sample unlabeled) and N synthetic 64-d vectors (``engine.distributed.synthetic``; no image files).  Every command
runs twice: ``--out-of-core`` (shards + memory-mapped graph) and ``--in-memory`` (the laptop path, the baseline),
and reports wall time, the process's peak RSS (``wait4``) and the quality against the planted truth:

Peak MB is the command process's own high-water RSS (``VmHWM``), imports and the open catalog included.

* labels: precision / recall of the flagged samples vs the planted wrong labels;
* duplicates: recall of the planted near-copy pairs (cosine ~0.9995; threshold 0.998);
* index: recall@10 measured by the command; cluster: weighted purity; query: batch size.

Usage::

    python bench/scale_cli.py                    # N = 1,000,000 (~25 min on 2 cores)
    python bench/scale_cli.py --n 100000 --modes out-of-core
    python bench/scale_cli.py --quick            # N = 20,000 (~4 min)

Writes bench/results/scale_cli.json (``--n`` other than 1M: scale_cli_<n>.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
DUP_THRESHOLD = 0.998


def setup(project: Path, n: int) -> dict:
    """Samples, labels (bulk-inserted in DuckDB) and synthetic vectors; returns timings."""
    import pandas as pd

    from curate.engine.catalog import init_project, utcnow
    from curate.engine.distributed.embed import add_synthetic_samples, embed_synthetic
    from curate.engine.distributed.synthetic import SyntheticConfig, given_labels

    cfg = SyntheticConfig()
    t0 = time.perf_counter()
    cat = init_project(project)
    add_synthetic_samples(cat, n)
    t_samples = time.perf_counter() - t0
    ids = cat.samples("id")["id"].to_numpy(np.int64)
    keep = ids % 10 != 0
    lab = given_labels(ids, cfg)
    frame = pd.DataFrame({"sample_id": ids[keep], "class_name": pd.Categorical.from_codes(
        lab[keep], [f"class{c:03d}" for c in range(cfg.n_classes)])})
    t1 = time.perf_counter()
    with cat.transaction() as con:
        con.register("_labels", frame)
        con.execute("INSERT INTO labels SELECT nextval('seq_label'), sample_id, CAST(class_name AS VARCHAR), "
                    "'synthetic', ? FROM _labels", [utcnow()])
        con.execute("INSERT INTO classes SELECT DISTINCT CAST(class_name AS VARCHAR), ? FROM _labels "
                    "ON CONFLICT DO NOTHING", [utcnow()])
        con.unregister("_labels")
    t_labels = time.perf_counter() - t1
    t2 = time.perf_counter()
    batch = 8192
    embed_synthetic(cat, cfg, batch_size=batch, shard_size=int(min(262_144, max(batch, (n // 8) // batch * batch))))
    return {"samples_s": round(t_samples, 2), "labels_s": round(t_labels, 2),
            "embed_s": round(time.perf_counter() - t2, 2)}


def _complete(project: Path, n: int) -> bool:
    """Whether ``project`` holds a finished setup: n samples, all embedded."""
    if not (project / "catalog.duckdb").exists():
        return False
    from curate.engine.catalog import open_project

    cat = open_project(project)
    return cat.scalar("SELECT count(*) FROM samples") == n and cat.scalar("SELECT count(*) FROM embedded") == n


COMMANDS = {
    "index": ["index", "--rebuild"],
    "labels": ["audit", "labels"],
    "outliers": ["audit", "outliers"],
    "duplicates": ["audit", "duplicates", "--threshold", str(DUP_THRESHOLD), "--hash-distance", "-1",
                   "--no-semdedup"],
    "cluster": ["cluster", "--k", "100", "--no-names"],
    "query": ["query", "--budget", "100"],
}


# The command runs under this wrapper, which reports the process's own high-water RSS (VmHWM) at exit.  (wait4's
# ru_maxrss is no good here: Linux carries the forking parent's peak into the child, so every child would report
# at least the driver's RSS.)
_WRAP = """
import atexit, sys
def _hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            sys.stderr.write('CURATE_BENCH_VMHWM_KB ' + line.split()[1] + '\\n')
atexit.register(_hwm)
sys.argv = ['curate'] + sys.argv[1:]
from curate.engine.cli import main
main()
"""


def run_cli(args: list[str], timeout: float) -> dict:
    """One `curate` command in its own process: wall seconds, its peak RSS (MB, VmHWM), exit status."""
    cmd = [sys.executable, "-c", _WRAP, *args]
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            return {"status": f"timeout (> {timeout:.0f} s)", "seconds": round(time.perf_counter() - t0, 1)}
        time.sleep(0.2)
    seconds = time.perf_counter() - t0
    log.seek(0)
    out = log.read().decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    hwm = [ln for ln in out.splitlines() if ln.startswith("CURATE_BENCH_VMHWM_KB ")]
    lines = [ln for ln in out.strip().splitlines() if not ln.startswith("CURATE_BENCH_VMHWM_KB ")]
    rec = {"status": "ok" if rc == 0 else f"failed (exit {rc}): " + (lines or ["?"])[-1][:200],
           "seconds": round(seconds, 2),
           "peak_mb": round(int(hwm[-1].split()[1]) / 1024, 1) if hwm else None}
    rec["output_tail"] = lines[-3:]
    return rec


def quality(project: Path, step: str) -> dict:
    from curate.engine.catalog import open_project
    from curate.engine.distributed.synthetic import SyntheticConfig, given_labels, is_duplicate, true_classes

    cfg = SyntheticConfig()
    cat = open_project(project)
    if step == "labels":
        s = json.loads(cat.scalar("SELECT summary FROM runs WHERE kind = 'label_issues' ORDER BY id DESC LIMIT 1"))
        flagged = cat.query_df("SELECT sample_id FROM label_issues WHERE is_issue")["sample_id"].to_numpy(np.int64)
        ids = cat.samples("id")["id"].to_numpy(np.int64)
        labeled = ids[ids % 10 != 0]
        wrong = labeled[given_labels(labeled, cfg) != true_classes(labeled, cfg)]
        tp = int(np.isin(flagged, wrong).sum())
        return {"flagged": int(len(flagged)), "precision": round(tp / max(1, len(flagged)), 4),
                "recall": round(tp / max(1, len(wrong)), 4),
                "estimated_noise_rate": round(s.get("estimated_noise_rate", float("nan")), 4)}
    if step == "duplicates":
        d = cat.query_df("SELECT set_id, sample_id FROM duplicates")
        ids = cat.samples("id")["id"].to_numpy(np.int64)
        dup = ids[is_duplicate(ids, cfg)]
        set_of = dict(zip(d["sample_id"].tolist(), d["set_id"].tolist()))
        hit = sum(1 for b in dup.tolist() if b in set_of and set_of.get(b - 1) == set_of[b])
        return {"sets": int(d["set_id"].nunique()), "planted": int(len(dup)),
                "planted_recall": round(hit / max(1, len(dup)), 4)}
    if step == "outliers":
        s = json.loads(cat.scalar("SELECT summary FROM runs WHERE kind = 'outliers' ORDER BY id DESC LIMIT 1"))
        return {"flagged": s["flagged"]}
    if step == "cluster":
        s = json.loads(cat.scalar("SELECT summary FROM runs WHERE kind = 'clusters' ORDER BY id DESC LIMIT 1"))
        return {"k": s["k"], "weighted_purity": round(s["weighted_purity"] or 0.0, 4), "map": s["map"]}
    if step == "query":
        return {"selected": int(cat.scalar("SELECT count(*) FROM queries WHERE batch_id = "
                                           "(SELECT max(batch_id) FROM queries)"))}
    return {}


def report(rows: list[dict], n: int, setup_s: dict, final: bool) -> Path:
    """Print the table (when ``final``) and write the JSON (after every command, so a stopped run keeps its rows)."""
    ratios = {}
    for step in COMMANDS:
        a = [r for r in rows if r["step"] == step and r["mode"] == "out-of-core" and r["status"] == "ok"]
        b = [r for r in rows if r["step"] == step and r["mode"] == "in-memory" and r["status"] == "ok"]
        if a and b:
            ratios[step] = {"time_ooc_over_mem": round(a[0]["seconds"] / max(b[0]["seconds"], 1e-3), 2),
                            "peak_ooc_over_mem": round(a[0]["peak_mb"] / max(b[0]["peak_mb"] or 1e-3, 1e-3), 2)
                            if a[0]["peak_mb"] else None}
    if final:
        print(f"\n`curate` commands at N = {n:,} (64-d synthetic vectors, 100 classes; each command its own process)")
        print(f"{'step':<11} {'mode':<12} {'seconds':>9} {'peak MB':>9}  quality")
        for r in rows:
            q = {k: v for k, v in r.items() if k not in ("n", "step", "mode", "status", "seconds", "peak_mb", "output")}
            print(f"{r['step']:<11} {r['mode']:<12} {r['seconds']:>9} {r.get('peak_mb', '-'):>9}  "
                  f"{r['status'] if r['status'] != 'ok' else q}")
        print("out-of-core / in-memory:", json.dumps(ratios))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("scale_cli.json" if n == 1_000_000 else f"scale_cli_{n}.json")
    out.write_text(json.dumps({
        "benchmark": "scale_cli", "n": n, "setup_seconds": setup_s, "results": rows, "ratios": ratios,
        "complete": final,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "note": "each `curate` command is a fresh process; peak MB = that process's VmHWM at exit",
    }, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="N = 20,000")
    ap.add_argument("--modes", default="out-of-core,in-memory")
    ap.add_argument("--steps", default=",".join(COMMANDS))
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-command limit (seconds)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = 20_000
    base = Path(args.workdir or tempfile.mkdtemp(prefix="curate-bench-cli-"))
    base.mkdir(parents=True, exist_ok=True)
    project = base / f"n{args.n}"
    rows: list[dict] = []
    try:
        if not _complete(project, args.n):  # set up (again) unless a complete setup is there
            shutil.rmtree(project, ignore_errors=True)
            print(f"... setting up {args.n:,} samples", file=sys.stderr, flush=True)
            setup_s = setup(project, args.n)
        else:
            setup_s = {"reused": True}
        print(f"    setup {setup_s}", file=sys.stderr, flush=True)
        for step in args.steps.split(","):  # both modes per step: a stopped run still has complete pairs
            for mode in args.modes.split(","):
                flag = "--out-of-core" if mode == "out-of-core" else "--in-memory"
                print(f"... {step} {flag}", file=sys.stderr, flush=True)
                rec = {"n": args.n, "step": step, "mode": mode,
                       **run_cli([*COMMANDS[step], "-p", str(project), flag], args.timeout)}
                if rec["status"] == "ok":
                    rec.update(quality(project, step))
                tail = rec.pop("output_tail", [])
                if step == "index":
                    rec["output"] = tail  # the command's own report: factory, recall@10, graph method
                print(f"    {rec}", file=sys.stderr, flush=True)
                rows.append(rec)
                report(rows, args.n, setup_s, final=False)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    out = report(rows, args.n, setup_s, final=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

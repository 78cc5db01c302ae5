"""Scale: time and peak memory of the out-of-core pipeline from 10^4 to 10^7 vectors, local vs Ray (2 workers).

Data: encoder-free synthetic embeddings (:mod:`engine.distributed.synthetic`): 64-d unit vectors, 100 classes each
spread along its own 8-d subspace, 1% planted near-duplicates (cosine ~0.9995), 5% planted label noise.  Vectors
are a pure function of the sample id, so the local and the Ray run compute the same bytes.

Stages, each in a fresh subprocess (so its peak memory is its own), on one project per N:

=============  ==============================================================================================
embed          ``embed_synthetic``: ids -> vectors -> checksummed float16 shards + ``embedded`` catalog rows
               (local: batches in-process; Ray: Ray Data ``map_batches`` on an actor pool of 2).  The two runs
               are stored under two encoder names and their shard checksums compared.
index          sharded IVF index (trained on a sample, filled shard by shard; Ray: 2 actors holding half the
               shards each), ``nprobe`` tuned to recall@10 >= 0.95 on 1,000 queries vs exact search
knn            sharded kNN graph (k=10) written to memory-mapped .npy files; exact up to 50k rows, IVF above
               (recall@10 measured on 1,000 rows); Ray: the index held by 2 actors
label_issues   kNN vote from the graph + cleanlab ``LabelInspector`` (two streamed passes); local only —
               the passes are sequential by design and take seconds
dedup          k-means partitions (~2,000 rows), exact pairs >= 0.998 inside each; Ray: partitions as 2 tasks;
               recall of the planted near-duplicate pairs
=============  ==============================================================================================

Peak memory: ``peak MB`` is the stage process's own high-water RSS (``VmHWM`` in /proc/self/status; results up to
2026-12-01 used ``getrusage`` maxrss, which Linux never reports below the RSS of the forking driver); for Ray stages ``tree MB`` is
the peak of the summed RSS of the driver and every Ray process it started (sampled every 0.2 s from /proc; shared
pages counted once per process, so it over-states).  ``f32 MB`` is what the N x 64 float32 matrix alone would take —
the in-memory pipeline's floor, which these stages never allocate.  Time growth per stage is the exponent b of a
least-squares fit ``seconds ~ N^b``.

Usage::

    nice -n 10 python bench/scale.py                 # N = 10k .. 10M, Ray up to 1M (~40 min on 2 cores)
    python bench/scale.py --quick                    # N = 10k, 100k (~3 min)
    python bench/scale.py --sizes 10000,1000000 --ray-max-n 1000000

Writes bench/results/scale.json (+ scale.png; ``--quick``: scale_quick.*) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
STAGES = ("embed", "index", "knn", "label_issues", "dedup")
RAY_STAGES = ("embed", "index", "knn", "dedup")
DUP_THRESHOLD = 0.998
BATCH = 2048


def shard_size_for(n: int) -> int:
    """About 8 shards, a multiple of the batch size, at most 262,144 rows (~33 MB at 64-d float16)."""
    return int(min(262_144, max(BATCH, (n // 8) // BATCH * BATCH)))


# ------------------------------------------------------------------------------------------- memory sampling
def _tree_rss_mb(root_pid: int) -> float:
    """Summed RSS of ``root_pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            pid, ppid = int(entry), int(fields[1])
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            children.setdefault(ppid, []).append(pid)
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total / 2**20


def _status_mb(field: str) -> float:
    """``VmHWM`` (this process's peak RSS since exec) or ``VmRSS`` from /proc/self/status, in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TreeSampler:
    def __init__(self, interval: float = 0.2):
        self.peak, self.interval = 0.0, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_mb(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _tree_rss_mb(os.getpid()))


# ------------------------------------------------------------------------------------------- stages (worker side)
def stage(name: str, mode: str, project: str, n: int, k: int, workers: int, knn_recall: float = 0.95) -> dict:
    """Run one stage; returns its measurements (time excludes imports and Ray start-up)."""
    import faiss  # noqa: F401

    from curate.engine.analyses.duplicates import partitioned_near_duplicates
    from curate.engine.analyses.label_issues import label_issues_out_of_core
    from curate.engine.catalog import open_project
    from curate.engine.distributed import synthetic as syn
    from curate.engine.distributed.embed import embed_synthetic
    from curate.engine.embed import EmbedReport
    from curate.engine.shards import ShardedEmbeddings
    from curate.indexes import sharded

    cfg = syn.SyntheticConfig()
    cat = open_project(project)
    use_ray = mode == "ray"
    ray = None
    if use_ray:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    enc = cfg.encoder_name
    out: dict = {}
    sampler = TreeSampler() if use_ray else None
    if sampler:
        sampler.__enter__()
    rss0 = _status_mb("VmRSS")
    t0 = time.perf_counter()
    try:
        if name == "embed":
            rep = EmbedReport(encoder="")
            embed_synthetic(cat, cfg, use_ray=use_ray, workers=workers, batch_size=BATCH,
                            shard_size=shard_size_for(n), report=rep, encoder=enc + ("-ray" if use_ray else ""))
            out.update(shards=rep.shards, embedded=rep.embedded)
        else:
            shards = ShardedEmbeddings.open(cat, enc, verify=False)
            if name == "index":
                # auto, except nlist ~ sqrt(N) instead of 4 sqrt(N): training cost grows with nlist^2 on 2 cores
                fac = sharded.sharded_factory(n, shards.dim)
                if fac.startswith("IVF"):
                    fac = f"IVF{sharded.ivf_nlist(n, 1.0)},Flat"
                if use_ray:
                    ix = sharded.RayShardedIndex.build(shards, fac, workers=workers)
                else:
                    ix = sharded.build_sharded_index(shards, fac)
                build = time.perf_counter() - t0
                recall = sharded.tune_sharded(ix, shards, 10, 0.95, 1000)
                out.update(factory=ix.factory, search_params=ix.search_params, recall=round(recall, 4),
                           build_seconds=round(build, 2), trained_on=ix.trained_on)
                if use_ray:
                    ix.close()
            elif name == "knn":
                g = sharded.sharded_knn_graph(shards, k, out_dir=Path(project) / "indexes" / f"knn-{mode}",
                                              ray_workers=workers if use_ray else 0, target_recall=knn_recall)
                out.update(method=g.method, recall=round(float(g.recall), 4))
            elif name == "label_issues":
                ids = shards.sample_ids()
                labels = syn.given_labels(ids, cfg)
                folder = Path(project) / "indexes" / "knn-local"
                gi = np.load(folder / "knn_indices.npy", mmap_mode="r")
                gs = np.load(folder / "knn_similarities.npy", mmap_mode="r")
                res = label_issues_out_of_core(gi, gs, labels, cfg.n_classes,
                                               out_dir=Path(project) / "analyses" / "label_issues",
                                               sample_ids=ids)
                cat.register_parquet_view("label_issues_scale",
                                          str(Path(project) / "analyses" / "label_issues" / "*.parquet"))
                flagged = int(cat.scalar("SELECT count(*) FROM label_issues_scale WHERE is_issue"))
                wrong = labels != syn.true_classes(ids, cfg)
                tp = int((res.is_issue & wrong).sum())
                out.update(num_issues=res.num_issues, flagged_in_duckdb_view=flagged,
                           precision=round(tp / max(1, res.is_issue.sum()), 4),
                           recall=round(tp / max(1, wrong.sum()), 4))
            elif name == "dedup":
                pairs = partitioned_near_duplicates(shards, DUP_THRESHOLD, ray_tasks=workers if use_ray else 0)
                ids = shards.sample_ids()
                dup = syn.is_duplicate(ids, cfg)
                # planted pair = (row of id-1, row of id); ids are consecutive here, so rows are too
                planted_i = np.flatnonzero(dup) - 1
                found = set(zip(pairs.i.tolist(), pairs.j.tolist())) if len(pairs) < 5_000_000 else None
                hit = sum((int(a), int(a) + 1) in found for a in planted_i) if found is not None else -1
                out.update(pairs=len(pairs), planted=int(dup.sum()), planted_recall=round(hit / max(1, dup.sum()), 4),
                           partitions=pairs.n_partitions, **{f"{k_}_s": v for k_, v in pairs.seconds.items()})
                np.savez(Path(project) / f"pairs-{mode}.npz", i=pairs.i, j=pairs.j, s=pairs.similarity)
    finally:
        seconds = time.perf_counter() - t0
        if sampler:
            sampler.__exit__()
    out.update(seconds=round(seconds, 2), peak_mb=round(_status_mb("VmHWM"), 1), rss_at_start_mb=round(rss0, 1))
    if sampler:
        out["tree_peak_mb"] = round(sampler.peak, 1)
    if use_ray:
        ray.shutdown()
    return out


# ------------------------------------------------------------------------------------------- driver
def run_stage(name: str, mode: str, project: Path, n: int, k: int, workers: int, timeout: float,
              knn_recall: float = 0.95) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--mode", mode, "--project",
           str(project), "--n", str(n), "--k", str(k), "--ray-workers", str(workers), "--knn-recall", str(knn_recall)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {timeout:.0f} s)"}
    if proc.returncode != 0:
        return {"status": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["status"] = "ok"
    return rec


def setup_project(path: Path, n: int) -> float:
    from curate.engine.catalog import init_project
    from curate.engine.distributed.embed import add_synthetic_samples

    t0 = time.perf_counter()
    add_synthetic_samples(init_project(path), n)
    return time.perf_counter() - t0


def compare_runs(project: Path) -> dict:
    """Local vs Ray outputs of the same stage: shard checksums, kNN graphs, dedup pairs."""
    from curate.engine.catalog import open_project

    cat = open_project(project)
    out = {}
    q = "SELECT shard, n, sha256 FROM embedding_shards WHERE encoder = ? ORDER BY shard"
    ray_shards = cat.query(q, ["synthetic:64-ray"])
    if ray_shards:
        out["embed_shards_identical"] = cat.query(q, ["synthetic:64"]) == ray_shards
    a, b = project / "indexes" / "knn-local", project / "indexes" / "knn-ray"
    if (a / "knn_indices.npy").exists() and (b / "knn_indices.npy").exists():
        ia, ib = np.load(a / "knn_indices.npy", mmap_mode="r"), np.load(b / "knn_indices.npy", mmap_mode="r")
        same = 0
        for s in range(0, len(ia), 1_000_000):
            same += int((ia[s:s + 1_000_000] == ib[s:s + 1_000_000]).sum())
        out["knn_same_neighbour_fraction"] = round(same / ia.size, 6)
    pa, pb = project / "pairs-local.npz", project / "pairs-ray.npz"
    if pa.exists() and pb.exists():
        x, y = np.load(pa), np.load(pb)
        out["dedup_pairs_identical"] = bool(np.array_equal(x["i"], y["i"]) and np.array_equal(x["j"], y["j"]))
    return out


def fit_exponent(ns: list[int], seconds: list[float]) -> float | None:
    if len(ns) < 2:
        return None
    return round(float(np.polyfit(np.log(ns), np.log(np.maximum(seconds, 1e-3)), 1)[0]), 3)


def machine() -> dict:
    import faiss

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "load_avg_at_start": os.getloadavg()[0],
            "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


def print_table(rows: list[dict], exponents: dict) -> None:
    head = f"{'stage':<13}{'mode':<6}{'N':>12}{'seconds':>10}{'peak MB':>9}{'tree MB':>9}{'f32 MB':>9}  detail"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['stage']:<13}{r['mode']:<6}{r['n']:>12,}{'-':>10}{'-':>9}{'-':>9}{'-':>9}  {r['status']}")
            continue
        detail = {k: v for k, v in r.items() if k in ("recall", "method", "factory", "search_params", "precision",
                                                      "planted_recall", "pairs", "shards", "num_issues")}
        tree = f"{r['tree_peak_mb']:>9.0f}" if "tree_peak_mb" in r else f"{'':>9}"
        print(f"{r['stage']:<13}{r['mode']:<6}{r['n']:>12,}{r['seconds']:>10.1f}{r['peak_mb']:>9.0f}{tree}"
              f"{r['n'] * 64 * 4 / 2**20:>9.0f}  " + " ".join(f"{k}={v}" for k, v in detail.items()))
    for key, b in exponents.items():
        print(f"time growth {key}: N^{b}")


def plot(rows: list[dict], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for st in STAGES:
        for mode, style in (("local", "-o"), ("ray", "--s")):
            ok = [r for r in rows if r["stage"] == st and r["mode"] == mode and r["status"] == "ok"]
            if ok:
                ax.plot([r["n"] for r in ok], [r["seconds"] for r in ok], style, label=f"{st} ({mode})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors N (64-d)")
    ax.set_ylabel("seconds")
    ax.set_title("Curate out-of-core pipeline, 2 CPU cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def markdown(result: dict) -> str:
    """The results as a Markdown table (for docs/benchmarks.md): one row per stage and N, local and Ray side by side."""
    rows = result["results"]
    lines = ["| stage | N | local s | local peak MB | Ray s | Ray driver / tree peak MB | Ray/local | f32 MB | "
             "quality |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for st in STAGES:
        for n in sorted({r["n"] for r in rows}):
            loc = next((r for r in rows if r["stage"] == st and r["n"] == n and r["mode"] == "local"), None)
            ray_ = next((r for r in rows if r["stage"] == st and r["n"] == n and r["mode"] == "ray"), None)
            if loc is None:
                continue
            ok = loc["status"] == "ok"
            rok = ray_ is not None and ray_["status"] == "ok"
            q = ""
            if ok:
                if st == "embed":
                    q = f"{loc['shards']} shards"
                elif st in ("index", "knn"):
                    q = f"recall@10 {loc['recall']:.3f} ({loc.get('factory', loc.get('method', ''))} " \
                        f"{loc.get('search_params', '')})".replace(" )", ")")
                elif st == "label_issues":
                    q = f"precision {loc['precision']:.3f}, recall {loc['recall']:.3f} vs planted noise"
                elif st == "dedup":
                    q = f"{loc['pairs']:,} pairs, planted recall {loc['planted_recall']:.3f}"
            ray_s = f"{ray_['seconds']}" if rok else "-"
            ray_mb = f"{ray_['peak_mb']:.0f} / {ray_['tree_peak_mb']:.0f}" if rok else "-"
            ratio = f"{ray_['seconds'] / max(loc['seconds'], 1e-3):.2f}" if rok and ok else "-"
            loc_s = f"{loc['seconds']}" if ok else loc["status"]
            loc_mb = f"{loc['peak_mb']:.0f}" if ok else "-"
            lines.append(f"| {st} | {n:,} | {loc_s} | {loc_mb} | {ray_s} | {ray_mb} | {ratio} | "
                         f"{n * 64 * 4 / 2**20:,.0f} | {q} |")
    exps = result.get("time_exponents", {})
    lines.append("")
    lines.append("Time growth (least-squares fit seconds ~ N^b): " +
                 ", ".join(f"{k} N^{v}" for k, v in exps.items() if v is not None) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 10k, 100k")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 10000,100000,1000000,10000000)")
    ap.add_argument("--ray-max-n", type=int, default=1_000_000, help="largest N also run on Ray")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows (N, stage, mode) not rerun now from the JSON already written")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run")
    ap.add_argument("--reuse", action="store_true", help="reuse the projects in --workdir (skip catalog setup)")
    ap.add_argument("--knn-recall", type=float, default=0.95, help="target recall@10 of the kNN graph")
    ap.add_argument("--ray-workers", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=1800.0, help="per-stage time limit in seconds")
    ap.add_argument("--workdir", default=None, help="where the projects go (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the projects")
    ap.add_argument("--markdown", action="store_true", help="print the saved results as a Markdown table and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="local", help=argparse.SUPPRESS)
    ap.add_argument("--project", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(stage(args.worker, args.mode, args.project, args.n, args.k, args.ray_workers,
                               args.knn_recall)))
        return 0

    if args.markdown:
        print(markdown(json.loads((RESULTS / ("scale_quick.json" if args.quick else "scale.json")).read_text())))
        return 0
    sizes = [10_000, 100_000] if args.quick else [int(s) for s in (args.sizes or ",".join(map(str, SIZES))).split(",")]
    rows: list[dict] = []
    checks: dict = {}
    setup: dict = {}
    t_all = time.perf_counter()
    base = Path(args.workdir or tempfile.mkdtemp(prefix="curate-bench-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        for n in sorted(sizes):
            project = base / f"n{n}"
            if not (args.reuse and project.exists()):
                shutil.rmtree(project, ignore_errors=True)
                print(f"... N={n:,}: catalog with {n:,} samples", file=sys.stderr, flush=True)
                setup[n] = round(setup_project(project, n), 2)
            for st in [s_ for s_ in STAGES if s_ in args.stages.split(",")]:
                for mode in ("local", "ray"):
                    if mode == "ray" and (st not in RAY_STAGES or n > args.ray_max_n):
                        continue
                    print(f"... N={n:,} {st} ({mode})", file=sys.stderr, flush=True)
                    rec = {"stage": st, "mode": mode, "n": n, "d": 64}
                    rec.update(run_stage(st, mode, project, n, args.k, args.ray_workers, args.timeout,
                                         args.knn_recall))
                    if st == "knn":
                        rec["target_recall"] = args.knn_recall
                    print(f"    {rec}", file=sys.stderr, flush=True)
                    rows.append(rec)
            checks[n] = compare_runs(project)
            print(f"    local vs ray: {checks[n]}", file=sys.stderr, flush=True)
            if not args.keep and not args.reuse:
                shutil.rmtree(project, ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(base, ignore_errors=True)

    stem = "scale_quick" if args.quick else "scale"
    if args.merge and (RESULTS / f"{stem}.json").exists():
        old = json.loads((RESULTS / f"{stem}.json").read_text())
        rerun = {(r["n"], r["stage"], r["mode"]) for r in rows}
        rows = [r for r in old["results"] if (r["n"], r["stage"], r["mode"]) not in rerun] + rows
        rows.sort(key=lambda r: (r["n"], STAGES.index(r["stage"]), r["mode"]))
        checks = {**{int(k): v for k, v in old.get("local_vs_ray_outputs", {}).items()},
                  **{k: {**old.get("local_vs_ray_outputs", {}).get(str(k), {}), **v} for k, v in checks.items()}}
        setup = {**{int(k): v for k, v in old.get("catalog_setup_seconds", {}).items()}, **setup}
        sizes = sorted({r["n"] for r in rows})
    exponents: dict[str, float | None] = {}
    ratios: dict[str, dict] = {}
    for st in STAGES:
        for mode in ("local", "ray"):
            ok = [r for r in rows if r["stage"] == st and r["mode"] == mode and r["status"] == "ok"]
            if len(ok) >= 2:
                exponents[f"{st} ({mode})"] = fit_exponent([r["n"] for r in ok], [r["seconds"] for r in ok])
        for n in sizes:
            loc = [r for r in rows if r["stage"] == st and r["mode"] == "local" and r["n"] == n and r["status"] == "ok"]
            ray_ = [r for r in rows if r["stage"] == st and r["mode"] == "ray" and r["n"] == n and r["status"] == "ok"]
            if loc and ray_:
                ratios.setdefault(st, {})[n] = round(ray_[0]["seconds"] / max(loc[0]["seconds"], 1e-3), 2)
    print_table(rows, exponents)
    print("ray / local time:", json.dumps(ratios))
    print("local vs ray outputs:", json.dumps(checks))
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{stem}.png"
    note = plot(rows, png)
    result = {"benchmark": "scale", "config": {k: v for k, v in vars(args).items()
                                               if k not in ("worker", "mode", "project", "n")},
              "data": {"generator": "curate.engine.distributed.synthetic", "dim": 64, "n_classes": 100, "rank": 8,
                       "dup_rate": 0.01, "label_noise": 0.05, "dup_threshold": DUP_THRESHOLD},
              "machine": machine(), "catalog_setup_seconds": setup, "results": rows, "time_exponents": exponents,
              "ray_over_local_time": ratios, "local_vs_ray_outputs": checks,
              "total_seconds": round(time.perf_counter() - t_all, 1), "plot": note or str(png.relative_to(ROOT))}
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {path.relative_to(ROOT)}" + (f" and {png.relative_to(ROOT)}" if note is None else f" ({note})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

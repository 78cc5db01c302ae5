"""All-points kNN graph: build time, peak memory and recall vs N — ours against scikit-learn and plain numpy.

Data: clustered synthetic unit vectors (512-d by default; 1,000 cluster centres grouped under 50 super-centres,
per-cluster spread drawn from [0.8, 1.6] so within-cluster cosines range ~0.3-0.6).  The N-row set is the first
N rows of one seeded stream, so the sizes are nested.  With ``--project PATH`` the real embeddings of that project
(``engine.embed.load_embeddings``, e.g. the demo's) are benchmarked too.

Methods, same data, same run, each in a fresh subprocess (so peak memory is its own):

* ``ours`` — :func:`indexes.knn.knn_graph` with its defaults on the CPU (exact FAISS brute force up to 50k rows,
  IVF-Flat tuned to recall@10 >= 0.95 above);
* ``sklearn brute`` — ``NearestNeighbors(algorithm="brute", metric="cosine").fit(X).kneighbors()``
  (self excluded by scikit-learn);
* ``numpy blocks`` — block matmul + ``argpartition`` + sort, self masked by position.

A baseline that took longer than ``--skip-after`` seconds at one size is not run at the next (quadratic growth)
and is recorded as "skipped (too slow: ...)"; nothing is extrapolated.

Recall@k of every result is measured the same way: 1,000 sampled rows against exact FAISS brute-force search,
ties with the k-th neighbour counted as hits.  Peak memory is the growth of the worker's max RSS
(``resource.getrusage``) over the RSS after loading the data.  Wall and CPU seconds are both recorded (with the
load average) because the benchmark machine may be shared.  Time growth per method is summarised by the
exponent of a least-squares fit ``seconds ~ N^b`` over the sizes it ran at.

Usage::

    nice -n 10 python bench/knn.py            # N = 10k, 100k, 1M (about half an hour on 2 cores)
    python bench/knn.py --quick               # N = 10k only (~30 s)
    python bench/knn.py --project curate-project   # also the project's real embeddings

Writes bench/results/knn.json (``--quick``: knn_quick.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
METHODS = ("ours", "sklearn brute", "numpy blocks")
SIZES = (10_000, 100_000, 1_000_000)
_CHUNK = 10_000


# ------------------------------------------------------------------------------------------- data
def synthetic_clustered(n: int, d: int = 512, seed: int = 0) -> np.ndarray:
    """Rows 0..n-1 of a seeded stream of clustered unit vectors (nested: a prefix of a larger set)."""
    rng = np.random.default_rng([seed, 0])
    supers = rng.standard_normal((50, d)).astype(np.float32)
    centres = supers[rng.integers(0, 50, 1000)] + 0.8 * rng.standard_normal((1000, d)).astype(np.float32)
    spread = rng.uniform(0.8, 1.6, 1000).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for c, start in enumerate(range(0, n, _CHUNK)):
        stop = min(n, start + _CHUNK)
        # a fixed chunk size and a per-chunk seed make row i independent of n
        r = np.random.default_rng([seed, 1, c])
        lab = r.integers(0, 1000, _CHUNK)[: stop - start]
        noise = r.standard_normal((_CHUNK, d), dtype=np.float32)[: stop - start]
        block = centres[lab] + spread[lab, None] * noise
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


# ------------------------------------------------------------------------------------------- methods (worker side)
def run_ours(X: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    from curate.indexes.knn import knn_graph

    g = knn_graph(X, k, device="cpu")
    return g.indices, {"method_detail": g.method, "recall_measured_at_build": g.recall}


def run_sklearn(X: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(X)
    _, idx = nn.kneighbors()  # X=None: each training row's neighbours, itself excluded
    return idx.astype(np.int64), {}


def run_numpy(X: np.ndarray, k: int) -> tuple[np.ndarray, dict]:
    n = len(X)
    rows_per_block = max(1, (256 << 20) // (4 * n))  # ~256 MiB similarity tile
    out = np.empty((n, k), np.int64)
    for s in range(0, n, rows_per_block):
        e = min(n, s + rows_per_block)
        S = X[s:e] @ X.T
        S[np.arange(e - s), np.arange(s, e)] = -np.inf
        part = np.argpartition(-S, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(S, part, axis=1), axis=1)
        out[s:e] = np.take_along_axis(part, order, axis=1)
    return out, {"block_rows": rows_per_block}


RUNNERS = {"ours": run_ours, "sklearn brute": run_sklearn, "numpy blocks": run_numpy}


def worker(method: str, data: str, k: int, out: str) -> None:
    """Run one method on one data file; print a JSON record; save the neighbour indices to ``out``."""
    import faiss  # noqa: F401  - every method's imports happen before the clock and the memory baseline
    import sklearn.neighbors  # noqa: F401

    import curate.indexes.knn  # noqa: F401

    X = np.load(data)
    before = resource.getrusage(resource.RUSAGE_SELF)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    idx, extra = RUNNERS[method](X, k)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    np.save(out, idx)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu,
                      "peak_extra_mb": (after.ru_maxrss - before.ru_maxrss) / 1024, "data_mb": X.nbytes / 2**20,
                      "load_avg": [round(load0, 1), round(os.getloadavg()[0], 1)], **extra}))


# ------------------------------------------------------------------------------------------- driver
def recall_of(indices: np.ndarray, X: np.ndarray, k: int, n_queries: int = 1000, seed: int = 0) -> float:
    """recall@k of a graph on sampled rows against exact brute-force search (ties count as hits)."""
    from curate.indexes.build import exact_search, gather_similarities, recall_at_k
    from curate.indexes.knn import drop_self

    rows = np.sort(np.random.default_rng(seed).choice(len(X), size=min(len(X), n_queries), replace=False))
    D, I = exact_search(X[rows], X, k + 1)
    true_i, true_s = drop_self(I, D, rows)
    found = indices[rows]
    return recall_at_k(true_i, true_s, found, gather_similarities(X[rows], X, found))


def run_method(method: str, data: Path, k: int, tmp: Path, timeout: float) -> dict:
    out = tmp / "indices.npy"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--data", str(data), "--k", str(k),
           "--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout (> {timeout:.0f} s)"}
    if proc.returncode != 0:
        return {"status": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    X = np.load(data, mmap_mode="r")
    record["recall_at_k"] = round(recall_of(np.load(out), np.asarray(X), k), 4)
    record["status"] = "ok"
    return record


def fit_exponent(ns: list[int], seconds: list[float]) -> float | None:
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def machine() -> dict:
    import faiss
    import sklearn

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "sklearn": sklearn.__version__,
            "faiss_gpus": faiss.get_num_gpus(), "load_avg_at_start": os.getloadavg()[0]}


def print_table(rows: list[dict], exponents: dict) -> None:
    head = (f"{'dataset':<22}{'N':>10} {'method':<14}{'wall s':>9}{'CPU s':>9}{'peak MB':>9}{'recall@k':>9}"
            "  detail")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['dataset']:<22}{r['n']:>10,} {r['method']:<14}{r['seconds']:>9.1f}{r['cpu_seconds']:>9.1f}"
                  f"{r['peak_extra_mb']:>9.0f}{r['recall_at_k']:>9.4f}  {r.get('method_detail', '')}")
        else:
            print(f"{r['dataset']:<22}{r['n']:>10,} {r['method']:<14}{'-':>9}{'-':>9}{'-':>9}{'-':>9}  {r['status']}")
    for dataset, per in exponents.items():
        txt = ", ".join(f"{m}: N^{b:.2f}" for m, b in per.items() if b is not None)
        print(f"time growth ({dataset}): {txt or 'n/a (needs two sizes)'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 10k only")
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 10000,100000,1000000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--project", default=None, help="also benchmark this project's real embeddings")
    ap.add_argument("--skip-after", type=float, default=60.0,
                    help="skip a baseline at the next size once it took longer than this many seconds")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-run time limit in seconds")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.k, args.out)
        return 0

    sizes = [10_000] if args.quick else [int(s) for s in (args.sizes or ",".join(map(str, SIZES))).split(",")]
    rows: list[dict] = []
    datasets: list[tuple[str, int, Callable[[], np.ndarray]]] = [
        (f"synthetic-{args.dim}d", n, lambda n=n: synthetic_clustered(n, args.dim, args.seed)) for n in sorted(sizes)]
    if args.project:
        from curate.engine.catalog import open_project
        from curate.engine.embed import load_embeddings

        es = load_embeddings(open_project(args.project))
        datasets.insert(0, (f"project:{es.encoder}", len(es), lambda es=es: es.vectors))
    too_slow: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="curate-bench-knn-") as tmpdir:
        tmp = Path(tmpdir)
        for dataset, n, make in datasets:
            data = tmp / "X.npy"
            X = make()
            np.save(data, X)
            d = X.shape[1]
            del X
            for method in METHODS:
                rec = {"dataset": dataset, "n": n, "d": d, "k": args.k, "method": method}
                if (dataset, method) in too_slow:
                    rec["status"] = too_slow[(dataset, method)]
                else:
                    print(f"... {dataset} N={n:,} {method}", file=sys.stderr, flush=True)
                    rec.update(run_method(method, data, args.k, tmp, args.timeout))
                    if method != "ours" and rec["status"] == "ok" and rec["seconds"] > args.skip_after:
                        too_slow[(dataset, method)] = f"skipped (too slow: {rec['seconds']:.0f} s at {n:,})"
                rows.append(rec)
            data.unlink()

    exponents: dict[str, dict[str, float | None]] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        per = {}
        for method in METHODS:
            ok = [r for r in rows if r["method"] == method and r["status"] == "ok" and r["dataset"] == dataset]
            per[method] = fit_exponent([r["n"] for r in ok], [r["seconds"] for r in ok])
            per[f"{method} (CPU s)"] = fit_exponent([r["n"] for r in ok], [r["cpu_seconds"] for r in ok])
        exponents[dataset] = per
    print_table(rows, exponents)
    result = {"benchmark": "knn graph", "config": {k: v for k, v in vars(args).items() if k not in
                                                   ("worker", "data", "out")},
              "machine": machine(), "results": rows, "time_exponents": exponents}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("knn_quick.json" if args.quick else "knn.json")
    path.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Label-issue detection quality: ours vs cleanlab's Datalab on the same features, with planted label noise.

For every dataset we take CLEAN labels as ground truth, inject noise and score the flags:

* symmetric noise: a fraction ``r`` of samples gets a uniformly random *other* class;
* asymmetric (class-dependent) noise: each class flips to one specific other class (a seeded random derangement)
  with probability ``r``;
* ``r`` in 10 / 20 / 40 %.

Methods (all on the same features, same noisy labels, same run):

* ``ours`` — :func:`engine.analyses.label_issues.find_label_issues` with its defaults (probe + kNN vote);
* ``ours probe-only`` / ``ours knn-only`` — the same with ``probe_weight`` 1 / 0 (the measured ablation behind the
  default weight);
* ``datalab`` — ``cleanlab.Datalab(data={"label": y}, label_name="label").find_issues(features=X,
  issue_types={"label": {}})``: cleanlab's defaults for label issues from features (a k=10 kNN classifier).  Only
  the label issue type is run so the runtime compares like with like.

Scores: precision / recall / F1 of the flags against the injected flips, AUROC of ``1 - label_quality`` (how well
the ranking separates flipped from clean samples), accuracy of the suggested label on flagged samples (suggested ==
clean label), and seconds.  The kNN graph is built once per dataset (timed) and its time is added to every method
that uses it.

Datasets: ``synthetic`` (imbalanced Gaussian class blobs in 64-d), ``synthetic-1k`` (1,000 classes of ~8 samples,
20% noise only, to keep the run short), ``digits`` (sklearn digits, raw pixels),
``demo`` (the demo dataset's 64x64 PNG digits embedded with the offline ``effnet-lite0`` encoder; the project is
built once per bench run), ``--project P`` (a labeled project's stored embeddings; ``--truth FILE.csv`` with
``path`` or ``sample_id`` and ``label`` columns gives its clean labels, otherwise its current labels are taken as
clean), and a real noisy-label set under /work/shared/data/label_noise/*.npz (keys ``features``,
``noisy_labels``, ``clean_labels``) when present.

Usage::

    python bench/label_issues.py            # full run, ~10-15 min on 2 cores
    python bench/label_issues.py --quick    # synthetic + digits, one noise level of each kind, ~1 min
    python bench/label_issues.py --sweep    # also sweep probe weight and C (how the defaults were chosen)

Writes bench/results/label_issues.json and prints a table plus a markdown table for the README.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curate.engine.analyses.label_issues import DEFAULT_PROBE_WEIGHT, find_label_issues  # noqa: E402
from curate.engine.analyses.probe import DEFAULT_C  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "label_issues.json"
SHARED_NOISY = Path("/work/shared/data/label_noise")


# ---------------------------------------------------------------------------------------------- datasets
def l2n(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def synthetic(n: int, seed: int = 0, n_classes: int = 10, dim: int = 64, spread: float = 2.0,
              imbalance: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class blobs; class sizes fall linearly from 1 to ``imbalance`` of the largest.

    With the defaults a clean-label 10-NN classifier is ~95% accurate (the classes overlap a little).
    """
    rng = np.random.default_rng(seed)
    weights = np.linspace(1.0, imbalance, n_classes)
    y = rng.choice(n_classes, size=n, p=weights / weights.sum())
    centers = rng.normal(0, 1, (n_classes, dim))
    X = centers[y] + rng.normal(0, spread, (n, dim))
    return l2n(X), y.astype(np.int64)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data - d.data.mean(axis=0)
    return l2n(X), d.target.astype(np.int64)


def demo_embeddings(workdir: Path, encoder: str = "effnet-lite0") -> tuple[np.ndarray, np.ndarray, dict]:
    """Build the demo dataset, ingest its labeled part, embed it; returns (features, CLEAN labels, info)."""
    from curate.engine.catalog import init_project
    from curate.engine.demo import DemoTruth, build_demo_dataset
    from curate.engine.embed import embed_project, load_embeddings
    from curate.engine.ingest import ingest

    t0 = time.perf_counter()
    data = workdir / "demo-data"
    # a --workdir from an earlier run is reused: ingest and embed are idempotent, so only new work is done
    truth = DemoTruth.load(data) if (data / "ground_truth.json").is_file() else build_demo_dataset(data, seed=0)
    cat = init_project(workdir / "demo-project")
    ingest(cat, data / truth.labeled_dir, kind="imagefolder")
    t1 = time.perf_counter()
    name = embed_project(cat, encoder=encoder, device="cpu")
    t2 = time.perf_counter()
    es = load_embeddings(cat, name)
    paths = dict(cat.query("SELECT id, path FROM samples"))
    root = truth.root.resolve()
    outliers = set(truth.outliers)
    keep, y = [], []
    for row, sid in enumerate(es.sample_ids):
        rel = Path(paths[int(sid)]).resolve().relative_to(root).as_posix()
        if rel in truth.true_label and rel not in outliers:  # photos filed as digits have no true digit
            keep.append(row)
            y.append(int(truth.true_label[rel]))
    info = {"encoder": name, "build_ingest_s": round(t1 - t0, 1), "embed_s": round(t2 - t1, 1),
            "n_embedded": len(es.sample_ids)}
    return es.vectors[keep], np.asarray(y, dtype=np.int64), info


def project_embeddings(project: Path, truth_csv: Path | None) -> tuple[np.ndarray, np.ndarray, dict]:
    import pandas as pd

    from curate.engine.catalog import CurateError, open_project
    from curate.engine.embed import load_embeddings

    cat = open_project(project)
    es = load_embeddings(cat)
    if truth_csv is not None:
        t = pd.read_csv(truth_csv)
        if "label" not in t.columns or not ({"path", "sample_id"} & set(t.columns)):
            raise CurateError(f"{truth_csv} needs a 'label' column and a 'path' or 'sample_id' column")
        if "sample_id" not in t.columns:
            ids = dict(cat.query("SELECT path, id FROM samples"))
            t["sample_id"] = [ids.get(str(Path(p).resolve()), ids.get(p)) for p in t["path"]]
        clean = t.dropna(subset=["sample_id"]).set_index("sample_id")["label"]
    else:
        lab = cat.current_labels()
        clean = lab.dropna(subset=["label"]).set_index("sample_id")["label"]
    clean_for = clean.reindex(es.sample_ids)
    keep = clean_for.notna().to_numpy()
    _, y = np.unique(clean_for[keep].astype(str).to_numpy(), return_inverse=True)
    return es.vectors[keep], y.astype(np.int64), {"encoder": es.encoder, "truth": str(truth_csv or "current labels")}


def shared_noisy_sets() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Real noisy-label sets: /work/shared/data/label_noise/*.npz with features, noisy_labels, clean_labels."""
    out = []
    if not SHARED_NOISY.is_dir():
        return out
    for f in sorted(SHARED_NOISY.glob("*.npz")):
        z = np.load(f, allow_pickle=False)
        if {"features", "noisy_labels", "clean_labels"} <= set(z.files):
            classes, yc = np.unique(z["clean_labels"], return_inverse=True)
            yn = np.searchsorted(classes, z["noisy_labels"])
            out.append((f.stem, l2n(z["features"]), yc, yn))
    return out


# ---------------------------------------------------------------------------------------------- noise
def inject_noise(y: np.ndarray, rate: float, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (noisy labels, flipped mask); exactly round(rate * n) samples are flipped."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    K = len(classes)
    pos = np.searchsorted(classes, y)
    flip = np.zeros(len(y), dtype=bool)
    flip[rng.choice(len(y), size=int(round(rate * len(y))), replace=False)] = True
    noisy = pos.copy()
    if kind == "symmetric":
        noisy[flip] = (pos[flip] + rng.integers(1, K, size=flip.sum())) % K
    elif kind == "asymmetric":
        perm = rng.permutation(K)
        target = np.empty(K, dtype=np.int64)  # a derangement: class perm[i] -> perm[i+1]
        target[perm] = np.roll(perm, -1)
        noisy[flip] = target[pos[flip]]
    else:
        raise ValueError(kind)
    return classes[noisy], flip


# ---------------------------------------------------------------------------------------------- methods
def scores(flags, quality, suggested, flip, clean) -> dict:
    from sklearn.metrics import roc_auc_score

    flags = np.asarray(flags, bool)
    tp = int((flags & flip).sum())
    p = tp / flags.sum() if flags.sum() else 0.0
    r = tp / flip.sum() if flip.sum() else 1.0
    return {
        "flagged": int(flags.sum()), "precision": round(float(p), 4), "recall": round(float(r), 4),
        "f1": round(float(2 * p * r / (p + r)) if p + r else 0.0, 4),
        "auroc": round(float(roc_auc_score(flip, 1.0 - np.asarray(quality, float))), 4),
        "suggested_acc_flagged": round(float(np.mean(np.asarray(suggested)[flags] == clean[flags])), 4)
        if flags.any() else None,
    }


def run_ours(X, y_noisy, graph, graph_s, **kw) -> tuple[dict, float]:
    t = time.perf_counter()
    r = find_label_issues(X, y_noisy, knn_graph=graph, **kw)
    secs = time.perf_counter() - t + (graph_s if kw.get("probe_weight", DEFAULT_PROBE_WEIGHT) < 1 else 0.0)
    return {"flags": r.is_issue, "quality": r.label_quality, "suggested": r.suggested_label.astype(np.int64),
            "noise_rate_est": r.estimated_noise_rate}, secs


def run_datalab(X, y_noisy) -> tuple[dict, float]:
    import warnings

    from cleanlab import Datalab

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab = Datalab(data={"label": y_noisy}, label_name="label", verbosity=0)
        lab.find_issues(features=X, issue_types={"label": {}})
        iss = lab.get_issues("label")
    secs = time.perf_counter() - t
    return {"flags": iss["is_label_issue"].to_numpy(), "quality": iss["label_score"].to_numpy(),
            "suggested": iss["predicted_label"].to_numpy().astype(np.int64)}, secs


METHODS = {
    "ours": {},
    "ours probe-only": {"probe_weight": 1.0},
    "ours knn-only": {"probe_weight": 0.0},
}


def bench_dataset(name, X, y_clean, settings, seed, sweep=False, graph_k=10) -> list[dict]:
    from curate.indexes.knn import knn_graph

    t = time.perf_counter()
    graph = knn_graph(X, k=graph_k, device="cpu")
    graph_s = time.perf_counter() - t
    rows = []
    for kind, rate in settings:
        y_noisy, flip = inject_noise(y_clean, rate, kind, seed)
        methods = dict(METHODS)
        if sweep:
            for w in (0.25, 0.75):
                methods[f"ours w={w}"] = {"probe_weight": w}
            for C in (0.003, 0.1, 1.0):
                methods[f"ours C={C}"] = {"C": C}
                methods[f"ours probe-only C={C}"] = {"probe_weight": 1.0, "C": C}
            for prior in (0.1, 3.0):
                methods[f"ours knn-only prior={prior}"] = {"probe_weight": 0.0, "knn_prior": prior}
            for T in (0.1, 0.05):
                methods[f"ours T={T}"] = {"knn_temperature": T}
                methods[f"ours knn-only T={T}"] = {"probe_weight": 0.0, "knn_temperature": T}
        for mname, kw in list(methods.items()) + [("datalab", None)]:
            if kw is None:
                out, secs = run_datalab(X, y_noisy)
            else:
                out, secs = run_ours(X, y_noisy, graph, graph_s, seed=seed, **kw)
            row = {"dataset": name, "n": len(X), "classes": int(len(np.unique(y_clean))), "dim": int(X.shape[1]),
                   "noise": kind, "rate": rate, "method": mname, "seconds": round(secs, 3),
                   **scores(out["flags"], out["quality"], out["suggested"], flip, y_clean)}
            if "noise_rate_est" in out:
                row["noise_rate_est"] = round(float(out["noise_rate_est"]), 4)
            rows.append(row)
            print(f"  {name:10s} {kind:10s} {rate:.0%} {mname:26s} P={row['precision']:.3f} R={row['recall']:.3f} "
                  f"F1={row['f1']:.3f} AUROC={row['auroc']:.3f} sugg={row['suggested_acc_flagged']} "
                  f"{row['seconds']:.2f}s", flush=True)
    return rows


def real_noisy(name, X, y_clean, y_noisy, seed) -> list[dict]:
    from curate.indexes.knn import knn_graph

    t = time.perf_counter()
    graph = knn_graph(X, k=10, device="cpu")
    graph_s = time.perf_counter() - t
    flip = y_clean != y_noisy
    rows = []
    for mname, kw in list(METHODS.items()) + [("datalab", None)]:
        out, secs = run_datalab(X, y_noisy) if kw is None else run_ours(X, y_noisy, graph, graph_s, seed=seed, **kw)
        rows.append({"dataset": name, "n": len(X), "classes": int(len(np.unique(y_clean))), "dim": int(X.shape[1]),
                     "noise": "real", "rate": round(float(flip.mean()), 4), "method": mname,
                     "seconds": round(secs, 3),
                     **scores(out["flags"], out["quality"], out["suggested"], flip, y_clean)})
    return rows


# ---------------------------------------------------------------------------------------------- report
def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="label issues: flags vs injected noise (ours vs cleanlab Datalab, same features)")
    for c in ("dataset", "noise", "rate", "method", "P", "R", "F1", "AUROC", "sugg.acc", "s"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["dataset"], r["noise"], f"{r['rate']:.0%}", r["method"], f"{r['precision']:.3f}",
                  f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['auroc']:.3f}",
                  "-" if r["suggested_acc_flagged"] is None else f"{r['suggested_acc_flagged']:.3f}",
                  f"{r['seconds']:.2f}")
    Console(width=160).print(t)


def markdown_table(rows: list[dict]) -> str:
    """One line per (dataset, noise, rate): F1 / AUROC of ours, its ablations and Datalab, plus runtimes."""
    by = {}
    for r in rows:
        by.setdefault((r["dataset"], r["noise"], r["rate"]), {})[r["method"]] = r
    lines = [
        "| dataset | noise | ours F1 | ours AUROC | probe-only F1 | kNN-only F1 | Datalab F1 | Datalab AUROC "
        "| ours sugg. acc | ours s | Datalab s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (ds, kind, rate), m in by.items():
        o, p, k, d = (m.get(x) for x in ("ours", "ours probe-only", "ours knn-only", "datalab"))
        if not (o and d):
            continue
        f = lambda r, key: "-" if r is None or r.get(key) is None else f"{r[key]:.3f}"  # noqa: E731
        lines.append(
            f"| {ds} (n={o['n']}, {o['classes']} cl.) | {kind} {rate:.0%} | **{f(o, 'f1')}** | {f(o, 'auroc')} | "
            f"{f(p, 'f1')} | {f(k, 'f1')} | {f(d, 'f1')} | {f(d, 'auroc')} | {f(o, 'suggested_acc_flagged')} | "
            f"{o['seconds']:.1f} | {d['seconds']:.1f} |")
    return "\n".join(lines)


def averages(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        a = out.setdefault(r["method"], {"f1": [], "auroc": [], "precision": [], "recall": [], "seconds": []})
        for key in a:
            a[key].append(r[key])
    return {m: {k: round(float(np.mean(v)), 4) for k, v in a.items()} | {"runs": len(a["f1"])} for m, a in out.items()}


def warm_up() -> None:
    """Import and JIT everything once so the first timed method does not pay for library imports."""
    X, y = synthetic(200, seed=123, n_classes=3)
    run_ours(X, y, None, 0.0)
    run_datalab(X, y)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run: synthetic + digits, 20%% noise of each kind")
    ap.add_argument("--sweep", action="store_true", help="also sweep probe weight, C and the kNN prior")
    ap.add_argument("--datasets", default=None, help="comma list of synthetic,digits,demo,synthetic-1k (default: "
                                                     "all; quick: synthetic,digits)")
    ap.add_argument("--project", type=Path, default=None, help="a labeled Curate project with embeddings")
    ap.add_argument("--truth", type=Path, default=None, help="CSV with clean labels for --project")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build the demo project (default: temp)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {RESULTS}; --quick: *_quick.json)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = RESULTS.with_name("label_issues_quick.json") if args.quick else RESULTS

    if args.quick:
        settings = [("symmetric", 0.2), ("asymmetric", 0.2)]
        names = (args.datasets or "synthetic,digits").split(",")
        n_syn = 800
    else:
        settings = [(k, r) for k in ("symmetric", "asymmetric") for r in (0.1, 0.2, 0.4)]
        names = (args.datasets or "synthetic,digits,demo,synthetic-1k").split(",")
        n_syn = 3000
    warm_up()
    t0 = time.perf_counter()
    rows: list[dict] = []
    info: dict = {"defaults": {"probe_weight": DEFAULT_PROBE_WEIGHT, "C": DEFAULT_C}, "datasets": {}}
    with tempfile.TemporaryDirectory(prefix="curate-bench-li-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in names:
            print(f"dataset {name} ...", flush=True)
            if name == "synthetic":
                X, y = synthetic(n_syn, seed=args.seed)
                info["datasets"][name] = {"n": len(X)}
            elif name == "synthetic-1k":
                X, y = synthetic(8000, seed=args.seed, n_classes=1000, spread=1.0, imbalance=0.5)
                info["datasets"][name] = {"n": len(X), "classes": 1000}
                rows += bench_dataset(name, X, y, [("symmetric", 0.2), ("asymmetric", 0.2)], args.seed)
                continue
            elif name == "digits":
                X, y = digits()
                info["datasets"][name] = {"n": len(X), "features": "raw 8x8 pixels, centred, L2-normalised"}
            elif name == "demo":
                X, y, dinfo = demo_embeddings(Path(workdir))
                info["datasets"][name] = {"n": len(X), **dinfo}
            else:
                raise SystemExit(f"unknown dataset {name!r}; use synthetic, synthetic-1k, digits, demo")
            rows += bench_dataset(name, X, y, settings, args.seed, sweep=args.sweep)
        if args.project is not None:
            X, y, pinfo = project_embeddings(args.project, args.truth)
            info["datasets"]["project"] = {"n": len(X), **pinfo}
            rows += bench_dataset(f"project:{args.project.name}", X, y, settings, args.seed, sweep=args.sweep)
    real = shared_noisy_sets()
    if real:
        for name, X, yc, yn in real:
            rows += real_noisy(name, X, yc, yn, args.seed)
    else:
        info["real_noisy_set"] = f"absent ({SHARED_NOISY}/*.npz not found); skipped"
        print(f"no real noisy-label set under {SHARED_NOISY}; skipped")
    print_table(rows)
    md = markdown_table(rows)
    result = {"bench": "label_issues", "quick": args.quick, "sweep": args.sweep, "seed": args.seed,
              "seconds": round(time.perf_counter() - t0, 1), **info, "averages": averages(rows), "rows": rows,
              "markdown": md}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print("\naverages over all runs:")
    for m, a in result["averages"].items():
        print(f"  {m:30s} F1={a['f1']:.3f} AUROC={a['auroc']:.3f} P={a['precision']:.3f} R={a['recall']:.3f} "
              f"s={a['seconds']:.2f} ({a['runs']} runs)")
    print("\nTable for docs/benchmarks.md:\n" + md)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()

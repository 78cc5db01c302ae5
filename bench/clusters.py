"""Clustering quality against ground-truth classes: ours (FAISS k-means, auto-k and given-k; HDBSCAN) vs
scikit-learn KMeans and plain FAISS k-means, plus the 2-D map (UMAP vs PCA), all in the same run.

Scores, per dataset and method (k-means methods averaged over seeds):

* ``ACC`` — clustering accuracy: the best one-to-one matching of clusters to classes (Hungarian, scipy
  ``linear_sum_assignment``); clusters beyond the number of classes (and HDBSCAN's noise) count as errors;
* ``NMI`` and ``ARI`` (scikit-learn), which do not need a matching and do not punish a finer clustering as hard;
* ``k`` found and seconds (auto-k includes the sweep over k).

Methods:

* ``ours k=true``   — :func:`engine.analyses.clusters.cluster_embeddings` with the true number of classes;
* ``ours auto-k``   — the same with ``k=None`` (:func:`choose_k`: kNN-graph modularity over a sweep of k);
* ``ours auto-k, silhouette (before)`` — the earlier rule, ``k_criterion="silhouette"``;
* ``ours hdbscan``  — ``method="hdbscan"`` with its defaults;
* ``sklearn KMeans`` — ``sklearn.cluster.KMeans(k, n_init=3)`` (k-means++; same restarts as ours);
* ``faiss Kmeans (random init)`` — ``faiss.Kmeans(d, k, niter=25, nredo=3)``: FAISS's own default initialisation,
  the ablation behind our k-means++ seeding.

2-D map: trustworthiness (scikit-learn, 10 neighbours: are 2-D neighbours true neighbours?) and the 2-D
1-nearest-neighbour class accuracy of :func:`embed_2d` (UMAP) vs PCA, with seconds.

Datasets: ``synthetic`` (imbalanced Gaussian blobs, 64-d), ``digits`` (sklearn digits, raw 8x8 pixels), ``demo``
(the demo dataset's PNG digits embedded with the offline ``effnet-lite0`` encoder; built once, reused with
``--workdir``), and any ``/work/shared/data/clusters/*.npz`` (keys ``features``, ``labels``) when present.

Usage::

    python bench/clusters.py                 # full run (~5 min on 2 cores, most of it embedding the demo)
    python bench/clusters.py --quick         # synthetic + digits, one seed (~1 min)
    python bench/clusters.py --workdir /tmp/curate-bench   # keep/reuse the embedded demo project

Writes bench/results/clusters.json (``--quick``: clusters_quick.json), prints a table and a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curate.engine.analyses.clusters import cluster_embeddings, embed_2d  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "clusters.json"
SHARED = Path("/work/shared/data/clusters")


# ---------------------------------------------------------------------------------------------- datasets
def l2n(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def synthetic(n: int = 2000, n_classes: int = 10, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced Gaussian blobs (class weights 1 .. 0.2), L2-normalised like embeddings.

    The classes are separable (nearest true centre: 100% at n=2000) but imbalanced, which is where k-means likes to
    split a big class and merge two small ones.
    """
    rng = np.random.default_rng(seed)
    w = np.linspace(1.0, 0.2, n_classes)
    y = rng.choice(n_classes, size=n, p=w / w.sum())
    centres = rng.normal(0, 1, (n_classes, dim))
    return l2n(centres[y] + rng.normal(0, 1.3, (n, dim))), y.astype(np.int64)


def digits_pixels() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def demo_embeddings(workdir: Path, encoder: str = "effnet-lite0") -> tuple[np.ndarray, np.ndarray, dict]:
    """The demo dataset's labeled images embedded with ``encoder`` and their TRUE digit (planted label noise and
    photo outliers removed from the truth, not from the images).  A project already built in ``workdir`` is reused.

    Returns (L2-normalised features, true labels, info).
    """
    from curate.engine.catalog import init_project
    from curate.engine.demo import DemoTruth, build_demo_dataset
    from curate.engine.embed import embed_project, load_embeddings
    from curate.engine.ingest import ingest

    t0 = time.perf_counter()
    data, proj = workdir / "demo-data", workdir / "demo-project"
    if (data / "ground_truth.json").is_file() and (proj / "catalog.duckdb").is_file():
        truth = DemoTruth.load(data)
        cat = init_project(proj)
    else:
        truth = build_demo_dataset(data, seed=0)
        cat = init_project(proj)
        ingest(cat, data / truth.labeled_dir, kind="imagefolder")
    t1 = time.perf_counter()
    name = embed_project(cat, encoder=encoder, device="cpu")  # a no-op when every sample is embedded
    t2 = time.perf_counter()
    es = load_embeddings(cat, name)
    paths = dict(cat.query("SELECT id, path FROM samples"))
    root = truth.root.resolve()
    keep, y = [], []
    for row, sid in enumerate(es.sample_ids):
        rel = Path(paths[int(sid)]).resolve().relative_to(root).as_posix()
        if rel in truth.true_label and rel not in set(truth.outliers):
            keep.append(row)
            y.append(int(truth.true_label[rel]))
    info = {"encoder": name, "build_ingest_s": round(t1 - t0, 1), "embed_s": round(t2 - t1, 1),
            "project": str(proj), "features": f"{name} embeddings of the demo PNGs"}
    return es.vectors[keep], np.asarray(y, dtype=np.int64), info


def shared_sets() -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for f in sorted(SHARED.glob("*.npz")) if SHARED.is_dir() else []:
        z = np.load(f)
        X, y = np.asarray(z["features"], np.float32), np.asarray(z["labels"]).astype(np.int64)
        out.append((f"shared:{f.stem}", X, y))
    return out


# ---------------------------------------------------------------------------------------------- scoring
def hungarian_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Best one-to-one cluster->class matching accuracy; unmatched clusters (and noise -1) count as errors."""
    from scipy.optimize import linear_sum_assignment

    _, yt = np.unique(y_true, return_inverse=True)
    _, yp = np.unique(y_pred, return_inverse=True)
    m = np.zeros((yp.max() + 1, yt.max() + 1))
    np.add.at(m, (yp, yt), 1)
    if (np.asarray(y_pred) == -1).any():  # noise is never "matched" to a class
        m[np.searchsorted(np.unique(y_pred), -1)] = 0
    r, c = linear_sum_assignment(-m)
    return float(m[r, c].sum() / len(y_true))


def score(y: np.ndarray, pred: np.ndarray) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"acc": hungarian_accuracy(y, pred), "nmi": float(normalized_mutual_info_score(y, pred)),
            "ari": float(adjusted_rand_score(y, pred)), "k": int(len(set(pred.tolist()) - {-1})),
            "noise": float(np.mean(pred == -1))}


def methods(k_true: int):
    import faiss
    from sklearn.cluster import KMeans

    def ours_k(X, seed):
        return cluster_embeddings(X, k=k_true, seed=seed).labels

    def ours_auto(X, seed):
        return cluster_embeddings(X, k=None, seed=seed).labels

    def ours_auto_silhouette(X, seed):
        return cluster_embeddings(X, k=None, seed=seed, k_criterion="silhouette").labels

    def ours_hdbscan(X, seed):
        return cluster_embeddings(X, method="hdbscan", seed=seed).labels

    def sk(X, seed):
        return KMeans(n_clusters=k_true, n_init=3, random_state=seed).fit_predict(X)

    def faiss_random(X, seed):
        X = np.ascontiguousarray(X, dtype=np.float32)
        km = faiss.Kmeans(X.shape[1], k_true, niter=25, nredo=3, seed=seed, verbose=False)
        km.train(X)
        return km.index.search(X, 1)[1][:, 0]

    return [("ours k=true", ours_k, True), ("ours auto-k", ours_auto, True),
            ("ours auto-k, silhouette (before)", ours_auto_silhouette, True), ("ours hdbscan", ours_hdbscan, False),
            ("sklearn KMeans", sk, True), ("faiss Kmeans (random init)", faiss_random, True)]


def bench_dataset(name: str, X: np.ndarray, y: np.ndarray, seeds: list[int]) -> list[dict]:
    rows = []
    k_true = int(len(np.unique(y)))
    for method, fn, seeded in methods(k_true):
        runs = []
        for seed in (seeds if seeded else seeds[:1]):  # HDBSCAN is deterministic
            t0 = time.perf_counter()
            pred = np.asarray(fn(X, seed))
            runs.append({**score(y, pred), "seconds": time.perf_counter() - t0})
        row = {"dataset": name, "n": int(len(X)), "dim": int(X.shape[1]), "classes": k_true, "method": method,
               "seeds": len(runs)}
        for key in ("acc", "nmi", "ari", "k", "noise", "seconds"):
            vals = [r[key] for r in runs]
            row[key] = round(float(np.mean(vals)), 4)
            if key in ("acc", "nmi", "ari") and len(vals) > 1:
                row[key + "_std"] = round(float(np.std(vals)), 4)
        row["k_per_seed"] = [int(r["k"]) for r in runs]
        rows.append(row)
        print(f"  {name:10s} {method:28s} ACC={row['acc']:.3f} NMI={row['nmi']:.3f} ARI={row['ari']:.3f} "
              f"k={row['k_per_seed']} {row['seconds']:.2f}s", flush=True)
    return rows


def bench_map(name: str, X: np.ndarray, y: np.ndarray, seed: int) -> list[dict]:
    from sklearn.manifold import trustworthiness

    rows = []
    for method in ("umap", "pca"):
        t0 = time.perf_counter()
        m = embed_2d(X, seed=seed, method=method)
        secs = time.perf_counter() - t0
        d = ((m.xy[:, None, :] - m.xy[None, :, :]) ** 2).sum(-1) if len(X) <= 5000 else None
        knn_acc = None
        if d is not None:
            np.fill_diagonal(d, np.inf)
            knn_acc = float((y[d.argmin(axis=1)] == y).mean())
        rows.append({"dataset": name, "map": method, "seconds": round(secs, 2),
                     "trustworthiness@10": round(float(trustworthiness(X, m.xy, n_neighbors=10)), 4),
                     "knn1_class_acc_2d": None if knn_acc is None else round(knn_acc, 4)})
        print(f"  {name:10s} map {method:5s} trust={rows[-1]['trustworthiness@10']:.3f} "
              f"1-NN acc in 2-D={knn_acc:.3f} {secs:.1f}s", flush=True)
    return rows


def markdown(rows: list[dict], maps: list[dict]) -> str:
    lines = ["| dataset | method | ACC | NMI | ARI | k found | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ks = "/".join(map(str, sorted(set(r["k_per_seed"]))))
        noise = f" ({r['noise']:.0%} noise)" if r["noise"] else ""
        lines.append(f"| {r['dataset']} (n={r['n']}, {r['classes']} cl.) | {r['method']} | {r['acc']:.3f} | "
                     f"{r['nmi']:.3f} | {r['ari']:.3f} | {ks}{noise} | {r['seconds']:.2f} |")
    lines += ["", "| dataset | 2-D map | trustworthiness@10 | 1-NN class acc. in 2-D | s |", "|---|---|---|---|---|"]
    for m in maps:
        lines.append(f"| {m['dataset']} | {m['map']} | {m['trustworthiness@10']:.3f} | "
                     f"{'-' if m['knn1_class_acc_2d'] is None else format(m['knn1_class_acc_2d'], '.3f')} | "
                     f"{m['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="synthetic + digits, one seed")
    ap.add_argument("--datasets", default=None, help="comma list of synthetic,digits,demo")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per k-means method (quick: 1)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to build/reuse the demo project")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or (RESULTS.with_name("clusters_quick.json") if args.quick else RESULTS)
    names = (args.datasets or ("synthetic,digits" if args.quick else "synthetic,digits,demo")).split(",")
    seeds = list(range(1 if args.quick else args.seeds))
    t0 = time.perf_counter()
    rows: list[dict] = []
    maps: list[dict] = []
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="curate-bench-clusters-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in names:
            print(f"dataset {name} ...", flush=True)
            if name == "synthetic":
                X, y = synthetic(1000 if args.quick else 2000)
                info[name] = {"features": "imbalanced Gaussian blobs (weights 1..0.2), 64-d, sd 1.3, L2-normalised"}
            elif name == "digits":
                X, y = digits_pixels()
                info[name] = {"features": "raw 8x8 pixels (0..16), not normalised"}
            elif name == "demo":
                X, y, info[name] = demo_embeddings(workdir)
            else:
                raise SystemExit(f"unknown dataset {name!r}; use synthetic, digits, demo")
            rows += bench_dataset(name, X, y, seeds)
            maps += bench_map(name, X, y, seed=0)
    shared = shared_sets()
    for name, X, y in shared:
        rows += bench_dataset(name, X, y, seeds)
    if not shared:
        info["shared"] = f"absent ({SHARED}/*.npz not found); skipped"
    md = markdown(rows, maps)
    result = {"bench": "clusters", "quick": args.quick, "seeds": seeds, "seconds": round(time.perf_counter() - t0, 1),
              "datasets": info, "rows": rows, "maps": maps, "markdown": md}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n" + md)
    print(f"\nwrote {out} in {result['seconds']}s")
    return result


if __name__ == "__main__":
    main()

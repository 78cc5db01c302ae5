"""What else was tried against the two #16 targets the defaults do not meet, on the vectors of ``bench/real_data.py``.

The real-data benchmark leaves two targets unmet with the 64 px offline encoder: label issues beat cleanlab's recipe
by 0.03-0.045 F1 (target 0.05), and clusters with k = 10 reach 0.56 of the linear-probe accuracy (target 0.8).
This script reruns the alternatives on the same cached vectors (run ``bench/real_data.py`` at that size and
encoder first), so the claim "the encoder is the ceiling" is measured rather than asserted:

* **label issues** — ranking quality (precision at the true noise count, AUROC; F1 tracks the precision at the
  noise count within 0.004 here, see docs/benchmarks.md) of:
  ours (the defaults); a non-linear probe (5-fold MLP on the same whitened components, alone and averaged with
  ours); a wider kNN graph (k = 50); other cleanlab rankings of our probabilities (normalized margin, the
  per-class-threshold adjustment); the noise-transition-aware posterior P(true = given | x, given) with the
  transition matrix estimated by confident learning and, as an oracle, with the *true* matrix;
  and cleanlab's recipe as the baseline;
* **clusters with k = 10** — ACC against the true classes of k-means on the raw vectors, on whitened principal
  components, spectral clustering of the kNN graph, and ours, over the linear-probe accuracy.

Writes ``bench/results/real_data_ablations.json`` and prints the tables.

    python bench/real_data_ablations.py --size 10000 --encoder effnet-lite0:64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from real_data import SHARED, cluster_scores  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "real_data_ablations.json"


def ranking(score: np.ndarray, flip: np.ndarray) -> dict:
    """Precision at the true noise count and AUROC of a label-quality score (lower = more likely wrong)."""
    from sklearn.metrics import roc_auc_score

    top = np.argsort(score, kind="stable")[: int(flip.sum())]
    return {"precision_at_noise_count": round(float(flip[top].mean()), 4),
            "auroc": round(float(roc_auc_score(flip, -score)), 4)}


def mlp_oos(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0, epochs: int = 30) -> np.ndarray:
    """Out-of-sample probabilities of a 5-fold one-hidden-layer MLP (dropout, AdamW, one-cycle schedule)."""
    import torch
    from sklearn.model_selection import StratifiedKFold

    P = np.zeros((len(X), n_classes), np.float32)
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(X.shape[1], 1024), torch.nn.GELU(),
                                  torch.nn.Dropout(0.5), torch.nn.Linear(1024, n_classes))
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
        steps = epochs * ((len(tr) + 255) // 256)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps)
        Xt, yt = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(len(tr))
            for b in range(0, len(tr), 256):
                idx = perm[b:b + 256]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx]).backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            P[te] = torch.softmax(net(torch.from_numpy(X[te])), 1).numpy()
    return P


def transition_posterior(P: np.ndarray, y: np.ndarray, joint: np.ndarray) -> np.ndarray:
    """P(true = given | x, given) from class probabilities and a joint P(given, true) (rows given, columns true)."""
    T = joint / joint.sum(axis=0, keepdims=True)  # T[i, j] = P(given = i | true = j)
    rows = np.arange(len(y))
    return P[rows, y] * T[y, y] / np.maximum((P * T[y, :]).sum(axis=1), 1e-12)


def label_ablations(V: np.ndarray, graph, rows: np.ndarray, ids_n: int, clean: np.ndarray, L) -> dict:
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from curate.engine.analyses.label_issues import find_label_issues, reduce_for_probe
    from curate.indexes.knn import knn_graph

    n = len(rows)
    Z = reduce_for_probe(V[rows], 256)
    Z = (Z / Z.std(axis=0, keepdims=True)).astype(np.float32)
    wide = knn_graph(V, k=50)
    out = {}
    for noise in ("random_label1", "worse_label"):
        y = L[noise][:n].astype(np.int64)
        flip = y != clean
        labels = np.full(ids_n, None, dtype=object)
        labels[rows] = y
        res = {"true_noise": round(float(flip.mean()), 4)}
        t = time.perf_counter()
        ours = find_label_issues(V, labels, knn_graph=graph)
        P = ours.pred_probs[rows].astype(np.float64)
        P /= P.sum(axis=1, keepdims=True)
        res["ours (defaults)"] = {**ranking(P[np.arange(n), y], flip), "seconds": round(time.perf_counter() - t, 1)}
        t = time.perf_counter()
        Pm = mlp_oos(Z, y, 10).astype(np.float64)
        res["MLP probe (5-fold, 1 hidden layer)"] = {**ranking(Pm[np.arange(n), y], flip),
                                                     "seconds": round(time.perf_counter() - t, 1)}
        mix = 0.5 * Pm + 0.5 * P
        res["MLP probe averaged with ours"] = ranking(mix[np.arange(n), y], flip)
        w = find_label_issues(V, labels, knn_graph=wide)
        Pw = w.pred_probs[rows]
        res["ours, kNN graph k = 50"] = ranking(Pw[np.arange(n), y], flip)
        for method, adjust in (("normalized_margin", False), ("self_confidence", True)):
            q = get_label_quality_scores(y, P, method=method, adjust_pred_probs=adjust)
            res[f"ours ranked by {method}{', per-class adjusted' if adjust else ''}"] = ranking(q, flip)
        res["transition-aware posterior, estimated T"] = ranking(transition_posterior(P, y, np.asarray(ours.joint)),
                                                                 flip)
        true_joint = np.zeros((10, 10))
        np.add.at(true_joint, (y, clean), 1)
        res["transition-aware posterior, TRUE T (oracle)"] = ranking(transition_posterior(P, y, true_joint), flip)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Pr = cross_val_predict(LogisticRegression(max_iter=1000), V[rows], y, cv=5, method="predict_proba")
            cl_find(y, Pr)
        res["cleanlab recipe (baseline)"] = {**ranking(Pr[np.arange(n), y], flip),
                                             "seconds": round(time.perf_counter() - t, 1)}
        out[noise] = res
        print(f"label issues {noise}: " + "; ".join(f"{k} {v['precision_at_noise_count']}"
                                                     for k, v in res.items() if isinstance(v, dict)), flush=True)
    return out


def cluster_ablations(V: np.ndarray, graph, rows: np.ndarray, clean: np.ndarray, probe_acc: float) -> dict:
    """Every method clusters all embedded samples (as ``curate audit clusters`` does); scored on the N photos."""
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.decomposition import PCA
    from sklearn.neighbors import kneighbors_graph

    from curate.engine.analyses.clusters import cluster_embeddings, refine_clusters

    out = {}

    def add(name, labels, t):
        out[name] = {**cluster_scores(clean, np.asarray(labels)[rows]), "seconds": round(time.perf_counter() - t, 1)}
        out[name]["acc_over_probe"] = round(out[name]["acc"] / probe_acc, 3)
        print(f"clusters {name}: ACC {out[name]['acc']} ({out[name]['acc_over_probe']} of the probe)", flush=True)

    t = time.perf_counter()
    add("k-means, raw vectors (sklearn)", KMeans(10, n_init=3, random_state=0).fit_predict(V), t)
    for d in (64, 128):
        t = time.perf_counter()
        Z = PCA(d, whiten=True, random_state=0).fit_transform(V)
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
        add(f"k-means, {d} whitened principal components", KMeans(10, n_init=3, random_state=0).fit_predict(Z), t)
    t = time.perf_counter()
    A = kneighbors_graph(V, 10, metric="cosine", include_self=False)
    A = 0.5 * (A + A.T)
    add("spectral clustering of the 10-NN graph",
        SpectralClustering(10, affinity="precomputed", random_state=0, assign_labels="cluster_qr").fit_predict(A), t)
    t = time.perf_counter()
    res = refine_clusters(V, cluster_embeddings(V, k=10, method="kmeans", seed=0), np.asarray(graph.indices),
                          np.asarray(graph.similarities))
    add("ours (k-means + neighbour-consistent refinement)", res.labels, t)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10000)
    ap.add_argument("--encoder", default="effnet-lite0:64")
    ap.add_argument("--work", default=str(ROOT / "bench" / ".real_data"))
    args = ap.parse_args(argv)
    project = Path(args.work) / f"project-{args.size}"
    if not (SHARED / "labels.npz").exists() or not project.exists():
        raise SystemExit(f"needs {SHARED} and {project}: run bench/real_data.py --sizes {args.size} "
                         f"--encoders {args.encoder} first")
    from curate.engine.analyses.label_issues import reduce_for_probe
    from curate.engine.analyses.probe import LinearProbe
    from curate.engine.catalog import open_project
    from curate.engine.inputs import Inputs
    from sklearn.model_selection import StratifiedKFold

    cat = open_project(project)
    inputs = Inputs.open(cat, encoder=args.encoder)
    es, graph = inputs.embeddings, inputs.graph(10)
    ids = np.asarray(es.sample_ids, np.int64)
    paths = dict(cat.query("SELECT id, path FROM samples"))
    train_pos = {int(Path(paths[int(i)]).stem): r for r, i in enumerate(ids) if "/train/" in paths[int(i)]}
    rows = np.array([train_pos[i] for i in range(args.size)])
    V = np.asarray(es.vectors, np.float32)
    L = np.load(SHARED / "labels.npz")
    clean = L["clean_label"][: args.size].astype(np.int64)
    Z = reduce_for_probe(V[rows], 256)
    probe_acc = float(np.mean([np.mean(LinearProbe(C=0.003).fit(Z[tr], clean[tr]).predict(Z[te]) == clean[te])
                               for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(Z, clean)]))
    res = {"n": args.size, "encoder": args.encoder, "linear_probe_accuracy": round(probe_acc, 4),
           "label_issues": label_ablations(V, graph, rows, len(ids), clean, L),
           "clusters_k10": cluster_ablations(V, graph, rows, clean, probe_acc)}
    all_res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    all_res[f"{args.size} {args.encoder}"] = res
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(all_res, indent=1))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    out = [f"N = {res['n']:,}, `{res['encoder']}`, linear-probe accuracy {res['linear_probe_accuracy']:.3f}", "",
           "| label ranking | " + " | ".join(f"`{k}` P@noise / AUROC" for k in res["label_issues"]) + " |",
           "|---|" + "---|" * len(res["label_issues"])]
    names = [k for k, v in next(iter(res["label_issues"].values())).items() if isinstance(v, dict)]
    for name in names:
        cells = [f"{r[name]['precision_at_noise_count']:.3f} / {r[name]['auroc']:.3f}"
                 for r in res["label_issues"].values()]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| clustering, k = 10 | ACC | NMI | ACC / probe acc. |", "|---|---:|---:|---:|"]
    for name, o in res["clusters_k10"].items():
        out.append(f"| {name} | {o['acc']:.3f} | {o['nmi']:.3f} | {o['acc_over_probe']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()

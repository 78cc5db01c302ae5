"""Out-of-distribution (outlier) scores from the shared kNN graph.

Score (cleanlab's convention and formula): for each sample, the mean cosine distance ``1 - cos`` to its ``k``
nearest neighbours, mapped to ``exp(-t * d / median(d))`` — a quality score in [0, 1] where LOWER = more
outlying.  This is exactly what ``cleanlab.outlier.OutOfDistribution().fit_score(features=X)`` computes for
high-dimensional features (cosine metric, scaling factor = median average distance, t = 1), but it reuses the
project's cached kNN graph instead of fitting a second neighbour index (``tests/test_outliers.py`` checks the
two agree).

Flag rule
---------
A sample is flagged when its average neighbour distance is far above the dataset's own typical value: the
modified z-score (Iglewicz & Hoaglin) of ``log(d)``, ``0.6745 * (log d - median) / MAD``, is above
``z_threshold`` (default 3.5).  Working on ``log(d)`` makes the right-skewed distance distribution roughly
symmetric; the median/MAD fit ignores the outliers themselves.  For a normal distribution 3.5 flags about
0.02%; real embedding distributions have heavier tails, so typically 0.2-2% of a dataset is flagged.  When the
MAD is zero (half the dataset are exact copies) the flag falls back to the 99th percentile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from engine.catalog import Catalog, CurateError

DEFAULT_K = 10
DEFAULT_Z = 3.5


@dataclass
class OutlierResult:
    """Per-row outlier scores (lower = more outlying), flags and ranks (1 = most outlying)."""

    score: np.ndarray
    is_outlier: np.ndarray
    rank: np.ndarray
    mean_distance: np.ndarray
    scaling_factor: float
    distance_cutoff: float

    def summary(self) -> dict:
        return {
            "n": int(len(self.score)),
            "flagged": int(self.is_outlier.sum()),
            "scaling_factor": float(self.scaling_factor),
            "distance_cutoff": float(self.distance_cutoff),
            "score_cutoff": float(np.exp(-self.distance_cutoff / self.scaling_factor)),
        }


def mean_neighbor_distance(knn_graph: Any, k: int | None = None) -> np.ndarray:
    """Mean cosine distance (``1 - similarity``) to the first ``k`` valid neighbours of each row.

    ``knn_graph`` has ``indices`` [n, K] (-1 = padding) and ``similarities`` [n, K] in descending order.
    Rows with no neighbour get distance 1 (as far as an orthogonal vector).
    """
    idx = np.asarray(knn_graph.indices)
    sims = np.asarray(knn_graph.similarities, dtype=np.float64)
    if idx.ndim != 2 or idx.shape != sims.shape:
        raise ValueError(f"kNN graph indices {idx.shape} and similarities {sims.shape} must be equal 2-D shapes")
    if k is not None:
        idx, sims = idx[:, :k], sims[:, :k]
    valid = idx >= 0
    dist = np.where(valid, np.clip(1.0 - sims, 0.0, 2.0), 0.0)
    cnt = valid.sum(axis=1)
    return np.where(cnt > 0, dist.sum(axis=1) / np.maximum(cnt, 1), 1.0)


def outlier_scores(knn_graph: Any, k: int | None = None, t: float = 1.0,
                   scaling_factor: float | None = None) -> np.ndarray:
    """Out-of-distribution score per row: ``exp(-t * d / scaling_factor)`` with ``d`` the mean kNN distance.

    Parameters
    ----------
    knn_graph : KnnGraph
        The shared kNN graph (self excluded).
    k : int, optional
        Number of neighbours to average (default: all columns of the graph).
    t : float
        Sharpness of the distance-to-score map (cleanlab's ``t``).
    scaling_factor : float, optional
        Distance normaliser; default ``median(d)`` (cleanlab's default), floored at 100 * machine epsilon.

    Returns
    -------
    float array in [0, 1]; lower = more outlying.
    """
    d = mean_neighbor_distance(knn_graph, k)
    if scaling_factor is None:
        scaling_factor = float(max(np.median(d) if len(d) else 1.0, 100 * np.finfo(np.float64).eps))
    return np.exp(-t * d / scaling_factor)


def find_outliers(knn_graph: Any, k: int | None = None, z_threshold: float = DEFAULT_Z, t: float = 1.0) -> OutlierResult:
    """Scores, flags and ranks of outliers (see the module doc for the flag rule).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> g = SimpleNamespace(indices=np.array([[1], [0], [0]]), similarities=np.array([[0.99], [0.99], [0.2]]))
    >>> int(find_outliers(g).rank[2])
    1
    """
    return outliers_from_distances(mean_neighbor_distance(knn_graph, k), z_threshold, t)


def outliers_from_distances(d: np.ndarray, z_threshold: float = DEFAULT_Z, t: float = 1.0) -> OutlierResult:
    """:func:`find_outliers` from precomputed mean neighbour distances (e.g. computed block by block)."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    scaling = float(max(np.median(d) if n else 1.0, 100 * np.finfo(np.float64).eps))
    score = np.exp(-t * d / scaling)
    logd = np.log(np.maximum(d, 1e-9))
    med = float(np.median(logd)) if n else 0.0
    mad = float(np.median(np.abs(logd - med))) if n else 0.0
    if mad > 1e-12:
        cutoff_log = med + z_threshold * mad / 0.6745
    else:
        cutoff_log = float(np.quantile(logd, 0.99)) if n else 0.0
    cutoff = float(np.exp(cutoff_log))
    is_outlier = (d > cutoff) if mad > 1e-12 else (d > cutoff) & (d > np.exp(med))
    order = np.lexsort((np.arange(n), score))  # lowest score first, ties by row
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    return OutlierResult(score=score, is_outlier=is_outlier, rank=rank, mean_distance=d, scaling_factor=scaling,
                         distance_cutoff=cutoff)


def run(cat: Catalog, encoder: str | None = None, k: int = DEFAULT_K, z_threshold: float = DEFAULT_Z,
        out_of_core: bool | None = None, block_rows: int = 262_144, progress=None) -> dict:
    """Score every embedded sample for outlierness and write the ``outliers`` table; returns the run summary.

    ``out_of_core`` (None = :func:`engine.shards.use_out_of_core` decides): read the memory-mapped sharded graph
    (:func:`indexes.graph.load_or_build_sharded_graph`) ``block_rows`` rows at a time; the scores are the same.
    ``progress``: an :data:`engine.progress.Progress` callback.
    """
    from engine.progress import step, track
    from engine.shards import use_out_of_core

    if k < 1:
        raise CurateError(f"outlier k must be >= 1, got {k}; try --k 10")
    big = use_out_of_core(cat, encoder, out_of_core)
    if big:
        from indexes.graph import load_or_build_sharded_graph

        with step(progress, "sharded kNN graph"):
            shards, graph = load_or_build_sharded_graph(cat, encoder, k=k)
        name, ids = shards.encoder, shards.sample_ids()
    else:
        from indexes.graph import load_or_build_graph

        with step(progress, "kNN graph"):
            es, graph = load_or_build_graph(cat, encoder=encoder, k=k, progress=progress)
        name, ids = es.encoder, np.asarray(es.sample_ids, np.int64)
    run_id = cat.start_run("outliers", {"encoder": name, "k": k, "z_threshold": z_threshold, "out_of_core": big})
    with cat.failing_run(run_id):
        if big:
            from types import SimpleNamespace

            d = np.empty(graph.n, np.float64)
            for s in track(range(0, graph.n, block_rows), "scores", progress=progress):
                e = min(graph.n, s + block_rows)
                d[s:e] = mean_neighbor_distance(SimpleNamespace(indices=graph.indices[s:e],
                                                                similarities=graph.similarities[s:e]), k)
            res = outliers_from_distances(d, z_threshold)
        else:
            with step(progress, "scores"):
                res = find_outliers(graph, k=k, z_threshold=z_threshold)
        df = pd.DataFrame({"sample_id": ids, "score": res.score.astype(float),
                           "is_outlier": res.is_outlier.astype(bool), "rank": res.rank.astype(np.int32)})
        top = np.argsort(res.rank, kind="stable")[:20]
        summary = {"encoder": name, "k": k, "z_threshold": z_threshold, "out_of_core": big, **res.summary(),
                   "top": [{"sample_id": int(ids[r]), "score": float(res.score[r])} for r in top]}
        cat.replace_analysis("outliers", df, run_id, summary)
    return summary


def top_outliers(cat: Catalog, limit: int = 20) -> pd.DataFrame:
    """The most outlying samples of the last run: rank, sample_id, score, is_outlier, path."""
    return cat.query_df(
        """SELECT o.rank, o.sample_id, o.score, o.is_outlier, s.path FROM outliers o
           JOIN samples s ON s.id = o.sample_id ORDER BY o.rank LIMIT ?""", [int(limit)])

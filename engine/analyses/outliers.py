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

from curate.engine.analyses.registry import Config, Result, register
from curate.engine.analyses.registry import run as registry_run
from curate.engine.catalog import Catalog, CurateError

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


@dataclass(frozen=True)
class OutliersConfig(Config):
    """``k``: neighbours averaged (the kNN-graph degree); ``z_threshold``: the modified z-score flag cut-off;
    ``block_rows``: graph rows read at a time (memory-mapped out of core)."""

    k: int = DEFAULT_K
    z_threshold: float = DEFAULT_Z
    block_rows: int = 262_144

    def validate(self) -> None:
        if int(self.k) < 1:
            raise CurateError(f"outlier k must be >= 1, got {self.k}; try --k 10")
        if not float(self.z_threshold) > 0:
            raise CurateError(f"outlier z threshold must be > 0, got {self.z_threshold}; try --z 3.5")
        if int(self.block_rows) < 1:
            raise CurateError(f"block_rows must be >= 1, got {self.block_rows}")


def compute(inputs: Any, config: OutliersConfig) -> Result:
    """Outlier scores over the shared kNN graph, read ``block_rows`` rows at a time (the same code in memory and
    out of core: both graphs expose ``indices`` / ``similarities`` row blocks)."""
    from types import SimpleNamespace

    from curate.engine.progress import track

    graph = inputs.graph(config.k)
    ids = inputs.sample_ids()
    n = len(ids)
    d = np.empty(n, np.float64)
    for s in track(range(0, n, config.block_rows), "scores", progress=inputs.progress):
        e = min(n, s + config.block_rows)
        d[s:e] = mean_neighbor_distance(SimpleNamespace(indices=graph.indices[s:e],
                                                        similarities=graph.similarities[s:e]), config.k)
    res = outliers_from_distances(d, config.z_threshold)
    df = pd.DataFrame({"sample_id": ids, "score": res.score.astype(float),
                       "is_outlier": res.is_outlier.astype(bool), "rank": res.rank.astype(np.int32)})
    top = np.argsort(res.rank, kind="stable")[:20]
    summary = {"k": config.k, "z_threshold": config.z_threshold, **res.summary(),
               "top": [{"sample_id": int(ids[r]), "score": float(res.score[r])} for r in top]}
    lines = [f"{summary['flagged']} of {summary['n']} samples flagged as outliers "
             f"(mean distance to {config.k} neighbours above {summary['distance_cutoff']:.3f})"]
    return Result(summary, tables={"outliers": df}, lines=lines, detail=res)


ANALYSIS = register("outliers", compute, config=OutliersConfig, title="samples far from every neighbour",
                    tables=("outliers",), needs=frozenset({"graph"}), graph_option="k", order=30)


def run(cat: Catalog, encoder: str | None = None, k: int = DEFAULT_K, z_threshold: float = DEFAULT_Z,
        out_of_core: bool | None = None, block_rows: int = 262_144, progress=None) -> dict:
    """Score every embedded sample for outlierness and write the ``outliers`` table; returns the run summary.

    The registry's runner does the work (:func:`curate.engine.analyses.registry.run`); ``out_of_core`` None lets
    :meth:`curate.engine.inputs.Inputs.open` decide.  ``progress``: an :data:`engine.progress.Progress` callback.
    """
    config = OutliersConfig(k=k, z_threshold=z_threshold, block_rows=block_rows)
    return registry_run(cat, ANALYSIS, config, encoder=encoder, out_of_core=out_of_core, graph_k=k,
                        progress=progress).summary


def top_outliers(cat: Catalog, limit: int = 20) -> pd.DataFrame:
    """The most outlying samples of the last run: rank, sample_id, score, is_outlier, path."""
    return cat.query_df(
        """SELECT o.rank, o.sample_id, o.score, o.is_outlier, s.path FROM outliers o
           JOIN samples s ON s.id = o.sample_id ORDER BY o.rank LIMIT ?""", [int(limit)])

"""Clusters of the embedding space, a per-cluster summary, and a 2-D map of every sample.

Pure functions over arrays do the work.  The registered analysis ``clusters`` (:func:`compute`, options
:class:`ClustersConfig`; :func:`run` is the same through keyword arguments) reads the vectors through the one
embeddings interface (:class:`curate.engine.inputs.Embeddings`), calls them and writes the ``clusters`` (one row
per sample: cluster, map x/y, distance to the centroid) and ``cluster_summaries`` (one row per cluster) tables in
one transaction.  Its core is written once: the clustering is fitted on ``emb.sample(...)`` — every row in memory,
a seeded sample out of core — and, for a sample, every row is then assigned to its nearest centroid block by block
(:func:`assign_all_rows`; :func:`sampled_kmeans` is the same scheme as a plain function).  HDBSCAN, the UMAP map
and the refinement over the kNN graph need every vector and run in memory only.

Methods
-------
* ``kmeans`` (default): FAISS k-means (GPU when the faiss build has GPUs), seeded, several restarts.  With
  ``k=None`` and no labels the number of clusters is chosen by :func:`choose_k`: k-means is fitted for every
  candidate k and the k whose clusters have the highest **modularity** over the kNN graph wins (how much more
  neighbour-edge weight stays inside the clusters than random wiring would keep).  The silhouette, the textbook
  criterion, rewards compact, well-separated blobs and collapses to k = 2-3 on real photo embeddings, whose groups
  overlap; it stays available (``criterion="silhouette"``).
* ``hdbscan``: density clusters (``sklearn.cluster.HDBSCAN``) with a noise label ``-1``.  High-dimensional vectors
  are first reduced with PCA (``reduce_dims``, default 50) because density estimates degrade in high dimension and
  HDBSCAN's cost grows with the dimension.

Cluster ids are renumbered by size (0 = largest), so the same data and seed always give the same ids.

The 2-D map (:func:`embed_2d`) is UMAP with a fixed ``random_state``; sets under ``pca_below`` points (UMAP's
neighbour graph is meaningless there) or a failing UMAP fall back to PCA.  Above ``fit_sample`` points UMAP is fitted
on a seeded sample and the remaining points are placed with ``UMAP.transform`` (the standard way to scale UMAP: the
layout is learned from a representative sample, every other point is embedded against it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from curate.engine.analyses.registry import Config, Result, register
from curate.engine.analyses.registry import run as registry_run
from curate.engine.catalog import Catalog, CurateError

log = logging.getLogger(__name__)

METHODS = ("kmeans", "hdbscan")
NOISE = -1


# ------------------------------------------------------------------------------------------------ results
@dataclass
class KSelection:
    """Outcome of the automatic choice of k.

    Attributes
    ----------
    k : the chosen number of clusters.
    k_values : candidates that were tried.
    scores : the criterion's score per candidate (higher is better), aligned with ``k_values``.
    criterion : name of the criterion (``"modularity"`` or ``"silhouette"``).
    sample_size : number of points the criterion was measured on.
    """

    k: int
    k_values: list[int]
    scores: list[float]
    criterion: str = "silhouette"
    sample_size: int = 0


@dataclass
class ClusterResult:
    """Cluster assignment of ``n`` points.

    Attributes
    ----------
    labels : int64 [n] cluster id per point, ``0..k-1`` ordered by size (0 = largest); ``-1`` = noise (HDBSCAN).
    centroids : float32 [k, d] cluster centres (k-means centroids, or member means for HDBSCAN).
    distances : float32 [n] Euclidean distance of each point to its cluster's centroid (NaN for noise).
    k : number of clusters (noise excluded).
    method : ``"kmeans"`` or ``"hdbscan"``.
    seed : the seed used.
    k_selection : how k was chosen when it was not given (None otherwise).
    inertia : k-means objective (sum of squared distances) or NaN.
    """

    labels: np.ndarray
    centroids: np.ndarray
    distances: np.ndarray
    k: int
    method: str
    seed: int
    k_selection: KSelection | None = None
    inertia: float = float("nan")

    @property
    def n_noise(self) -> int:
        return int((self.labels == NOISE).sum())


@dataclass
class ClusterSummary:
    """Summary of one cluster (row positions refer to the clustered array).

    Attributes
    ----------
    cluster : cluster id (``-1`` = HDBSCAN noise).
    size : number of members.
    representatives : row positions of the members closest to the centroid (most typical first).
    atypical : row positions of the members farthest from the centroid (most atypical first).
    majority_label : most frequent label among labeled members, or None.
    purity : fraction of labeled members that carry ``majority_label`` (None when no member is labeled).
    n_labeled : number of labeled members.
    name : suggested human-readable name, or None.
    """

    cluster: int
    size: int
    representatives: list[int]
    atypical: list[int]
    majority_label: str | None = None
    purity: float | None = None
    n_labeled: int = 0
    name: str | None = None


@dataclass
class Map2D:
    """2-D coordinates of every point: ``xy`` float32 [n, 2]; ``method`` is ``"umap"`` or ``"pca"``."""

    xy: np.ndarray
    method: str
    fitted_on: int = 0


# ------------------------------------------------------------------------------------------------ k-means
def _as_float32(X: np.ndarray, name: str = "X") -> np.ndarray:
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, dim), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def _use_gpu(gpu: bool | str) -> bool:
    if gpu == "auto":
        import faiss

        return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    return bool(gpu)


def _relabel_by_size(labels: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters 0..k-1 by decreasing size (ties: by old id); empty clusters are dropped."""
    valid = labels >= 0
    counts = np.bincount(labels[valid], minlength=len(centroids))
    order = sorted((c for c in range(len(centroids)) if counts[c] > 0), key=lambda c: (-counts[c], c))
    if not order:  # no cluster at all (HDBSCAN may call everything noise)
        return np.full(len(labels), NOISE, dtype=np.int64), centroids[:0]
    remap = np.full(len(centroids), NOISE, dtype=np.int64)
    remap[order] = np.arange(len(order))
    new = np.where(valid, remap[np.where(valid, labels, 0)], NOISE).astype(np.int64)
    return new, centroids[order]


def kmeans(
    X: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 3,
    spherical: bool = False,
    gpu: bool | str = "auto",
    max_train_points: int = 200_000,
    weights: np.ndarray | None = None,
) -> ClusterResult:
    """FAISS k-means with seeded restarts; clusters renumbered by size.

    Parameters
    ----------
    X : float array [n, d].
    k : number of clusters, ``1 <= k <= n``.
    seed : random seed (initialisation and training subsample).
    niter : Lloyd iterations per restart.
    nredo : restarts; the one with the lowest objective is kept.
    spherical : normalise centroids (cosine k-means) — useful for L2-normalised embeddings.
    gpu : ``"auto"`` uses a GPU when the faiss build has one; ``True``/``False`` force it.
    max_train_points : centroids are trained on at most this many points (seeded subsample), then every point is
        assigned to its nearest centroid.
    weights : optional non-negative per-point weights for training.

    Returns
    -------
    ClusterResult with ``method="kmeans"``.
    """
    X = _as_float32(X)
    n, d = X.shape
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    use_gpu = _use_gpu(gpu)
    with _faiss_threads(1 if n * k * d < SMALL_KMEANS_WORK else None):
        return _kmeans(X, k, seed, niter, nredo, spherical, use_gpu, max_train_points, weights)


# Below this many multiply-adds per Lloyd iteration (n * k * d) k-means runs single-threaded: OpenMP start-up and
# spinning cost more than the work, and on a shared machine two spinning threads can be 4x slower than one.
SMALL_KMEANS_WORK = 20_000_000


@contextlib.contextmanager
def _faiss_threads(n_threads: int | None) -> Iterator[None]:
    """Temporarily set FAISS's OpenMP thread count (None = leave it), restoring it afterwards."""
    import faiss

    if n_threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _kmeans(X, k, seed, niter, nredo, spherical, use_gpu, max_train_points, weights) -> ClusterResult:
    import faiss

    n, d = X.shape
    w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
    best = None
    for r in range(max(1, int(nredo))):
        # faiss initialises with random points, which often merges two well-separated clusters; k-means++ seeding
        # (on a bounded seeded sample) avoids most of those local minima, and restarts keep the best objective.
        rng = np.random.default_rng([int(seed), r])
        init = kmeans_plusplus(X, k, rng, sample_size=20_000)
        km = faiss.Kmeans(
            d,
            k,
            niter=int(niter),
            nredo=1,
            seed=int(seed) * 1000 + r,
            spherical=bool(spherical),
            gpu=use_gpu,
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=max(1, math.ceil(min(n, max_train_points) / k)),
        )
        km.train(X, weights=w, init_centroids=init)
        obj = float(km.obj[-1]) if len(km.obj) else float("inf")
        if best is None or obj < best[0]:
            best = (obj, km)
    km = best[1]
    centroids = np.asarray(km.centroids, dtype=np.float32).reshape(k, d)
    sq, assign = km.index.search(X, 1)
    labels = assign[:, 0].astype(np.int64)
    labels, centroids = _relabel_by_size(labels, centroids)
    dist = np.sqrt(np.maximum(sq[:, 0], 0)).astype(np.float32)
    return ClusterResult(
        labels=labels,
        centroids=centroids,
        distances=dist,
        k=len(centroids),
        method="kmeans",
        seed=int(seed),
        inertia=float(np.square(dist.astype(np.float64)).sum()),
    )


def kmeans_plusplus(X: np.ndarray, k: int, rng: np.random.Generator, sample_size: int | None = None,
                    n_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, with ``2 + log k`` trials per step as scikit-learn).

    Parameters
    ----------
    X : float32 [n, d].
    k : number of centres.
    rng : numpy Generator (seeded by the caller).
    sample_size : seed on a random subsample of at most this many points (bounds the O(n k d) cost).
    n_trials : candidates per step (default ``2 + int(log k)``).

    Returns
    -------
    float32 [k, d] initial centres (rows of ``X``).
    """
    n = len(X)
    S = X if sample_size is None or n <= sample_size else X[np.sort(rng.choice(n, size=sample_size, replace=False))]
    m = len(S)
    trials = (2 + int(np.log(max(k, 1)))) if n_trials is None else int(n_trials)
    sq_norms = np.einsum("ij,ij->i", S, S, dtype=np.float64)
    centers = np.empty((k, S.shape[1]), dtype=np.float32)
    first = int(rng.integers(m))
    centers[0] = S[first]
    closest = np.maximum(sq_norms - 2 * (S @ S[first]).astype(np.float64) + sq_norms[first], 0)
    for c in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: any remaining point will do
            cand = rng.integers(m, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            cand = np.minimum(cand, m - 1)
        d2 = np.maximum(sq_norms[:, None] - 2 * (S @ S[cand].T).astype(np.float64) + sq_norms[cand][None, :], 0)
        new_closest = np.minimum(closest[:, None], d2)
        best = int(np.argmin(new_closest.sum(axis=0)))
        centers[c] = S[cand[best]]
        closest = new_closest[:, best]
    return centers


def default_k_values(n: int, k_max: int | None = None) -> list[int]:
    """Candidate k for the sweep: every k in 2..20, then ~8 geometric steps up to ``k_max``.

    ``k_max`` defaults to ``min(100, n // 10)`` (a cluster should hold ~10+ points to be worth reviewing).
    """
    hi = min(100, n // 10) if k_max is None else int(k_max)
    hi = max(2, min(hi, n - 1))
    ks = set(range(2, min(hi, 20) + 1))
    if hi > 20:
        ks |= {int(round(v)) for v in np.geomspace(20, hi, 8)}
    return sorted(k for k in ks if 2 <= k <= hi)


def choose_k(
    X: np.ndarray,
    k_values: Sequence[int] | None = None,
    seed: int = 0,
    sample_size: int = 2000,
    fit_sample: int = 10_000,
    reduce_dims: int | None = 64,
    niter: int = 20,
    nredo: int = 3,
    spherical: bool = False,
    gpu: bool | str = "auto",
    progress: Any = None,
    criterion: str = "modularity",
    graph_k: int = 10,
) -> KSelection:
    """Choose the number of k-means clusters: the k whose clusters best follow the kNN graph (modularity), or the
    silhouette score on a fixed seeded sample.

    ``criterion="modularity"`` (default): the modularity of each candidate's k-means labels over the symmetrised,
    similarity-weighted kNN graph (``graph_k`` neighbours, cosine) of the sweep's points — the fraction of edge
    weight inside clusters minus what random wiring with the same degrees would put there.  Real embeddings form
    overlapping groups whose silhouette is highest at k = 2-3 whatever the number of classes, while the neighbour
    structure keeps rewarding a split until it cuts through a group (measurements: docs/analyses.md, "Clusters and
    the 2-D map").  ``criterion="silhouette"``: the earlier rule, below.

    The sweep works on a seeded subsample of at most ``fit_sample`` points, projected by PCA to ``reduce_dims``
    dimensions when ``X`` is wider (the sweep fits dozens of k-means models; the projection keeps the dominant
    structure and cuts the cost ~20x for 1,280-d embeddings).  For every candidate k, k-means is fitted there (best of
    ``nredo`` k-means++ restarts: a single restart often lands in a merge-two/split-one local minimum whose lower
    silhouette would wrongly favour a neighbouring k) and the silhouette of its labels is measured on the same
    ``sample_size`` points for every k (their distance matrix is computed once).  The k with the highest score wins;
    ties go to the smaller k.  The final clustering (:func:`cluster_embeddings`) then runs on all points in the full
    space.

    Parameters
    ----------
    X : float array [n, d], n >= 3.
    k_values : candidates (default :func:`default_k_values`).
    seed : seed for the samples, the PCA and k-means.
    sample_size : points used for the silhouette (the cost is quadratic in it).
    fit_sample : points the sweep's k-means models are fitted on.
    reduce_dims : PCA dimensions for the sweep (None: no projection).
    progress : an :data:`engine.progress.Progress` callback told of each candidate k.

    Returns
    -------
    KSelection
    """
    from sklearn.metrics import pairwise_distances, silhouette_score

    if criterion not in ("modularity", "silhouette"):
        raise ValueError(f"criterion must be 'modularity' or 'silhouette', got {criterion!r}")
    X = _as_float32(X)
    n = len(X)
    if n < 3:
        raise ValueError(f"need at least 3 points to choose k, got {n}")
    ks = sorted({int(k) for k in (k_values if k_values is not None else default_k_values(n)) if 2 <= int(k) < n})
    if not ks:
        raise ValueError(f"no candidate k between 2 and {n - 1}")
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=min(n, max(fit_sample, sample_size)), replace=False))
    Z = X[fit_idx]
    if reduce_dims is not None and Z.shape[1] > reduce_dims and len(Z) > reduce_dims:
        from sklearn.decomposition import PCA

        Z = np.ascontiguousarray(PCA(n_components=int(reduce_dims), random_state=seed).fit_transform(Z), np.float32)
    ks = [k for k in ks if k < len(Z)]
    from curate.engine.progress import track

    scores: list[float] = []
    if criterion == "modularity":
        W = _knn_adjacency(X[fit_idx], graph_k)
        for k in track(ks, "modularity sweep over k", progress=progress):
            res = kmeans(Z, k, seed=seed, niter=niter, nredo=nredo, spherical=spherical, gpu=gpu)
            scores.append(graph_modularity(W, res.labels))
        best = int(np.argmax(scores))  # first maximum = smallest k among ties
        return KSelection(k=ks[best], k_values=ks, scores=scores, criterion="modularity", sample_size=len(Z))
    sil = np.sort(rng.choice(len(Z), size=min(len(Z), sample_size), replace=False))
    D = pairwise_distances(Z[sil], metric="euclidean", n_jobs=1)
    for k in track(ks, "silhouette sweep over k", progress=progress):
        res = kmeans(Z, k, seed=seed, niter=niter, nredo=nredo, spherical=spherical, gpu=gpu)
        sub = res.labels[sil]
        if len(np.unique(sub)) < 2 or len(np.unique(sub)) >= len(sil):
            scores.append(float("-inf"))
            continue
        scores.append(float(silhouette_score(D, sub, metric="precomputed")))
    best = int(np.argmax(scores))  # first maximum = smallest k among ties
    return KSelection(k=ks[best], k_values=ks, scores=scores, criterion="silhouette", sample_size=len(sil))


def _knn_adjacency(X: np.ndarray, k: int) -> Any:
    """Symmetrised, similarity-weighted (negative cosines clipped to 0) kNN graph of the rows of ``X``, as a sparse
    matrix."""
    import scipy.sparse as sp

    from curate.indexes.knn import knn_graph

    n = len(X)
    g = knn_graph(X, k=int(min(k, max(1, n - 1))))
    gi, gs = np.asarray(g.indices, np.int64), np.asarray(g.similarities, np.float64)
    rows = np.repeat(np.arange(n), gi.shape[1])
    ok = gi.ravel() >= 0
    A = sp.csr_matrix((np.clip(gs.ravel()[ok], 0.0, None), (rows[ok], gi.ravel()[ok])), shape=(n, n))
    return (A + A.T) * 0.5


def graph_modularity(W: Any, labels: np.ndarray) -> float:
    """Newman's modularity of a partition of a weighted undirected graph (sparse symmetric ``W``):
    ``sum_c [ w_in(c) / w - (deg(c) / w)^2 ]`` with ``w`` the total degree."""
    labels = np.asarray(labels, np.int64)
    C = W.tocoo()
    deg = np.asarray(W.sum(axis=1)).ravel()
    total = float(deg.sum())
    if total <= 0:
        return 0.0
    inside = float(C.data[labels[C.row] == labels[C.col]].sum())
    dk = np.bincount(labels, weights=deg, minlength=int(labels.max()) + 1)
    return inside / total - float(np.sum((dk / total) ** 2))


# ------------------------------------------------------------------------------------------------ HDBSCAN
def hdbscan(
    X: np.ndarray,
    min_cluster_size: int | None = None,
    min_samples: int | None = None,
    reduce_dims: int | None = 50,
    seed: int = 0,
) -> ClusterResult:
    """Density clusters with ``sklearn.cluster.HDBSCAN``; points in no cluster get the noise label ``-1``.

    Parameters
    ----------
    X : float array [n, d].
    min_cluster_size : smallest group HDBSCAN calls a cluster (default ``max(5, n // 100)``).
    min_samples : neighbourhood size of the core distance (default = ``min_cluster_size``).
    reduce_dims : PCA to this many dimensions first when ``d`` is larger (None: no reduction).
    seed : seed of the PCA solver (HDBSCAN itself is deterministic).
    """
    from sklearn.cluster import HDBSCAN

    X = _as_float32(X)
    n, d = X.shape
    if n < 2:
        raise ValueError(f"HDBSCAN needs at least 2 points, got {n}")
    mcs = max(5, n // 100) if min_cluster_size is None else int(min_cluster_size)
    mcs = max(2, min(mcs, n))
    Z = X
    if reduce_dims is not None and d > reduce_dims and n > reduce_dims:
        from sklearn.decomposition import PCA

        Z = PCA(n_components=int(reduce_dims), random_state=seed).fit_transform(X).astype(np.float32)
    model = HDBSCAN(min_cluster_size=mcs, min_samples=min_samples, copy=True)
    raw = model.fit_predict(Z).astype(np.int64)
    n_raw = int(raw.max()) + 1 if (raw >= 0).any() else 0
    centroids = np.stack([X[raw == c].mean(axis=0) for c in range(n_raw)]) if n_raw else np.zeros((0, d), np.float32)
    labels, centroids = _relabel_by_size(raw, centroids.astype(np.float32))
    dist = np.full(n, np.nan, dtype=np.float32)
    ok = labels >= 0
    if ok.any():
        dist[ok] = np.linalg.norm(X[ok] - centroids[labels[ok]], axis=1)
    return ClusterResult(labels=labels, centroids=centroids, distances=dist, k=len(centroids), method="hdbscan",
                         seed=int(seed))


def cluster_embeddings(
    X: np.ndarray,
    k: int | None = None,
    method: str = "kmeans",
    seed: int = 0,
    k_values: Sequence[int] | None = None,
    min_cluster_size: int | None = None,
    spherical: bool = False,
    gpu: bool | str = "auto",
    progress: Any = None,
    k_criterion: str = "modularity",
) -> ClusterResult:
    """Cluster ``X`` with k-means (k given, or chosen by :func:`choose_k`) or HDBSCAN.

    Parameters
    ----------
    X : float array [n, d] (e.g. L2-normalised embeddings).
    k : number of k-means clusters; None chooses it automatically (ignored by HDBSCAN).
    method : ``"kmeans"`` or ``"hdbscan"``.
    seed : random seed; the same inputs and seed give the same result.
    k_values : candidate k for the automatic choice.
    min_cluster_size : HDBSCAN's smallest cluster.
    spherical : cosine k-means (normalised centroids).
    gpu : FAISS GPU use (``"auto"``, True, False).
    progress : an :data:`engine.progress.Progress` callback (the k sweep).
    k_criterion : how :func:`choose_k` picks k when it is not given (``modularity`` or ``silhouette``).

    Returns
    -------
    ClusterResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(c, 0.1, (50, 2)) for c in (0, 5, 10)])
    >>> cluster_embeddings(X, seed=0).k
    3
    """
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; use one of {', '.join(METHODS)}")
    X = _as_float32(X)
    n = len(X)
    if n == 0:
        raise ValueError("cannot cluster an empty array")
    if method == "hdbscan":
        return hdbscan(X, min_cluster_size=min_cluster_size, seed=seed)
    selection = None
    if k is None:
        if n < 3:
            k = 1
        else:
            selection = choose_k(X, k_values=k_values, seed=seed, spherical=spherical, gpu=gpu, progress=progress,
                                 criterion=k_criterion)
            k = selection.k
    res = kmeans(X, int(k), seed=seed, spherical=spherical, gpu=gpu)
    res.k_selection = selection
    return res


# ------------------------------------------------------------------------------------------------ any size
def assign_to_centroids(emb: Any, centroids: np.ndarray, block_rows: int = 65_536,
                        on_block: Callable[[int, np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The nearest centroid (L2) of every row of ``emb`` and the distance to it, one block of rows at a time.

    Parameters
    ----------
    emb : :class:`curate.engine.inputs.Embeddings` (in memory or memory-mapped shards).
    centroids : float [k, d].
    block_rows : rows read at a time (memory: one block).
    on_block : called with ``(first global row, block vectors)`` for every block (a second per-row computation
        that shares the pass over the shards).

    Returns
    -------
    (int64 [n] centroid index per row, float32 [n] Euclidean distance to it)
    """
    import faiss

    index = faiss.IndexFlatL2(int(emb.dim))
    index.add(np.ascontiguousarray(centroids, np.float32))
    n = len(emb)
    labels = np.empty(n, np.int64)
    dist = np.empty(n, np.float32)
    for start, _ids, X in emb.iter_blocks(block_rows):
        D, I = index.search(np.ascontiguousarray(X, np.float32), 1)
        labels[start:start + len(X)] = I[:, 0]
        dist[start:start + len(X)] = np.sqrt(np.maximum(D[:, 0], 0))
        if on_block is not None:
            on_block(start, X)
    return labels, dist


def assign_all_rows(emb: Any, fit: ClusterResult, block_rows: int = 65_536,
                    on_block: Callable[[int, np.ndarray], None] | None = None) -> ClusterResult:
    """A k-means result fitted on a sample of ``emb``, extended to every row: each row gets its nearest centroid
    (:func:`assign_to_centroids`) and clusters are renumbered by their size over all rows (0 = largest, ties by
    the sample's id), as in memory."""
    labels, dist = assign_to_centroids(emb, fit.centroids, block_rows, on_block)
    sizes = np.bincount(labels, minlength=fit.k)
    order = np.lexsort((np.arange(fit.k), -sizes))
    remap = np.empty(fit.k, np.int64)
    remap[order] = np.arange(fit.k)
    return ClusterResult(labels=remap[labels], centroids=np.asarray(fit.centroids)[order], distances=dist, k=fit.k,
                         method=fit.method, seed=fit.seed, k_selection=fit.k_selection,
                         inertia=float(np.square(dist, dtype=np.float64).sum()))


@dataclass
class ShardedClusters:
    """k-means over shards: ``labels`` int32 [n], ``distances`` float32 [n] (L2 to the centroid), ``centroids``."""

    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    method: str
    trained_on: int


def sampled_kmeans(emb: Any, k: int, *, method: str = "sampled", sample_size: int = 200_000, seed: int = 0,
                   niter: int = 25, nredo: int = 1, block_rows: int = 65_536) -> ShardedClusters:
    """k-means clusters of every row of ``emb`` (an :class:`~curate.engine.inputs.Embeddings`, e.g. shards) without
    loading all rows.

    ``method="sampled"``: :func:`kmeans` on a seeded sample of ``sample_size`` rows (all rows when there are fewer
    — then the centroids are exactly the in-memory ones), then each block assigned to its nearest centroid.
    ``method="minibatch"``: scikit-learn ``MiniBatchKMeans.partial_fit`` over every block (one pass), then the same
    assignment pass.  Cluster ids are the fitted centroids' (the sample's size order).
    """
    n = len(emb)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    if method == "sampled":
        _, sample = emb.sample(sample_size, seed=seed)
        centroids = kmeans(sample, k, seed=seed, niter=niter, nredo=nredo).centroids
        trained = len(sample)
    elif method == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        mbk = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=min(block_rows, 4096))
        for _start, _ids, X in emb.iter_blocks(block_rows):
            if len(X) >= k:
                mbk.partial_fit(X)
        centroids = mbk.cluster_centers_.astype(np.float32)
        trained = n
    else:
        raise ValueError(f"method must be sampled or minibatch, got {method!r}")
    labels, dist = assign_to_centroids(emb, centroids, block_rows)
    labels = labels.astype(np.int32)
    return ShardedClusters(labels, dist, np.asarray(centroids, np.float32), np.bincount(labels, minlength=k),
                           method, trained)


# ------------------------------------------------------------------------------------------------ refinement
DEFAULT_REFINE_ROUNDS = 1


def refine_clusters(X: np.ndarray, result: ClusterResult, knn_indices: np.ndarray, knn_similarities: np.ndarray,
                    rounds: int = DEFAULT_REFINE_ROUNDS, keep_fraction: float = 0.5, seed: int = 0,
                    progress: Any = None) -> ClusterResult:
    """Neighbour-consistent self-labelling of a k-means result (the refinement step of SCAN, on frozen vectors).

    Each round fits a linear probe on the ``keep_fraction`` of every cluster closest to its centre (or most
    confidently assigned), and reassigns every point by the average of the probe's probabilities and the
    similarity-weighted cluster vote of its kNN-graph neighbours.  The probe alone drifts (its own mistakes become
    its training labels); the neighbour vote keeps each point with the company it keeps.  One round by default:
    further rounds gain little on real photos and drift on small overlapping sets (measurements: docs/analyses.md,
    "Clusters and the 2-D map").

    Returns
    -------
    ClusterResult with the refined labels (renumbered by size), member-mean centroids and distances to them.
    """
    from curate.engine.analyses.label_issues import knn_vote_proba, reduce_for_probe
    from curate.engine.analyses.probe import LinearProbe
    from curate.engine.progress import track

    X = _as_float32(X)
    labels = np.asarray(result.labels, np.int64).copy()
    conf = -np.asarray(result.distances, np.float64)
    k = int(result.k)
    if k < 2 or rounds < 1 or len(X) < 4 * k:
        return result
    Z = reduce_for_probe(X, 256, seed)
    for _ in track(range(rounds), "cluster refinement", rounds, progress):
        train = np.zeros(len(X), bool)
        for c in range(k):
            m = np.flatnonzero(labels == c)
            train[m[np.argsort(-conf[m], kind="stable")[: max(2, int(len(m) * keep_fraction))]]] = True
        probe = LinearProbe(C=0.003, random_state=seed).fit(Z[train], labels[train])
        P = np.zeros((len(X), k), np.float32)
        P[:, probe.classes_.astype(np.int64)] = probe.predict_proba(Z)
        P = 0.5 * P + 0.5 * knn_vote_proba(knn_indices, knn_similarities, labels, k)
        labels, conf = P.argmax(axis=1).astype(np.int64), P.max(axis=1).astype(np.float64)
    centroids = np.stack([X[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(X.shape[1], np.float32)
                          for c in range(k)]).astype(np.float32)
    labels, centroids = _relabel_by_size(labels, centroids)
    distances = np.linalg.norm(X - centroids[labels], axis=1).astype(np.float32)
    return ClusterResult(labels=labels, centroids=centroids, distances=distances, k=len(centroids),
                         method=result.method, seed=result.seed, k_selection=result.k_selection,
                         inertia=float((distances.astype(np.float64) ** 2).sum()))


# ------------------------------------------------------------------------------------------------ summaries
def summarize_clusters(
    result: ClusterResult,
    labels: Sequence[Any] | None = None,
    n_representatives: int = 5,
    n_atypical: int = 5,
) -> list[ClusterSummary]:
    """Per-cluster size, representatives, atypical members, majority label and purity.

    Parameters
    ----------
    result : a :class:`ClusterResult` (row positions below refer to the array it was computed on).
    labels : optional label per point (None / NaN = unlabeled).
    n_representatives : members closest to the centroid to list (most typical first).
    n_atypical : members farthest from the centroid to list (most atypical first).

    Returns
    -------
    list of ClusterSummary, clusters in id order, then the noise group (``-1``) when present.  Noise has no
    centroid, so it lists no representatives or atypical members.
    """
    n = len(result.labels)
    lab = None
    if labels is not None:
        series = pd.Series(list(labels), dtype=object)
        lab = series.where(series.notna(), None).to_numpy(dtype=object)
        if len(lab) != n:
            raise ValueError(f"labels has {len(lab)} entries for {n} clustered points")
    out: list[ClusterSummary] = []
    ids = list(range(result.k)) + ([NOISE] if result.n_noise else [])
    for c in ids:
        members = np.flatnonzero(result.labels == c)
        if c == NOISE:
            reps, atyp = [], []
        else:
            order = members[np.lexsort((members, result.distances[members]))]  # by distance, ties by row
            reps = order[:n_representatives].tolist()
            atyp = order[::-1][: min(n_atypical, max(0, len(order) - len(reps)))].tolist()
        s = ClusterSummary(cluster=int(c), size=int(len(members)), representatives=[int(i) for i in reps],
                           atypical=[int(i) for i in atyp])
        if lab is not None:
            given = [v for v in lab[members] if v is not None]
            if given:
                vals, counts = np.unique(np.asarray(given, dtype=str), return_counts=True)
                top = int(np.argmax(counts))  # np.unique sorts, so ties go to the alphabetically first label
                s.majority_label, s.purity, s.n_labeled = str(vals[top]), float(counts[top] / len(given)), len(given)
        out.append(s)
    return out


# ------------------------------------------------------------------------------------------------ naming
def name_from_text_similarity(
    image_vectors: np.ndarray, text_vectors: np.ndarray, vocabulary: Sequence[str], top: int = 1,
    temperature: float = 100.0,
) -> tuple[str, float]:
    """Zero-shot name of a group of images (CLIP-style): average per-image softmax over the vocabulary.

    Parameters
    ----------
    image_vectors : L2-normalised image embeddings [m, d] of the cluster's representatives.
    text_vectors : L2-normalised text embeddings [V, d] of the vocabulary prompts.
    vocabulary : the V names.
    top : how many names to join with " / ".
    temperature : CLIP's logit scale.

    Returns
    -------
    (name, probability of the first name averaged over the images)
    """
    logits = temperature * (np.asarray(image_vectors, np.float32) @ np.asarray(text_vectors, np.float32).T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return name_from_probs(p, vocabulary, top=top)


def name_from_probs(probs: np.ndarray, vocabulary: Sequence[str], top: int = 1) -> tuple[str, float]:
    """Name of a group from its members' class probabilities [m, V]: the top classes of the mean probability."""
    mean = np.asarray(probs, dtype=np.float64).mean(axis=0)
    best = np.argsort(-mean, kind="stable")[:top]
    return " / ".join(str(vocabulary[i]) for i in best), float(mean[best[0]])


def imagenet_names() -> list[str]:
    """The 1,000 ImageNet-1k class names (first synonym of each), from ``timm.data.ImageNetInfo``."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def suggest_names(
    summaries: list[ClusterSummary],
    vectors: np.ndarray,
    encoder: Any,
    load_images: Callable[[list[int]], list] | None = None,
    class_names: Sequence[str] | None = None,
) -> str | None:
    """Fill ``summary.name`` for every cluster from its representatives; returns how names were made (or None).

    * Encoder with text support (``encoder.supports_text``, ``encoder.encode_texts``, e.g. CLIP): zero-shot over
      ``class_names`` when the dataset has classes, else the ImageNet class names, using the representatives'
      stored embeddings (no image is re-encoded).
    * Encoder with an ImageNet head (``encoder.classify(batch)`` -> probabilities [m, 1000]): the representatives
      are loaded with ``load_images(rows)`` (a batch the encoder accepts) and named by the top ImageNet classes of
      their mean probability.
    * Otherwise names stay None.  Only representatives are ever classified, so naming is cheap.
    """
    groups = [s for s in summaries if s.representatives]
    if not groups or encoder is None:
        return None
    if getattr(encoder, "supports_text", False) and hasattr(encoder, "encode_texts"):
        vocab = list(class_names) if class_names else imagenet_names()
        prompts = [f"a photo of a {v}." for v in vocab]
        T = _to_numpy(encoder.encode_texts(prompts))
        T /= np.linalg.norm(T, axis=1, keepdims=True) + 1e-12
        for s in groups:
            V = np.asarray(vectors[s.representatives], dtype=np.float32)
            V = V / (np.linalg.norm(V, axis=1, keepdims=True) + 1e-12)
            s.name, _ = name_from_text_similarity(V, T, vocab, top=1)
        return "zero-shot text similarity over " + ("class names" if class_names else "ImageNet class names")
    if hasattr(encoder, "classify") and load_images is not None:
        names = getattr(encoder, "class_names", None)
        vocab = [str(v).split(",")[0].strip() for v in names] if isinstance(names, (list, tuple)) else imagenet_names()
        for s in groups:
            probs = _to_numpy(encoder.classify(load_images(s.representatives))).astype(np.float64)
            if probs.ndim != 2 or probs.shape[1] != len(vocab):
                return None
            s.name, _ = name_from_probs(probs, vocab, top=2)
        return "top ImageNet classes of the representatives"
    return None


def _to_numpy(a: Any) -> np.ndarray:
    """float32 numpy array from a numpy array or a (possibly GPU) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.array(a, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ 2-D map
def embed_2d(
    X: np.ndarray,
    seed: int = 0,
    method: str = "auto",
    fit_sample: int = 20_000,
    pca_below: int = 50,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> Map2D:
    """2-D coordinates of every point for the map view.

    Parameters
    ----------
    X : float array [n, d].
    seed : UMAP ``random_state`` / sampling seed (fixed seed = reproducible layout, single-threaded UMAP).
    method : ``"auto"`` (UMAP, PCA for small sets or when UMAP fails), ``"umap"`` or ``"pca"``.
    fit_sample : above this many points UMAP is fitted on a seeded sample and ``transform`` places the rest.
    pca_below : ``auto`` uses PCA below this many points.
    n_neighbors, min_dist : UMAP parameters.

    Returns
    -------
    Map2D with finite float32 coordinates [n, 2].
    """
    X = _as_float32(X)
    n = len(X)
    if method not in ("auto", "umap", "pca"):
        raise ValueError(f"unknown 2-D map method {method!r}; use auto, umap or pca")
    if method == "umap" or (method == "auto" and n >= max(pca_below, 4)):
        try:
            return _umap_2d(X, seed, fit_sample, n_neighbors, min_dist)
        except Exception as exc:  # numba/pynndescent failures must not lose the clustering
            if method == "umap":
                raise
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("UMAP failed (%s); falling back to PCA for the 2-D map", msg)
    return Map2D(xy=_pca_2d(X, seed), method="pca", fitted_on=n)


def _pca_2d(X: np.ndarray, seed: int) -> np.ndarray:
    n, d = X.shape
    out = np.zeros((n, 2), dtype=np.float32)
    if n < 2:
        return out
    from sklearn.decomposition import PCA

    m = min(2, d, n)
    out[:, :m] = PCA(n_components=m, random_state=seed).fit_transform(X)
    return np.nan_to_num(out)


def _umap_2d(X: np.ndarray, seed: int, fit_sample: int, n_neighbors: int, min_dist: float) -> Map2D:
    import umap

    n = len(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", numba deprecation chatter
        reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, n - 1)), min_dist=min_dist,
                            random_state=seed, metric="euclidean", n_jobs=1)
        if n <= fit_sample:
            xy = reducer.fit_transform(X)
            fitted = n
        else:
            rng = np.random.default_rng(seed)
            fit_idx = np.sort(rng.choice(n, size=fit_sample, replace=False))
            rest = np.setdiff1d(np.arange(n), fit_idx)
            xy = np.empty((n, 2), dtype=np.float32)
            xy[fit_idx] = reducer.fit_transform(X[fit_idx])
            for s in range(0, len(rest), 50_000):  # bounded memory per transform call
                xy[rest[s:s + 50_000]] = reducer.transform(X[rest[s:s + 50_000]])
            fitted = fit_sample
    xy = np.asarray(xy, dtype=np.float32)
    if not np.isfinite(xy).all():
        raise FloatingPointError("UMAP produced non-finite coordinates")
    return Map2D(xy=xy, method="umap", fitted_on=fitted)


# ------------------------------------------------------------------------------------------------ catalog
@dataclass
class ClusterRun:
    """What a clusters run did (``run_id`` and the final ``summary`` are set when its tables are written)."""

    run_id: int
    encoder: str
    method: str
    k: int
    n: int
    n_noise: int
    map_method: str
    naming: str | None
    seconds: float
    summary: dict = field(default_factory=dict)


REFINE_GRAPH_K = 10
"""Degree of the shared kNN graph the refinement's neighbour vote reads."""


@dataclass(frozen=True)
class ClustersConfig(Config):
    """Options of a clusters run (``curate cluster``; see :func:`run` for each).

    ``sample_size``: out of core, k-means (and the choice of k) is fitted on a seeded sample of this many rows;
    ``block_rows``: rows read at a time when every row is assigned to its centroid and placed on the map.
    """

    k: int | None = None
    method: str = "kmeans"
    seed: int = 0
    name_clusters: bool = True
    n_representatives: int = 5
    n_atypical: int = 5
    min_cluster_size: int | None = None
    map_method: str = "auto"
    sample_size: int = 200_000
    k_from_labels: bool = True
    k_criterion: str = "modularity"
    refine_rounds: int = DEFAULT_REFINE_ROUNDS
    block_rows: int = 65_536

    def validate(self) -> None:
        if self.k_criterion not in ("modularity", "silhouette"):
            raise CurateError(f"unknown k criterion {self.k_criterion!r}; use modularity or silhouette")
        if self.method not in METHODS:
            raise CurateError(f"unknown clustering method {self.method!r}; use --method kmeans or --method hdbscan")
        if self.k is not None and int(self.k) < 1:
            raise CurateError(f"--k {self.k} is out of range: pick 1 or more clusters (or leave --k out)")
        if self.map_method not in ("auto", "umap", "pca"):
            raise CurateError(f"unknown 2-D map method {self.map_method!r}; use auto, umap or pca")
        if self.min_cluster_size is not None and int(self.min_cluster_size) < 1:
            raise CurateError(f"min_cluster_size must be at least 1, got {self.min_cluster_size}; try 5")
        for name, low in (("sample_size", 1), ("block_rows", 1), ("n_representatives", 0), ("n_atypical", 0),
                          ("refine_rounds", 0)):
            if int(getattr(self, name)) < low:
                raise CurateError(f"{name} must be at least {low}, got {getattr(self, name)}")


def _check(inputs: Any, config: ClustersConfig) -> None:
    """The checks that need the number of vectors and the size switch, before a run is recorded (one-line errors
    naming the fix)."""
    emb = inputs.embeddings  # no embeddings: the "run curate embed" error
    n, in_memory, encoder = len(emb), emb.in_memory, emb.encoder
    if not in_memory and config.method != "kmeans":
        raise CurateError(f"--method {config.method} needs every vector in memory; this project is clustered out of "
                          "core, where only --method kmeans is available (or pass --in-memory)")
    if n == 0:
        raise CurateError(f"embedding set {encoder} holds no vectors; run `curate embed` first")
    if config.k is not None and not 1 <= config.k <= n:
        raise CurateError(f"--k {config.k} is out of range: the project has {n} embedded samples; pick 1..{n}")


class _SampleMap:
    """Out of core: a PCA fitted on the k-means sample, applied to every row as the blocks go by."""

    def __init__(self, X_fit: np.ndarray, n: int, dim: int, seed: int):
        from sklearn.decomposition import PCA

        self.m = min(2, dim, len(X_fit))
        self.pca = PCA(n_components=self.m, random_state=seed).fit(X_fit) if len(X_fit) >= 2 else None
        self.xy = np.zeros((n, 2), np.float32)
        self.fitted_on = len(X_fit)

    def add(self, start: int, X: np.ndarray) -> None:
        if self.pca is not None:
            self.xy[start:start + len(X), :self.m] = self.pca.transform(X)

    def result(self) -> Map2D:
        return Map2D(xy=np.nan_to_num(self.xy), method="pca (fitted on a sample)", fitted_on=self.fitted_on)


def compute(inputs: Any, config: ClustersConfig, encoder_model: Any = None) -> Result:
    """Clusters of every embedded sample, a summary per cluster and the 2-D map, over ``inputs.embeddings``.

    One path for memory and disk: the clustering is fitted on ``emb.sample(...)`` — every row when the vectors are
    in memory (the one-block case), a seeded sample of ``sample_size`` rows out of core — and, when that was a
    sample, every row is assigned to its nearest centroid block by block (:func:`assign_all_rows`).  The parts
    that need every vector at once run only in memory: HDBSCAN, the UMAP map (out of core: a PCA fitted on the
    sample, applied block by block) and the refinement over the shared kNN graph.  Names come from the
    representatives' vectors only.  ``encoder_model``: an already-loaded encoder for naming.
    """
    from curate.engine.progress import step

    t0 = time.perf_counter()
    cat, progress = inputs.cat, inputs.progress
    emb = inputs.embeddings
    ids = np.asarray(emb.ids(), dtype=np.int64)
    n = len(ids)
    method, seed = config.method, config.seed
    names_, codes = inputs.label_codes()
    n_label_classes = int(len(np.unique(codes[codes >= 0])))
    k, k_prior = config.k, None
    if k is None and method == "kmeans" and config.k_from_labels and 2 <= n_label_classes <= n:
        k = k_prior = n_label_classes

    fit_rows, X_fit = emb.sample(n if emb.in_memory else config.sample_size, seed=seed)
    whole = len(fit_rows) == n  # the fit saw every row: its labels are final
    sample_map = None if emb.in_memory else _SampleMap(X_fit, n, emb.dim, seed)
    label = f"{method} clustering" if emb.in_memory else "k-means on a sample, rows assigned shard by shard"
    with step(progress, label):
        result = cluster_embeddings(X_fit, k=k, method=method, seed=seed, min_cluster_size=config.min_cluster_size,
                                    progress=progress, k_criterion=config.k_criterion)
        if not whole:
            result = assign_all_rows(emb, result, config.block_rows,
                                     on_block=sample_map.add if sample_map is not None else None)
        elif sample_map is not None:
            sample_map.add(0, X_fit)
    if emb.in_memory and method == "kmeans" and config.refine_rounds > 0 and result.k >= 2:
        graph = inputs.graph(REFINE_GRAPH_K)  # the shared graph over the vectors in memory (cached by `curate index`)
        result = refine_clusters(X_fit, result, np.asarray(graph.indices), np.asarray(graph.similarities),
                                 rounds=config.refine_rounds, seed=seed, progress=progress)
    if k_prior is not None:
        result.k_selection = KSelection(k=k_prior, k_values=[k_prior], scores=[float("nan")],
                                        criterion="labelled classes", sample_size=int((codes >= 0).sum()))
    labels = np.array(list(names_) + [None], dtype=object)[codes]  # -1 -> None; one object per class name
    summaries = summarize_clusters(result, labels, n_representatives=config.n_representatives,
                                   n_atypical=config.n_atypical)
    naming = naming_note = None
    if config.name_clusters:
        with step(progress, "cluster names"):
            naming, naming_note = _name_representatives(cat, summaries, emb, ids, encoder_model)
    if sample_map is None:
        with step(progress, "2-D map (UMAP, PCA for small sets)"):
            xy = embed_2d(X_fit, seed=seed, method=config.map_method)
    else:
        xy = sample_map.result()

    clusters_df = pd.DataFrame({
        "sample_id": ids,
        "cluster": result.labels.astype(np.int32),
        "x": xy.xy[:, 0].astype(np.float64),
        "y": xy.xy[:, 1].astype(np.float64),
        "distance": result.distances.astype(np.float64),
    })
    summ_df = pd.DataFrame({
        "cluster": [s.cluster for s in summaries],
        "size": [s.size for s in summaries],
        "name": [s.name for s in summaries],
        "majority_label": [s.majority_label for s in summaries],
        "purity": [s.purity for s in summaries],
        "representatives": [[int(ids[r]) for r in s.representatives] for s in summaries],
        "atypical": [[int(ids[r]) for r in s.atypical] for s in summaries],
    })
    labeled = [s for s in summaries if s.purity is not None and s.cluster != NOISE]
    summary = {
        "encoder": emb.encoder,
        "out_of_core": not emb.in_memory,
        **({"kmeans_fitted_on_sample": int(len(fit_rows))} if not emb.in_memory else {}),
        "method": method,
        "k": result.k,
        "n": n,
        "n_noise": result.n_noise,
        "k_chosen_by": result.k_selection.criterion if result.k_selection
        else ("user" if method == "kmeans" else "hdbscan"),
        "k_scores": dict(zip(result.k_selection.k_values, [round(s, 4) for s in result.k_selection.scores]))
        if result.k_selection and k_prior is None else None,
        "map": xy.method,
        "map_fitted_on": xy.fitted_on,
        "naming": naming or naming_note,
        "weighted_purity": (sum(s.purity * s.n_labeled for s in labeled) / sum(s.n_labeled for s in labeled))
        if labeled else None,
    }
    detail = ClusterRun(run_id=0, encoder=emb.encoder, method=method, k=result.k, n=n, n_noise=result.n_noise,
                        map_method=xy.method, naming=naming, seconds=time.perf_counter() - t0, summary=summary)
    return Result(summary, tables={"clusters": clusters_df, "cluster_summaries": summ_df},
                  lines=_lines(detail, summ_df), detail=detail)


def _lines(run: ClusterRun, summ_df: pd.DataFrame, max_rows: int = 30) -> list[str]:
    """What ``curate cluster`` prints: the run in one line, then one line per cluster (at most ``max_rows``)."""
    lines = [f"{run.k} clusters ({run.method}, k chosen by {run.summary['k_chosen_by']}) over {run.n} samples"
             f"{f', {run.n_noise} noise' if run.n_noise else ''}; map: {run.map_method}; {run.seconds:.1f}s"]
    for r in summ_df.head(max_rows).itertuples(index=False):
        purity = "-" if r.purity is None or pd.isna(r.purity) else f"{r.purity:.2f}"
        lines.append(f"cluster {r.cluster}: {r.size} samples, name {r.name or '-'}, "
                     f"majority {r.majority_label or '-'} (purity {purity})")
    if len(summ_df) > max_rows:
        lines.append(f"... {len(summ_df) - max_rows} more clusters")
    return lines


def _write(cat: Catalog, result: Result, run_id: int, summary: dict) -> None:
    """Replace ``clusters`` and ``cluster_summaries`` and finish the run, in one transaction (the summaries'
    id lists are cast to BIGINT[] explicitly)."""
    clusters_df = result.tables["clusters"].copy()
    clusters_df.insert(0, "run_id", run_id)
    summ_df = result.tables["cluster_summaries"].copy()
    summ_df.insert(0, "run_id", run_id)
    with cat.transaction() as con:
        con.execute("DELETE FROM clusters")
        con.execute("DELETE FROM cluster_summaries")
        cat.append_rows("clusters", clusters_df, con=con)
        _insert_summaries(con, summ_df)
        cat.finish_run(run_id, summary, con=con)
    result.detail.run_id = run_id
    result.detail.summary = summary


ANALYSIS = register("clusters", compute, config=ClustersConfig, title="clusters, their summaries and the 2-D map",
                    tables=("clusters", "cluster_summaries"), needs=frozenset({"embeddings", "graph", "labels"}),
                    in_memory_only=("hdbscan", "umap map", "cluster refinement"), order=50, write=_write,
                    check=_check)


def _load_images_for(cat: Catalog, encoder: Any, sample_ids: np.ndarray) -> Callable[[list[int]], Any] | None:
    """A loader of representatives (row positions -> a batch for ``encoder.classify``), or None if unsupported."""
    paths = dict(cat.query("SELECT id, path FROM samples WHERE id IN (SELECT unnest(?))",
                           [[int(s) for s in sample_ids]]))
    loader = getattr(encoder, "load_batch", None)

    def load(rows: list[int]):
        files = [paths[int(sample_ids[r])] for r in rows]
        if loader is not None:
            return loader(files)
        import torch

        from curate.engine.images import open_rgb

        return torch.stack([encoder.transform(open_rgb(f)) for f in files])

    if loader is None and not hasattr(encoder, "transform"):
        return None
    return load


def run(
    cat: Catalog,
    encoder: str | None = None,
    k: int | None = None,
    method: str = "kmeans",
    seed: int = 0,
    name_clusters: bool = True,
    n_representatives: int = 5,
    n_atypical: int = 5,
    min_cluster_size: int | None = None,
    map_method: str = "auto",
    encoder_model: Any = None,
    out_of_core: bool | None = None,
    sample_size: int = 200_000,
    progress: Any = None,
    k_from_labels: bool = True,
    refine_rounds: int = DEFAULT_REFINE_ROUNDS,
    k_criterion: str = "modularity",
) -> ClusterRun:
    """Cluster the project's embeddings and write ``clusters`` + ``cluster_summaries`` in one transaction.

    The registry's runner does the work (:func:`curate.engine.analyses.registry.run` with :func:`compute`).

    Parameters
    ----------
    cat : the project catalog.
    encoder : embedding set to use (None = the most recent one).
    k, method, seed, min_cluster_size : see :func:`cluster_embeddings`.
    name_clusters : suggest a name per cluster with the encoder (see :func:`suggest_names`); skipped with a note in
        the run summary when the encoder cannot be loaded.
    n_representatives, n_atypical : list lengths in the summaries.
    map_method : ``auto``, ``umap`` or ``pca`` for the 2-D map (in memory).
    encoder_model : an already-loaded encoder object for naming (default: ``engine.encoders.get_encoder``).
    out_of_core : None lets :meth:`curate.engine.inputs.Inputs.open` decide.  Out of core, k-means (and the choice
        of k) runs on a seeded sample of ``sample_size`` rows and every row is then assigned to its nearest centroid
        shard by shard (:func:`assign_all_rows`); the 2-D map is a PCA fitted on the same sample and applied block by
        block (UMAP's ``transform`` is too slow for 10^7 rows); only k-means.
    progress : an :data:`engine.progress.Progress` callback (k sweep, k-means, naming, 2-D map).
    k_from_labels : with ``k=None`` and k-means, use the number of labelled classes among the embedded samples as k
        when there are at least 2 (the prior a labelled dataset gives); :func:`choose_k` only without labels
        (``bench/real_data.py`` measures both).
    k_criterion : how k is chosen without labels (:func:`choose_k`): ``modularity`` or ``silhouette``.
    refine_rounds : rounds of :func:`refine_clusters` over the shared kNN graph after k-means (in memory only;
        0 = plain k-means).

    Returns
    -------
    ClusterRun
    """
    from curate.engine.inputs import Inputs

    t0 = time.perf_counter()
    config = ClustersConfig(k=k, method=method, seed=seed, name_clusters=name_clusters,
                            n_representatives=n_representatives, n_atypical=n_atypical,
                            min_cluster_size=min_cluster_size, map_method=map_method, sample_size=sample_size,
                            k_from_labels=k_from_labels, refine_rounds=refine_rounds, k_criterion=k_criterion)
    inputs = Inputs.open(cat, encoder=encoder, out_of_core=out_of_core, progress=progress)
    analysis = ANALYSIS
    if encoder_model is not None:
        analysis = dataclasses.replace(ANALYSIS, compute=functools.partial(compute, encoder_model=encoder_model))
    detail = registry_run(cat, analysis, config, inputs=inputs).detail
    detail.seconds = time.perf_counter() - t0
    return detail


def _name_representatives(cat: Catalog, summaries: list[ClusterSummary], emb: Any, ids: np.ndarray,
                          encoder_model: Any) -> tuple[str | None, str | None]:
    """:func:`_name` on the representatives' vectors only (a few per cluster, read with ``emb.take``)."""
    from dataclasses import replace

    from curate.engine.embed import EmbeddingSet

    rows = np.unique(np.concatenate([np.asarray(s.representatives, np.int64) for s in summaries]
                                    + [np.empty(0, np.int64)]))
    local = {int(r): i for i, r in enumerate(rows)}
    compact = [replace(s, representatives=[local[int(r)] for r in s.representatives]) for s in summaries]
    sub = EmbeddingSet(emb.encoder, ids[rows], emb.take(rows))
    how, note = _name(cat, compact, sub, encoder_model)
    for s, c in zip(summaries, compact):
        s.name = c.name
    return how, note


def _insert_summaries(con, df: pd.DataFrame) -> None:
    # explicit casts: a column of (possibly all-empty) Python lists must land as BIGINT[]
    con.register("_summaries", df)
    con.execute(
        "INSERT INTO cluster_summaries "
        "(run_id, cluster, size, name, majority_label, purity, representatives, atypical) "
        "SELECT run_id, cluster, size, name, majority_label, purity, "
        "CAST(representatives AS BIGINT[]), CAST(atypical AS BIGINT[]) FROM _summaries"
    )
    con.unregister("_summaries")


def _name(cat: Catalog, summaries: list[ClusterSummary], emb: Any, encoder_model: Any) -> tuple[str | None, str | None]:
    """Run :func:`suggest_names`; any failure (weights not available, unreadable image) only skips naming."""
    try:
        model = encoder_model
        if model is None:
            from curate.engine.encoders import get_encoder

            model = get_encoder(emb.encoder)
        loader = _load_images_for(cat, model, np.asarray(emb.sample_ids)) if hasattr(model, "classify") else None
        how = suggest_names(summaries, emb.vectors, model, load_images=loader, class_names=cat.class_names() or None)
        return how, None if how else f"encoder {emb.encoder} cannot name clusters"
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("cluster naming skipped: %s", msg)
        return None, f"naming skipped: {msg}"

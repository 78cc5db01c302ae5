"""Clusters of the embedding space, a per-cluster summary, and a 2-D map of every sample.

Pure functions over arrays do the work; :func:`run` loads the project's embeddings, calls them and writes the
``clusters`` (one row per sample: cluster, map x/y, distance to the centroid) and ``cluster_summaries`` (one row
per cluster) tables in one transaction.

Methods
-------
* ``kmeans`` (default): FAISS k-means (GPU when the faiss build has GPUs), seeded, several restarts.  With
  ``k=None`` the number of clusters is chosen by :func:`choose_k`: k-means is fitted for every candidate k and the k
  with the highest **silhouette** score, measured on one fixed seeded sample of at most ``sample_size`` points
  (same points for every k, so the scores are comparable), wins.  Silhouette rewards compact, well-separated
  clusters; it is the standard internal criterion when no labels are known.
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
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

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
    scores : silhouette score per candidate (higher is better), aligned with ``k_values``.
    criterion : name of the criterion (``"silhouette"``).
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
) -> KSelection:
    """Choose the number of k-means clusters by the silhouette score on a fixed seeded sample.

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
    sil = np.sort(rng.choice(len(Z), size=min(len(Z), sample_size), replace=False))
    D = pairwise_distances(Z[sil], metric="euclidean", n_jobs=1)
    scores: list[float] = []
    from curate.engine.progress import track

    for k in track(ks, "silhouette sweep over k", progress=progress):
        res = kmeans(Z, k, seed=seed, niter=niter, nredo=nredo, spherical=spherical, gpu=gpu)
        sub = res.labels[sil]
        if len(np.unique(sub)) < 2 or len(np.unique(sub)) >= len(sil):
            scores.append(float("-inf"))
            continue
        scores.append(float(silhouette_score(D, sub, metric="precomputed")))
    best = int(np.argmax(scores))  # first maximum = smallest k among ties
    return KSelection(k=ks[best], k_values=ks, scores=scores, criterion="silhouette", sample_size=len(sil))


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
    progress : an :data:`engine.progress.Progress` callback (the silhouette sweep).

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
            selection = choose_k(X, k_values=k_values, seed=seed, spherical=spherical, gpu=gpu, progress=progress)
            k = selection.k
    res = kmeans(X, int(k), seed=seed, spherical=spherical, gpu=gpu)
    res.k_selection = selection
    return res


# ------------------------------------------------------------------------------------------------ refinement
DEFAULT_REFINE_ROUNDS = 1


def refine_clusters(X: np.ndarray, result: ClusterResult, knn_indices: np.ndarray, knn_similarities: np.ndarray,
                    rounds: int = DEFAULT_REFINE_ROUNDS, keep_fraction: float = 0.5, seed: int = 0,
                    progress: Any = None) -> ClusterResult:
    """Neighbour-consistent self-labelling of a k-means result (the refinement step of SCAN, on frozen vectors).

    Each round fits a linear probe on the ``keep_fraction`` of every cluster closest to its centre (or most
    confidently assigned), and reassigns every point by the average of the probe's probabilities and the
    similarity-weighted cluster vote of its kNN-graph neighbours.  The probe alone drifts (its own mistakes become
    its training labels); the neighbour vote keeps each point with the company it keeps.  Measured on CIFAR-10
    (10k photos): ACC 0.648 -> 0.661 after one round and 0.674 after four with ``effnet-lite2:128``, 0.417 -> 0.426
    with ``effnet-lite0:64``; the probe alone fell to 0.55.  On small, overlapping sets (240 points in 4 blobs)
    further rounds drifted (0.88 after one, 0.70 after six), so the default is one round.

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
    """What :func:`run` did."""

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
) -> ClusterRun:
    """Cluster the project's embeddings and write ``clusters`` + ``cluster_summaries`` in one transaction.

    Parameters
    ----------
    cat : the project catalog.
    encoder : embedding set to use (None = the most recent one).
    k, method, seed, min_cluster_size : see :func:`cluster_embeddings`.
    name_clusters : suggest a name per cluster with the encoder (see :func:`suggest_names`); skipped with a note in
        the run summary when the encoder cannot be loaded.
    n_representatives, n_atypical : list lengths in the summaries.
    map_method : ``auto``, ``umap`` or ``pca`` for the 2-D map.
    encoder_model : an already-loaded encoder object for naming (default: ``engine.encoders.get_encoder``).
    out_of_core : None = :func:`engine.shards.use_out_of_core` decides.  Out of core, k-means (and the choice of
        k) runs on a seeded sample of ``sample_size`` rows and every row is then assigned to its nearest centroid
        shard by shard (:func:`engine.analyses.scale.sampled_kmeans`'s scheme); the 2-D map is a PCA fitted on the
        same sample and applied block by block (UMAP's ``transform`` is too slow for 10^7 rows); only k-means.
    progress : an :data:`engine.progress.Progress` callback (silhouette sweep, k-means, naming, 2-D map).
    k_from_labels : with ``k=None`` and k-means, use the number of labelled classes among the embedded samples as k
        when there are at least 2 (the prior a labelled dataset gives); the silhouette choice only without labels.
        On real photos the silhouette criterion collapses to k = 2 (CIFAR-10 through EfficientNet-Lite0: 2 of 10
        classes), because photo embeddings form no well-separated blobs; ``bench/real_data.py`` measures both.
    refine_rounds : rounds of :func:`refine_clusters` over the shared kNN graph after k-means (in memory only;
        0 = plain k-means).

    Returns
    -------
    ClusterRun
    """
    from curate.engine.embed import load_embeddings
    from curate.engine.progress import step
    from curate.engine.shards import use_out_of_core

    t0 = time.perf_counter()
    big = use_out_of_core(cat, encoder, out_of_core)
    shards = None
    if big:
        from curate.engine.shards import ShardedEmbeddings

        shards = ShardedEmbeddings.open(cat, encoder, verify=True)
        X, ids = None, shards.sample_ids()
        emb = None
        if method != "kmeans":
            raise CurateError(f"--method {method} needs every vector in memory; this project is clustered out of "
                              "core, where only --method kmeans is available (or pass --in-memory)")
    else:
        emb = load_embeddings(cat, encoder)
        X, ids = emb.vectors, np.asarray(emb.sample_ids, dtype=np.int64)
    enc_name = shards.encoder if big else emb.encoder
    if len(ids) == 0:
        raise CurateError(f"embedding set {enc_name} holds no vectors; run `curate embed` first")
    if method not in METHODS:
        raise CurateError(f"unknown clustering method {method!r}; use --method kmeans or --method hdbscan")
    if k is not None and not 1 <= k <= len(ids):
        raise CurateError(f"--k {k} is out of range: the project has {len(ids)} embedded samples; pick 1..{len(ids)}")
    params = {"encoder": enc_name, "k": k, "method": method, "seed": seed, "min_cluster_size": min_cluster_size,
              "out_of_core": big, "refine_rounds": 0 if big or method != "kmeans" else refine_rounds}
    names_, codes = cat.label_codes(ids)
    n_label_classes = int(len(np.unique(codes[codes >= 0])))
    k_prior = None
    if k is None and method == "kmeans" and k_from_labels and 2 <= n_label_classes <= len(ids):
        k = k_prior = n_label_classes
        params["k_from_labels"] = n_label_classes
    run_id = cat.start_run("clusters", params)
    with cat.failing_run(run_id):
        if big:
            with step(progress, "k-means on a sample, rows assigned shard by shard"):
                result, xy, fit_emb = _cluster_out_of_core(shards, k, seed, sample_size)
        else:
            with step(progress, f"{method} clustering"):
                result = cluster_embeddings(X, k=k, method=method, seed=seed, min_cluster_size=min_cluster_size,
                                            progress=progress)
            if method == "kmeans" and refine_rounds > 0 and result.k >= 2:
                from curate.indexes.graph import cached_graph, index_dir

                # the shared graph over the vectors already in memory (cache hit after `curate index`)
                graph = cached_graph(index_dir(cat.root, enc_name), enc_name, ids, X,
                                     catalog_version=cat.version_token())
                result = refine_clusters(X, result, np.asarray(graph.indices), np.asarray(graph.similarities),
                                         rounds=refine_rounds, seed=seed, progress=progress)
        if k_prior is not None:
            result.k_selection = KSelection(k=k_prior, k_values=[k_prior], scores=[float("nan")],
                                            criterion="labelled classes", sample_size=int((codes >= 0).sum()))
        labels = np.array(list(names_) + [None], dtype=object)[codes]  # -1 -> None; one object per class name
        summaries = summarize_clusters(result, labels, n_representatives=n_representatives, n_atypical=n_atypical)
        naming = None
        naming_note = None
        if name_clusters:
            with step(progress, "cluster names"):
                if big:
                    naming, naming_note = _name_out_of_core(cat, summaries, shards, ids, encoder_model)
                else:
                    naming, naming_note = _name(cat, summaries, emb, encoder_model)
        if not big:
            with step(progress, "2-D map (UMAP, PCA for small sets)"):
                xy = embed_2d(X, seed=seed, method=map_method)

        clusters_df = pd.DataFrame({
            "run_id": run_id,
            "sample_id": ids,
            "cluster": result.labels.astype(np.int32),
            "x": xy.xy[:, 0].astype(np.float64),
            "y": xy.xy[:, 1].astype(np.float64),
            "distance": result.distances.astype(np.float64),
        })
        summ_df = pd.DataFrame({
            "run_id": run_id,
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
            "encoder": enc_name,
            "out_of_core": big,
            **({"kmeans_fitted_on_sample": int(fit_emb)} if big else {}),
            "method": method,
            "k": result.k,
            "n": int(len(ids)),
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
        with cat.transaction() as con:
            con.execute("DELETE FROM clusters")
            con.execute("DELETE FROM cluster_summaries")
            cat.append_rows("clusters", clusters_df, con=con)
            _insert_summaries(con, summ_df)
            cat.finish_run(run_id, summary, con=con)
    return ClusterRun(run_id=run_id, encoder=enc_name, method=method, k=result.k, n=len(ids), n_noise=result.n_noise,
                      map_method=xy.method, naming=naming, seconds=time.perf_counter() - t0, summary=summary)


def _cluster_out_of_core(shards: Any, k: int | None, seed: int, sample_size: int) -> tuple[ClusterResult, Map2D, int]:
    """k-means on a seeded sample (k chosen there when None), every row assigned shard by shard, PCA map."""
    import faiss
    from sklearn.decomposition import PCA

    _, Xs = shards.sample(sample_size, seed=seed)
    fit = cluster_embeddings(Xs, k=k, method="kmeans", seed=seed)
    n = len(shards)
    index = faiss.IndexFlatL2(shards.dim)
    index.add(np.ascontiguousarray(fit.centroids, np.float32))
    labels = np.empty(n, np.int64)
    dist = np.empty(n, np.float32)
    xy = np.zeros((n, 2), np.float32)
    m = min(2, shards.dim, len(Xs))
    pca = PCA(n_components=m, random_state=seed).fit(Xs) if len(Xs) >= 2 else None
    for start, _ids, X in shards.iter_blocks(65_536):
        D, I = index.search(X, 1)
        labels[start:start + len(X)] = I[:, 0]
        dist[start:start + len(X)] = np.sqrt(np.maximum(D[:, 0], 0))
        if pca is not None:
            xy[start:start + len(X), :m] = pca.transform(X)
    # cluster ids by size over all rows (0 = largest), as in the in-memory path
    sizes = np.bincount(labels, minlength=fit.k)
    order = np.lexsort((np.arange(fit.k), -sizes))
    remap = np.empty(fit.k, np.int64)
    remap[order] = np.arange(fit.k)
    result = ClusterResult(labels=remap[labels], centroids=np.asarray(fit.centroids)[order], distances=dist, k=fit.k,
                           method="kmeans", seed=seed, k_selection=fit.k_selection,
                           inertia=float(np.square(dist, dtype=np.float64).sum()))
    return result, Map2D(xy=np.nan_to_num(xy), method="pca (fitted on a sample)", fitted_on=len(Xs)), len(Xs)


def _name_out_of_core(cat: Catalog, summaries: list[ClusterSummary], shards: Any, ids: np.ndarray,
                      encoder_model: Any) -> tuple[str | None, str | None]:
    """:func:`_name` on the representatives' vectors only (a few per cluster), not on every row."""
    from dataclasses import replace

    from curate.engine.embed import EmbeddingSet

    rows = np.unique(np.concatenate([np.asarray(s.representatives, np.int64) for s in summaries] + [np.empty(0, np.int64)]))
    local = {int(r): i for i, r in enumerate(rows)}
    compact = [replace(s, representatives=[local[int(r)] for r in s.representatives]) for s in summaries]
    emb = EmbeddingSet(shards.encoder, ids[rows], shards.take(rows))
    how, note = _name(cat, compact, emb, encoder_model)
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

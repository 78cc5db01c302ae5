"""Analyses out of core: label issues and clusters over embedding shards and a sharded kNN graph.

The in-memory analyses (:mod:`engine.analyses.label_issues`, :mod:`~engine.analyses.duplicates`,
:mod:`~engine.analyses.clusters`) take one float32 matrix.  These versions take
:class:`engine.shards.ShardedEmbeddings` (and a kNN graph whose arrays may be memory maps) and touch one block at
a time, so their memory is bounded by a block and the per-sample outputs (a few bytes each) — never by ``n x dim``.
(Near-duplicates over shards: :func:`engine.analyses.duplicates.partitioned_near_duplicates`, the same function
in memory and out of core.)

* :func:`label_issues_out_of_core` — kNN-vote class probabilities per block (:func:`knn_vote_proba` on the shared
  graph) streamed twice through cleanlab's batched API (:class:`cleanlab.experimental.label_issues_batched.
  LabelInspector`: pass 1 per-class confident thresholds, pass 2 label quality scores and the issue count).
* :func:`sampled_kmeans` — k-means (:func:`engine.analyses.clusters.kmeans`) on a seeded sample, then every row
  assigned shard by shard; or ``method="minibatch"``: scikit-learn ``MiniBatchKMeans.partial_fit`` over blocks.

Large per-sample results are written as Parquet parts and exposed to DuckDB as a view
(:meth:`engine.catalog.Catalog.register_parquet_view`): the catalog stays DuckDB without copying 10^7 rows in.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from curate.engine.analyses.label_issues import DEFAULT_KNN_PRIOR, knn_vote_proba


# ================================================================================================ label issues
@dataclass
class StreamedLabelIssues:
    """Per-sample label-issue results of :func:`label_issues_out_of_core` (row order = the graph's rows).

    Attributes
    ----------
    label_quality : float32 [n]; cleanlab self-confidence, LOWER = more likely a wrong label.
    is_issue : bool [n]; the ``num_issues`` lowest-quality rows (cleanlab's estimate of how many are wrong).
    suggested_label : int64 [n]; argmax of the kNN-vote probabilities.
    suggested_confidence : float32 [n].
    num_issues : cleanlab's estimate of the number of label issues.
    confident_thresholds : float [n_classes] from pass 1.
    confident_joint : int64 [n_classes, n_classes] counts (given, confidently predicted) of pass 2 (cleanlab's
        confident joint: a row counts for the highest-probability class whose probability reaches that class's
        threshold); rows whose probabilities reach no threshold are not counted.

    Unlabeled rows (label -1) have ``label_quality`` NaN, ``is_issue`` False and still get a suggestion.
    """

    label_quality: np.ndarray
    is_issue: np.ndarray
    suggested_label: np.ndarray
    suggested_confidence: np.ndarray
    num_issues: int
    confident_thresholds: np.ndarray
    seconds: dict = field(default_factory=dict)
    confident_joint: np.ndarray | None = None

    def noise_rates(self) -> np.ndarray:
        """Per given class: the fraction of its confidently-counted rows whose confident class is another one."""
        cj = np.asarray(self.confident_joint, dtype=np.float64)
        tot = cj.sum(axis=1)
        return np.where(tot > 0, 1.0 - np.diag(cj) / np.maximum(tot, 1.0), 0.0)

    def ranked_issues(self) -> np.ndarray:
        """Row positions of the flagged rows, most likely wrong first (ties by row)."""
        rows = np.flatnonzero(self.is_issue)
        return rows[np.lexsort((rows, self.label_quality[rows]))]


def _blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, block_rows):
        yield s, min(n, s + block_rows)


def label_issues_out_of_core(knn_indices: np.ndarray, knn_similarities: np.ndarray, labels: np.ndarray,
                             n_classes: int, *, block_rows: int = 65_536, prior_strength: float = DEFAULT_KNN_PRIOR,
                             out_dir: str | Path | None = None, sample_ids: np.ndarray | None = None
                             ) -> StreamedLabelIssues:
    """Label issues for every row from the (possibly memory-mapped) kNN graph, one block at a time.

    Parameters
    ----------
    knn_indices, knn_similarities : [n, k] arrays of the shared kNN graph (row positions, -1 padding).
    labels : int [n] given class codes in ``0..n_classes-1``, -1 for unlabeled rows (they vote for nobody and are
        not scored).
    n_classes : number of classes.
    block_rows : rows per block (memory: ``block_rows x n_classes`` probabilities).
    prior_strength : smoothing of the kNN vote towards the class frequencies (see :func:`knn_vote_proba`).
    out_dir : when given, one Parquet part per block (``sample_id`` from ``sample_ids``, ``label_quality``,
        ``is_issue``, ``suggested_label``, ``suggested_confidence``) is written there.
    sample_ids : int [n], needed with ``out_dir``.

    Returns
    -------
    StreamedLabelIssues
    """
    from cleanlab.experimental.label_issues_batched import LabelInspector

    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if knn_indices.shape[0] != n:
        raise ValueError(f"kNN graph has {knn_indices.shape[0]} rows but there are {n} labels")
    if n and (labels.min() < -1 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class codes in [0, {n_classes}) or -1; got {labels.min()}..{labels.max()}")
    labeled = labels >= 0
    if not labeled.any():
        raise ValueError("no labeled row: label issues need given labels")
    prior = np.bincount(labels[labeled], minlength=n_classes).astype(np.float64)
    prior /= max(prior.sum(), 1.0)
    inspector = LabelInspector(num_class=n_classes, store_results=True, verbose=False)
    timings = {}

    def probs(s: int, e: int) -> np.ndarray:
        # rows= keeps global row numbers, so a row listed as its own neighbour is still skipped; indexing a
        # memory-mapped graph with them reads only this block
        return knn_vote_proba(knn_indices, knn_similarities, labels, n_classes, rows=np.arange(s, e),
                              prior=prior, prior_strength=prior_strength)

    t = time.perf_counter()
    for s, e in _blocks(n, block_rows):  # pass 1: per-class confident thresholds
        m = labeled[s:e]
        if not m.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector.update_confident_thresholds(labels[s:e][m], probs(s, e)[m])
    timings["pass1"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    quality = np.full(n, np.nan, np.float32)
    suggested = np.empty(n, np.int64)
    confidence = np.empty(n, np.float32)
    thresholds = np.asarray(inspector.get_confident_thresholds(silent=True), dtype=np.float64)
    cj = np.zeros((n_classes, n_classes), np.int64)
    for s, e in _blocks(n, block_rows):  # pass 2: scores, the issue count and the confident joint
        P = probs(s, e)
        m = labeled[s:e]
        if m.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quality[s:e][m] = inspector.score_label_quality(labels[s:e][m], P[m])
            above = np.where(P[m] >= thresholds[None, :] - 1e-6, P[m], -np.inf)
            counted = np.isfinite(above).any(axis=1)
            np.add.at(cj, (labels[s:e][m][counted], above[counted].argmax(axis=1)), 1)
        suggested[s:e] = P.argmax(axis=1)
        confidence[s:e] = P[np.arange(e - s), suggested[s:e]]
    num_issues = int(inspector.get_num_issues(silent=True))
    # the inspector numbers the labeled rows in the order they were streamed
    issue_rows = inspector.get_label_issues() if num_issues else np.empty(0, np.int64)
    is_issue = np.zeros(n, bool)
    is_issue[np.flatnonzero(labeled)[np.asarray(issue_rows, dtype=np.int64)]] = True
    timings["pass2"] = round(time.perf_counter() - t, 3)
    res = StreamedLabelIssues(quality, is_issue, suggested, confidence, num_issues, thresholds, timings, cj)
    if out_dir is not None:
        if sample_ids is None:
            raise ValueError("sample_ids are needed to write Parquet parts")
        write_parquet_parts(out_dir, n, block_rows, lambda s, e: pd.DataFrame({
            "sample_id": np.asarray(sample_ids[s:e], np.int64), "given_label": labels[s:e],
            "label_quality": quality[s:e], "is_issue": is_issue[s:e], "suggested_label": suggested[s:e],
            "suggested_confidence": confidence[s:e]}))
    return res


def write_parquet_parts(out_dir: str | Path, n: int, block_rows: int, frame_of) -> list[Path]:
    """Write ``frame_of(start, stop)`` for each block as ``part-NNNNN.parquet`` in ``out_dir`` (replacing old parts)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    paths = []
    for b, (s, e) in enumerate(_blocks(n, block_rows)):
        path = out / f"part-{b:05d}.parquet"
        frame_of(s, e).to_parquet(path, index=False)
        paths.append(path)
    return paths


# ================================================================================================ clustering
@dataclass
class ShardedClusters:
    """k-means over shards: ``labels`` int32 [n], ``distances`` float32 [n] (L2 to the centroid), ``centroids``."""

    labels: np.ndarray
    distances: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    method: str
    trained_on: int


def sampled_kmeans(shards: Any, k: int, *, method: str = "sampled", sample_size: int = 200_000, seed: int = 0,
                   niter: int = 25, nredo: int = 1, block_rows: int = 65_536) -> ShardedClusters:
    """k-means clusters of every row without loading all rows.

    ``method="sampled"``: :func:`engine.analyses.clusters.kmeans` on a seeded sample of ``sample_size`` rows (all
    rows when there are fewer — then the centroids are exactly the in-memory ones), then each block assigned to its
    nearest centroid.  ``method="minibatch"``: scikit-learn ``MiniBatchKMeans.partial_fit`` over every block
    (one pass), then the same assignment pass.
    """
    import faiss

    n, d = len(shards), shards.dim
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows ({n}), got {k}")
    if method == "sampled":
        from curate.engine.analyses.clusters import kmeans

        _, sample = shards.sample(sample_size, seed=seed)
        centroids = kmeans(sample, k, seed=seed, niter=niter, nredo=nredo).centroids
        trained = len(sample)
    elif method == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        mbk = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, batch_size=min(block_rows, 4096))
        for _start, _ids, X in shards.iter_blocks(block_rows):
            if len(X) >= k:
                mbk.partial_fit(X)
        centroids = mbk.cluster_centers_.astype(np.float32)
        trained = n
    else:
        raise ValueError(f"method must be sampled or minibatch, got {method!r}")
    index = faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(centroids, np.float32))
    labels = np.empty(n, np.int32)
    dist = np.empty(n, np.float32)
    for start, _ids, X in shards.iter_blocks(block_rows):
        D, I = index.search(X, 1)
        labels[start:start + len(X)] = I[:, 0]
        dist[start:start + len(X)] = np.sqrt(np.maximum(D[:, 0], 0))
    return ShardedClusters(labels, dist, np.asarray(centroids, np.float32), np.bincount(labels, minlength=k),
                           method, trained)

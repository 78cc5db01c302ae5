"""Analyses out of core: label issues and near-duplicates over embedding shards and a sharded kNN graph.

The in-memory analyses (:mod:`engine.analyses.label_issues`, :mod:`~engine.analyses.duplicates`) take one float32
matrix.  These versions take :class:`engine.shards.ShardedEmbeddings` (and a kNN graph whose arrays may be memory
maps) and touch one block at a time, so their memory is bounded by a block, the per-sample outputs (a few bytes
each) and, for dedup, one k-means partition — never by ``n x dim``.

* :func:`label_issues_out_of_core` — kNN-vote class probabilities per block (:func:`knn_vote_proba` on the shared
  graph) streamed twice through cleanlab's batched API (:class:`cleanlab.experimental.label_issues_batched.
  LabelInspector`: pass 1 per-class confident thresholds, pass 2 label quality scores and the issue count).
* :func:`partitioned_near_duplicates` — k-means on a sample, every row assigned to its ``probes`` nearest
  centroids shard by shard, then exact all-pairs similarity inside each partition; partitions run in this process
  or as Ray tasks (same function, same pairs).  Cost ~ ``n * probes * points_per_partition * d``: linear in n.

k-means over shards (a seeded sample, then every row assigned block by block) lives with the rest of the
clustering in :mod:`engine.analyses.clusters` (:func:`~engine.analyses.clusters.sampled_kmeans`,
:func:`~engine.analyses.clusters.assign_all_rows`), written once over the embeddings interface.

Large per-sample results are written as Parquet parts and exposed to DuckDB as a view
(:meth:`engine.catalog.Catalog.register_parquet_view`): the catalog stays DuckDB without copying 10^7 rows in.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from curate.engine.analyses.label_issues import DEFAULT_KNN_PRIOR, knn_vote_proba

_EPS = 1e-6


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


# ================================================================================================ dedup
@dataclass
class PartitionedPairs:
    """Near-duplicate pairs found inside k-means partitions.

    Attributes
    ----------
    i, j : int64 global row positions, ``i < j``, sorted by ``(i, j)``.
    similarity : float32 cosine similarity.
    n_partitions : k-means partitions used.
    partition : int32 [n] nearest partition of each row.
    seconds : timings of the stages (``kmeans``, ``assign``, ``pairs``).
    """

    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray
    n_partitions: int
    partition: np.ndarray
    seconds: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.i))

    def removal_mask(self, n: int) -> np.ndarray:
        """Rows to drop so that one row per connected group of duplicates remains (the lowest row is kept)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        drop = np.zeros(n, bool)
        if not len(self.i):
            return drop
        g = coo_matrix((np.ones(len(self.i), np.int8), (self.i, self.j)), shape=(n, n))
        _, comp = connected_components(g, directed=False)
        first = np.full(comp.max() + 1, n, np.int64)
        np.minimum.at(first, comp, np.arange(n))
        drop = first[comp] != np.arange(n)
        return drop


def partition_pairs(Xq: np.ndarray, q_rows: np.ndarray, Xm: np.ndarray, m_rows: np.ndarray, threshold: float,
                    block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, member) pairs of one partition with cosine ``>= threshold`` (self pairs dropped), as global rows."""
    t = float(threshold) - _EPS
    out_i, out_j, out_s = [], [], []
    for s in range(0, len(q_rows), block):
        S = Xq[s:s + block] @ Xm.T
        qi, mj = np.nonzero(S >= t)
        keep = q_rows[s + qi] != m_rows[mj]
        out_i.append(q_rows[s + qi[keep]])
        out_j.append(m_rows[mj[keep]])
        out_s.append(S[qi[keep], mj[keep]].astype(np.float32))
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def _canonical(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    if not len(lo):
        return lo.astype(np.int64), hi.astype(np.int64), s.astype(np.float32)
    order = np.lexsort((-s, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], np.minimum(s[first], 1.0).astype(np.float32)


def _run_partitions(shards: Any, parts: np.ndarray, member_rows: np.ndarray, mbounds: np.ndarray,
                    query_rows: np.ndarray, qbounds: np.ndarray, threshold: float):
    """Pairs of the partitions ``parts`` (the unit of work of one local loop or one Ray task)."""
    out = []
    for c in parts:
        members = member_rows[mbounds[c]:mbounds[c + 1]]
        queries = query_rows[qbounds[c]:qbounds[c + 1]]
        if len(members) < 2 or not len(queries):
            continue
        Xm = shards.take(members)
        pos = np.searchsorted(members, queries)  # queries are members too (their nearest partition is c)
        out.append(partition_pairs(Xm[pos], queries, Xm, members, threshold))
    if not out:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return _canonical(*(np.concatenate(parts_) for parts_ in zip(*out)))


def partitioned_near_duplicates(shards: Any, threshold: float = 0.97, *, points_per_partition: int = 2_000,
                                probes: int = 2, seed: int = 0, sample_per_partition: int = 64,
                                block_rows: int = 65_536, ray_tasks: int = 0, niter: int = 10) -> PartitionedPairs:
    """Near-duplicate pairs over shards, partition by partition (SemDeDup-style k-means partitioning).

    Parameters
    ----------
    shards : :class:`engine.shards.ShardedEmbeddings`.
    threshold : cosine similarity at or above which two rows are near-duplicates.
    points_per_partition : target partition size (``n_partitions = ceil(n / points_per_partition)``); work per
        row is ``probes * points_per_partition * d``.
    probes : every row joins its ``probes`` nearest partitions as a member; it is compared, as a query, with the
        members of its nearest one.  A pair is missed only when neither row is a member of the other's nearest
        partition (rare for near-copies; measured in ``bench/scale.py`` and the tests against exact search).
    seed : k-means seed (k-means is trained on ``sample_per_partition`` sampled rows per partition).
    ray_tasks : > 0: run the partitions as that many Ray tasks (a Ray session must be initialised); the pairs are
        the same as the local loop's.

    Returns
    -------
    PartitionedPairs
    """
    import faiss

    n, d = len(shards), shards.dim
    timings = {}
    t = time.perf_counter()
    k = int(max(1, min(math.ceil(n / max(1, points_per_partition)), n // 39 or 1)))
    if k > 1:
        _, sample = shards.sample(k * sample_per_partition, seed=seed)
        km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=sample_per_partition)
        km.train(sample)
        centroids = km.centroids
    else:
        centroids = np.ones((1, d), np.float32) / math.sqrt(d)
    timings["kmeans"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    probes = max(1, min(int(probes), k))
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    assign = np.empty((n, probes), np.int32)
    for start, _ids, X in shards.iter_blocks(block_rows):
        _, a = quantizer.search(X, probes)
        assign[start:start + len(X)] = a
    primary = assign[:, 0].copy()
    member_part = assign.ravel()
    member_rows = np.repeat(np.arange(n, dtype=np.int64), probes)
    order = np.lexsort((member_rows, member_part))  # by partition, rows ascending inside
    member_rows, member_part = member_rows[order], member_part[order]
    del order, assign
    mbounds = np.searchsorted(member_part, np.arange(k + 1))
    del member_part
    query_rows = np.argsort(primary, kind="stable").astype(np.int64)
    qbounds = np.searchsorted(primary[query_rows], np.arange(k + 1))
    timings["assign"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    if ray_tasks:
        import ray

        refs = [ray.put(a) for a in (member_rows, mbounds, query_rows, qbounds)]
        task = ray.remote(num_cpus=1)(_run_partitions)
        chunks = np.array_split(np.arange(k), max(1, min(int(ray_tasks), k)))
        results = ray.get([task.remote(shards, c, *refs, float(threshold)) for c in chunks if len(c)])
    else:
        results = [_run_partitions(shards, np.arange(k), member_rows, mbounds, query_rows, qbounds, threshold)]
    i, j, s = _canonical(*(np.concatenate(r) for r in zip(*results)))
    timings["pairs"] = round(time.perf_counter() - t, 3)
    return PartitionedPairs(i, j, s, k, primary, timings)

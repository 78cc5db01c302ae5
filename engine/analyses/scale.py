"""Analyses out of core: near-duplicates and clusters over embedding shards and a sharded kNN graph.

The in-memory analyses (:mod:`~engine.analyses.duplicates`, :mod:`~engine.analyses.clusters`) take one float32
matrix.  These versions take :class:`engine.shards.ShardedEmbeddings` (and a kNN graph whose arrays may be memory
maps) and touch one block at a time, so their memory is bounded by a block, the per-sample outputs (a few bytes
each) and, for dedup, one k-means partition — never by ``n x dim``.

* :func:`partitioned_near_duplicates` — k-means on a sample, every row assigned to its ``probes`` nearest
  centroids shard by shard, then exact all-pairs similarity inside each partition; partitions run in this process
  or as Ray tasks (same function, same pairs).  Cost ~ ``n * probes * points_per_partition * d``: linear in n.
* :func:`sampled_kmeans` — k-means (:func:`engine.analyses.clusters.kmeans`) on a seeded sample, then every row
  assigned shard by shard; or ``method="minibatch"``: scikit-learn ``MiniBatchKMeans.partial_fit`` over blocks.

(Label issues out of core live with the rest of that analysis:
:func:`curate.engine.analyses.label_issues.label_issues_out_of_core`.)  Large per-sample results are written as
Parquet parts (:func:`curate.engine.shards.write_parquet_parts`) and exposed to DuckDB as a view
(:meth:`engine.catalog.Catalog.register_parquet_view`): the catalog stays DuckDB without copying 10^7 rows in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_EPS = 1e-6


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

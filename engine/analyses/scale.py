"""Clusters out of core: k-means over embedding shards, one block at a time.

* :func:`sampled_kmeans` — k-means (:func:`engine.analyses.clusters.kmeans`) on a seeded sample, then every row
  assigned shard by shard; or ``method="minibatch"``: scikit-learn ``MiniBatchKMeans.partial_fit`` over blocks.

(Label issues and near-duplicates over shards live in their analyses' modules:
:func:`curate.engine.analyses.label_issues.label_issues_out_of_core`,
:func:`curate.engine.analyses.duplicates.partitioned_near_duplicates`.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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

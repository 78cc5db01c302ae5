"""Exact and near-duplicate sets, train/test leakage and SemDeDup-style dedup curves.

Pure functions over arrays (and, for the partitioned search, over the :class:`curate.engine.inputs.Embeddings`
interface), plus the registered analysis ``duplicates``: :class:`DuplicatesConfig` (its options), :func:`compute`
(one function for memory and disk) and :data:`ANALYSIS`.  The registry's runner
(:func:`curate.engine.analyses.registry.run`) records the run, calls :func:`compute` and writes the ``duplicates``
and ``semdedup`` tables in one transaction; :func:`run` is the keyword entry point over that runner.

How a duplicate set is formed
-----------------------------
1. **Exact duplicates** are samples with the same ``content_hash`` (byte-identical files under different paths).
2. **Near-duplicate candidate pairs** are all pairs with cosine similarity ``>= threshold``: taken from the
   shared kNN graph (every neighbour above the threshold); rows whose *k*-th neighbour is still above the
   threshold (the graph may have cut their list short) get an exact FAISS range search, so large sets are
   complete.  Without a graph, an exact range search is used (beyond ``exact_max`` rows an approximate one
   inside k-means partitions, :func:`partitioned_near_duplicates`).  **Plus perceptual-hash pairs** (when hashes
   are given — :func:`compute` computes them from the files): 64-bit DCT pHashes within ``hash_distance`` bits
   (FAISS binary range search).  ImageNet CNN features are texture-sensitive: a JPEG re-encode of a small image
   can fall to cosine 0.6-0.8 while distinct crops of one texture reach 0.98; the hash is blind to flips and crops
   but near-exact under recompression, resizing and colour shifts, so the two signals cover each other
   (``bench/duplicates.py``).
3. **Grouping with a chaining guard (greedy complete linkage).**  Plain connected components of the pair graph
   chain unrelated images together (a~b and b~c put a and c in one set even when a and c look nothing alike).
   Instead, samples are visited in order of how many near-duplicates they have (then summed similarity, then
   row); each unassigned sample seeds a set and its unassigned near-duplicate neighbours are added in order of
   similarity to the seed, **each only if it is a near-duplicate of every member already in the set** (cosine
   ``>= threshold`` or hash distance ``<= hash_distance``).  So every pair inside a set is a near-duplicate
   pair — whichever member is kept, all others are near-copies of it.  A sample left out of its neighbour's
   set can still seed or join another set.
4. Exact copies are collapsed to one representative before step 3 and expanded afterwards, so a set can hold
   both exact and near copies.

Out of core
-----------
When the embeddings are memory-mapped shards (``Embeddings.in_memory`` False: the size switch of
:meth:`curate.engine.inputs.Inputs.open`), the candidate pairs come from :func:`partitioned_near_duplicates` over
the shards — the same function that serves the in-memory ``method="partition"`` search, there over the matrix as
one block.  Only the rows in a candidate pair or sharing a content hash are then loaded, and steps 1-4 run on
them.  Perceptual hashes, the pixel check and the SemDeDup curve need every sample and are left out on that path.

Keeper rule (:func:`choose_keepers`)
------------------------------------
Per set, in order: a live ``merge`` decision naming a member (the user's override) > largest resolution
(width x height) > no label issue > carries the set's majority label > lowest sample id.

Default threshold
-----------------
``DEFAULT_THRESHOLD`` (0.97) is calibrated for the default offline encoder (``effnet-lite0``: EfficientNet-Lite0
ImageNet weights, 1280-d global-average-pooled features, cosine) together with ``DEFAULT_HASH_DISTANCE`` (2),
by ``bench/duplicates.py`` on planted near-copies versus distinct images of the same scene / texture / digit
class.  Measured (pair-level, guarded sets, embeddings + pHash): crops of the packaged photographs P/R
0.92/0.62 at 0.96, **0.98/0.63 at 0.97**, 0.98/0.55 at 0.98; demo digits 0.72/1.00 at 0.96, **0.83/0.93 at
0.97**, 0.84/0.86 at 0.98 — 0.97 has the best F1 on both.  Below ~0.95 precision collapses (distinct digits
sit at cosine 0.93-0.98 to their nearest neighbour, distinct crops of one texture up to 0.99).  Other
encoders have other similarity scales: pass ``threshold=`` (CLI ``--threshold``) for them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from curate.engine.analyses.registry import Config, Result, register
from curate.engine.analyses.registry import run as registry_run
from curate.engine.catalog import Catalog, CurateError

DEFAULT_THRESHOLD = 0.97
"""Cosine-similarity threshold for near-duplicates with the default effnet-lite0 encoder (see module doc)."""

DEFAULT_HASH_DISTANCE = 2
"""Perceptual-hash (64-bit DCT pHash) Hamming distance at or below which two images are near-duplicates."""

ENCODER_THRESHOLDS: dict[str, float] = {"effnet-lite0": DEFAULT_THRESHOLD}
"""Calibrated defaults per encoder name; encoders missing here fall back to ``DEFAULT_THRESHOLD``."""

DEFAULT_CURVE_THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98, 0.99)
EXACT_SEARCH_MAX = 200_000
_EPS = 1e-6  # float32 similarities of identical vectors can read 0.9999999; compare with a small tolerance


# ------------------------------------------------------------------------------------------- data classes
@dataclass
class DuplicatePairs:
    """Pairs of row positions ``i < j`` whose cosine similarity is at or above a threshold."""

    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return int(len(self.i))

    @classmethod
    def empty(cls) -> "DuplicatePairs":
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))


@dataclass
class DuplicateSets:
    """Duplicate sets over the rows of an embedding matrix.

    Attributes
    ----------
    members : list of int64 arrays
        Row positions of each set (ascending), largest sets first.
    exact : list of bool
        True when every member of the set has the same content hash (a purely byte-identical set).
    pairs : DuplicatePairs
        Every candidate pair at or above the threshold (exact copies included with similarity 1), before the
        chaining guard; used for leakage, where any cross-split pair matters even if the guard split it.
    threshold : float
        The cosine-similarity threshold used.
    """

    members: list[np.ndarray]
    exact: list[bool]
    pairs: DuplicatePairs
    threshold: float
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_sets(self) -> int:
        return len(self.members)

    @property
    def n_samples(self) -> int:
        return int(sum(len(m) for m in self.members))

    def row_to_set(self, n_rows: int) -> np.ndarray:
        """Set index per row (-1 for rows in no set)."""
        out = np.full(n_rows, -1, dtype=np.int64)
        for s, m in enumerate(self.members):
            out[m] = s
        return out


@dataclass
class SemDedupCurve:
    """How many samples SemDeDup-style pruning removes at each similarity threshold.

    ``max_similarity[r]`` is row r's highest cosine similarity to a row visited before it in its k-means
    partition (rows are visited least-prototypical first, i.e. by ascending similarity to the centroid, as in
    SemDeDup); row r is removed at threshold t when ``max_similarity[r] >= t``.  One pass gives every threshold.
    """

    thresholds: np.ndarray
    n_removed: np.ndarray
    keep_fraction: np.ndarray
    max_similarity: np.ndarray
    partition: np.ndarray
    n_partitions: int
    seconds: float = 0.0

    def removed_mask(self, threshold: float) -> np.ndarray:
        return self.max_similarity >= threshold - _EPS

    def to_dict(self) -> dict:
        return {
            "n": int(len(self.max_similarity)),
            "n_partitions": int(self.n_partitions),
            "seconds": round(float(self.seconds), 3),
            "curve": [
                {"threshold": float(t), "n_removed": int(r), "keep_fraction": round(float(k), 6)}
                for t, r, k in zip(self.thresholds, self.n_removed, self.keep_fraction)
            ],
        }


# ------------------------------------------------------------------------------------------- candidate pairs
def _as_unit_float32(embeddings: np.ndarray) -> np.ndarray:
    X = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (n x d), got shape {X.shape}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if len(X) and not np.allclose(norms[norms > 0], 1.0, atol=1e-3):
        X = X / np.maximum(norms, 1e-12)
    return X


def _canonical_pairs(i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> DuplicatePairs:
    """Order each pair as (min, max), drop self pairs, keep one row per pair (the highest similarity)."""
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    sim = np.asarray(sim, np.float32)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = lo != hi
    lo, hi, sim = lo[keep], hi[keep], sim[keep]
    if not len(lo):
        return DuplicatePairs.empty()
    order = np.lexsort((-sim, hi, lo))
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(len(lo), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return DuplicatePairs(lo[first], hi[first], np.minimum(sim[first], 1.0))


def _flat_range_search(X: np.ndarray, queries: np.ndarray, threshold: float, block: int = 4096):
    """Exact range search of ``X[queries]`` against ``X`` with FAISS (inner product = cosine on unit vectors)."""
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        lims, D, I = index.range_search(X[q], float(threshold) - _EPS)
        counts = np.diff(lims).astype(np.int64)
        out_i.append(np.repeat(q, counts))
        out_j.append(I.astype(np.int64))
        out_s.append(D.astype(np.float32))
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


# ------------------------------------------------------------------------------------------- partitioned search
@dataclass
class PartitionedPairs(DuplicatePairs):
    """Near-duplicate pairs found inside k-means partitions (:func:`partitioned_near_duplicates`).

    Attributes
    ----------
    i, j, similarity : as :class:`DuplicatePairs`: int64 global row positions ``i < j`` sorted by ``(i, j)``, and
        their float32 cosine similarity.
    n_partitions : k-means partitions used.
    partition : int32 [n] nearest partition of each row.
    seconds : timings of the stages (``kmeans``, ``assign``, ``pairs``).
    """

    n_partitions: int = 1
    partition: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    seconds: dict = field(default_factory=dict)

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


def _run_partitions(embeddings: Any, parts: np.ndarray, member_rows: np.ndarray, mbounds: np.ndarray,
                    query_rows: np.ndarray, qbounds: np.ndarray, threshold: float):
    """Canonical pairs ``(i, j, similarity)`` of the partitions ``parts`` (the unit of work of one local loop or one
    Ray task); only each partition's member rows are read (``embeddings.take``)."""
    out = []
    for c in parts:
        members = member_rows[mbounds[c]:mbounds[c + 1]]
        queries = query_rows[qbounds[c]:qbounds[c + 1]]
        if len(members) < 2 or not len(queries):
            continue
        Xm = embeddings.take(members)
        pos = np.searchsorted(members, queries)  # queries are members too (their nearest partition is c)
        out.append(partition_pairs(Xm[pos], queries, Xm, members, threshold))
    if not out:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    p = _canonical_pairs(*(np.concatenate(parts_) for parts_ in zip(*out)))
    return p.i, p.j, p.similarity


def partitioned_near_duplicates(embeddings: Any, threshold: float = DEFAULT_THRESHOLD, *,
                                points_per_partition: int = 2_000, probes: int = 2, seed: int = 0,
                                sample_per_partition: int = 64, block_rows: int = 65_536, ray_tasks: int = 0,
                                niter: int = 10) -> PartitionedPairs:
    """Near-duplicate pairs inside k-means partitions (SemDeDup-style partitioning), in memory or over shards.

    The one approximate range search of this module: :func:`near_duplicate_pairs` uses it on an in-memory matrix
    (wrapped as the one-block :class:`~curate.engine.embed.EmbeddingSet`), the out-of-core analysis on the
    memory-mapped shards.  Spherical k-means (``faiss.Kmeans``, seeded) is trained on ``sample_per_partition``
    sampled rows per partition; every row, block by block, joins its ``probes`` nearest partitions as a member and
    is compared, as a query, with the members of its nearest one (exact BLAS similarities, one partition's members
    in memory at a time).  Cost ~ ``n * probes * points_per_partition * d``: linear in n.

    Parameters
    ----------
    embeddings : any :class:`curate.engine.inputs.Embeddings` (``len``, ``dim``, ``sample``, ``iter_blocks``,
        ``take``): :class:`~curate.engine.embed.EmbeddingSet` or :class:`~curate.engine.shards.ShardedEmbeddings`.
        The same vectors give the same pairs either way.
    threshold : cosine similarity at or above which two rows are near-duplicates.
    points_per_partition : target partition size (``n_partitions = ceil(n / points_per_partition)``, at most
        ``n // 39``; one partition = exact all-pairs search).
    probes : partitions each row is a member of.  A pair is missed only when neither row is a member of the other's
        nearest partition (rare for near-copies; measured in ``bench/duplicates.py``, ``bench/scale.py`` and the
        tests against exact search).
    seed, niter : k-means seed and iterations.
    block_rows : rows assigned to partitions at a time.
    ray_tasks : > 0: run the partitions as that many Ray tasks (a Ray session must be initialised); the pairs are
        the same as the local loop's.

    Returns
    -------
    PartitionedPairs
    """
    import faiss

    n, d = len(embeddings), int(embeddings.dim)
    timings = {}
    t = time.perf_counter()
    k = int(max(1, min(math.ceil(n / max(1, points_per_partition)), n // 39 or 1)))
    if k > 1:
        _, sample = embeddings.sample(k * sample_per_partition, seed=seed)
        km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=sample_per_partition)
        km.train(np.ascontiguousarray(sample, np.float32))
        centroids = km.centroids
    else:
        centroids = np.ones((1, d), np.float32) / math.sqrt(max(d, 1))
    timings["kmeans"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    probes = max(1, min(int(probes), k))
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    assign = np.empty((n, probes), np.int32)
    for start, _ids, X in embeddings.iter_blocks(block_rows):
        _, a = quantizer.search(np.ascontiguousarray(X, np.float32), probes)
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
        results = ray.get([task.remote(embeddings, c, *refs, float(threshold)) for c in chunks if len(c)])
    else:
        results = [_run_partitions(embeddings, np.arange(k), member_rows, mbounds, query_rows, qbounds, threshold)]
    p = _canonical_pairs(*(np.concatenate(r) for r in zip(*results)))
    timings["pairs"] = round(time.perf_counter() - t, 3)
    return PartitionedPairs(p.i, p.j, p.similarity, n_partitions=k, partition=primary, seconds=timings)


def near_duplicate_pairs(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, knn_graph: Any = None,
                         method: str = "auto", exact_max: int = EXACT_SEARCH_MAX, probes: int = 2,
                         seed: int = 0, points_per_partition: int = 1000) -> DuplicatePairs:
    """All pairs of rows with cosine similarity ``>= threshold``.

    Parameters
    ----------
    embeddings : (n, d) float array
        L2-normalised embeddings (normalised here if they are not).
    threshold : float
        Cosine-similarity threshold.
    knn_graph : KnnGraph, optional
        The shared kNN graph (``indices`` [n, k] row positions with -1 padding, ``similarities`` [n, k]
        descending).  Its above-threshold neighbours are used directly; rows whose last neighbour is still above
        the threshold are completed with an exact range search.
    method : {"auto", "exact", "partition"}
        Used only without a graph: ``exact`` range search (``indexes.knn.range_pairs``), ``partition``
        approximate search inside k-means partitions (:func:`partitioned_near_duplicates` over the matrix as a
        one-block :class:`~curate.engine.embed.EmbeddingSet`), ``auto`` = exact up to ``exact_max`` rows.
    probes, seed, points_per_partition : partition search parameters (partitions per row, k-means seed, target
        partition size).

    Returns
    -------
    DuplicatePairs
        Row pairs ``i < j`` with their similarity, sorted by (i, j).
    """
    X = _as_unit_float32(embeddings)
    n = len(X)
    if n < 2:
        return DuplicatePairs.empty()
    if knn_graph is not None:
        idx = np.asarray(knn_graph.indices, dtype=np.int64)
        sims = np.asarray(knn_graph.similarities, dtype=np.float32)
        if idx.shape[0] != n:
            raise ValueError(f"kNN graph has {idx.shape[0]} rows but embeddings have {n}; rebuild the graph")
        hit = (idx >= 0) & (sims >= threshold - _EPS)
        rows = np.nonzero(hit)
        i, j, s = rows[0].astype(np.int64), idx[hit], sims[hit]
        # a row whose whole neighbour list is above the threshold may have more near-duplicates than k
        saturated = np.nonzero(hit.all(axis=1))[0] if idx.shape[1] else np.empty(0, np.int64)
        if len(saturated):
            ri, rj, rs = _flat_range_search(X, saturated, threshold)
            i, j, s = np.concatenate([i, ri]), np.concatenate([j, rj]), np.concatenate([s, rs])
        return _canonical_pairs(i, j, s)
    if method not in ("auto", "exact", "partition"):
        raise ValueError(f"method must be auto, exact or partition, got {method!r}")
    if method == "partition" or (method == "auto" and n > exact_max):
        from curate.engine.embed import EmbeddingSet

        one_block = EmbeddingSet("array", np.arange(n, dtype=np.int64), X)
        return partitioned_near_duplicates(one_block, threshold, points_per_partition=points_per_partition,
                                           probes=probes, seed=seed)
    try:
        from curate.indexes.knn import range_pairs
    except ImportError:  # the shared index module is optional here: FAISS flat search is the same computation
        return _canonical_pairs(*_flat_range_search(X, np.arange(n), threshold))
    i, j, s = range_pairs(X, threshold)
    return _canonical_pairs(i, j, s)


# ------------------------------------------------------------------------------------------- perceptual hashes
def perceptual_hash(image: Any) -> np.ndarray:
    """64-bit DCT perceptual hash (pHash) of a PIL image or array, as 8 packed bytes.

    Greyscale, resized to 32x32 (Lanczos), 2-D DCT-II; each of the 8x8 lowest-frequency coefficients becomes a
    bit, set when above the median of those 64 coefficients without the DC term.
    """
    from PIL import Image
    from scipy.fft import dctn

    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        image = Image.fromarray(a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).astype(np.uint8))
    g = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    c = dctn(g, norm="ortho")[:8, :8].ravel()
    return np.packbits(c > np.median(c[1:]))


def file_perceptual_hashes(paths: Sequence[str], workers: int | None = None,
                           progress: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """pHashes of image files with a thread pool: (uint8 [n, 8], bool [n] readable)."""
    H, ok, _, _ = file_features(paths, np.arange(len(paths)), np.empty(0, np.int64), workers, progress)
    return H, ok


def hash_pairs(hashes: np.ndarray, max_distance: int = DEFAULT_HASH_DISTANCE,
               valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs ``i < j`` whose 64-bit hashes differ in at most ``max_distance`` bits (FAISS binary range search).

    Returns (i, j, hamming distance).
    """
    import faiss

    H = np.ascontiguousarray(hashes, dtype=np.uint8)
    rows = np.arange(len(H)) if valid is None else np.nonzero(np.asarray(valid, bool))[0]
    if len(rows) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    index = faiss.IndexBinaryFlat(H.shape[1] * 8)
    index.add(H[rows])
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(rows), 65536):
        q = np.arange(start, min(len(rows), start + 65536))
        lims, D, I = index.range_search(H[rows[q]], int(max_distance) + 1)  # faiss: distance < radius
        qi = np.repeat(q, np.diff(lims).astype(np.int64))
        keep = qi < I
        out_i.append(rows[qi[keep]])
        out_j.append(rows[I[keep].astype(np.int64)])
        out_d.append(D[keep].astype(np.int64))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


# ------------------------------------------------------------------------------------------- pixel verification
SIGNATURE_SIZE = 32
DEFAULT_VERIFY_K = 3
"""Nearest neighbours per sample that the pixel check looks at (planted CIFAR copies: first neighbour >= 90 %)."""
DEFAULT_CANDIDATE_THRESHOLD = 0.6
"""Cosine similarity a neighbour needs to be pixel-checked at all (planted CIFAR copies: 10th percentile 0.66)."""
DEFAULT_PIXEL_THRESHOLD = 0.85
"""Normalised cross-correlation at or above which a checked pair is a near-duplicate."""
DEFAULT_PIXEL_ASSIST = (0.65, 0.85)
"""(correlation, cosine): a pair with both at least these is a near-duplicate too (rotated copies)."""
DEFAULT_PIXEL_GAP = 0.5
"""How far a confirmed pair's correlation must stand above either side's correlation ``r`` with a reference
neighbour, as a fraction of the headroom ``1 - r``: ``(corr - r) / (1 - r) >= 0.5``.  A fixed margin cannot be met
near the top (a 0.99 copy of a photo whose reference reads 0.83); the fraction can, and it still refuses a crowd of
look-alikes (0.90 against 0.85 is a third of the headroom).  Planted CIFAR copies: recall of the crops 0.92 -> 0.98,
rotations 0.94 -> 1.00 over a fixed 0.25 (``bench/real_data.py``)."""
DEFAULT_MAX_SHIFT = 3
"""Pixels of the 32 px signature the check slides the two sides by (about 10 % of the picture each way)."""
DEFAULT_MIN_DETAIL = 0.3
"""Fine detail (:func:`signature_detail`) both images of a pair need for their pixels to confirm it."""
DEFAULT_NEIGHBOUR_GAP = 0.05
"""How far a candidate's cosine must stand above the k-th neighbour's (of either side) to be checked.  A copy stands
out from its neighbourhood (planted CIFAR copies: gap >= 0.08 for 95 %); in a crowd of look-alikes (handwritten
digits of one class, cosine 0.93-0.98 to all of the first ten) nothing stands out, and the pixels of distinct
members correlate too well to tell them apart."""


def pixel_signature(image: Any, size: int = SIGNATURE_SIZE) -> np.ndarray:
    """Greyscale ``size`` x ``size`` float32 thumbnail of a PIL image (the input of :func:`pixel_similarity`)."""
    from PIL import Image

    return np.asarray(image.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32)


def signature_detail(signatures: np.ndarray) -> np.ndarray:
    """Fine detail of each signature: the standard deviation of its Laplacian over its own standard deviation.

    Correlating two signatures with little fine detail (upscaled low-resolution images, smooth drawings) measures
    only their coarse layout, which look-alike images share; :func:`verify_pairs` therefore confirms a pair by its
    pixels only when both signatures carry detail.  Photos score 0.45 and more (CIFAR-10: 1st percentile 0.46),
    8x8 handwritten digits shown at 64 px 0.15-0.25.
    """
    from scipy.ndimage import laplace

    S = np.asarray(signatures, dtype=np.float32)
    if S.ndim == 2:
        S = S[None]
    S = S - S.mean(axis=(1, 2), keepdims=True)
    lap = np.stack([laplace(s) for s in S]) if len(S) else S
    return (lap.std(axis=(1, 2)) / (S.std(axis=(1, 2)) + 1e-6)).astype(np.float32)


def _signature_variants(sig: np.ndarray) -> np.ndarray:
    """The views of one signature that the check tries: as is and mirrored, x1 and x1.15 zoom, 0 and +-7 degrees."""
    from PIL import Image

    size = sig.shape[0]
    img = Image.fromarray(np.ascontiguousarray(sig, dtype=np.float32), mode="F")
    out = []
    for mirror in (False, True):
        base = img.transpose(Image.FLIP_LEFT_RIGHT) if mirror else img
        for zoom in (1.0, 1.15):
            z = base
            if zoom != 1.0:
                big = round(size * zoom)
                off = (big - size) // 2
                z = base.resize((big, big), Image.BILINEAR).crop((off, off, off + size, off + size))
            for angle in (0, -7, 7):
                out.append(np.asarray(z.rotate(angle, resample=Image.BILINEAR) if angle else z, dtype=np.float32))
    return np.stack(out)


def pixel_similarity(a: np.ndarray, b: np.ndarray, max_shift: int = DEFAULT_MAX_SHIFT,
                     symmetric: bool = True) -> np.ndarray:
    """Best normalised cross-correlation between signature pairs over small shifts, a mirror, zoom and rotation.

    Embeddings of a small crop, shift, mirror image or rotation of a photo can fall far below a duplicate
    threshold (planted copies of 32 px CIFAR photos: a 3 px shift reads cosine 0.66-0.92, while distinct photos
    reach 0.87 to their nearest neighbour), yet the pixels still line up once the change is undone.  Each pair is
    compared after removing brightness and contrast (zero mean per overlap, normalised), for every shift up to
    ``max_shift`` pixels and every view of ``b`` from :func:`_signature_variants` (12), keeping the maximum; with
    ``symmetric`` (default) also every view of ``a`` against ``b``, since the zoom only undoes a crop when it is
    applied to the wider side, and a pair's order says nothing about which side that is.
    1 = the same picture up to those changes.

    Parameters
    ----------
    a, b : float arrays (m, s, s)
        Signatures (:func:`pixel_signature`) of the two sides of m pairs.

    Returns
    -------
    float64 array (m,) in [-1, 1].

    >>> rng = np.random.default_rng(0); x = rng.random((1, 32, 32)).astype(np.float32)
    >>> float(pixel_similarity(x, x[:, :, ::-1] * 0.5 + 3)[0]) > 0.999
    True
    >>> float(pixel_similarity(x, rng.random((1, 32, 32)).astype(np.float32))[0]) < 0.5
    True
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    best = _one_way_similarity(a, b, max_shift)
    if symmetric and len(a):
        best = np.maximum(best, _one_way_similarity(b, a, max_shift))
    return best


def _integral(x: np.ndarray) -> np.ndarray:
    """Summed-area tables of the last two axes (float64, one leading row and column of zeros)."""
    out = np.zeros(x.shape[:-2] + (x.shape[-2] + 1, x.shape[-1] + 1), np.float64)
    out[..., 1:, 1:] = x.cumsum(axis=-2).cumsum(axis=-1)
    return out


def _window_sums(table: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Sums of the windows ``[r0, r1) x [c0, c1)`` (one per index) from a summed-area table: shape ``(..., K)``."""
    return table[..., r1, c1] - table[..., r0, c1] - table[..., r1, c0] + table[..., r0, c0]


def _one_way_similarity(a: np.ndarray, b: np.ndarray, max_shift: int, block: int = 128) -> np.ndarray:
    """:func:`pixel_similarity` with the views of ``b`` only.

    The correlation at every shift at once: the raw cross-correlation from one FFT per view (padded so that shifts
    up to ``max_shift`` do not wrap), the per-overlap means and norms from summed-area tables, so that
    ``(sum ab - sum a sum b / P) / (|a - mean a| |b - mean b|)`` over each overlap of ``P`` pixels is exactly the
    zero-mean normalised cross-correlation of the overlapping parts.
    """
    m, size = len(a), a.shape[-1]
    best = np.full(m, -1.0)
    if not m:
        return best
    d = np.arange(-max_shift, max_shift + 1)
    dy, dx = np.repeat(d, len(d)), np.tile(d, len(d))  # every shift; a[y, x] meets view[y - dy, x - dx]
    a_rows = (np.maximum(dy, 0), size + np.minimum(dy, 0), np.maximum(dx, 0), size + np.minimum(dx, 0))
    b_rows = (np.maximum(-dy, 0), size + np.minimum(-dy, 0), np.maximum(-dx, 0), size + np.minimum(-dx, 0))
    pixels = ((size - np.abs(dy)) * (size - np.abs(dx))).astype(np.float64)
    n = size + max_shift
    for s in range(0, m, block):
        A = np.asarray(a[s:s + block], np.float64)
        V = np.stack([_signature_variants(x) for x in b[s:s + block]]).astype(np.float64)  # (mb, V, s, s)
        corr = np.fft.irfft2(np.fft.rfft2(A, s=(n, n))[:, None] * np.conj(np.fft.rfft2(V, s=(n, n))), s=(n, n))
        cross = corr[..., dy % n, dx % n]  # (mb, V, shifts)
        sa = _window_sums(_integral(A), *a_rows)[:, None]
        saa = _window_sums(_integral(A * A), *a_rows)[:, None]
        sv = _window_sums(_integral(V), *b_rows)
        svv = _window_sums(_integral(V * V), *b_rows)
        cov = cross - sa * sv / pixels
        norm = np.sqrt(np.maximum(saa - sa * sa / pixels, 0.0)) * np.sqrt(np.maximum(svv - sv * sv / pixels, 0.0))
        best[s:s + block] = (cov / (norm + 1e-6)).reshape(len(A), -1).max(axis=1)
    return best


def candidate_pairs(knn_graph: Any, threshold: float, verify_k: int = DEFAULT_VERIFY_K,
                    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
                    min_gap: float = DEFAULT_NEIGHBOUR_GAP) -> DuplicatePairs:
    """Pairs worth a pixel check: each row's first ``verify_k`` neighbours with cosine in
    [``candidate_threshold``, ``threshold``) that stand at least ``min_gap`` above the graph's last (k-th)
    neighbour of either row — a scale-aware test from the local neighbour distribution (pairs at or above
    ``threshold`` need no check)."""
    all_idx = np.asarray(knn_graph.indices, dtype=np.int64)
    all_sims = np.asarray(knn_graph.similarities, dtype=np.float32)
    idx, sims = all_idx[:, :verify_k], all_sims[:, :verify_k]
    kth = np.where(all_idx[:, -1] >= 0, all_sims[:, -1], -1.0).astype(np.float32)  # background of each row
    background = np.minimum(kth[:, None], kth[np.where(idx >= 0, idx, 0)])
    hit = ((idx >= 0) & (sims >= candidate_threshold) & (sims < threshold - _EPS)
           & (sims - background >= min_gap))
    rows = np.nonzero(hit)
    i, j, s = rows[0].astype(np.int64), idx[hit], sims[hit]
    keep = i != j
    return _canonical_pairs(i[keep], j[keep], s[keep])


def pixel_check_plan(knn_graph: Any, threshold: float, verify_k: int = DEFAULT_VERIFY_K,
                     candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD
                     ) -> tuple[DuplicatePairs, np.ndarray, np.ndarray]:
    """What the pixel check needs from the kNN graph: the candidate pairs (:func:`candidate_pairs`), each row's
    reference neighbour (the first one past the ``verify_k`` checked ones) and the rows whose signatures must be
    read (both sides of every candidate and their references)."""
    cand = candidate_pairs(knn_graph, threshold, verify_k=verify_k, candidate_threshold=candidate_threshold)
    gidx = np.asarray(knn_graph.indices, dtype=np.int64)
    reference = gidx[:, min(verify_k, gidx.shape[1] - 1)]
    rows = np.unique(np.concatenate([cand.i, cand.j]))
    rows = np.unique(np.concatenate([rows, reference[rows][reference[rows] >= 0]]))
    return cand, reference, rows


def verify_pairs(pairs: DuplicatePairs, signatures: np.ndarray, has_signature: np.ndarray | None = None,
                 pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD,
                 assist: tuple[float, float] = DEFAULT_PIXEL_ASSIST, reference: np.ndarray | None = None,
                 min_pixel_gap: float = DEFAULT_PIXEL_GAP, min_detail: float = DEFAULT_MIN_DETAIL,
                 chunk: int = 2048, progress: Any = None) -> tuple[DuplicatePairs, np.ndarray]:
    """The candidate pairs whose pixels confirm a near-duplicate (:func:`pixel_similarity`).

    A pair is kept when its correlation is ``>= pixel_threshold``, or ``>= assist[0]`` while its cosine is
    ``>= assist[1]`` — and, with ``reference`` (per row, a neighbour that is not a candidate, -1 = none), when it
    beats the correlation ``r`` of either side with its reference by ``min_pixel_gap`` of the headroom, i.e.
    ``(corr - r) / (1 - r) >= min_pixel_gap`` (:data:`DEFAULT_PIXEL_GAP`): among look-alike images
    (handwritten digits of one class) every neighbour correlates well and none is a copy.  Rows without a
    signature (unreadable files) confirm nothing.

    Returns
    -------
    (confirmed pairs, correlation of every candidate pair; -1 where it could not be measured)
    """
    from curate.engine.progress import track

    ok = np.ones(len(signatures), bool) if has_signature is None else np.asarray(has_signature, bool)

    def correlate(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        out = np.full(len(i), -1.0)
        starts = list(range(0, len(i), chunk))
        for s in track(starts, "pixel check", len(starts), progress):
            a, b = i[s:s + chunk], j[s:s + chunk]
            both = (a >= 0) & (b >= 0)
            both[both] = ok[a[both]] & ok[b[both]]
            if both.any():
                c = np.full(len(a), -1.0)
                c[both] = pixel_similarity(signatures[a[both]], signatures[b[both]])
                out[s:s + chunk] = c
        return out

    corr = correlate(pairs.i, pairs.j)
    keep = (corr >= pixel_threshold) | ((corr >= assist[0]) & (pairs.similarity >= assist[1]))
    if min_detail > 0 and keep.any():
        rows = np.unique(np.concatenate([pairs.i[keep], pairs.j[keep]]))
        detail = np.zeros(len(signatures), np.float32)
        detail[rows] = signature_detail(signatures[rows])
        keep &= (detail[pairs.i] >= min_detail) & (detail[pairs.j] >= min_detail)
    if reference is not None and keep.any():
        reference = np.asarray(reference, np.int64)
        rows = np.unique(np.concatenate([pairs.i[keep], pairs.j[keep]]))
        ref_corr = np.full(len(signatures), -1.0)
        ref_corr[rows] = correlate(rows, reference[rows])
        r = np.maximum(ref_corr[pairs.i], ref_corr[pairs.j])
        keep &= (corr - r) >= min_pixel_gap * np.maximum(1.0 - r, 0.0)
    return DuplicatePairs(pairs.i[keep], pairs.j[keep], pairs.similarity[keep]), corr


def file_features(paths: Sequence[str], hash_rows: np.ndarray, signature_rows: np.ndarray,
                  workers: int | None = None,
                  progress: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Perceptual hashes of ``paths[hash_rows]`` and pixel signatures of ``paths[signature_rows]``, each file
    decoded once: (hashes uint8 [n, 8], hashed bool [n], signatures float32 [n, s, s], signed bool [n])."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from curate.engine.images import open_rgb
    from curate.engine.progress import track

    n = len(paths)
    want_hash = np.zeros(n, bool)
    want_hash[np.asarray(hash_rows, np.int64)] = True
    want_sig = np.zeros(n, bool)
    want_sig[np.asarray(signature_rows, np.int64)] = True
    rows = np.flatnonzero(want_hash | want_sig)

    def one(r: int):
        try:
            # JPEG: decode at reduced scale but still >= 256 px, so the 32x32 Lanczos hash input is the same as
            # from a full decode (a 1/8-scale draft changes the hash of small files by a few bits); upright, so an
            # EXIF-rotated copy hashes like the upright original it displays as
            img = open_rgb(paths[r], draft=256 if want_hash[r] else 4 * SIGNATURE_SIZE)
            return (perceptual_hash(img) if want_hash[r] else None), (pixel_signature(img) if want_sig[r] else None)
        except Exception:  # unreadable now: no evidence from this file
            return None, None

    H = np.zeros((n, 8), np.uint8)
    hashed = np.zeros(n, bool)
    sig = np.zeros((n, SIGNATURE_SIZE, SIGNATURE_SIZE), np.float32)
    signed = np.zeros(n, bool)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        label = "perceptual hashes" if want_hash.any() else "pixel signatures"
        for r, (h, g) in zip(rows, track(pool.map(one, rows.tolist()), label, len(rows), progress)):
            if h is not None:
                H[r], hashed[r] = h, True
            if g is not None:
                sig[r], signed[r] = g, True
    return H, hashed, sig, signed


def _hamming(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between packed hashes A [m, 8] and B [p, 8] -> int [m, p]."""
    return np.bitwise_count(A[:, None, :] ^ B[None, :, :]).sum(axis=2)


# ------------------------------------------------------------------------------------------- grouping
def exact_duplicate_groups(content_hashes: Sequence[str]) -> list[np.ndarray]:
    """Row positions sharing a content hash, one ascending array per hash seen more than once."""
    h = pd.Series(np.asarray(content_hashes, dtype=object))
    groups = [np.sort(np.asarray(v, np.int64)) for v in h.groupby(h, sort=True).indices.values() if len(v) > 1]
    groups.sort(key=lambda g: int(g[0]))
    return groups


def group_near_duplicates(embeddings: np.ndarray, pairs: DuplicatePairs, threshold: float,
                          rows: np.ndarray | None = None, hashes: np.ndarray | None = None,
                          hash_distance: int = DEFAULT_HASH_DISTANCE,
                          hash_valid: np.ndarray | None = None,
                          verified: DuplicatePairs | None = None) -> list[np.ndarray]:
    """Greedy complete-linkage grouping of above-threshold pairs (the chaining guard; see module doc).

    Parameters
    ----------
    embeddings : (n, d) unit vectors, used to check candidate-vs-member similarities exactly (the pair list may
        be incomplete, e.g. a kNN graph truncated at k).
    pairs : candidate pairs at or above ``threshold``.
    threshold : every pair of members of a returned set has similarity ``>= threshold`` (or, with ``hashes``,
        hash distance ``<= hash_distance``).
    rows : optional subset of rows allowed in sets (others are ignored).
    hashes, hash_distance, hash_valid : packed perceptual hashes [n, 8], the distance limit, and which rows
        have a hash.
    verified : pairs confirmed by the pixel check (:func:`verify_pairs`); they count as near-duplicates too.

    Returns
    -------
    list of int64 arrays, each a set of >= 2 rows (ascending), in the order they were formed.
    """
    X = _as_unit_float32(embeddings)
    n = len(X)
    i, j, s = pairs.i, pairs.j, pairs.similarity
    if rows is not None:
        allowed = np.zeros(n, bool)
        allowed[np.asarray(rows, np.int64)] = True
        keep = allowed[i] & allowed[j]
        i, j, s = i[keep], j[keep], s[keep]
    if not len(i):
        return []
    from scipy.sparse import csr_matrix

    A = csr_matrix((np.concatenate([s, s]).astype(np.float64), (np.concatenate([i, j]), np.concatenate([j, i]))),
                   shape=(n, n))
    A.sum_duplicates()
    degree = np.diff(A.indptr)
    strength = np.asarray(A.sum(axis=1)).ravel()
    nodes = np.nonzero(degree)[0]
    order = nodes[np.lexsort((nodes, -strength[nodes], -degree[nodes]))]
    assigned = np.zeros(n, bool)
    sets: list[np.ndarray] = []
    t = threshold - _EPS
    if hashes is not None:
        hashes = np.asarray(hashes, np.uint8)
        hv = np.ones(n, bool) if hash_valid is None else np.asarray(hash_valid, bool)
    V = None
    if verified is not None and len(verified):
        V = csr_matrix((np.ones(2 * len(verified), bool), (np.concatenate([verified.i, verified.j]),
                                                           np.concatenate([verified.j, verified.i]))), shape=(n, n))
    for seed in order:
        if assigned[seed]:
            continue
        lo, hi = A.indptr[seed], A.indptr[seed + 1]
        nbr, nsim = A.indices[lo:hi], A.data[lo:hi]
        free = ~assigned[nbr]
        nbr, nsim = nbr[free], nsim[free]
        if not len(nbr):
            continue
        if V is not None:
            # direct evidence first: a pair confirmed only by its pixels never takes a sample's place in a set
            # before that sample's embedding or hash partners (two recompressed copies of different look-alike
            # digits correlate well, and would otherwise pull each other out of their originals' sets)
            direct = nsim >= t
            if hashes is not None and hv[seed]:
                direct |= hv[nbr] & (_hamming(hashes[seed:seed + 1], hashes[nbr])[0] <= hash_distance)
            cand = nbr[np.lexsort((nbr, -nsim, ~direct))]
        else:
            cand = nbr[np.lexsort((nbr, -nsim))]
        # candidates-vs-candidates similarities: all at once for small lists, row by row for huge ones
        Xc = X[cand]
        Hc = hashes[cand] if hashes is not None else None
        Vc = hv[cand] if hashes is not None else None

        def compatible(c: int, G_row: np.ndarray | None = None) -> np.ndarray:
            close = (G_row if G_row is not None else Xc @ Xc[c]) >= t
            if Hc is not None and Vc[c]:
                close |= Vc & (_hamming(Hc[c:c + 1], Hc)[0] <= hash_distance)
            if V is not None:
                close |= V[cand[c]][:, cand].toarray().ravel()
            return close

        G = Xc @ Xc.T if len(cand) <= 2048 else None
        ok = np.ones(len(cand), bool)
        chosen = []
        for c in range(len(cand)):
            if not ok[c]:
                continue
            chosen.append(c)
            ok &= compatible(c, G[c] if G is not None else None)
        members = np.sort(np.concatenate([[seed], cand[chosen]])).astype(np.int64)
        assigned[members] = True
        sets.append(members)
    return sets


def find_near_duplicates(embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, knn_graph: Any = None,
                         content_hashes: Sequence[str] | None = None, perceptual_hashes: np.ndarray | None = None,
                         hash_distance: int = DEFAULT_HASH_DISTANCE, hash_valid: np.ndarray | None = None,
                         method: str = "auto", seed: int = 0,
                         verified_pairs: DuplicatePairs | None = None) -> DuplicateSets:
    """Exact and near-duplicate sets over the rows of ``embeddings``.

    Parameters
    ----------
    embeddings : (n, d) float array, L2-normalised.
    threshold : cosine similarity at or above which two samples are near-duplicates.
    knn_graph : the shared kNN graph over the same rows (optional; see :func:`near_duplicate_pairs`).
    content_hashes : per-row content hash; rows sharing one are exact duplicates.
    perceptual_hashes : optional packed 64-bit pHashes [n, 8] (:func:`perceptual_hash`); pairs within
        ``hash_distance`` bits are near-duplicates too.  ``hash_valid`` marks rows that have a hash.
    method, seed : candidate search without a graph (see :func:`near_duplicate_pairs`).
    verified_pairs : pairs below ``threshold`` that the pixel check confirmed (:func:`verify_pairs`); they join
        the candidate pairs and count as near-duplicates when sets are formed.

    Returns
    -------
    DuplicateSets
        Sets whose members are pairwise ``>= threshold`` (exact copies count as similarity 1), largest first.

    Examples
    --------
    >>> X = np.eye(4, dtype=np.float32); X[1] = X[0]
    >>> find_near_duplicates(X, 0.9).members
    [array([0, 1])]
    """
    X = _as_unit_float32(embeddings)
    n = len(X)
    t0 = time.perf_counter()
    exact_groups = exact_duplicate_groups(content_hashes) if content_hashes is not None else []
    if content_hashes is not None and len(content_hashes) != n:
        raise ValueError(f"content_hashes has {len(content_hashes)} entries but embeddings have {n} rows")
    rep = np.arange(n, dtype=np.int64)
    for g in exact_groups:
        rep[g] = g[0]
    pairs = near_duplicate_pairs(X, threshold, knn_graph=knn_graph, method=method, seed=seed)
    n_embedding_pairs = len(pairs)
    n_hash_pairs = 0
    if perceptual_hashes is not None:
        if len(perceptual_hashes) != n:
            raise ValueError(f"perceptual_hashes has {len(perceptual_hashes)} rows but embeddings have {n}")
        hi, hj, _ = hash_pairs(perceptual_hashes, hash_distance, valid=hash_valid)
        n_hash_pairs = len(hi)
        if len(hi):
            hs = np.einsum("ij,ij->i", X[hi], X[hj]).astype(np.float32)
            pairs = _canonical_pairs(np.concatenate([pairs.i, hi]), np.concatenate([pairs.j, hj]),
                                     np.concatenate([pairs.similarity, hs]))
    n_verified = 0 if verified_pairs is None else len(verified_pairs)
    if n_verified:
        pairs = _canonical_pairs(np.concatenate([pairs.i, verified_pairs.i]), np.concatenate([pairs.j, verified_pairs.j]),
                                 np.concatenate([pairs.similarity, verified_pairs.similarity]))
    t_pairs = time.perf_counter() - t0
    # near pairs between representatives (exact copies collapse onto their group's first row)
    rp = _canonical_pairs(rep[pairs.i], rep[pairs.j], pairs.similarity)
    is_rep = rep == np.arange(n)
    vp = None if not n_verified else _canonical_pairs(rep[verified_pairs.i], rep[verified_pairs.j],
                                                      verified_pairs.similarity)
    near_sets = group_near_duplicates(X, rp, threshold, rows=np.nonzero(is_rep)[0], hashes=perceptual_hashes,
                                      hash_distance=hash_distance, hash_valid=hash_valid, verified=vp)
    copies = {int(g[0]): g for g in exact_groups}
    members: list[np.ndarray] = []
    exact_flags: list[bool] = []
    used_groups: set[int] = set()
    for m in near_sets:
        expanded = [copies.get(int(r), np.array([r], np.int64)) for r in m]
        used_groups.update(int(r) for r in m if int(r) in copies)
        members.append(np.sort(np.concatenate(expanded)))
        exact_flags.append(False)
    for g in exact_groups:
        if int(g[0]) not in used_groups:
            members.append(g)
            exact_flags.append(True)
    order = sorted(range(len(members)), key=lambda k: (-len(members[k]), int(members[k][0])))
    members = [members[k] for k in order]
    exact_flags = [exact_flags[k] for k in order]
    # all pairs (for leakage): near pairs plus every within-exact-group pair
    ex_i, ex_j = [], []
    for g in exact_groups:
        a, b = np.triu_indices(len(g), 1)
        ex_i.append(g[a])
        ex_j.append(g[b])
    if ex_i:
        ei, ej = np.concatenate(ex_i), np.concatenate(ex_j)
        all_pairs = _canonical_pairs(np.concatenate([ei, pairs.i]), np.concatenate([ej, pairs.j]),
                                     np.concatenate([np.ones(len(ei), np.float32), pairs.similarity]))
    else:
        all_pairs = pairs
    stats = {"candidate_pairs": len(pairs), "embedding_pairs": n_embedding_pairs, "hash_pairs": n_hash_pairs,
             "pixel_verified_pairs": n_verified,
             "exact_groups": len(exact_groups), "pairs_seconds": round(t_pairs, 3),
             "total_seconds": round(time.perf_counter() - t0, 3)}
    return DuplicateSets(members=members, exact=exact_flags, pairs=all_pairs, threshold=float(threshold), stats=stats)


# ------------------------------------------------------------------------------------------- keepers, leakage
def choose_keepers(sets: Sequence[np.ndarray], sample_ids: np.ndarray, area: np.ndarray | None = None,
                   has_label_issue: np.ndarray | None = None, labels: Sequence[Any] | None = None,
                   overrides: dict[int, int] | None = None) -> np.ndarray:
    """The row to keep in each duplicate set.

    Rule, in order: a user override (``overrides`` maps row -> decision id of a live ``merge`` decision naming
    that row as kept; the latest decision wins) > largest ``area`` (width x height) > no label issue > carries
    the set's majority label (ties between labels broken by name) > lowest sample id.

    Parameters
    ----------
    sets : row positions per set.
    sample_ids : int array, sample id per row (the final tie-break).
    area : per-row pixel count; NaN/missing counts as 0.
    has_label_issue : per-row bool; rows flagged by the label-issue analysis are kept last.
    labels : per-row label (None/NaN = unlabeled).
    overrides : row -> decision id.

    Returns
    -------
    int64 array with one row position per set.
    """
    n = len(sample_ids)
    area = np.zeros(n) if area is None else np.nan_to_num(np.asarray(area, np.float64), nan=0.0)
    issue = np.zeros(n, bool) if has_label_issue is None else np.asarray(has_label_issue, bool)
    labs = [None] * n if labels is None else list(labels)
    overrides = overrides or {}
    out = np.empty(len(sets), np.int64)
    for k, m in enumerate(sets):
        m = np.asarray(m, np.int64)
        chosen = [r for r in m if int(r) in overrides]
        if chosen:
            out[k] = max(chosen, key=lambda r: overrides[int(r)])
            continue
        set_labels = [labs[r] for r in m if _is_label(labs[r])]
        majority = None
        if set_labels:
            counts = pd.Series(set_labels, dtype=object).value_counts()
            top = counts[counts == counts.max()].index
            majority = sorted(map(str, top))[0]
        has_major = np.array([majority is not None and _is_label(labs[r]) and str(labs[r]) == majority for r in m])
        # lexsort: last key is primary
        order = np.lexsort((np.asarray(sample_ids)[m], ~has_major, issue[m], -area[m]))
        out[k] = m[order[0]]
    return out


def _is_label(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA


def leakage_pairs(pairs: DuplicatePairs, splits: Sequence[Any]) -> pd.DataFrame:
    """Duplicate pairs whose two samples are in different splits (train/test leakage).

    Rows without a split (NULL, e.g. an unlabeled pool) never count as leakage.

    Returns
    -------
    DataFrame with columns ``i``, ``j`` (row positions), ``similarity``, ``split_i``, ``split_j``, sorted by
    descending similarity.
    """
    sp = pd.Series(list(splits), dtype=object)
    has = sp.map(_is_label).to_numpy(bool)
    spv = sp.astype(str).to_numpy()
    i, j = pairs.i, pairs.j
    cross = has[i] & has[j] & (spv[i] != spv[j]) if len(i) else np.zeros(0, bool)
    df = pd.DataFrame({"i": i[cross], "j": j[cross], "similarity": pairs.similarity[cross].astype(float),
                       "split_i": spv[i[cross]], "split_j": spv[j[cross]]})
    return df.sort_values(["similarity", "i", "j"], ascending=[False, True, True], kind="stable").reset_index(drop=True)


def duplicates_table(sets: DuplicateSets, keepers: np.ndarray, embeddings: np.ndarray, sample_ids: np.ndarray,
                     content_hashes: Sequence[str] | None = None, splits: Sequence[Any] | None = None) -> pd.DataFrame:
    """Rows for the ``duplicates`` catalog table.

    ``kind`` says how each row relates to its set's keeper: ``exact`` when byte-identical to the keeper (the
    keeper itself is ``exact`` when it has a byte-identical copy in the set), else ``near``.  ``similarity`` is
    the cosine similarity to the keeper (1 for the keeper and its exact copies).  ``crosses_splits`` is true
    for every row of a set that spans two or more (non-null) splits.
    """
    X = _as_unit_float32(embeddings)
    hashes = None if content_hashes is None else np.asarray(content_hashes, dtype=object)
    sp = None if splits is None else pd.Series(list(splits), dtype=object)
    recs = []
    for set_id, (m, keeper) in enumerate(zip(sets.members, keepers)):
        sims = np.clip(X[m] @ X[keeper], -1.0, 1.0).astype(float)
        if hashes is not None:
            same = hashes[m] == hashes[keeper]
        else:
            same = sims >= 1.0 - _EPS
        keeper_has_copy = bool(same.sum() > 1)
        crosses = False
        if sp is not None:
            vals = {str(v) for v in sp.iloc[m] if _is_label(v)}
            crosses = len(vals) > 1
        for r, s_, e in zip(m, sims, same):
            is_keeper = bool(r == keeper)
            exact = keeper_has_copy if is_keeper else bool(e)
            recs.append((set_id, int(sample_ids[r]), "exact" if exact else "near", 1.0 if exact else float(s_),
                         is_keeper, crosses))
    return pd.DataFrame(recs, columns=["set_id", "sample_id", "kind", "similarity", "is_keeper", "crosses_splits"])


# ------------------------------------------------------------------------------------------- SemDeDup curve
def _max_earlier_similarity(Xc: np.ndarray, device: str = "cpu", block: int = 2048) -> np.ndarray:
    """For each row r of ``Xc``, max cosine similarity to rows 0..r-1 (-1 for row 0)."""
    m = len(Xc)
    out = np.full(m, -1.0, np.float32)
    if m < 2:
        return out
    if device.startswith("cuda"):
        import torch

        T = torch.from_numpy(Xc).to(device)
        for start in range(1, m, block):
            stop = min(m, start + block)
            S = T[:stop] @ T[start:stop].T  # [stop, b]
            mask = torch.arange(stop, device=device)[:, None] >= torch.arange(start, stop, device=device)[None, :]
            S.masked_fill_(mask, -2.0)
            out[start:stop] = S.max(dim=0).values.float().cpu().numpy()
        return out
    for start in range(1, m, block):
        stop = min(m, start + block)
        S = Xc[:stop] @ Xc[start:stop].T
        S[np.arange(stop)[:, None] >= np.arange(start, stop)[None, :]] = -2.0
        out[start:stop] = S.max(axis=0)
    return out


def semdedup_curve(embeddings: np.ndarray, thresholds: Sequence[float] = DEFAULT_CURVE_THRESHOLDS,
                   n_partitions: int | None = None, points_per_partition: int = 1000, seed: int = 0,
                   niter: int = 20, device: str = "auto") -> SemDedupCurve:
    """SemDeDup-style pruning curve: samples removed at each similarity threshold.

    The embedding space is split into ``n_partitions`` k-means partitions (``faiss.Kmeans``, spherical,
    seeded; default ``ceil(n / points_per_partition)``).  Inside each partition rows are ordered by ascending
    similarity to the centroid (least prototypical first, as in SemDeDup) and a row is removed at threshold
    ``t`` when a row visited before it has similarity ``>= t``.  Duplicates split across partitions are not
    seen — the price of scaling linearly; the exact sets of :func:`find_near_duplicates` have no such gap.

    Parameters
    ----------
    embeddings : (n, d) unit vectors.
    thresholds : similarity thresholds to report.
    n_partitions, points_per_partition : k-means size.
    seed, niter : k-means seed and iterations.
    device : "auto" (CUDA when torch sees a GPU and n >= 50,000), "cpu" or "cuda".

    Returns
    -------
    SemDedupCurve
    """
    import faiss

    t0 = time.perf_counter()
    X = _as_unit_float32(embeddings)
    n, d = X.shape
    if device == "auto":  # a GPU pays off only on large inputs; small ones skip importing torch at all
        device = "cpu"
        if n >= 50_000:
            from curate.engine.devices import cuda_available

            device = "cuda" if cuda_available() else "cpu"
    k = int(n_partitions or max(1, math.ceil(n / max(1, points_per_partition))))
    k = max(1, min(k, n))
    if k == 1:
        part = np.zeros(n, np.int64)
        centroids = X.mean(axis=0, keepdims=True)
        centroids /= max(np.linalg.norm(centroids), 1e-12)
    else:
        km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False, max_points_per_centroid=256)
        km.train(X)
        centroids = km.centroids
        _, a = km.index.search(X, 1)
        part = a[:, 0].astype(np.int64)
    to_centroid = np.einsum("ij,ij->i", X, centroids[part])
    max_sim = np.full(n, -1.0, np.float32)
    order = np.lexsort((np.arange(n), to_centroid, part))  # by partition, then least prototypical first
    bounds = np.searchsorted(part[order], np.arange(k + 1))
    for c in range(k):
        rows = order[bounds[c]:bounds[c + 1]]
        if len(rows) > 1:
            max_sim[rows] = _max_earlier_similarity(X[rows], device=device)
    th = np.asarray(sorted(float(t) for t in thresholds), np.float64)
    n_removed = np.array([(max_sim >= t - _EPS).sum() for t in th], np.int64)
    return SemDedupCurve(thresholds=th, n_removed=n_removed, keep_fraction=1.0 - n_removed / max(n, 1),
                         max_similarity=max_sim, partition=part, n_partitions=k, seconds=time.perf_counter() - t0)


def semdedup_table(curve: SemDedupCurve | None, sample_ids: np.ndarray) -> pd.DataFrame:
    """Rows of the ``semdedup`` table: the samples the curve prunes at its lowest threshold.

    ``sample_id, max_similarity, kmeans_partition`` (row r of the curve is ``sample_ids[r]``); samples kept at
    every threshold of the curve are left out.  ``None`` gives the empty table (no curve computed).
    """
    if curve is None or not len(curve.thresholds):
        return pd.DataFrame({"sample_id": pd.Series(dtype=np.int64), "max_similarity": pd.Series(dtype=float),
                             "kmeans_partition": pd.Series(dtype=np.int32)})
    m = curve.removed_mask(float(np.min(curve.thresholds)))
    return pd.DataFrame({"sample_id": np.asarray(sample_ids, np.int64)[m],
                         "max_similarity": curve.max_similarity[m].astype(np.float64),
                         "kmeans_partition": curve.partition[m].astype(np.int32)})


# ------------------------------------------------------------------------------------------- the registered analysis
def default_threshold(encoder: str | None) -> float:
    """The calibrated near-duplicate threshold for ``encoder`` (``DEFAULT_THRESHOLD`` if not calibrated)."""
    if encoder:
        for name, t in ENCODER_THRESHOLDS.items():
            if encoder == name or encoder.startswith(name):
                return t
    return DEFAULT_THRESHOLD


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(float(v))


def _is_whole(v: Any) -> bool:
    return _is_number(v) and float(v) == int(v)


@dataclass(frozen=True)
class DuplicatesConfig(Config):
    """Options of the ``duplicates`` analysis (every option of :func:`run` but the project, encoder and size switch).

    Attributes
    ----------
    threshold : cosine similarity at or above which two samples are near-duplicates; None = calibrated for the
        encoder (:func:`default_threshold`).
    k : degree of the shared kNN graph the candidate pairs are read from.
    hash_distance : perceptual-hash Hamming distance (bits) that also counts as a near-duplicate; None or a
        negative number (the CLI's ``-1``) = no perceptual hashes.
    curve_thresholds : similarity thresholds of the SemDeDup curve (a sequence, or a comma-separated string).
    seed : seed of the k-means partitions (SemDeDup curve, partitioned candidate search).
    semdedup : compute the SemDeDup curve (in memory only).
    workers : threads reading image files (None = ``min(8, CPUs)``).
    pixel_check, verify_k, candidate_threshold, pixel_threshold : the pixel check of close neighbours below the
        threshold (:func:`candidate_pairs`, :func:`verify_pairs`; in memory only).
    """

    threshold: float | None = None
    k: int = 10
    hash_distance: int | None = DEFAULT_HASH_DISTANCE
    curve_thresholds: tuple[float, ...] = DEFAULT_CURVE_THRESHOLDS
    seed: int = 0
    semdedup: bool = True
    workers: int | None = None
    pixel_check: bool = True
    verify_k: int = DEFAULT_VERIFY_K
    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD
    pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD

    def __post_init__(self) -> None:
        hd = self.hash_distance
        if _is_number(hd) and float(hd) < 0:  # -1 (the CLI's "embeddings only") turns the hashes off
            object.__setattr__(self, "hash_distance", None)
        ct = self.curve_thresholds
        if isinstance(ct, str):
            ct = [c for c in (part.strip() for part in ct.split(",")) if c]
            try:
                ct = [float(c) for c in ct]
            except ValueError:
                raise CurateError(f"curve_thresholds must be numbers separated by commas, got "
                                  f"{self.curve_thresholds!r}; try 0.9,0.95,0.99") from None
        if not isinstance(ct, tuple):
            try:
                ct = tuple(ct)
            except TypeError:
                raise CurateError(f"curve_thresholds must be a list of similarities, got {ct!r}; "
                                  f"try (0.9, 0.95, 0.99)") from None
        object.__setattr__(self, "curve_thresholds", ct)
        super().__post_init__()

    def validate(self) -> None:
        t = self.threshold
        if t is not None and not (_is_number(t) and 0.0 < float(t) <= 1.0):
            raise CurateError(f"duplicate threshold must be in (0, 1], got {t}; try --threshold 0.9")
        if not (_is_whole(self.k) and int(self.k) >= 1):
            raise CurateError(f"duplicates k must be a whole number >= 1, got {self.k}; try --k 10")
        hd = self.hash_distance
        if hd is not None and not (_is_whole(hd) and 0 <= int(hd) <= 64):
            raise CurateError(f"hash_distance must be 0..64 bits (-1 or None: off), got {hd}; try --hash-distance 2")
        for c in self.curve_thresholds:
            if not (_is_number(c) and 0.0 < float(c) <= 1.0):
                raise CurateError(f"curve_thresholds must be similarities in (0, 1], got {c}; try 0.9")
        if not _is_whole(self.seed):
            raise CurateError(f"seed must be a whole number, got {self.seed}; try --seed 0")
        if self.workers is not None and not (_is_whole(self.workers) and int(self.workers) >= 1):
            raise CurateError(f"workers must be >= 1 (None: min(8, CPUs)), got {self.workers}; try --workers 4")
        if not (_is_whole(self.verify_k) and int(self.verify_k) >= 1):
            raise CurateError(f"verify_k must be a whole number >= 1, got {self.verify_k}; try verify_k=3")
        if not (_is_number(self.candidate_threshold) and -1.0 <= float(self.candidate_threshold) <= 1.0):
            raise CurateError(f"candidate_threshold must be a cosine similarity in [-1, 1], got "
                              f"{self.candidate_threshold}; try candidate_threshold=0.6")
        if not (_is_number(self.pixel_threshold) and -1.0 <= float(self.pixel_threshold) <= 1.0):
            raise CurateError(f"pixel_threshold must be a correlation in [-1, 1], got {self.pixel_threshold}; "
                              f"try pixel_threshold=0.85")


@dataclass
class DuplicatesRun:
    """What one run found, for Python callers (the registry result's ``detail``).

    Attributes
    ----------
    sets : the duplicate sets over the rows of ``sample_ids`` (their ``pairs`` cover the embedded rows).
    sample_ids : int64 sample id per row: the embedded rows (out of core: the candidate rows) in the embeddings'
        order, then samples without an embedding attached by their content hash.
    keepers : the row kept in each set (:func:`choose_keepers`).
    leakage : :func:`leakage_pairs` with the sample ids added (``sample_a``, ``sample_b``).
    curve : the SemDeDup curve (None when it was not computed).
    """

    sets: DuplicateSets
    sample_ids: np.ndarray
    keepers: np.ndarray
    leakage: pd.DataFrame
    curve: SemDedupCurve | None = None


def _all_vectors(embeddings: Any) -> np.ndarray:
    """Every vector of an in-memory :class:`~curate.engine.inputs.Embeddings` as one array (``sample`` of all
    rows: no copy for an :class:`~curate.engine.embed.EmbeddingSet`)."""
    return np.asarray(embeddings.sample(len(embeddings))[1], np.float32)


def summary_lines(s: dict) -> list[str]:
    """The findings of a run summary as printable lines (what ``curate audit duplicates`` prints above its tables)."""
    hd = "off" if s.get("hash_distance") is None else f"<= {s['hash_distance']}"
    pixels = (f", {s['pixel_verified']} of {s['pixel_candidates']} closer neighbours confirmed by pixels)"
              if s.get("pixel_check") else ")")
    return [f"{s['sets']} duplicate sets ({s['exact_sets']} exact, {s['near_sets']} near) holding "
            f"{s['samples_in_sets']} samples; removing all but the keepers drops {s['would_remove']} "
            f"(cosine >= {s['threshold']:.3f} on {s['encoder']}, pHash distance {hd}" + pixels,
            f"train/test leakage: {s['leakage_pairs']} cross-split pairs, {s['sets_crossing_splits']} sets"]


def compute(inputs: Any, config: DuplicatesConfig) -> Result:
    """Duplicate sets, keepers, leakage and the SemDeDup curve of a project; the same code in memory and out of core.

    Reads the vectors only through ``inputs.embeddings`` (:class:`curate.engine.inputs.Embeddings`) and the kNN graph
    through ``inputs.graph(k)``.  In memory: candidate pairs from the graph (plus perceptual hashes of the files and
    the pixel check of close neighbours), sets over every embedded row, the SemDeDup curve.  Out of core
    (``embeddings.in_memory`` False): candidate pairs from :func:`partitioned_near_duplicates` over the shards, and
    only the rows in a pair or sharing a content hash are loaded for the set building; the parts that need every
    sample (perceptual hashes, the pixel check over the in-memory graph, the SemDeDup curve) are left out (the
    analysis's ``in_memory_only``, listed by the runner in the summary's ``left_out``).

    Also reads the samples (hash, size, split), current labels, label issues (if that analysis ran) and live
    ``merge`` decisions (keeper overrides); samples without an embedding still join sets through their content hash.
    Returns the ``duplicates`` and ``semdedup`` tables (written in one transaction by the runner).
    """
    from curate.engine.progress import step

    cat, progress = inputs.cat, inputs.progress
    emb = inputs.embeddings
    big = not emb.in_memory
    threshold = float(default_threshold(emb.encoder) if config.threshold is None else config.threshold)
    hash_distance, semdedup = config.hash_distance, config.semdedup
    graph = None
    ooc_info: dict[str, Any] = {}
    if big:
        with step(progress, "candidate pairs (k-means partitions)"):
            es, ooc_info = _candidates_out_of_core(cat, emb, threshold, config.seed)
        hash_distance, semdedup = None, False
    else:
        graph = inputs.graph(config.k)
        es = inputs.embeddings
    ids = np.asarray(es.ids(), np.int64)
    X = _all_vectors(es)
    if big:  # only the candidates and the samples sharing a content hash, not 10^7 rows of paths
        samples = cat.query_df(
            """SELECT id, content_hash, path, width, height, split FROM samples
               WHERE id IN (SELECT unnest(?)) OR content_hash IN (
                   SELECT content_hash FROM samples GROUP BY content_hash HAVING count(*) > 1)
               ORDER BY id""", [ids.tolist()])
    else:
        samples = cat.samples("id, content_hash, path, width, height, split")
    info = samples.set_index("id").reindex(ids)
    paths = info["path"].fillna("").astype(str).tolist()
    use_pixels = bool(config.pixel_check and graph is not None)
    pixel_info: dict[str, Any] = {"pixel_check": use_pixels}
    cand, reference, sig_rows = None, None, np.empty(0, np.int64)
    if use_pixels:
        cand, reference, sig_rows = pixel_check_plan(graph, threshold, verify_k=config.verify_k,
                                                     candidate_threshold=config.candidate_threshold)
    phashes = valid = None
    # one decode per file for both the perceptual hashes and the pixel signatures
    t_read = time.perf_counter()
    H, hashed, sig, sig_ok = file_features(
        paths, np.arange(len(paths)) if hash_distance is not None else np.empty(0, np.int64), sig_rows,
        workers=config.workers, progress=progress)
    if hash_distance is not None:
        phashes, valid = H, hashed
    verified = None
    if use_pixels:
        t_pix = time.perf_counter()
        verified, _ = verify_pairs(cand, sig, sig_ok, pixel_threshold=config.pixel_threshold, reference=reference,
                                   progress=progress)
        pixel_info.update({"pixel_candidates": len(cand), "pixel_verified": len(verified),
                           "pixel_seconds": round(time.perf_counter() - t_pix, 3),
                           "file_read_seconds": round(t_pix - t_read, 3)})
    with step(progress, "duplicate sets"):
        sets = find_near_duplicates(X, threshold, knn_graph=graph,
                                    content_hashes=info["content_hash"].fillna("").astype(str).tolist(),
                                    perceptual_hashes=phashes, hash_distance=hash_distance or 0,
                                    hash_valid=valid, seed=config.seed, verified_pairs=verified)
    # samples with no embedding: attach by content hash (exact copies only)
    vectors, row_ids, hashes, members, exact = _attach_unembedded(X, ids, info, samples, sets)
    n = len(row_ids)
    info = samples.set_index("id").reindex(row_ids)
    names, codes = cat.label_codes(row_ids)
    names_arr = np.array(list(names) + [None], dtype=object)
    labels = names_arr[codes].tolist()  # -1 -> None
    issue_ids = cat.query_df("SELECT sample_id FROM label_issues WHERE is_issue")["sample_id"].to_numpy(np.int64)
    has_issue = np.isin(row_ids, issue_ids)
    # live merge decisions (a reviewer's keeper choice), placed on their rows by one index lookup
    merges = cat.query_df("SELECT sample_id, id FROM live_decisions WHERE action = 'merge'")
    at = pd.Index(row_ids).get_indexer(merges["sample_id"].to_numpy(np.int64))
    overrides = {int(r): int(d) for r, d in zip(at, merges["id"].to_numpy(np.int64)) if r >= 0}
    area = (info["width"].astype(float) * info["height"].astype(float)).to_numpy()
    keepers = choose_keepers(members, row_ids, area=area, has_label_issue=has_issue, labels=labels,
                             overrides=overrides)
    full = DuplicateSets(members=members, exact=exact, pairs=sets.pairs, threshold=threshold, stats=sets.stats)
    table = duplicates_table(full, keepers, vectors, row_ids, content_hashes=hashes, splits=info["split"].tolist())
    leaks = leakage_pairs(sets.pairs, info["split"].tolist()[: len(ids)])
    leak_ids = leaks.assign(sample_a=row_ids[leaks["i"].to_numpy(np.int64)],
                            sample_b=row_ids[leaks["j"].to_numpy(np.int64)])
    summary: dict[str, Any] = {
        "encoder": es.encoder,
        "threshold": threshold,
        "hash_distance": hash_distance,
        "samples": (int(ooc_info["rows"]) + n - len(ids)) if big else n,  # out of core: all rows, not candidates
        "sets": full.n_sets,
        "exact_sets": int(sum(exact)),
        "near_sets": int(len(exact) - sum(exact)),
        "samples_in_sets": full.n_samples,
        "would_remove": int(full.n_samples - full.n_sets),
        "sets_crossing_splits": int(table.loc[table["crosses_splits"], "set_id"].nunique()) if len(table) else 0,
        "leakage_pairs": int(len(leaks)),
        "leakage_top": [
            {"sample_a": int(a), "sample_b": int(b), "similarity": round(float(s), 4), "split_a": sa, "split_b": sb}
            for a, b, s, sa, sb in leak_ids[["sample_a", "sample_b", "similarity", "split_i", "split_j"]]
            .head(100).itertuples(index=False)
        ],
        "keeper_overrides": int(len(overrides)),
        "timing": sets.stats,
        **pixel_info,
        "out_of_core": big,
        **({"candidates": ooc_info} if big else {}),
    }
    curve = None
    pruned = semdedup_table(None, ids)
    if semdedup and len(X) >= 2:
        with step(progress, "SemDeDup curve"):
            curve = semdedup_curve(X, config.curve_thresholds, seed=config.seed)
            summary["semdedup"] = curve.to_dict()
            pruned = semdedup_table(curve, ids)
    # the pruned rows go with the curve, so a chosen keep fraction can become remove decisions
    detail = DuplicatesRun(full, row_ids, keepers, leak_ids, curve)
    return Result(summary, tables={"duplicates": table, "semdedup": pruned}, lines=summary_lines(summary),
                  detail=detail)


ANALYSIS = register(
    "duplicates", compute, config=DuplicatesConfig,
    title="exact and near-duplicate sets, train/test leakage, SemDeDup curve",
    tables=("duplicates", "semdedup"), needs=frozenset({"embeddings", "graph", "files"}), graph_option="k",
    order=20,
    in_memory_only=("SemDeDup curve", "perceptual-hash pairs", "pixel check"))


def run(cat: Catalog, encoder: str | None = None, threshold: float | None = None, k: int = 10,
        hash_distance: int | None = DEFAULT_HASH_DISTANCE, curve_thresholds: Sequence[float] = DEFAULT_CURVE_THRESHOLDS,
        seed: int = 0, semdedup: bool = True, workers: int | None = None, out_of_core: bool | None = None,
        progress: Any = None, pixel_check: bool = True, verify_k: int = DEFAULT_VERIFY_K,
        candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD,
        pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD) -> dict:
    """Find exact/near-duplicate sets and leakage for a project and write the ``duplicates`` table.

    The registry's runner does the work (:func:`curate.engine.analyses.registry.run` with :data:`ANALYSIS`; see
    :func:`compute`); the options are those of :class:`DuplicatesConfig` (``hash_distance=None`` turns the
    perceptual hashes off).  With ``pixel_check`` (default; in memory only), each sample's first ``verify_k`` graph
    neighbours with cosine in [``candidate_threshold``, ``threshold``) are read from disk and kept as
    near-duplicates when their pixels line up (:func:`verify_pairs`): crops, shifts, mirror images, small rotations
    and recompressions that the embedding alone misses.

    ``out_of_core`` (None = :meth:`curate.engine.inputs.Inputs.open` decides): candidate pairs come from k-means
    partitions over the shards (:func:`partitioned_near_duplicates`), and only the rows in a pair or sharing a
    content hash are loaded for the set building; perceptual hashes, the pixel check and the SemDeDup curve are
    skipped on that path (the summary's ``left_out``).  ``progress``: an :data:`engine.progress.Progress` callback.

    Returns
    -------
    dict : the run summary (also stored in ``runs.summary``): counts, leakage pairs (top 100), SemDeDup curve.
    """
    config = DuplicatesConfig(threshold=threshold, k=k, hash_distance=hash_distance,
                              curve_thresholds=curve_thresholds, seed=seed, semdedup=semdedup, workers=workers,
                              pixel_check=pixel_check, verify_k=verify_k, candidate_threshold=candidate_threshold,
                              pixel_threshold=pixel_threshold)
    return registry_run(cat, ANALYSIS, config, encoder=encoder, out_of_core=out_of_core, graph_k=k,
                        progress=progress).summary


def _candidates_out_of_core(cat: Catalog, embeddings: Any, threshold: float, seed: int) -> tuple[Any, dict]:
    """Rows that can be in a duplicate set of a project too large for memory, as a small :class:`EmbeddingSet`.

    Every near pair at or above ``threshold`` found by :func:`partitioned_near_duplicates` over ``embeddings`` (any
    :class:`~curate.engine.inputs.Embeddings`, normally the memory-mapped shards), plus every embedded sample whose
    content hash another sample shares; the set building of :func:`compute` then runs on these rows alone (pairs
    among them are recomputed exactly, so a pair the partitions missed between two candidates is still found).
    """
    from curate.engine.embed import EmbeddingSet

    pairs = partitioned_near_duplicates(embeddings, threshold, seed=seed)
    ids = np.asarray(embeddings.ids(), np.int64)
    hashed = cat.query_df("""SELECT id FROM samples WHERE content_hash IN (
                                 SELECT content_hash FROM samples GROUP BY content_hash HAVING count(*) > 1)""")
    order = np.argsort(ids, kind="stable")
    hid = hashed["id"].to_numpy(np.int64)
    pos = np.searchsorted(ids[order], hid)
    ok = (pos < len(ids)) & (ids[order][np.minimum(pos, len(ids) - 1)] == hid)
    rows = np.unique(np.concatenate([pairs.i, pairs.j, order[pos[ok]]]))
    rows = rows[np.argsort(ids[rows], kind="stable")]  # EmbeddingSet rows are in ascending sample id
    info = {"rows": int(len(ids)), "candidate_rows": int(len(rows)), "partition_pairs": int(len(pairs)),
            "partitions": int(pairs.n_partitions), "seconds": pairs.seconds}
    return EmbeddingSet(embeddings.encoder, ids[rows], embeddings.take(rows)), info


def largest_sets(cat: Catalog, limit: int = 10) -> pd.DataFrame:
    """The largest duplicate sets of the last run: set_id, size, kinds, lowest similarity, keeper path, leak flag."""
    return cat.query_df(
        """SELECT d.set_id, count(*) AS size, string_agg(DISTINCT d.kind, '+') AS kind,
                  min(d.similarity) AS min_similarity,
                  any_value(s.path) FILTER (WHERE d.is_keeper) AS keeper, bool_or(d.crosses_splits) AS leak
           FROM duplicates d JOIN samples s ON s.id = d.sample_id
           GROUP BY d.set_id ORDER BY size DESC, d.set_id LIMIT ?""", [int(limit)])


def set_members(cat: Catalog, set_ids: Sequence[int], max_members: int = 8) -> pd.DataFrame:
    """Members of the given duplicate sets, keeper first: set_id, sample_id, kind, similarity, is_keeper, split, path."""
    return cat.query_df(
        """SELECT d.set_id, d.sample_id, d.kind, d.similarity, d.is_keeper, s.split, s.path
           FROM duplicates d JOIN samples s ON s.id = d.sample_id WHERE d.set_id IN (SELECT unnest(?::BIGINT[]))
           QUALIFY row_number() OVER (PARTITION BY d.set_id ORDER BY d.is_keeper DESC NULLS LAST, d.sample_id) <= ?
           ORDER BY d.set_id, d.is_keeper DESC NULLS LAST, d.sample_id""",
        [[int(s) for s in set_ids], int(max_members)])


def _attach_unembedded(vectors: np.ndarray, ids: np.ndarray, info: pd.DataFrame, samples: pd.DataFrame,
                       sets: DuplicateSets):
    """Extend the sets with samples that have no embedding but share a content hash with another sample."""
    hashes = info["content_hash"].fillna("").astype(str).tolist()
    members = [m.copy() for m in sets.members]
    exact = list(sets.exact)
    extra = samples[~samples["id"].isin(ids)]
    if extra.empty:
        return vectors, ids, hashes, members, exact
    by_hash = {}
    for r, h in enumerate(hashes):
        by_hash.setdefault(h, r)
    row_set = sets.row_to_set(len(ids))
    extra_rows: list[int] = []
    extra_ids: list[int] = []
    extra_hashes: list[str] = []
    extra_vecs: list[np.ndarray] = []
    orphan: dict[str, list[int]] = {}
    for sid, h in zip(extra["id"].tolist(), extra["content_hash"].astype(str).tolist()):
        if h in by_hash:
            twin = by_hash[h]
            new_row = len(ids) + len(extra_ids)
            extra_ids.append(int(sid))
            extra_hashes.append(h)
            extra_vecs.append(vectors[twin])
            extra_rows.append(new_row)
            s = row_set[twin]
            if s >= 0:
                members[s] = np.sort(np.append(members[s], new_row))
            else:
                members.append(np.array([twin, new_row], np.int64))
                exact.append(True)
                row_set = np.append(row_set, -1)
                row_set[twin] = len(members) - 1
        else:
            orphan.setdefault(h, []).append(int(sid))
    for h, sids in orphan.items():  # exact copies among unembedded samples: no vector, similarity is 1 by identity
        if len(sids) < 2:
            continue
        start = len(ids) + len(extra_ids)
        for sid in sids:
            extra_ids.append(sid)
            extra_hashes.append(h)
            extra_vecs.append(np.zeros(vectors.shape[1], np.float32))
        members.append(np.arange(start, start + len(sids), dtype=np.int64))
        exact.append(True)
    if not extra_ids:
        return vectors, ids, hashes, members, exact
    vectors = np.vstack([vectors, np.stack(extra_vecs).astype(np.float32)])
    return vectors, np.concatenate([ids, np.asarray(extra_ids, np.int64)]), hashes + extra_hashes, members, exact

"""Indexes and the kNN graph over embedding shards, without ever holding all vectors as one array.

The in-memory path (:mod:`indexes.build`, :mod:`indexes.knn`) starts from ``load_embeddings``: one float32 matrix.
At 10^7-10^8 vectors that matrix alone is 2.5-50 GB, and FAISS training, adding and the kNN graph each want it.
Here every step reads :class:`engine.shards.ShardedEmbeddings` one shard (or block) at a time:

1. **Train on a sample.**  An IVF / IVF-PQ index is trained on a seeded uniform sample of rows
   (``max(40 * nlist, 10_000)`` rows; PQ code books want >= 39 * 256), gathered from the memory-mapped shards.
2. **Fill shard by shard.**  The trained, empty index is cloned into ``groups`` sub-indexes; each is filled with a
   contiguous range of shards (``add_with_ids``, ids = global row positions).  One group = one ordinary index;
   several groups can live on several Ray actors (:class:`RayShardedIndex`) and be searched in parallel.
3. **Search and merge.**  A query searches every sub-index with the same parameters and the per-group top-k lists
   are merged.  Because the groups share one trained quantizer, probing ``nprobe`` lists in each group scans exactly
   the vectors one big IVF index would scan, so the merged top-k is the same result (ties aside).
4. **Measure recall.**  ``nprobe`` is raised until recall@k on sampled queries, against exact search over the
   shards (:func:`exact_topk`), reaches the target — recall is measured, never assumed.

:func:`sharded_knn_graph` builds the all-points graph on top: exact (block of queries x every shard) up to
``exact_max_n`` rows, otherwise the IVF path; results go straight into memory-mapped ``.npy`` files when
``out_dir`` is given.  Peak memory is then the index (IVF-Flat: 4 bytes per dimension per vector; IVF-PQ: ``m``
bytes per vector) plus one block, never the float32 matrix next to it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from curate.engine.catalog import CurateError
from curate.indexes.build import (
    DEFAULT_TARGET_RECALL,
    RECALL_QUERIES,
    choose_factory,
    ivf_nlist,
    make_index,
    recall_at_k,
    set_search_params,
    tunable_parameter,
    _seed_training,
)
from curate.indexes.knn import KnnGraph, _finish, drop_self

log = logging.getLogger(__name__)

QUERY_BLOCK = 65_536
EXACT_MAX_N = 50_000


# --------------------------------------------------------------------------------------------------- merging
def merge_topk(sims: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists into one: ``(similarities [q, k], ids [q, k])``, most similar first.

    Ties are broken by the smaller id, so the merge is deterministic whatever order the shards answered in.
    Missing entries (id -1) sort last with similarity -inf.
    """
    D = np.hstack([np.asarray(s, np.float32) for s in sims])
    I = np.hstack([np.asarray(i, np.int64) for i in ids])
    D = np.where(I < 0, -np.inf, D).astype(np.float32)
    order = np.lexsort((np.where(I < 0, np.iinfo(np.int64).max, I), -D), axis=1)[:, :k]
    D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
    if D.shape[1] < k:
        D, I = np.hstack([D, np.full((len(D), k - D.shape[1]), -np.inf, np.float32)]), \
            np.hstack([I, np.full((len(I), k - I.shape[1]), -1, np.int64)])
    return D, I


def exact_topk(shards: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (inner product) of ``queries`` over all shards: ``(similarities, global row positions)``.

    One FAISS brute-force search per shard, merged; memory is one shard plus the ``q x k`` results.
    """
    import faiss

    Q = np.ascontiguousarray(queries, np.float32)
    D_all, I_all = np.full((len(Q), 0), -np.inf, np.float32), np.full((len(Q), 0), -1, np.int64)
    for start, _ids, X in shards.iter_shards():
        kk = min(k, len(X))
        D, I = faiss.knn(Q, X, kk, metric=faiss.METRIC_INNER_PRODUCT)
        D_all, I_all = merge_topk([D_all, D], [I_all, I.astype(np.int64) + start], k)
    return D_all, I_all


# --------------------------------------------------------------------------------------------------- building
def sharded_factory(n: int, d: int, memory_budget_bytes: int | None = None) -> str:
    """The automatic factory for a sharded index: :func:`indexes.build.choose_factory`, with IVF instead of HNSW.

    (HNSW cannot be trained once and split into groups; up to ``FLAT_MAX_N`` rows the answer stays ``Flat``.)
    """
    chosen = choose_factory(n, d, memory_budget_bytes)
    if chosen.startswith("HNSW"):
        return f"IVF{ivf_nlist(n)},Flat"
    return chosen


def train_template(shards: Any, factory: str = "auto", seed: int = 0, train_size: int | None = None,
                   memory_budget_bytes: int | None = None) -> tuple[Any, str, int]:
    """A trained, empty ``IDMap`` index for ``shards``: ``(index, factory, rows trained on)``.

    Training rows are a seeded uniform sample read from the shards (``train_size`` or the FAISS minimums).
    """
    import faiss

    n, d = len(shards), shards.dim
    chosen = sharded_factory(n, d, memory_budget_bytes) if factory == "auto" else factory
    index = make_index(chosen, d)
    _seed_training(index, seed)
    rows = 0
    if not index.is_trained:
        try:
            nlist = faiss.extract_index_ivf(index).nlist
        except RuntimeError:
            nlist = 1
        wanted = train_size or max(40 * nlist, 10_000, 39 * 256 if "PQ" in chosen.upper() else 0)
        _, sample = shards.sample(wanted, seed=seed)
        rows = len(sample)
        try:
            index.train(sample)
        except RuntimeError as exc:
            from curate.indexes.build import faiss_reason

            raise CurateError(f"cannot train {chosen} on {rows} sampled vectors ({faiss_reason(exc)}); "
                              "use factory 'auto' or 'Flat'") from exc
    return index, chosen, rows


def shard_groups(n_shards: int, groups: int) -> list[range]:
    """Split shard numbers ``0..n_shards-1`` into ``groups`` contiguous, near-equal ranges (empty ones dropped)."""
    groups = max(1, min(int(groups), n_shards))
    bounds = np.linspace(0, n_shards, groups + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def fill_group(template_bytes: np.ndarray, shards: Any, shard_numbers: Sequence[int]) -> Any:
    """A copy of the trained template filled with the given shards (ids = global row positions)."""
    import faiss

    index = faiss.deserialize_index(template_bytes)
    for i in shard_numbers:
        start = int(shards.offsets[i])
        X = shards.shard_vectors(i)
        index.add_with_ids(X, np.arange(start, start + len(X), dtype=np.int64))
    return index


@dataclass
class ShardedIndex:
    """Sub-indexes over contiguous groups of shards, searched together (in this process).

    Attributes
    ----------
    parts : one FAISS ``IDMap`` index per shard group; ids are global row positions.
    factory : the factory string all parts were built from.
    search_params : ``ParameterSpace`` string applied to every part (``""`` = exact or untuned).
    recall : measured recall@10 with those parameters (None until :func:`tune_sharded` ran).
    """

    parts: list[Any]
    factory: str
    dim: int
    search_params: str = ""
    recall: float | None = None
    trained_on: int = 0
    build_seconds: float = 0.0
    trace: list = field(default_factory=list)

    @property
    def ntotal(self) -> int:
        return int(sum(p.ntotal for p in self.parts))

    def set_params(self, params: str) -> None:
        for p in self.parts:
            set_search_params(p, params)
        self.search_params = params

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, global row positions)`` of the ``k`` best over all parts."""
        Q = np.ascontiguousarray(queries, np.float32)
        results = [p.search(Q, int(k)) for p in self.parts]
        if len(results) == 1:
            D, I = results[0]
            return merge_topk([D], [I], k)
        return merge_topk([r[0] for r in results], [r[1] for r in results], k)


def build_sharded_index(shards: Any, factory: str = "auto", groups: int = 1, seed: int = 0,
                        train_size: int | None = None, memory_budget_bytes: int | None = None) -> ShardedIndex:
    """Train on a sample, then fill ``groups`` sub-indexes shard by shard (see the module docstring).

    Parameters
    ----------
    shards : :class:`engine.shards.ShardedEmbeddings`.
    factory : ``"auto"`` (:func:`sharded_factory`) or a FAISS factory string (``"IVF4096,Flat"``,
        ``"IVF4096,PQ16"``, ``"Flat"``).
    groups : sub-indexes (1 = an ordinary single index).
    seed : seeds the training sample and k-means.
    train_size : training rows (default: the FAISS minimums for the factory).
    """
    import faiss

    t0 = time.perf_counter()
    template, chosen, rows = train_template(shards, factory, seed, train_size, memory_budget_bytes)
    blob = faiss.serialize_index(template)
    parts = [fill_group(blob, shards, list(g)) for g in shard_groups(len(shards.shards), groups)]
    full = chosen if chosen.upper().startswith("IDMAP") else f"IDMap,{chosen}"
    return ShardedIndex(parts, full, shards.dim, trained_on=rows, build_seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------- Ray
class _IndexPart:
    """Ray actor holding one group's sub-index (it reads its shards from the shared filesystem itself)."""

    def __init__(self, template_bytes: np.ndarray, shards: Any, shard_numbers: list[int], threads: int | None):
        import faiss

        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.index = fill_group(template_bytes, shards, shard_numbers)

    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def set_params(self, params: str) -> None:
        set_search_params(self.index, params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, np.float32), int(k))


class RayShardedIndex:
    """The same sub-indexes as :class:`ShardedIndex`, each held by a Ray actor; searched in parallel, merged here.

    Build it with :meth:`build` inside a Ray session.  ``search`` has the same signature and result as
    :meth:`ShardedIndex.search`.  Each actor uses ``threads`` OpenMP threads (default: its CPU allotment, 1).
    """

    def __init__(self, actors: list[Any], factory: str, dim: int, trained_on: int, build_seconds: float):
        self.actors, self.factory, self.dim = actors, factory, dim
        self.trained_on, self.build_seconds = trained_on, build_seconds
        self.search_params = ""
        self.recall: float | None = None
        self.trace: list = []

    @classmethod
    def build(cls, shards: Any, factory: str = "auto", workers: int = 2, seed: int = 0,
              train_size: int | None = None, threads: int | None = None, num_cpus: float = 1.0) -> "RayShardedIndex":
        import faiss
        import ray

        t0 = time.perf_counter()
        template, chosen, rows = train_template(shards, factory, seed, train_size)
        blob = ray.put(faiss.serialize_index(template))
        remote = ray.remote(num_cpus=num_cpus)(_IndexPart)
        actors = [remote.remote(blob, shards, list(g), threads) for g in shard_groups(len(shards.shards), workers)]
        ray.get([a.ntotal.remote() for a in actors])  # wait until every part is filled
        full = chosen if chosen.upper().startswith("IDMAP") else f"IDMap,{chosen}"
        return cls(actors, full, shards.dim, rows, time.perf_counter() - t0)

    @property
    def ntotal(self) -> int:
        import ray

        return int(sum(ray.get([a.ntotal.remote() for a in self.actors])))

    def set_params(self, params: str) -> None:
        import ray

        ray.get([a.set_params.remote(params) for a in self.actors])
        self.search_params = params

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import ray

        ref = ray.put(np.ascontiguousarray(queries, np.float32))
        results = ray.get([a.search.remote(ref, int(k)) for a in self.actors])
        return merge_topk([r[0] for r in results], [r[1] for r in results], k)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


# --------------------------------------------------------------------------------------------------- tuning
def tune_sharded(index: Any, shards: Any, k: int = 10, target_recall: float = DEFAULT_TARGET_RECALL,
                 n_queries: int = RECALL_QUERIES, seed: int = 0, exclude_self: bool = False) -> float:
    """Raise ``nprobe`` on every part until recall@k on sampled rows (vs :func:`exact_topk`) reaches the target.

    ``exclude_self``: the queries are rows of the index and their own row does not count (the kNN graph case).
    Sets the chosen parameters on ``index`` and returns the measured recall (also in ``index.recall``).
    """
    rows, Q = shards.sample(n_queries, seed=seed + 1)
    extra = 1 if exclude_self else 0
    true_s, true_i = exact_topk(shards, Q, k + extra)
    if exclude_self:
        true_i, true_s = drop_self(true_i, true_s, rows)
    probe_part = index.parts[0] if isinstance(index, ShardedIndex) else None
    param = tunable_parameter(probe_part) if probe_part is not None else _ray_tunable(index)
    if param is None:
        index.recall = 1.0
        return 1.0
    name, values = param
    trace = []
    for v in values:
        index.set_params(f"{name}={v}")
        D, I = index.search(Q, k + extra)
        if exclude_self:
            I, D = drop_self(I, D, rows)
        found_s = _exact_sims(shards, Q, I)
        recall = recall_at_k(true_i, true_s, I, found_s)
        trace.append((f"{name}={v}", recall))
        if recall >= target_recall or (len(trace) >= 3 and recall - trace[-3][1] < 0.002):
            break
    reached = [t for t in trace if t[1] >= target_recall]
    best = reached[0] if reached else max(trace, key=lambda t: t[1])
    index.set_params(best[0])
    index.recall, index.trace = float(best[1]), trace
    return float(best[1])


def _ray_tunable(index: RayShardedIndex) -> tuple[str, list[int]] | None:
    import re

    m = re.search(r"IVF(\d+)", index.factory)
    if not m:
        return None
    nlist = int(m.group(1))
    return "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < nlist] + [nlist]


def _exact_sims(shards: Any, Q: np.ndarray, I: np.ndarray) -> np.ndarray:
    """Exact cosine of each query with its found rows (-inf for -1), reading only those rows."""
    flat = I.ravel()
    valid = flat >= 0
    V = np.zeros((len(flat), shards.dim), np.float32)
    if valid.any():
        V[valid] = shards.take(flat[valid])
    S = np.einsum("qd,qkd->qk", Q, V.reshape(I.shape[0], I.shape[1], -1)).astype(np.float32)
    S[I < 0] = -np.inf
    return S


# --------------------------------------------------------------------------------------------------- kNN graph
def _outputs(n: int, k: int, out_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    if out_dir is None:
        return np.empty((n, k), np.int64), np.empty((n, k), np.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = np.lib.format
    return (fmt.open_memmap(out / "knn_indices.npy", mode="w+", dtype=np.int64, shape=(n, k)),
            fmt.open_memmap(out / "knn_similarities.npy", mode="w+", dtype=np.float32, shape=(n, k)))


def sharded_knn_graph(shards: Any, k: int = 10, *, exact: bool | None = None, exact_max_n: int = EXACT_MAX_N,
                      factory: str | None = None, target_recall: float = DEFAULT_TARGET_RECALL,
                      recall_queries: int = RECALL_QUERIES, seed: int = 0, block_rows: int = QUERY_BLOCK,
                      out_dir: str | Path | None = None, ray_workers: int = 0,
                      ray_threads: int | None = None, approx: str = "partitions",
                      work_dir: str | Path | None = None) -> KnnGraph:
    """The ``k`` nearest other rows of every row, computed shard by shard.

    Parameters
    ----------
    shards : :class:`engine.shards.ShardedEmbeddings`.
    k : neighbours per row (self excluded, by position, as in :func:`indexes.knn.knn_graph`).
    exact : force exact (every query block against every shard) or approximate; default exact up to
        ``exact_max_n`` rows (the same rule, and so the same results, as the in-memory graph).
    factory : IVF factory for the approximate path (default ``IVF<nlist>,Flat`` with ``nlist`` about
        ``sqrt(n)``, a power of two).
    target_recall, recall_queries : ``nprobe`` is raised until recall@k on that many sampled rows reaches it.
    block_rows : queries per search call (bounds temporary memory).
    out_dir : write ``knn_indices.npy`` / ``knn_similarities.npy`` there as memory maps (else in RAM).
    ray_workers : > 0: use Ray (a session must be initialised): partitions as tasks, or the IVF index held by
        that many actors; the graph equals the single-process one.
    approx : ``"partitions"`` (default; :func:`partitioned_knn_graph`, ~10x faster for all-points graphs on CPUs)
        or ``"ivf"`` (a sharded IVF-Flat index searched row block by row block).
    work_dir : where the partitions path writes its bucketed copy of the vectors (default: ``out_dir``, else a
        temporary folder).

    Returns
    -------
    KnnGraph with global row positions; ``method`` names the path, ``recall`` is measured (1.0 when exact).
    """
    n = len(shards)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k_eff = min(k, max(n - 1, 0))
    t0 = time.perf_counter()
    if k_eff == 0:
        out_i, out_s = _outputs(n, k, out_dir)
        out_i[:], out_s[:] = -1, -np.inf
        method, recall = "exact:trivial", 1.0
    elif exact or (exact is None and n <= exact_max_n):
        out_i, out_s = _outputs(n, k, out_dir)
        for start, _ids, Q in shards.iter_blocks(block_rows):
            D, I = exact_topk(shards, Q, k_eff + 1)
            I, D = drop_self(I, D, np.arange(start, start + len(Q)))
            out_i[start:start + len(Q)], out_s[start:start + len(Q)] = _finish(I, D, k)
        method, recall = "exact:sharded-faiss", 1.0
    elif approx == "partitions":
        import tempfile

        base = work_dir or out_dir
        if base is not None:
            Path(base).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="curate-knn-", dir=base) as tmp:
            g = partitioned_knn_graph(shards, k, work_dir=tmp, out_dir=out_dir, target_recall=target_recall,
                                      recall_queries=recall_queries, seed=seed, ray_tasks=ray_workers)
        out_i, out_s, method, recall = g.indices, g.similarities, g.method, g.recall
    else:
        out_i, out_s = _outputs(n, k, out_dir)
        fac = factory or f"IVF{ivf_nlist(n, lists_per_sqrt_n=1.0)},Flat"
        if ray_workers:
            index = RayShardedIndex.build(shards, fac, workers=ray_workers, seed=seed, threads=ray_threads)
        else:
            index = build_sharded_index(shards, fac, seed=seed)
        try:
            recall = tune_sharded(index, shards, k_eff, target_recall, recall_queries, seed, exclude_self=True)
            for start, _ids, Q in shards.iter_blocks(block_rows):
                D, I = index.search(Q, k_eff + 1)
                I, D = drop_self(I, D, np.arange(start, start + len(Q)))
                out_i[start:start + len(Q)], out_s[start:start + len(Q)] = _finish(I, D, k)
        finally:
            if isinstance(index, RayShardedIndex):
                index.close()
        where = f"ray x{ray_workers}" if ray_workers else "local"
        method = f"approx:sharded {index.factory} {index.search_params} ({where})"
    if out_dir is not None:
        out_i.flush()
        out_s.flush()
    log.info("sharded kNN graph n=%d k=%d via %s in %.1fs (recall %.3f)", n, k, method, time.perf_counter() - t0,
             recall)
    return KnnGraph(out_i, out_s, method, recall)


# --------------------------------------------------------------------------------------------------- partitioned
@dataclass
class BucketedVectors:
    """Rows copied once into k-means partition order, so a partition is a contiguous slice of one file.

    Attributes
    ----------
    path : float16 ``.npy`` [n, dim], rows grouped by partition (ascending global row inside a partition).
    rows : int64 [n]; global row position of each bucketed row.
    bounds : int64 [n_partitions + 1]; partition c is ``bounds[c]:bounds[c + 1]``.
    neighbours : int32 [n_partitions, max_probe]; partitions ordered by centroid similarity (itself first).
    """

    path: Path
    rows: np.ndarray
    bounds: np.ndarray
    neighbours: np.ndarray
    centroids: np.ndarray

    @property
    def n_partitions(self) -> int:
        return int(len(self.bounds) - 1)

    def block(self, parts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 unit vectors, global rows) of the given partitions, concatenated."""
        arr = np.load(self.path, mmap_mode="r")
        vecs = [np.asarray(arr[self.bounds[c]:self.bounds[c + 1]], np.float32) for c in parts]
        rows = [self.rows[self.bounds[c]:self.bounds[c + 1]] for c in parts]
        return np.concatenate(vecs), np.concatenate(rows)


def bucket_by_partition(shards: Any, folder: str | Path, n_partitions: int, max_probe: int = 32, seed: int = 0,
                        block_rows: int = QUERY_BLOCK, niter: int = 10) -> BucketedVectors:
    """k-means (on a sample) into ``n_partitions``, then one pass over the shards writing every row into its
    partition's slice of ``folder/bucketed.npy`` (an external bucket sort: memory = one block + the row map)."""
    import faiss

    n, d = len(shards), shards.dim
    k = int(max(1, min(n_partitions, n // 39 or 1)))
    _, sample = shards.sample(40 * k, seed=seed)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False, max_points_per_centroid=40)
    km.train(sample)
    centroids = np.ascontiguousarray(km.centroids, np.float32)
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(centroids)
    primary = np.empty(n, np.int32)
    for start, _ids, X in shards.iter_blocks(block_rows):
        primary[start:start + len(X)] = quantizer.search(X, 1)[1][:, 0]
    rows = np.argsort(primary, kind="stable").astype(np.int64)  # by partition, then global row
    bounds = np.searchsorted(primary[rows], np.arange(k + 1)).astype(np.int64)
    slot = np.empty(n, np.int64)
    slot[rows] = np.arange(n, dtype=np.int64)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(folder / "bucketed.npy", mode="w+", dtype=np.float16, shape=(n, d))
    for i in range(len(shards.shards)):
        start = int(shards.offsets[i])
        arr = shards._mmap(i)
        s = shards.shards[i]
        block = arr if s.rows is None else arr[s.rows]
        for a in range(0, s.n, block_rows):
            b = min(s.n, a + block_rows)
            out[slot[start + a:start + b]] = block[a:b]
    out.flush()
    del out
    p = int(min(max_probe, k))
    neighbours = faiss.knn(centroids, centroids, p, metric=faiss.METRIC_INNER_PRODUCT)[1].astype(np.int32)
    return BucketedVectors(folder / "bucketed.npy", rows, bounds, neighbours, centroids)


def _partition_knn(bucketed: BucketedVectors, parts: Sequence[int], probes: int, k: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``k`` (self excluded) of the rows of ``parts``, searched among their partition's ``probes`` nearest
    partitions (itself included): one BLAS brute-force search per partition.  Returns (rows, indices, sims)."""
    import faiss

    out_r, out_i, out_s = [], [], []
    for c in parts:
        if bucketed.bounds[c + 1] == bucketed.bounds[c]:
            continue
        Q, q_rows = bucketed.block([c])
        C, c_rows = bucketed.block(bucketed.neighbours[c, :probes])
        kk = min(k + 1, len(C))
        D, I = faiss.knn(Q, C, kk, metric=faiss.METRIC_INNER_PRODUCT)
        I = np.where(I >= 0, c_rows[np.maximum(I, 0)], -1)
        I, D = drop_self(I, D, q_rows)
        I, D = _finish(I, D, k)
        out_r.append(q_rows)
        out_i.append(I)
        out_s.append(D)
    if not out_r:
        return np.empty(0, np.int64), np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    return np.concatenate(out_r), np.concatenate(out_i), np.concatenate(out_s)


def _tune_probes(bucketed: BucketedVectors, shards: Any, k: int, target_recall: float, n_queries: int, seed: int
                 ) -> tuple[int, float, list]:
    """Smallest number of probed partitions whose recall@k on sampled rows (vs exact) reaches the target."""
    import faiss

    rows, Q = shards.sample(n_queries, seed=seed + 1)
    true_s, true_i = exact_topk(shards, Q, k + 1)
    true_i, true_s = drop_self(true_i, true_s, rows)
    slot = np.empty(len(bucketed.rows), np.int64)
    slot[bucketed.rows] = np.arange(len(bucketed.rows))
    part = np.searchsorted(bucketed.bounds, slot[rows], side="right") - 1
    trace = []
    max_p = bucketed.neighbours.shape[1]
    for p in [v for v in (1, 2, 4, 6, 8, 12, 16, 24, 32) if v < max_p] + [max_p]:
        found_i = np.empty((len(rows), k), np.int64)
        found_s = np.empty((len(rows), k), np.float32)
        for c in np.unique(part):
            sel = np.flatnonzero(part == c)
            C, c_rows = bucketed.block(bucketed.neighbours[c, :p])
            D, I = faiss.knn(Q[sel], C, min(k + 1, len(C)), metric=faiss.METRIC_INNER_PRODUCT)
            I = np.where(I >= 0, c_rows[np.maximum(I, 0)], -1)
            I, D = drop_self(I, D, rows[sel])
            found_i[sel], found_s[sel] = _finish(I, D, k)
        recall = recall_at_k(true_i, true_s, found_i, _exact_sims(shards, Q, found_i))
        trace.append((p, recall))
        if recall >= target_recall or (len(trace) >= 3 and recall - trace[-3][1] < 0.002):
            break
    reached = [t for t in trace if t[1] >= target_recall]
    best = reached[0] if reached else max(trace, key=lambda t: t[1])
    return int(best[0]), float(best[1]), trace


def partitioned_knn_graph(shards: Any, k: int = 10, *, work_dir: str | Path, out_dir: str | Path | None = None,
                          points_per_partition: int = 1_000, target_recall: float = DEFAULT_TARGET_RECALL,
                          recall_queries: int = RECALL_QUERIES, seed: int = 0, ray_tasks: int = 0,
                          chunks_per_task: int = 8) -> KnnGraph:
    """Approximate kNN graph by k-means partitions and one dense (BLAS) search per partition.

    Why not the IVF index: for an *all-points* graph every row is a query, and FAISS's IVF scan handles one query
    at a time; grouping the queries by partition turns the same work into matrix products.  Rows are bucketed by
    partition once (:func:`bucket_by_partition`), then the rows of partition ``c`` are searched exactly among the
    rows of the ``probes`` partitions whose centroids are nearest ``c``'s.  ``probes`` is the smallest value whose
    recall@k on ``recall_queries`` sampled rows (vs exact search over the shards) reaches ``target_recall``.

    ``ray_tasks > 0`` runs chunks of partitions as Ray tasks (a session must be initialised; the bucketed file
    must be on a filesystem the workers share); results equal the local loop's.  Memory: one partition
    neighbourhood per worker, the row map (8 bytes per row) and the outputs (memory-mapped with ``out_dir``).
    """
    n = len(shards)
    t0 = time.perf_counter()
    bucketed = bucket_by_partition(shards, work_dir, max(1, math.ceil(n / points_per_partition)), seed=seed)
    t_bucket = time.perf_counter() - t0
    probes, recall, trace = _tune_probes(bucketed, shards, min(k, n - 1), target_recall, recall_queries, seed)
    out_i, out_s = _outputs(n, k, out_dir)
    k_eff = min(k, n - 1)
    chunks = np.array_split(np.arange(bucketed.n_partitions), max(1, (ray_tasks or 1) * chunks_per_task))
    chunks = [c for c in chunks if len(c)]

    def store(res):
        r, I, D = res
        if len(r):
            out_i[r], out_s[r] = _finish(I, D, k)

    if ray_tasks:
        import ray

        ref = ray.put(bucketed)
        task = ray.remote(num_cpus=1)(_partition_knn_ref)
        pending = [task.remote(ref, c, probes, k_eff) for c in chunks]
        while pending:  # write results as they arrive: the driver never holds more than a few chunks
            done, pending = ray.wait(pending, num_returns=1)
            store(ray.get(done[0]))
    else:
        for c in chunks:
            store(_partition_knn(bucketed, c, probes, k_eff))
    if out_dir is not None:
        out_i.flush()
        out_s.flush()
    where = f"ray x{ray_tasks}" if ray_tasks else "local"
    method = (f"approx:partitions {bucketed.n_partitions} probes={probes} ({where}; bucketed in {t_bucket:.0f}s)")
    return KnnGraph(out_i, out_s, method, recall)


def _partition_knn_ref(bucketed: BucketedVectors, parts: np.ndarray, probes: int, k: int):
    return _partition_knn(bucketed, parts, probes, k)

"""The all-points kNN graph and all-pairs range search, computed block by block in bounded memory.

Every analysis that needs neighbours (label issues, duplicates, outliers, clusters, active learning) reuses one
graph: for every sample its ``k`` most similar other samples and their cosine similarities.  How it is computed
depends on the hardware and the size:

===========================  =================================================================================
FAISS with GPUs              exact brute force on the GPU (``faiss.knn_gpu``), one block of queries at a time
CUDA without FAISS GPUs      exact tiled matmul + top-k in fp16 on the GPU, re-scored in fp32
                             (:mod:`indexes.torch_knn`; the same code runs on CPU with ``backend="torch"``)
CPU, n <= ``exact_max_n``    exact FAISS brute force (BLAS), one block of queries at a time
CPU, larger                  approximate: an IVF-Flat index whose ``nprobe`` is raised until recall@k on a
                             sample of queries reaches ``target_recall``; the measured recall is reported
===========================  =================================================================================

Self-exclusion is by *position*: row ``i`` never lists itself, but an identical twin ``j`` of ``i`` (similarity
1.0) is listed like any other neighbour.  Similarities are cosines of the L2-normalised rows, in descending order;
rows with fewer than ``k`` other samples are padded with index ``-1`` and similarity ``-inf``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from curate.engine.catalog import CurateError
from curate.engine.devices import cuda_available
from curate.indexes.build import (
    DEFAULT_TARGET_RECALL,
    RECALL_QUERIES,
    as_unit_vectors,
    build_index,
    check_pair_count,
    exact_search,
    gather_similarities,
    ivf_nlist,
    recall_at_k,
    tune_index,
)

log = logging.getLogger(__name__)

EXACT_MAX_N = 50_000
DEFAULT_BLOCK = 4096
MAX_RANGE_PAIRS = 50_000_000


@dataclass(eq=False)
class KnnGraph:
    """The k nearest other samples of every sample.

    Attributes
    ----------
    indices : int64 array [n, k]
        Row positions of the neighbours (into the embedding matrix the graph was built on), most similar first;
        ``-1`` pads rows with fewer than ``k`` neighbours.  A row never contains itself.
    similarities : float32 array [n, k]
        Cosine similarity to each neighbour, descending; ``-inf`` where ``indices`` is ``-1``.
    method : str
        How it was computed, e.g. ``"exact:faiss-cpu"`` or ``"approx:faiss IVF1024,Flat nprobe=8"``.
    recall : float or None
        recall@k against exact search: 1.0 for exact methods, measured on a sample of queries otherwise.
    cache : str
        Set by :func:`indexes.graph.load_or_build_graph`: ``"hit"``, ``"built"``, ``"extended (+m rows)"`` or a
        rebuild reason.
    """

    indices: np.ndarray
    similarities: np.ndarray
    method: str = "exact"
    recall: float | None = 1.0
    cache: str = ""

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Neighbours per row."""
        return int(self.indices.shape[1])

    def truncate(self, k: int) -> "KnnGraph":
        """The graph restricted to the first ``k`` (most similar) neighbours of each row."""
        if k > self.k:
            raise ValueError(f"graph has k={self.k}, cannot truncate to k={k}")
        return KnnGraph(self.indices[:, :k], self.similarities[:, :k], self.method, self.recall, self.cache)


# --------------------------------------------------------------------------------------------------- helpers
def _blocks(n: int, block_size: int, progress, desc: str) -> Iterable[tuple[int, int]]:
    """Row blocks ``(start, end)``; ``progress``: True (a bar), an :data:`engine.progress.Progress` callback, or off."""
    from curate.engine.progress import track

    return track([(s, min(n, s + block_size)) for s in range(0, n, block_size)], desc, progress=progress)


def drop_self(indices: np.ndarray, sims: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own position from a (k+1)-neighbour result, leaving k columns.

    ``rows[i]`` is the position of query ``i``.  When a row's own position is absent (more than k identical
    twins tie with it) the last column is dropped instead, so twins are never removed in place of the row itself.
    """
    mask = indices == np.asarray(rows, dtype=np.int64)[:, None]
    mask[~mask.any(axis=1), -1] = True
    keep = ~mask
    width = indices.shape[1] - 1
    return indices[keep].reshape(-1, width), sims[keep].reshape(-1, width)


def _finish(indices: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 / float32, padding normalised to (-1, -inf), widened to ``k`` columns."""
    indices = np.asarray(indices, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float32).copy()
    sims[indices < 0] = -np.inf
    if indices.shape[1] < k:
        pad = k - indices.shape[1]
        indices = np.hstack([indices, np.full((len(indices), pad), -1, np.int64)])
        sims = np.hstack([sims, np.full((len(sims), pad), -np.inf, np.float32)])
    return indices, sims


def _resolve_backend(backend: str, device: str) -> tuple[str, str]:
    """(backend, device) actually used: backend in {faiss, faiss-gpu, torch}, device a torch device string."""
    import faiss

    device = (device or "auto").lower()
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:i], got {device!r}")
    faiss_gpu = faiss.get_num_gpus() > 0 and hasattr(faiss, "knn_gpu")
    wants_gpu = device.startswith("cuda")
    if backend in ("auto", "faiss") and faiss_gpu and device != "cpu":
        return "faiss-gpu", device if wants_gpu else "cuda"
    if backend == "faiss" or (backend == "auto" and device == "cpu"):
        if wants_gpu:
            raise CurateError(f"device {device} requested with backend faiss, but this FAISS build has no GPU "
                              "support; install faiss-gpu or use backend torch")
        return "faiss", "cpu"
    cuda = cuda_available()
    if wants_gpu and not cuda:
        raise CurateError(f"device {device} requested but CUDA is not available here; use device auto or cpu")
    if backend == "torch":
        return "torch", device if device != "auto" else ("cuda" if cuda else "cpu")
    return ("torch", "cuda" if device == "auto" else device) if cuda else ("faiss", "cpu")


# --------------------------------------------------------------------------------------------------- kNN graph
def knn_graph(X: np.ndarray, k: int = 10, block_size: int = DEFAULT_BLOCK, device: str = "auto", *,
              backend: str = "auto", exact: bool | None = None, exact_max_n: int = EXACT_MAX_N,
              target_recall: float = DEFAULT_TARGET_RECALL, recall_queries: int = RECALL_QUERIES, seed: int = 0,
              progress: bool = False) -> KnnGraph:
    """The ``k`` nearest other rows of every row of ``X`` by cosine similarity.

    Parameters
    ----------
    X : float array [n, d]
        Embeddings (normalised to unit length here if they are not).
    k : int
        Neighbours per row (self excluded).
    block_size : int
        Queries processed together; bounds temporary memory to about ``block_size * (k + 1)`` results on the
        FAISS paths and one ``block_size x 4 block_size`` similarity tile on the torch path.
    device : {"auto", "cpu", "cuda", "cuda:<i>"}
        Where to compute; ``auto`` prefers FAISS GPUs, then CUDA via torch, then CPU.
    backend : {"auto", "faiss", "torch"}
        Force an implementation.  ``backend="torch", device="cpu"`` runs the GPU tiling code on the CPU.
    exact : bool, optional
        Force exact (True) or approximate (False) search on the FAISS CPU path; default: exact when
        ``n <= exact_max_n``.  GPU paths are always exact.
    exact_max_n : int
        Size up to which the CPU path is exact by default (exact cost grows as n^2 d).
    target_recall : float
        recall@k the approximate path is tuned to reach on ``recall_queries`` sampled rows.
    seed : int
        Seeds the IVF training and the recall sample.
    progress : bool or callable
        Show progress bars (True), or report query blocks to an :data:`engine.progress.Progress` callback.

    Returns
    -------
    KnnGraph

    Examples
    --------
    >>> X = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]          # rows 0 and 1 are identical twins
    >>> g = knn_graph(X, k=1, device="cpu")
    >>> g.indices[:2, 0].tolist(), float(g.similarities[0, 0])
    ([1, 0], 1.0)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    X = as_unit_vectors(X, "embeddings")
    n = len(X)
    k_eff = min(k, max(n - 1, 0))
    if k_eff == 0:
        idx, sims = _finish(np.empty((n, 0), np.int64), np.empty((n, 0), np.float32), k)
        return KnnGraph(idx, sims, "exact:trivial", 1.0)
    used, dev = _resolve_backend(backend, device)
    t0 = time.perf_counter()
    if used == "torch":
        from curate.indexes.torch_knn import torch_knn_graph

        idx, sims, dtype_name = torch_knn_graph(X, k_eff, block_size=block_size, device=dev, progress=progress)
        graph = KnnGraph(*_finish(idx, sims, k), f"exact:torch-{dev}-{dtype_name}", 1.0)
    elif used == "faiss-gpu":
        graph = KnnGraph(*_finish(*_faiss_gpu_exact(X, k_eff, block_size, dev, progress), k), "exact:faiss-gpu", 1.0)
    elif exact or (exact is None and n <= exact_max_n):
        graph = KnnGraph(*_finish(*_faiss_exact(X, k_eff, block_size, progress), k), "exact:faiss-cpu", 1.0)
    else:
        idx, sims, method, recall = _faiss_approx(X, k_eff, block_size, target_recall, recall_queries, seed,
                                                  progress)
        graph = KnnGraph(*_finish(idx, sims, k), method, recall)
    log.info("kNN graph n=%d k=%d via %s in %.1fs (recall %.3f)", n, k, graph.method, time.perf_counter() - t0,
             graph.recall)
    return graph


def _faiss_exact(X: np.ndarray, k: int, block_size: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    n = len(X)
    out_i = np.empty((n, k), np.int64)
    out_s = np.empty((n, k), np.float32)
    for s, e in _blocks(n, block_size, progress, "kNN graph (exact)"):
        D, I = exact_search(X[s:e], X, k + 1)  # brute force straight on X: no copy of the database
        out_i[s:e], out_s[s:e] = drop_self(I, D, np.arange(s, e))
    return out_i, out_s


def _faiss_gpu_exact(X: np.ndarray, k: int, block_size: int, device: str,
                     progress: bool) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - needs faiss GPUs
    import faiss

    gpu = int(device.split(":")[1]) if ":" in device else 0
    res = faiss.StandardGpuResources()
    n = len(X)
    out_i = np.empty((n, k), np.int64)
    out_s = np.empty((n, k), np.float32)
    # larger query blocks amortise the host->device copy of the database that knn_gpu tiles internally
    for s, e in _blocks(n, max(block_size, 65_536), progress, "kNN graph (faiss GPU)"):
        D, I = faiss.knn_gpu(res, X[s:e], X, k + 1, metric=faiss.METRIC_INNER_PRODUCT, device=gpu)
        out_i[s:e], out_s[s:e] = drop_self(I.astype(np.int64), D, np.arange(s, e))
    return out_i, out_s


def _faiss_approx(X: np.ndarray, k: int, block_size: int, target_recall: float, recall_queries: int, seed: int,
                  progress: bool) -> tuple[np.ndarray, np.ndarray, str, float]:
    """IVF-Flat graph: nprobe raised until recall@k (self excluded) on sampled rows reaches the target."""
    n = len(X)
    nlist = ivf_nlist(n, lists_per_sqrt_n=2.0)  # fewer, larger lists: cheaper training, batch scans stay fast
    factory = f"IVF{nlist},Flat"
    index, _ = build_index(X, factory=factory, seed=seed, progress=progress)

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, recall_queries), replace=False))
    true_s, true_i = exact_search(X[rows], X, k + 1)
    true_i, true_s = drop_self(true_i, true_s, rows)

    def evaluate(ix: Any) -> float:
        D, I = ix.search(X[rows], k + 1)
        I, _ = drop_self(I.astype(np.int64), D, rows)
        return recall_at_k(true_i, true_s, I, gather_similarities(X[rows], X, I))

    tuning = tune_index(index, evaluate, target_recall, n_queries=len(rows))
    out_i = np.empty((n, k), np.int64)
    out_s = np.empty((n, k), np.float32)
    for s, e in _blocks(n, max(block_size, 16_384), progress, "kNN graph (IVF)"):
        D, I = index.search(X[s:e], k + 1)
        out_i[s:e], out_s[s:e] = drop_self(I.astype(np.int64), D, np.arange(s, e))
    return out_i, out_s, f"approx:faiss {factory} {tuning.search_params}", tuning.recall


# --------------------------------------------------------------------------------------------------- incremental
def extend_graph(graph: KnnGraph, X: np.ndarray, old_rows: np.ndarray, block_size: int = DEFAULT_BLOCK,
                 progress: bool = False) -> KnnGraph:
    """Extend a graph built on some rows of ``X`` to all rows, without recomputing old-to-old similarities.

    For an old row, its new neighbour list is the best ``k`` of (its old list, its ``k`` best among the new rows)
    — the same list a full rebuild would give, since the old rows' similarities have not changed.  New rows get
    an exact search against all rows.  Cost: ``O(n * n_new * d)`` instead of ``O(n^2 d)``.

    Parameters
    ----------
    graph : KnnGraph
        Built on ``X[old_rows]``: its indices are positions *within that subset*.
    X : float array [n, d]
        All rows, old and new.
    old_rows : int array [n_old]
        Position in ``X`` of each row the graph was built on, in the graph's row order.

    Returns
    -------
    KnnGraph
        Over all rows of ``X`` (indices are positions in ``X``), same ``k``; ``method`` gains ``+extended``.
    """
    X = as_unit_vectors(X, "embeddings")
    n, k = len(X), graph.k
    old_rows = np.asarray(old_rows, dtype=np.int64)
    if len(old_rows) != graph.n:
        raise ValueError(f"graph has {graph.n} rows but {len(old_rows)} old row positions were given")
    is_new = np.ones(n, bool)
    is_new[old_rows] = False
    new_rows = np.flatnonzero(is_new)
    out_i = np.full((n, k), -1, np.int64)
    out_s = np.full((n, k), -np.inf, np.float32)
    if len(new_rows) == 0:
        out_i[old_rows] = np.where(graph.indices >= 0, old_rows[np.maximum(graph.indices, 0)], -1)
        out_s[old_rows] = graph.similarities
        return KnnGraph(out_i, out_s, graph.method, graph.recall)

    k_eff = min(k, n - 1)
    for s, e in _blocks(len(new_rows), block_size, progress, "kNN graph (new rows)"):
        rows = new_rows[s:e]
        D, I = exact_search(X[rows], X, k_eff + 1)
        I, D = drop_self(I, D, rows)
        out_i[rows, :k_eff], out_s[rows, :k_eff] = I, D

    X_new = np.ascontiguousarray(X[new_rows])
    kc = min(k, len(new_rows))
    for s, e in _blocks(len(old_rows), block_size, progress, "kNN graph (old rows)"):
        rows = old_rows[s:e]
        cand_s, cand_p = exact_search(X[rows], X_new, kc)
        old_i = graph.indices[s:e]
        old_i = np.where(old_i >= 0, old_rows[np.maximum(old_i, 0)], -1)
        both_i = np.hstack([old_i, new_rows[cand_p]])
        both_s = np.hstack([graph.similarities[s:e], cand_s.astype(np.float32)])
        order = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
        out_i[rows] = np.take_along_axis(both_i, order, axis=1)
        out_s[rows] = np.take_along_axis(both_s, order, axis=1)
    out_i, out_s = _finish(out_i, out_s, k)
    method = graph.method if graph.method.endswith("+extended") else graph.method + "+extended"
    return KnnGraph(out_i, out_s, method, graph.recall)


# --------------------------------------------------------------------------------------------------- range search
def range_pairs(X: np.ndarray, threshold: float, block_size: int = DEFAULT_BLOCK, *, device: str = "auto",
                backend: str = "auto", max_pairs: int = MAX_RANGE_PAIRS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of rows whose cosine similarity is at least ``threshold`` (exact, upper-triangle tiles).

    Only tiles on or above the diagonal are computed (half the work of a full range search).  Cost is
    ``O(n^2 d / 2)``: seconds for 10^4-10^5 rows on a CPU; for millions of rows, use the neighbours in the kNN
    graph instead (``knn_graph``), which is what the duplicates analysis does.

    Parameters
    ----------
    X : float array [n, d]
        Embeddings (normalised here if they are not).
    threshold : float
        Minimum cosine similarity, in [-1, 1].
    block_size : int
        Tile side; temporary memory is one ``block_size x block_size`` float32 tile.
    device : {"auto", "cpu", "cuda", "cuda:<i>"}
        ``auto`` uses CUDA (torch) when available.
    backend : {"auto", "numpy", "torch"}
        Force an implementation; ``backend="torch", device="cpu"`` runs the GPU code on the CPU.
    max_pairs : int
        Raise instead of exhausting memory when the threshold matches more pairs than this.

    Returns
    -------
    (i, j, sim)
        int64, int64, float32 arrays with ``i < j``, sorted by ``(i, j)``.

    Raises
    ------
    CurateError
        More than ``max_pairs`` pairs reach the threshold.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    X = as_unit_vectors(X, "embeddings")
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"backend must be auto, numpy or torch, got {backend!r}")
    device = (device or "auto").lower()
    if backend == "auto":
        backend = "torch" if device.startswith("cuda") or (device == "auto" and cuda_available()) else "numpy"
    if backend == "torch":
        from curate.indexes.torch_knn import torch_range_pairs

        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        i, j, s = torch_range_pairs(X, float(threshold), block_size, device, max_pairs)
    else:
        i, j, s = _numpy_range_pairs(X, float(threshold), block_size, max_pairs)
    order = np.lexsort((j, i))
    return i[order], j[order], s[order]


def _numpy_range_pairs(X: np.ndarray, threshold: float, block_size: int,
                       max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(X)
    out_i, out_j, out_s = [], [], []
    total = 0
    for s in range(0, n, block_size):
        e = min(n, s + block_size)
        for t in range(s, n, block_size):
            u = min(n, t + block_size)
            S = X[s:e] @ X[t:u].T
            ii, jj = np.nonzero(S >= threshold)
            if t == s:  # diagonal tile: strict upper triangle only
                upper = jj > ii
                ii, jj = ii[upper], jj[upper]
            total += len(ii)
            check_pair_count(total, max_pairs, threshold)
            out_i.append(ii.astype(np.int64) + s)
            out_j.append(jj.astype(np.int64) + t)
            out_s.append(S[ii, jj].astype(np.float32))
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)

"""Choose, construct and tune FAISS indexes over L2-normalised vectors (inner product = cosine similarity).

Most users never pick an index: :func:`choose_factory` derives one from the number of vectors, their dimension
and a memory budget, following the FAISS index-selection guide:

* up to :data:`FLAT_MAX_N` vectors — ``Flat``: exact search; a query costs n·d multiply-adds (~2 ms at 200k x 512
  on two cores), no training, no parameters;
* up to :data:`HNSW_MAX_N` vectors, when the raw vectors fit the budget — ``HNSW32,Flat``: a proximity graph, best
  single-query latency, no training; building it gets slow beyond a few hundred thousand vectors on few cores;
* larger, raw vectors still fit — ``IVF<nlist>,Flat``: k-means partitions, exact distances inside the probed
  partitions, fast to build;
* raw vectors do not fit — ``IVF<nlist>,PQ<m>``: product-quantised codes of ``m`` bytes per vector.

Experts pass any FAISS ``index_factory`` string instead (``"IVF4096,PQ32"``, ``"OPQ32,IVF1024,PQ32"``, ...).
Every index is wrapped in ``IDMap`` so it returns sample ids and new samples can be added later with their ids.

Approximate indexes are never trusted blindly: :func:`tune_index` measures recall@k against exact search on a
sample of queries and raises the search effort (``nprobe`` for IVF, ``efSearch`` for HNSW) until the target
recall is reached (or stops improving, as with coarse PQ codes); the measured recall is stored with the index.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from curate.engine.catalog import CurateError

log = logging.getLogger(__name__)

FLAT_MAX_N = 200_000
HNSW_MAX_N = 500_000
HNSW_M = 32
RECALL_K = 10
DEFAULT_TARGET_RECALL = 0.95
RECALL_QUERIES = 1_000
_ADD_BLOCK = 65_536
_FACTORY_GUIDE = "https://github.com/facebookresearch/faiss/wiki/The-index-factory"


# --------------------------------------------------------------------------------------------------- inputs
def as_unit_vectors(X: Any, name: str = "vectors") -> np.ndarray:
    """Validate an embedding matrix and return it as C-contiguous float32 with unit-length rows.

    Rows already of unit length (the embeddings contract) are returned without a copy when the array is
    float32 and contiguous; others are normalised (all-zero rows stay zero: similar to nothing).

    Raises
    ------
    ValueError
        Not a 2-D array, or non-finite values.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {X.shape}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.size and not np.isfinite(X).all():
        bad = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise ValueError(f"{name} contain NaN or infinite values (first at row {bad}); re-run the embedding step")
    if len(X):
        norms = np.linalg.norm(X, axis=1)
        if np.abs(norms - 1.0).max() > 1e-3:
            safe = np.where(norms > 0, norms, 1.0).astype(np.float32)
            X = X / safe[:, None]
    return X


def default_memory_budget() -> int:
    """Bytes an index may occupy by default: a quarter of the machine's physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total) // 4


# --------------------------------------------------------------------------------------------------- choice
def ivf_nlist(n: int, lists_per_sqrt_n: float = 4.0) -> int:
    """Number of IVF partitions for ``n`` vectors: the power of two nearest ``lists_per_sqrt_n * sqrt(n)``.

    Capped so that every partition gets at least 39 training points (FAISS's k-means minimum).
    """
    target = max(1.0, lists_per_sqrt_n * math.sqrt(max(n, 1)))
    nlist = 2 ** int(round(math.log2(target)))
    return int(max(1, min(nlist, 65_536, max(1, n // 39))))


def choose_factory(n: int, d: int, memory_budget_bytes: int | None = None) -> str:
    """Pick a FAISS factory string for ``n`` vectors of dimension ``d`` (see the module docstring).

    Parameters
    ----------
    n, d : number and dimension of the vectors.
    memory_budget_bytes : how much memory the index may use; default :func:`default_memory_budget`.

    Returns
    -------
    str
        A factory string without the ``IDMap,`` wrapper, e.g. ``"Flat"``, ``"HNSW32,Flat"``, ``"IVF4096,Flat"``.

    Raises
    ------
    CurateError
        Not even the smallest product-quantised index fits the budget.
    """
    budget = default_memory_budget() if memory_budget_bytes is None else int(memory_budget_bytes)
    raw = n * d * 4 + n * 8  # float32 vectors + int64 ids
    if n <= FLAT_MAX_N and raw <= budget:
        return "Flat"
    nlist = ivf_nlist(n)
    if n <= HNSW_MAX_N and raw + n * HNSW_M * 2 * 4 <= budget:  # HNSW level-0 links: 2M int32 per vector
        return f"HNSW{HNSW_M},Flat"
    if raw + nlist * d * 4 <= budget:
        return f"IVF{nlist},Flat"
    for m in (64, 48, 32, 24, 16, 8, 4):
        if m < d and d % m == 0 and n * (m + 8) + nlist * d * 4 <= budget:
            return f"IVF{nlist},PQ{m}"
    raise CurateError(
        f"no index of {n} vectors x {d} dims fits a {budget / 2**20:.0f} MiB memory budget; "
        "raise the budget or pass an explicit --factory"
    )


# --------------------------------------------------------------------------------------------------- build
def faiss_reason(exc: BaseException) -> str:
    """The human part of a FAISS C++ exception ("Error in <signature> at <file>:<line>: <reason>")."""
    text = " ".join(str(exc).split())
    match = re.search(r" at \S+:\d+: (.+)$", text)
    return (match.group(1) if match else text) or "rejected"


def make_index(factory: str, d: int) -> Any:
    """``faiss.index_factory`` for inner product, wrapped in ``IDMap``; bad strings are a one-line error."""
    import faiss

    full = factory if factory.upper().startswith("IDMAP") else f"IDMap,{factory}"
    try:
        return faiss.index_factory(int(d), full, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise CurateError(f"invalid FAISS factory string {factory!r} ({faiss_reason(exc)}); "
                          f"see {_FACTORY_GUIDE}") from exc


def build_index(vectors: np.ndarray, ids: np.ndarray | None = None, factory: str = "auto",
                memory_budget_bytes: int | None = None, seed: int = 0, progress: bool = False) -> tuple[Any, str]:
    """Train (when needed) and fill a FAISS index over ``vectors``.

    Parameters
    ----------
    vectors : float array [n, d]
        Embeddings; normalised to unit length if they are not.
    ids : int array [n], optional
        The id returned for each row (sample ids); default ``0..n-1``.
    factory : str
        ``"auto"`` (:func:`choose_factory`) or a FAISS ``index_factory`` string.
    memory_budget_bytes : passed to :func:`choose_factory`.
    seed : seeds the k-means / PQ training and the choice of training rows.
    progress : show a progress bar while adding vectors.

    Returns
    -------
    (faiss.Index, str)
        The filled ``IDMap`` index and the factory string it was built from (including ``IDMap,``).
    """
    X = as_unit_vectors(vectors)
    n, d = X.shape
    ids = np.arange(n, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} vectors")
    chosen = choose_factory(n, d, memory_budget_bytes) if factory == "auto" else factory
    index = make_index(chosen, d)
    _seed_training(index, seed)
    if not index.is_trained:
        _train(index, X, seed)
    add_vectors(index, X, ids, progress=progress)
    full = chosen if chosen.upper().startswith("IDMAP") else f"IDMap,{chosen}"
    return index, full


def _seed_training(index: Any, seed: int) -> None:
    import faiss

    try:
        faiss.extract_index_ivf(index).cp.seed = int(seed)
    except RuntimeError:  # not an IVF index
        pass


def _train(index: Any, X: np.ndarray, seed: int) -> None:
    import faiss

    n = len(X)
    try:
        nlist = faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        nlist = 1
    wanted = max(40 * nlist, 10_000)  # >= 39 points per partition; PQ code books want >= 39 * 256
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, wanted), replace=False))
    t0 = time.perf_counter()
    try:
        index.train(X[rows])
    except RuntimeError as exc:  # e.g. fewer training points than partitions / PQ centroids
        raise CurateError(f"cannot train this index on {n} vectors ({faiss_reason(exc)}); "
                          "use factory 'auto' or 'Flat'") from exc
    log.info("trained index on %d vectors in %.1fs", len(rows), time.perf_counter() - t0)


def add_vectors(index: Any, vectors: np.ndarray, ids: np.ndarray, progress: bool = False) -> None:
    """Add rows with their ids in blocks (bounded temporary memory in FAISS, visible progress)."""
    X = as_unit_vectors(vectors)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    from curate.engine.progress import track

    starts = track(range(0, len(X), _ADD_BLOCK), "indexing", progress=progress)
    for s in starts:
        index.add_with_ids(X[s:s + _ADD_BLOCK], ids[s:s + _ADD_BLOCK])


def index_ids(index: Any) -> np.ndarray:
    """The ids stored in an ``IDMap`` index, in insertion order."""
    import faiss

    return faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)


def maybe_to_gpu(index: Any) -> Any:
    """Clone ``index`` onto all GPUs when the installed FAISS has any; otherwise (or if unsupported) return it."""
    import faiss

    if faiss.get_num_gpus() <= 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
        log.info("searching on CPU: %s", str(exc).splitlines()[0])
        return index


# --------------------------------------------------------------------------------------------------- exact search
def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product (FAISS brute force, BLAS): ``(similarities, row positions)``."""
    import faiss

    k = int(min(k, len(vectors)))
    if k <= 0:
        return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
    D, I = faiss.knn(np.ascontiguousarray(queries, np.float32), vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return D, I.astype(np.int64)


def gather_similarities(queries: np.ndarray, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Exact float32 cosine between each query row and the rows ``positions`` [q, k] (-1 gives -inf)."""
    pos = np.asarray(positions, dtype=np.int64)
    valid = pos >= 0
    sims = np.einsum("qd,qkd->qk", queries, vectors[np.where(valid, pos, 0)], optimize=True).astype(np.float32)
    sims[~valid] = -np.inf
    return sims


def check_pair_count(total: int, max_pairs: int, threshold: float) -> None:
    """Raise a one-line error when a range search has found more than ``max_pairs`` pairs (shared by the numpy
    and torch range searches of :mod:`indexes.knn` / :mod:`indexes.torch_knn`)."""
    if total > max_pairs:
        raise CurateError(f"more than {max_pairs:,} pairs have cosine similarity >= {threshold}; "
                          "raise the threshold (or max_pairs)")


def recall_at_k(true_pos: np.ndarray, true_sims: np.ndarray, found_pos: np.ndarray, found_sims: np.ndarray,
                tol: float = 1e-5) -> float:
    """Recall@k of approximate neighbours against exact ones, fair to ties.

    A found neighbour counts as a hit when it is one of the exact top-k, or when its *exact* similarity ties the
    k-th exact similarity (within ``tol``) — two identical images are interchangeable neighbours.

    Parameters
    ----------
    true_pos, true_sims : int [q, k], float [q, k]
        Exact neighbours (-1 padding) and their similarities, descending.
    found_pos, found_sims : int [q, k], float [q, k]
        Approximate neighbours and their *exact* similarities (see :func:`gather_similarities`).

    Returns
    -------
    float
        Hits / number of true neighbours (1.0 when there are none).
    """
    true_pos = np.asarray(true_pos)
    found_pos = np.asarray(found_pos)
    valid_true = true_pos >= 0
    n_true = valid_true.sum(axis=1)
    if n_true.sum() == 0:
        return 1.0
    in_true = ((found_pos[:, :, None] == true_pos[:, None, :]) & valid_true[:, None, :]).any(axis=2)
    kth = np.where(n_true > 0, true_sims[np.arange(len(true_pos)), np.maximum(n_true - 1, 0)], np.inf)
    ties = np.asarray(found_sims) >= (kth[:, None] - tol)
    hits = ((in_true | ties) & (found_pos >= 0)).sum(axis=1)
    return float(np.minimum(hits, n_true).sum() / n_true.sum())


# --------------------------------------------------------------------------------------------------- tuning
@dataclass
class Tuning:
    """Outcome of :func:`tune_index`.

    Attributes
    ----------
    search_params : FAISS ``ParameterSpace`` string now set on the index (``""`` for exact indexes).
    recall : measured recall@k with those parameters (1.0 for exact indexes).
    n_queries : queries the recall was measured on (0 for exact indexes).
    target_recall : the recall the parameters were tuned for.
    trace : every ``(params, recall, seconds)`` tried, in order.
    """

    search_params: str
    recall: float
    n_queries: int
    target_recall: float = DEFAULT_TARGET_RECALL
    trace: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def reached(self) -> bool:
        """Whether the measured recall meets the target."""
        return self.recall >= self.target_recall


def tunable_parameter(index: Any) -> tuple[str, list[int]] | None:
    """The search-effort parameter of an index and the values to try, or None for exact indexes."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v < ivf.nlist] + [ivf.nlist]
    inner = faiss.downcast_index(index)
    while True:
        if isinstance(inner, faiss.IndexHNSW):
            return "efSearch", [16, 32, 64, 128, 256, 512, 1024, 2048]
        nxt = getattr(inner, "index", None)  # IDMap, PreTransform
        if nxt is None:
            nxt = getattr(inner, "base_index", None)  # Refine
        if nxt is None:
            return None
        inner = faiss.downcast_index(nxt)


def set_search_params(index: Any, params: str) -> None:
    """Apply a ``ParameterSpace`` string such as ``"nprobe=16"`` (no-op for ``""``)."""
    import faiss

    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)


def tune_index(index: Any, evaluate: Callable[[Any], float], target_recall: float = DEFAULT_TARGET_RECALL,
               n_queries: int = 0) -> Tuning:
    """Raise the search effort of ``index`` until ``evaluate(index) >= target_recall``.

    Parameters
    ----------
    index : faiss.Index
        Modified in place: ends with the chosen parameters set.
    evaluate : callable
        Measures recall of ``index`` as currently configured (e.g. on a held sample of queries).
    target_recall : float
        Stop at the first (cheapest) setting reaching this recall.
    n_queries : int
        Recorded in the result (how many queries ``evaluate`` uses).

    Returns
    -------
    Tuning
        When the target is never reached (PQ codes too coarse) or recall stops improving, the setting with the
        best measured recall is kept and the shortfall is logged as a warning.
    """
    param = tunable_parameter(index)
    if param is None:
        return Tuning("", 1.0, 0, target_recall)
    name, values = param
    trace: list[tuple[str, float, float]] = []
    for value in values:
        params = f"{name}={value}"
        set_search_params(index, params)
        t0 = time.perf_counter()
        recall = float(evaluate(index))
        trace.append((params, recall, time.perf_counter() - t0))
        if recall >= target_recall:
            break
        # a plateau (no gain over the last two doublings) means more effort will not help: quantisation-limited
        if len(trace) >= 3 and recall - trace[-3][1] < 0.002:
            break
    reached = [t for t in trace if t[1] >= target_recall]
    best = reached[0] if reached else max(trace, key=lambda t: t[1])
    set_search_params(index, best[0])
    if best[1] < target_recall:
        log.warning("index reaches recall@10 %.3f at best (%s), below the target %.2f", best[1], best[0],
                    target_recall)
    return Tuning(best[0], best[1], n_queries, target_recall, trace)

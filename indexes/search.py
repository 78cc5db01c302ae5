"""Similarity search over a project's embeddings: by vector, by sample, by image file, by text.

The search index is built on first use and saved in ``<project>/indexes/<encoder-slug>/`` (see
:mod:`indexes.store`); later calls load it, verify its checksum, and bring it up to date:

* embeddings unchanged -> used as is;
* new samples embedded since (old vectors unchanged, the automatic index choice unchanged) -> the new vectors
  are added to the saved index (``IDMap.add_with_ids``), recall is re-measured and the search parameters
  re-tuned, and the file is saved again;
* anything else (vectors changed, samples removed, another factory requested, corrupt file) -> rebuilt.

Every approximate index carries its recall@10, measured against exact search when it was (re)built.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curate.engine.catalog import Catalog, CurateError
from curate.indexes.build import (
    DEFAULT_TARGET_RECALL,
    RECALL_K,
    RECALL_QUERIES,
    Tuning,
    add_vectors,
    as_unit_vectors,
    build_index,
    choose_factory,
    exact_search,
    gather_similarities,
    index_ids,
    maybe_to_gpu,
    recall_at_k,
    set_search_params,
    tune_index,
)
from curate.indexes.store import CorruptIndexError, IndexMeta, content_key, index_dir, load_index, save_index

log = logging.getLogger(__name__)


@dataclass
class Neighbours:
    """Search results for a batch of queries.

    Attributes
    ----------
    sample_ids : int64 array [q, k]
        Most similar samples first; ``-1`` where fewer than ``k`` samples exist.
    scores : float32 array [q, k]
        Cosine similarity to the query, descending; ``-inf`` where ``sample_ids`` is ``-1``.
    """

    sample_ids: np.ndarray
    scores: np.ndarray


@dataclass
class ProjectIndex:
    """A loaded search index together with the embeddings it indexes.

    Attributes
    ----------
    index : faiss.Index
        ``IDMap`` index returning sample ids, search parameters applied.
    meta : IndexMeta
        Its metadata record (factory, recall@10, build time, checksum, ...).
    embeddings : EmbeddingSet
        The embeddings it was checked against (``encoder``, ``sample_ids``, ``vectors``).
    status : str
        ``"loaded"``, ``"built"``, ``"updated (+m vectors)"`` or ``"rebuilt: <reason>"``.
    """

    index: Any
    meta: IndexMeta
    embeddings: Any
    status: str
    _searcher: Any = field(default=None, repr=False)

    def search(self, queries: np.ndarray, k: int = 10) -> Neighbours:
        """The ``k`` samples most similar to each query vector (rows of ``queries``, normalised here)."""
        Q = as_unit_vectors(np.atleast_2d(queries), "query vectors")
        if Q.shape[1] != self.meta.dim:
            raise CurateError(f"query vectors have {Q.shape[1]} dimensions but the {self.meta.encoder} index has "
                              f"{self.meta.dim}; embed the query with the same encoder")
        if self._searcher is None:
            self._searcher = maybe_to_gpu(self.index)
        D, I = self._searcher.search(Q, int(k))
        I = I.astype(np.int64)
        D = D.astype(np.float32)
        D[I < 0] = -np.inf
        return Neighbours(I, D)


# --------------------------------------------------------------------------------------------------- index
def load_or_build_index(cat: Catalog, encoder: str | None = None, factory: str = "auto", *,
                        memory_budget_bytes: int | None = None, target_recall: float = DEFAULT_TARGET_RECALL,
                        seed: int = 0, rebuild: bool = False, progress: bool = False,
                        out_of_core: bool | None = None) -> ProjectIndex:
    """The project's search index for an encoder, loaded from the workspace or (re)built as needed.

    Parameters
    ----------
    cat : Catalog
        The project.
    encoder : str, optional
        Encoder whose embeddings to index; None = the most recently created embedding set.
    factory : str
        ``"auto"`` (chosen from the number of vectors, their dimension and ``memory_budget_bytes``) or a FAISS
        ``index_factory`` string, e.g. ``"HNSW32,Flat"``, ``"IVF4096,PQ32"``.
    memory_budget_bytes : int, optional
        Memory the automatic choice may use (default: a quarter of physical memory).
    target_recall : float
        recall@10 the search parameters are tuned to reach.
    seed : int
        Seeds training and the recall sample.
    rebuild : bool
        Ignore the saved index.
    progress : bool
        Show progress while adding vectors.
    out_of_core : bool, optional
        None = the size switch decides (:meth:`curate.engine.inputs.Inputs.open`); True:
        :func:`load_or_build_sharded_index`.

    Returns
    -------
    ProjectIndex
    """
    from curate.engine.embed import load_embeddings
    from curate.engine.inputs import Inputs

    if Inputs.open(cat, encoder, out_of_core).out_of_core:
        return load_or_build_sharded_index(cat, encoder, factory, memory_budget_bytes=memory_budget_bytes,
                                          target_recall=target_recall, seed=seed, rebuild=rebuild)
    es = load_embeddings(cat, encoder)
    index, meta, status = index_for_embeddings(
        index_dir(cat.root, es.encoder), es.encoder, es.sample_ids, es.vectors, factory,
        catalog_version=cat.version_token(), memory_budget_bytes=memory_budget_bytes, target_recall=target_recall,
        seed=seed, rebuild=rebuild, progress=progress)
    return ProjectIndex(index, meta, es, status)


OOC_INDEX_DIR = "index-ooc"


def _saved_index(directory: str | os.PathLike, rebuild: bool) -> tuple[tuple[Any, IndexMeta] | None, str]:
    """``(loaded index and meta, or None; what a build would be called)`` for the index saved in ``directory``."""
    if rebuild:
        return None, "rebuilt: requested"
    try:
        return load_index(directory), "built"
    except CorruptIndexError as exc:
        log.warning("search index in %s is corrupt, rebuilding: %s", directory, exc)
        return None, f"rebuilt: corrupt index ({exc})"


def load_or_build_sharded_index(cat: Catalog, encoder: str | None = None, factory: str = "auto", *,
                                memory_budget_bytes: int | None = None,
                                target_recall: float = DEFAULT_TARGET_RECALL, seed: int = 0,
                                rebuild: bool = False) -> ProjectIndex:
    """The search index of a project too large for memory, trained on a sample and filled shard by shard.

    Built with :func:`indexes.sharded.build_sharded_index` (IVF for large sets: ``sharded_factory``), its search
    parameters tuned to ``target_recall`` against exact search over the shards, its ids then set to sample ids,
    and saved with its checksummed metadata in ``<project>/indexes/<encoder-slug>/index-ooc/``.  Kept while the
    shards' content key is unchanged; otherwise (or when corrupt) rebuilt — no incremental update on this path.
    The returned ``ProjectIndex.embeddings`` is a :class:`engine.shards.ShardRows` view (single rows read on
    demand), so :func:`search_sample` and the UI work unchanged.
    """
    import faiss

    from curate.engine.shards import ShardedEmbeddings, ShardRows
    from curate.indexes.sharded import build_sharded_index, tune_sharded

    shards = ShardedEmbeddings.open(cat, encoder, verify=True)
    directory = index_dir(cat.root, shards.encoder) / OOC_INDEX_DIR
    key = shards.content_key()
    loaded, status = _saved_index(directory, rebuild)
    if loaded is not None:
        index, meta = loaded
        if meta.content_key == key and meta.requested_factory == factory:
            set_search_params(index, meta.search_params)
            return ProjectIndex(index, meta, ShardRows(shards), "loaded")
        status = "rebuilt: embeddings or factory changed"
    t0 = time.perf_counter()
    six = build_sharded_index(shards, factory, seed=seed, memory_budget_bytes=memory_budget_bytes)
    recall = tune_sharded(six, shards, RECALL_K, target_recall, RECALL_QUERIES, seed)
    index = six.parts[0]
    # ids were global row positions (what the tuning compares against); store sample ids instead
    rows = faiss.vector_to_array(index.id_map)
    faiss.copy_array_to_vector(np.ascontiguousarray(shards.sample_ids()[rows], np.int64), index.id_map)
    exact = "IVF" not in six.factory.upper() and "HNSW" not in six.factory.upper() and "PQ" not in six.factory.upper()
    meta = IndexMeta(encoder=shards.encoder, n_vectors=int(index.ntotal), dim=shards.dim, factory=six.factory,
                     requested_factory=factory, search_params=six.search_params,
                     recall_at_10=1.0 if exact else float(recall), recall_queries=0 if exact else RECALL_QUERIES,
                     target_recall=target_recall, build_seconds=round(time.perf_counter() - t0, 3),
                     catalog_version=cat.version_token(), content_key=key)
    meta = save_index(directory, index, meta)
    return ProjectIndex(index, meta, ShardRows(shards), status)


def index_for_embeddings(directory: str | os.PathLike, encoder: str, sample_ids: np.ndarray, vectors: np.ndarray,
                         factory: str = "auto", *, catalog_version: str = "", memory_budget_bytes: int | None = None,
                         target_recall: float = DEFAULT_TARGET_RECALL, seed: int = 0, rebuild: bool = False,
                         progress: bool = False) -> tuple[Any, IndexMeta, str]:
    """Load, update or build the search index of ``vectors`` saved in ``directory``.

    Parameters
    ----------
    directory : path
        Index folder (``<project>/indexes/<encoder-slug>/``).
    encoder : str
        Encoder name (recorded; a saved index of another encoder is rebuilt).
    sample_ids : int array [n]
        Ascending sample ids, row-aligned with ``vectors``.
    vectors : float array [n, d]
        Embeddings.
    factory, memory_budget_bytes, target_recall, seed, rebuild, progress
        As in :func:`load_or_build_index`.
    catalog_version : str
        Recorded in the metadata.

    Returns
    -------
    (faiss.Index, IndexMeta, status)
        ``status`` as in :attr:`ProjectIndex.status`.
    """
    directory = Path(directory)
    X = as_unit_vectors(vectors, "embeddings")
    ids = np.asarray(sample_ids, dtype=np.int64)
    if len(ids) == 0:
        raise CurateError("no embeddings to index; run `curate embed` first")
    key = content_key(ids, X)
    wanted = ("IDMap," + choose_factory(len(X), X.shape[1], memory_budget_bytes)) if factory == "auto" else None
    loaded, reason = _saved_index(directory, rebuild)
    if loaded is not None:
        index, meta = loaded
        if meta.encoder != encoder or meta.dim != X.shape[1] or meta.requested_factory != factory:
            reason = "rebuilt: different encoder or factory"
        elif meta.content_key == key:
            set_search_params(index, meta.search_params)
            return index, meta, "loaded"
        else:
            old_ids = np.sort(index_ids(index))
            pos = np.searchsorted(ids, old_ids)
            subset = len(old_ids) and pos.max() < len(ids) and np.array_equal(ids[pos], old_ids)
            if not subset or content_key(ids, X, rows=pos) != meta.content_key:
                reason = "rebuilt: embeddings changed"
            elif wanted is not None and wanted != meta.factory:
                reason = f"rebuilt: {len(ids)} vectors call for {wanted} instead of {meta.factory}"
            else:
                t0 = time.perf_counter()
                new_rows = np.setdiff1d(np.arange(len(ids)), pos, assume_unique=True)
                add_vectors(index, X[new_rows], ids[new_rows], progress=progress)
                tuning = _tune(index, X, ids, target_recall, seed)
                meta = _meta(encoder, index, meta.factory, factory, tuning, catalog_version, key,
                             time.perf_counter() - t0, meta.incremental_adds + 1)
                save_index(directory, index, meta)
                return index, meta, f"updated (+{len(new_rows)} vectors)"
    t0 = time.perf_counter()
    index, full_factory = build_index(X, ids, factory, memory_budget_bytes, seed=seed, progress=progress)
    tuning = _tune(index, X, ids, target_recall, seed)
    meta = _meta(encoder, index, full_factory, factory, tuning, catalog_version, key, time.perf_counter() - t0, 0)
    save_index(directory, index, meta)
    return index, meta, reason


def _tune(index: Any, X: np.ndarray, ids: np.ndarray, target_recall: float, seed: int) -> Tuning:
    """Measure recall@10 of ``index`` on sampled rows against exact search; raise nprobe/efSearch to the target."""
    rows = np.sort(np.random.default_rng(seed).choice(len(X), size=min(len(X), RECALL_QUERIES), replace=False))
    Q = X[rows]
    true_s, true_p = exact_search(Q, X, RECALL_K)

    def evaluate(ix: Any) -> float:
        _, found = ix.search(Q, RECALL_K)
        pos = np.searchsorted(ids, found)
        pos = np.where((found >= 0) & (pos < len(ids)), pos, -1)
        return recall_at_k(true_p, true_s, pos, gather_similarities(Q, X, pos))

    return tune_index(index, evaluate, target_recall, n_queries=len(rows))


def _meta(encoder: str, index: Any, full_factory: str, requested: str, tuning: Tuning, catalog_version: str,
          key: str, seconds: float, incremental_adds: int) -> IndexMeta:
    return IndexMeta(encoder=encoder, n_vectors=int(index.ntotal), dim=int(index.d), factory=full_factory,
                     requested_factory=requested, search_params=tuning.search_params,
                     recall_at_10=round(tuning.recall, 4), recall_queries=tuning.n_queries,
                     target_recall=tuning.target_recall, build_seconds=round(seconds, 3),
                     catalog_version=catalog_version, content_key=key, incremental_adds=incremental_adds)


# --------------------------------------------------------------------------------------------------- queries
def search_vectors(cat: Catalog, queries: np.ndarray, k: int = 10, encoder: str | None = None,
                   index: ProjectIndex | None = None) -> Neighbours:
    """The ``k`` samples most similar to each query vector.

    Parameters
    ----------
    cat : Catalog
    queries : float array [q, d] or [d]
        Query embeddings from the same encoder as the project's embeddings.
    k : int
    encoder : str, optional
        Which embedding set to search (default: the most recent).
    index : ProjectIndex, optional
        An index already loaded with :func:`load_or_build_index`; pass it when searching repeatedly (a UI) to
        skip re-loading and re-checking the embeddings on every call.  The same holds for the functions below.

    Returns
    -------
    Neighbours
    """
    return (index if index is not None else load_or_build_index(cat, encoder)).search(queries, k)


def search_sample(cat: Catalog, sample_id: int, k: int = 10, encoder: str | None = None,
                  index: ProjectIndex | None = None) -> pd.DataFrame:
    """Samples most similar to sample ``sample_id`` (itself excluded; identical twins are kept).

    Returns
    -------
    pandas.DataFrame
        ``rank, sample_id, score, label, path`` (see :func:`hits_frame`).
    """
    pix = index if index is not None else load_or_build_index(cat, encoder)
    row = pix.embeddings.rows([int(sample_id)])[0]
    if row < 0:
        known = cat.sample(int(sample_id)) is not None
        why = "has no embedding (quarantined or not embedded yet; run `curate embed`)" if known else "does not exist"
        raise CurateError(f"sample {sample_id} {why}")
    hits = pix.search(pix.embeddings.vectors[row], k + 1)
    keep = hits.sample_ids[0] != int(sample_id)
    return hits_frame(cat, hits.sample_ids[0][keep][:k], hits.scores[0][keep][:k])


def search_image(cat: Catalog, path: str | os.PathLike, k: int = 10, encoder: str | None = None,
                 device: str = "auto", index: ProjectIndex | None = None) -> pd.DataFrame:
    """Samples most similar to an image file, embedded with the project's encoder.

    Returns
    -------
    pandas.DataFrame
        ``rank, sample_id, score, label, path``.
    """
    from curate.engine.embed import load_rgb

    pix = index if index is not None else load_or_build_index(cat, encoder)
    enc = _encoder(pix.embeddings.encoder, device)
    try:
        image = load_rgb(path)
    except FileNotFoundError as exc:
        raise CurateError(f"query image {path} does not exist") from exc
    except Exception as exc:
        raise CurateError(f"cannot read query image {path}: {str(exc).splitlines()[0]}") from exc
    query = enc.encode_images(enc.transform(image).unsqueeze(0)).cpu().numpy()
    hits = pix.search(query, k)
    return hits_frame(cat, hits.sample_ids[0], hits.scores[0])


def search_text(cat: Catalog, text: str, k: int = 10, encoder: str | None = None,
                device: str = "auto", index: ProjectIndex | None = None) -> pd.DataFrame:
    """Samples most similar to a text prompt (needs embeddings from a CLIP encoder).

    Raises
    ------
    CurateError
        The project's encoder has no text tower (e.g. the offline ``effnet-lite0``).

    Returns
    -------
    pandas.DataFrame
        ``rank, sample_id, score, label, path``.
    """
    if not str(text).strip():
        raise CurateError("text query is empty; pass --text \"a red car\"")
    pix = index if index is not None else load_or_build_index(cat, encoder)
    name = pix.embeddings.encoder
    enc = _encoder(name, device)
    if not getattr(enc, "supports_text", False):
        raise CurateError(f"text search needs a CLIP encoder, but this project's embeddings come from {name}, "
                          "which cannot encode text; run `curate embed --encoder clip` (needs CLIP weights on "
                          "disk) or search with --image / --sample")
    query = enc.encode_texts([str(text)]).cpu().numpy()
    hits = pix.search(query, k)
    return hits_frame(cat, hits.sample_ids[0], hits.scores[0])


@functools.lru_cache(maxsize=2)
def _encoder(name: str, device: str) -> Any:
    """The query encoder, loaded once per process (loading weights costs seconds; a UI searches repeatedly)."""
    from curate.engine.encoders import get_encoder

    return get_encoder(name, device=device)


def hits_frame(cat: Catalog, sample_ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """One row per hit: ``rank`` (1 = most similar), ``sample_id``, ``score`` (cosine), ``label``, ``path``."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    valid = ids >= 0
    hits = pd.DataFrame({"rank": np.arange(1, valid.sum() + 1), "sample_id": ids[valid],
                         "score": np.asarray(scores, dtype=np.float64)[valid]})
    if hits.empty:
        return hits.assign(label=pd.Series(dtype=object), path=pd.Series(dtype=object))
    info = cat.query_df(
        "SELECT s.id AS sample_id, l.label, s.path FROM samples s "
        "JOIN current_labels l ON l.sample_id = s.id WHERE l.sample_id IN (SELECT unnest(?))",
        [hits["sample_id"].tolist()],
    )
    return hits.merge(info, on="sample_id", how="left")

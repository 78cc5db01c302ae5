"""The project's shared kNN graph: computed once per embedding content, cached in the workspace, reused.

``load_or_build_graph(cat)`` is what analyses call.  The graph lives in
``<project>/indexes/<encoder-slug>/knn_graph.npz`` with a JSON record (:class:`indexes.store.GraphMeta`) holding
the content key of the embeddings it was built from, so:

* same embeddings (any process, any analysis) -> the cached graph is loaded, nothing is recomputed;
* a cached graph with a larger ``k`` serves smaller ``k`` (columns are sorted by similarity);
* new samples embedded since -> the graph is *extended* (:func:`indexes.knn.extend_graph`): only
  new-vs-all similarities are computed, and the result equals a full rebuild;
* anything else changed (vectors re-computed, samples gone, larger ``k``) -> rebuilt;
* a cache file that fails its checksum -> logged and rebuilt, never used.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from curate.engine.catalog import Catalog
from curate.indexes.build import as_unit_vectors
from curate.indexes.knn import KnnGraph, extend_graph, knn_graph
from curate.indexes.store import CorruptIndexError, GraphMeta, content_key, index_dir, load_graph, save_graph

log = logging.getLogger(__name__)

INCREMENTAL_MAX_FRACTION = 0.25
INCREMENTAL_MAX_PAIRS = 2_500_000_000  # n * n_new similarity evaluations: about a minute on two cores at d=512


def load_or_build_graph(cat: Catalog, encoder: str | None = None, k: int = 10, *, device: str = "auto",
                        rebuild: bool = False, progress: bool = False, **knn_options: Any) -> tuple[Any, KnnGraph]:
    """The project's kNN graph over an encoder's embeddings, from the workspace cache when it is current.

    Parameters
    ----------
    cat : Catalog
        The project.
    encoder : str, optional
        Encoder whose embeddings to use; None = the most recently created embedding set.
    k : int
        Neighbours per sample.
    device : str
        Passed to :func:`indexes.knn.knn_graph` when the graph has to be computed.
    rebuild : bool
        Ignore the cache and recompute.
    progress : bool
        Show progress bars while computing.
    **knn_options
        Further options of :func:`indexes.knn.knn_graph` (``exact``, ``block_size``, ``target_recall``, ``seed``).

    Returns
    -------
    (EmbeddingSet, KnnGraph)
        The embeddings (``sample_ids`` ascending) and the graph, whose row ``i`` and neighbour positions refer to
        ``EmbeddingSet.sample_ids``.  ``graph.cache`` says whether it was a cache hit, extended or (re)built.

    Raises
    ------
    CurateError
        The project has no embeddings (run ``curate embed``).
    """
    from curate.engine.embed import load_embeddings

    es = load_embeddings(cat, encoder)
    graph = cached_graph(index_dir(cat.root, es.encoder), es.encoder, es.sample_ids, es.vectors, k,
                         catalog_version=cat.version_token(), device=device, rebuild=rebuild, progress=progress,
                         **knn_options)
    return es, graph


def cached_graph(directory: str | os.PathLike, encoder: str, sample_ids: np.ndarray, vectors: np.ndarray,
                 k: int = 10, *, catalog_version: str = "", device: str = "auto", rebuild: bool = False,
                 progress: bool = False, **knn_options: Any) -> KnnGraph:
    """The kNN graph of ``vectors``, cached in ``directory`` and keyed by their content.

    Parameters
    ----------
    directory : path
        Cache folder (``<project>/indexes/<encoder-slug>/``).
    encoder : str
        Encoder name, recorded in the metadata.
    sample_ids : int array [n]
        Ascending sample ids of the rows of ``vectors``.
    vectors : float array [n, d]
        The embeddings.
    k, device, rebuild, progress, **knn_options
        As in :func:`load_or_build_graph`.
    catalog_version : str
        ``Catalog.version_token()``, recorded in the metadata.

    Returns
    -------
    KnnGraph
    """
    X = as_unit_vectors(vectors, "embeddings")
    ids = np.asarray(sample_ids, dtype=np.int64)
    key = content_key(ids, X)
    reason = "built"
    cached = None
    if not rebuild:
        try:
            cached = load_graph(directory)
        except CorruptIndexError as exc:
            log.warning("kNN graph cache is corrupt, rebuilding: %s", exc)
            reason = f"rebuilt: corrupt cache ({exc})"
    else:
        reason = "rebuilt: requested"
    if cached is not None:
        arrays, meta = cached
        wants_exact = knn_options.get("exact") is True and not meta.method.startswith("exact")
        if meta.k < k:
            reason = f"rebuilt: cached graph has k={meta.k} < {k}"
        elif meta.encoder != encoder or wants_exact:
            reason = "rebuilt: different encoder or method"
        elif meta.content_key == key:
            graph = KnnGraph(arrays["indices"], arrays["similarities"], meta.method, meta.recall, cache="hit")
            return graph.truncate(k)
        else:
            old_rows = _positions_of(ids, arrays["sample_ids"])
            n_new = len(ids) - (len(old_rows) if old_rows is not None else 0)
            if old_rows is None or content_key(ids, X, rows=old_rows) != meta.content_key:
                reason = "rebuilt: embeddings changed"
            elif n_new > INCREMENTAL_MAX_FRACTION * len(ids) or len(ids) * n_new > INCREMENTAL_MAX_PAIRS:
                reason = f"rebuilt: {n_new} new samples are too many to extend the graph"
            else:
                t0 = time.perf_counter()
                old = KnnGraph(arrays["indices"], arrays["similarities"], meta.method, meta.recall)
                graph = extend_graph(old, X, old_rows, progress=progress)
                _save(directory, graph, ids, encoder, key, catalog_version, time.perf_counter() - t0,
                      meta.incremental_adds + 1)
                graph.cache = f"extended (+{n_new} samples)"
                return graph.truncate(k)
    t0 = time.perf_counter()
    graph = knn_graph(X, k, device=device, progress=progress, **knn_options)
    _save(directory, graph, ids, encoder, key, catalog_version, time.perf_counter() - t0, 0)
    graph.cache = reason
    return graph


def _positions_of(new_ids: np.ndarray, old_ids: np.ndarray) -> np.ndarray | None:
    """Positions of ``old_ids`` in the ascending ``new_ids``, or None if some old id is gone."""
    pos = np.searchsorted(new_ids, old_ids)
    if len(old_ids) and (pos.max() >= len(new_ids) or not np.array_equal(new_ids[pos], old_ids)):
        return None
    return pos


def _save(directory: str | os.PathLike, graph: KnnGraph, ids: np.ndarray, encoder: str, key: str,
          catalog_version: str, seconds: float, incremental_adds: int) -> None:
    meta = GraphMeta(encoder=encoder, n=graph.n, k=graph.k, method=graph.method, recall=graph.recall,
                     build_seconds=round(seconds, 3), catalog_version=catalog_version, content_key=key,
                     incremental_adds=incremental_adds)
    save_graph(directory, graph.indices, graph.similarities, ids, meta)


# --------------------------------------------------------------------------------------------------- out of core
OOC_DIR = "knn-ooc"


def load_or_build_sharded_graph(cat: Catalog, encoder: str | None = None, k: int = 10, *, rebuild: bool = False,
                                ray_workers: int = 0, **knn_options: Any) -> tuple[Any, KnnGraph]:
    """The project's kNN graph computed shard by shard and kept as memory-mapped ``.npy`` files.

    The out-of-core twin of :func:`load_or_build_graph` (what ``curate index`` / ``curate audit`` use above the
    out-of-core threshold, :func:`curate.engine.inputs.use_out_of_core`): no step holds the ``n x dim`` matrix.  Files live
    in ``<project>/indexes/<encoder-slug>/knn-ooc/`` (``knn_indices.npy``, ``knn_similarities.npy``,
    ``sample_ids.npy``, ``knn_graph.json``) and are keyed by the shards' checksums
    (:meth:`engine.shards.ShardedEmbeddings.content_key`): same shards -> loaded (each file's SHA-256 verified);
    anything changed, a larger ``k``, a corrupt file -> rebuilt into a fresh folder that replaces the old one only
    when complete, so a killed build leaves the previous graph (or none) and the rerun starts over.

    Returns
    -------
    (ShardedEmbeddings, KnnGraph)
        Graph rows and neighbour positions are global shard rows (``shards.sample_ids()`` maps them to ids); the
        graph's arrays are read-only memory maps.
    """
    import shutil
    import uuid

    from curate.engine.shards import ShardedEmbeddings
    from curate.indexes.sharded import sharded_knn_graph
    from curate.indexes.store import load_mapped_graph, read_graph_meta, seal_mapped_graph

    shards = ShardedEmbeddings.open(cat, encoder, verify=True)
    folder = index_dir(cat.root, shards.encoder) / OOC_DIR
    key = shards.content_key()
    reason = "rebuilt: requested" if rebuild else "built"
    if not rebuild:
        try:
            meta = read_graph_meta(folder)  # cheap checks first, checksums only for a graph that would be used
            if meta is not None and (meta.content_key != key or meta.n != len(shards)):
                reason = "rebuilt: embeddings changed"
            elif meta is not None and meta.k < k:
                reason = f"rebuilt: cached graph has k={meta.k} < {k}"
            elif meta is not None and (loaded := load_mapped_graph(folder)) is not None:
                arrays, meta = loaded
                g = KnnGraph(arrays["knn_indices"], arrays["knn_similarities"], meta.method, meta.recall, cache="hit")
                return shards, g.truncate(k)
        except CorruptIndexError as exc:
            log.warning("out-of-core kNN graph cache is unusable, rebuilding: %s", exc)
            reason = f"rebuilt: corrupt cache ({exc})"
    tmp = folder.with_name(f".{OOC_DIR}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        t0 = time.perf_counter()
        g = sharded_knn_graph(shards, k, out_dir=tmp, ray_workers=ray_workers, **knn_options)
        method, recall = g.method, None if g.recall is None else float(g.recall)
        del g  # drop the writable maps (flushed by sharded_knn_graph)
        np.save(tmp / "sample_ids.npy", shards.sample_ids())
        seal_mapped_graph(tmp, GraphMeta(encoder=shards.encoder, n=len(shards), k=k, method=method, recall=recall,
                                         build_seconds=round(time.perf_counter() - t0, 3),
                                         catalog_version=cat.version_token(), content_key=key))
        old = folder.with_name(f".{OOC_DIR}.old.{uuid.uuid4().hex[:8]}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    arrays = {n_: np.load(folder / f"{n_}.npy", mmap_mode="r", allow_pickle=False)
              for n_ in ("knn_indices", "knn_similarities")}
    return shards, KnnGraph(arrays["knn_indices"], arrays["knn_similarities"], method, recall, cache=reason)

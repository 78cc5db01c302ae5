"""Index files in the workspace: where they live, how they are written, and how we know they are sound.

Layout (one folder per encoder, next to the embeddings it was built from)::

    <project>/indexes/<encoder-slug>/
        index.faiss      the similarity-search index (FAISS binary format)
        index.json       its metadata record (:class:`IndexMeta`)
        knn_graph.npz    the all-points kNN graph (indices, similarities, sample_ids)
        knn_graph.json   its metadata record (:class:`GraphMeta`)

Every data file is written to a temporary name in the same folder and moved into place with ``os.replace``
(atomic on POSIX), *then* its metadata is written the same way.  The metadata carries the SHA-256 of the data
file, so a torn write, a truncated copy or bit rot is detected at load time (:class:`CorruptIndexError`) and the
caller rebuilds instead of silently searching garbage.

The metadata also carries a *content key* of the embeddings the file was built from (:func:`content_key`):
a digest over the sample ids and vector bytes.  A file whose key differs from the current embeddings is stale.
Because the key is a streaming hash over rows in sample-id order, the key of the *old* rows can be recomputed
from the new embeddings (:func:`content_key` with ``rows=``), which tells whether an incremental update (add the
new rows only) is sound.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from curate.engine.catalog import fault_pause, sha256_file, verified_sha256

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
INDEX_META = "index.json"
GRAPH_FILE = "knn_graph.npz"
GRAPH_META = "knn_graph.json"

_HASH_BLOCK_ROWS = 65_536


class CorruptIndexError(Exception):
    """An index or graph file does not match its metadata (checksum, shape) or cannot be parsed."""


# --------------------------------------------------------------------------------------------------- paths
def index_dir(project_root: str | os.PathLike, encoder: str) -> Path:
    """``<project>/indexes/<encoder-slug>/`` (created if missing), named like the embeddings folder."""
    from curate.engine.embed import encoder_slug

    path = Path(project_root) / "indexes" / encoder_slug(encoder)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------- digests
file_sha256 = sha256_file  # SHA-256 hex digest of a file (the one implementation is in engine.catalog)


def content_key(sample_ids: np.ndarray, vectors: np.ndarray, rows: np.ndarray | None = None) -> str:
    """Digest of an embedding set's content: which samples, and their exact vector bytes.

    Parameters
    ----------
    sample_ids : int array [n]
        Sample ids, in the order of ``vectors`` (ascending for an ``EmbeddingSet``).
    vectors : float array [n, d]
        The embedding rows (hashed as little-endian float32).
    rows : int array, optional
        Hash only these row positions (in this order).  ``content_key(ids, X, rows=r)`` equals
        ``content_key(ids[r], X[r])`` without materialising the subset, which is how an index built on an
        earlier, smaller embedding set is checked against today's rows.

    Returns
    -------
    str
        ``"sha256:<hex>"``.
    """
    ids = np.asarray(sample_ids, dtype="<i8")
    X = np.asarray(vectors)
    if X.ndim != 2 or len(ids) != len(X):
        raise ValueError(f"sample_ids ({ids.shape}) and vectors ({X.shape}) do not describe the same rows")
    sel = np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)
    h = hashlib.sha256()
    h.update(f"curate-embeddings:v1:n={len(sel)}:d={X.shape[1]}:float32\n".encode())
    h.update(np.ascontiguousarray(ids[sel]).tobytes())
    for start in range(0, len(sel), _HASH_BLOCK_ROWS):
        part = sel[start:start + _HASH_BLOCK_ROWS]
        # contiguous runs (the common, un-subsetted case) are hashed without a gather copy
        block = X[part[0]:part[-1] + 1] if len(part) and part[-1] - part[0] + 1 == len(part) else X[part]
        h.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------------------------------- metadata
def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class IndexMeta:
    """Metadata record of a saved similarity-search index (``index.json``).

    Attributes
    ----------
    encoder : name of the encoder whose embeddings are indexed.
    n_vectors : number of vectors in the index.
    dim : vector length.
    factory : FAISS ``index_factory`` string of the index (including the ``IDMap,`` wrapper).
    requested_factory : what the user asked for (``"auto"`` or an expert factory string).
    search_params : FAISS ``ParameterSpace`` string applied for searching (``"nprobe=16"``, ``""`` for exact).
    recall_at_10 : recall@10 against exact search measured at build time on ``recall_queries`` queries
        (1.0 for exact indexes).
    recall_queries : number of queries the recall was measured on (0 for exact indexes).
    target_recall : recall the search parameters were tuned to reach.
    build_seconds : wall time of the (last) build or update.
    built_at : ISO time of the (last) build or update.
    catalog_version : ``Catalog.version_token()`` when built.
    content_key : :func:`content_key` of the embeddings indexed.
    sha256 : SHA-256 of ``index.faiss``.
    incremental_adds : how many incremental updates were applied since the last full build.
    faiss_version, format : provenance.
    """

    encoder: str
    n_vectors: int
    dim: int
    factory: str
    requested_factory: str
    search_params: str
    recall_at_10: float | None
    recall_queries: int
    target_recall: float
    build_seconds: float
    catalog_version: str
    content_key: str
    sha256: str = ""
    built_at: str = field(default_factory=_now_iso)
    incremental_adds: int = 0
    faiss_version: str = ""
    format: int = FORMAT_VERSION


@dataclass
class GraphMeta:
    """Metadata record of a cached all-points kNN graph (``knn_graph.json``).

    Attributes
    ----------
    encoder : name of the encoder whose embeddings the graph was built on.
    n : number of rows (samples).
    k : neighbours per row.
    method : how it was computed (``"exact:faiss-flat"``, ``"approx:IVF2048,Flat nprobe=8"``, ...).
    recall : measured recall@k against exact search (1.0 for exact graphs).
    build_seconds, built_at, catalog_version, content_key, sha256, format : as in :class:`IndexMeta`.
    incremental_adds : how many incremental updates were applied since the last full build.
    """

    encoder: str
    n: int
    k: int
    method: str
    recall: float | None
    build_seconds: float
    catalog_version: str
    content_key: str
    sha256: str = ""
    built_at: str = field(default_factory=_now_iso)
    incremental_adds: int = 0
    format: int = FORMAT_VERSION


def _write_json_atomic(path: Path, record: dict) -> None:
    _write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True)))


def _write_atomic(path: Path, write: Callable[[str], Any]) -> str:
    """Write ``path`` through ``write(tmp_name)`` and an atomic rename; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name in the same folder (same file system, so the rename is atomic); created by ``write`` with the
    # process umask, unlike mkstemp's 0600
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        write(tmp)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return digest


def _read_meta(path: Path, cls: type) -> Any:
    """Parse a metadata JSON file into ``cls``; a missing file returns None, a broken one raises."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        names = {f.name for f in fields(cls)}
        meta = cls(**{k: v for k, v in record.items() if k in names})
    except (ValueError, TypeError) as exc:
        raise CorruptIndexError(f"{path}: unreadable metadata ({exc})") from exc
    if meta.format != FORMAT_VERSION:
        raise CorruptIndexError(f"{path}: format {meta.format}, this curate reads format {FORMAT_VERSION}")
    return meta


def _verified(directory: str | os.PathLike, meta_name: str, cls: type, file_name: str) -> tuple[Any, Path] | None:
    """``(metadata, data file path)`` once the file's SHA-256 matches its metadata; None when nothing is saved."""
    meta = _read_meta(Path(directory) / meta_name, cls)
    if meta is None:
        return None
    path = Path(directory) / file_name
    _check_file(path, meta.sha256)
    return meta, path


def _check_file(path: Path, expected_sha256: str) -> None:
    if not path.exists():
        raise CorruptIndexError(f"{path} is missing but its metadata exists")
    actual = verified_sha256(path)
    if actual != expected_sha256:
        raise CorruptIndexError(f"{path}: checksum mismatch (file {actual[:12]}..., "
                                f"metadata {expected_sha256[:12]}...)")


# --------------------------------------------------------------------------------------------------- faiss index
def save_index(directory: str | os.PathLike, index: Any, meta: IndexMeta) -> IndexMeta:
    """Write ``index`` and its metadata into ``directory``; fills ``meta.sha256`` and returns it."""
    import faiss

    directory = Path(directory)
    # Remove the old record first: a crash between the two writes must leave "no metadata" (rebuild), never
    # old metadata next to a new file.
    with contextlib.suppress(OSError):
        (directory / INDEX_META).unlink()
    meta.sha256 = _write_atomic(directory / INDEX_FILE, lambda tmp: faiss.write_index(index, tmp))
    fault_pause("CURATE_TEST_INDEX_PAUSE", f"{directory / INDEX_FILE} written, metadata not yet")
    meta.faiss_version = faiss.__version__
    _write_json_atomic(directory / INDEX_META, asdict(meta))
    return meta


def read_index_meta(directory: str | os.PathLike) -> IndexMeta | None:
    """The metadata record of the saved index, or None when there is none."""
    return _read_meta(Path(directory) / INDEX_META, IndexMeta)


def load_index(directory: str | os.PathLike) -> tuple[Any, IndexMeta] | None:
    """Load the saved index after verifying its checksum.

    Returns
    -------
    (faiss.Index, IndexMeta) or None
        None when no index was saved in ``directory``.

    Raises
    ------
    CorruptIndexError
        The metadata is unreadable, the file is missing, its SHA-256 differs from the metadata, or FAISS cannot
        parse it.
    """
    import faiss

    found = _verified(directory, INDEX_META, IndexMeta, INDEX_FILE)
    if found is None:
        return None
    meta, path = found
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise CorruptIndexError(f"{path}: FAISS cannot read it ({str(exc).splitlines()[0]})") from exc
    if index.ntotal != meta.n_vectors or index.d != meta.dim:
        raise CorruptIndexError(f"{path}: holds {index.ntotal}x{index.d} vectors, metadata says "
                                f"{meta.n_vectors}x{meta.dim}")
    return index, meta


# --------------------------------------------------------------------------------------------------- kNN graph
def save_graph(directory: str | os.PathLike, indices: np.ndarray, similarities: np.ndarray,
               sample_ids: np.ndarray, meta: GraphMeta) -> GraphMeta:
    """Write a kNN graph (``.npz``, uncompressed) and its metadata; fills ``meta.sha256`` and returns it."""
    directory = Path(directory)
    with contextlib.suppress(OSError):
        (directory / GRAPH_META).unlink()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, indices=np.asarray(indices, np.int64), similarities=np.asarray(similarities, np.float32),
                     sample_ids=np.asarray(sample_ids, np.int64))

    meta.sha256 = _write_atomic(directory / GRAPH_FILE, write)
    fault_pause("CURATE_TEST_GRAPH_PAUSE", f"{directory / GRAPH_FILE} written, metadata not yet")
    _write_json_atomic(directory / GRAPH_META, asdict(meta))
    return meta


def read_graph_meta(directory: str | os.PathLike) -> GraphMeta | None:
    """The metadata record of the cached graph, or None when there is none."""
    return _read_meta(Path(directory) / GRAPH_META, GraphMeta)


def load_graph(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], GraphMeta] | None:
    """Load a cached kNN graph after verifying its checksum and shapes.

    Returns
    -------
    (arrays, GraphMeta) or None
        ``arrays`` has ``indices`` [n, k] int64, ``similarities`` [n, k] float32 and ``sample_ids`` [n] int64;
        None when no graph was cached in ``directory``.

    Raises
    ------
    CorruptIndexError
        Unreadable metadata, checksum mismatch, or arrays that disagree with the metadata.
    """
    found = _verified(directory, GRAPH_META, GraphMeta, GRAPH_FILE)
    if found is None:
        return None
    meta, path = found
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("indices", "similarities", "sample_ids")}
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptIndexError(f"{path}: cannot read the graph arrays ({exc})") from exc
    _check_graph_shapes(path, meta, arrays["indices"], arrays["similarities"], arrays["sample_ids"])
    return arrays, meta


def _check_graph_shapes(where: Path, meta: GraphMeta, indices: np.ndarray, similarities: np.ndarray,
                        sample_ids: np.ndarray) -> None:
    if indices.shape != (meta.n, meta.k) or similarities.shape != (meta.n, meta.k) or sample_ids.shape != (meta.n,):
        raise CorruptIndexError(f"{where}: array shapes do not match the metadata (n={meta.n}, k={meta.k})")


# --------------------------------------------------------------------------------------------------- mapped graph
MAPPED_GRAPH_ARRAYS = ("knn_indices", "knn_similarities", "sample_ids")


def seal_mapped_graph(directory: str | os.PathLike, meta: GraphMeta) -> GraphMeta:
    """Record the checksums of a memory-mappable graph written into ``directory`` (``knn_indices.npy``,
    ``knn_similarities.npy``, ``sample_ids.npy``) in ``meta.sha256`` and write its metadata (``knn_graph.json``)."""
    directory = Path(directory)
    meta.sha256 = ";".join(f"{name}={sha256_file(directory / f'{name}.npy')}" for name in MAPPED_GRAPH_ARRAYS)
    _write_json_atomic(directory / GRAPH_META, asdict(meta))
    return meta


def load_mapped_graph(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], GraphMeta] | None:
    """The arrays of a graph sealed by :func:`seal_mapped_graph`, as read-only memory maps, after verifying every
    file's SHA-256 and shape; None when ``directory`` holds none.

    Raises
    ------
    CorruptIndexError
        Unreadable metadata, a missing or changed file, or shapes that disagree with the metadata.
    """
    directory = Path(directory)
    meta = read_graph_meta(directory)
    if meta is None:
        return None
    try:
        sums = dict(item.split("=", 1) for item in meta.sha256.split(";"))
        arrays = {}
        for name in MAPPED_GRAPH_ARRAYS:
            _check_file(directory / f"{name}.npy", sums[name])
            arrays[name] = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    except (KeyError, ValueError, OSError) as exc:
        raise CorruptIndexError(f"{directory}: cannot read the mapped graph ({exc})") from exc
    _check_graph_shapes(directory, meta, *(arrays[name] for name in MAPPED_GRAPH_ARRAYS))
    return arrays, meta

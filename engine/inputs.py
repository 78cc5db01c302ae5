"""What an analysis reads: one embeddings interface for memory and disk, the kNN graph, and the one size switch.

Every analysis reads its vectors through :class:`Embeddings`, a small interface that two classes implement:

* :class:`curate.engine.embed.EmbeddingSet` — every vector in one float32 array (the one-block case);
* :class:`curate.engine.shards.ShardedEmbeddings` — memory-mapped shards, one block in memory at a time.

An analysis's core is written once over ``ids() / dim / iter_blocks / take / sample``; a part that truly needs
every vector at once (a cross-validated probe, HDBSCAN, UMAP, the SemDeDup curve) checks ``in_memory`` and, out of
core, records what it left out.  The kNN graph follows the same rule: :class:`curate.indexes.knn.KnnGraph` in
memory, a memory-mapped ``.npy`` pair out of core, both read through ``indices`` / ``similarities`` row blocks.

Which of the two a run uses is decided in exactly one place, :func:`use_out_of_core`, called by
:meth:`Inputs.open`.  Everything that needs the decision (the audit, each ``curate audit`` command, ``curate
index``, ``curate search``) opens an :class:`Inputs` and reads ``inputs.out_of_core``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

from curate.engine.catalog import Catalog, CurateError

OUT_OF_CORE_MIN_N = 2_000_000
OUT_OF_CORE_MAX_RAM_FRACTION = 0.25


@runtime_checkable
class Embeddings(Protocol):
    """An encoder's unit-norm float32 vectors, in memory or on disk.

    Global row ``r`` belongs to sample ``ids()[r]``; every method returns float32 unit rows.
    """

    encoder: str

    @property
    def dim(self) -> int: ...

    @property
    def in_memory(self) -> bool:
        """True when every vector is already in one array (``take`` and ``sample`` cost nothing)."""
        ...

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """int64 sample ids in global row order."""
        ...

    def iter_blocks(self, block_rows: int = 65_536) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first global row, ids, vectors)`` blocks covering every row once, in row order."""
        ...

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at global row ``positions`` (any order), as a ``[len(positions), dim]`` array."""
        ...

    def sample(self, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample without replacement: ``(ascending global rows, their vectors)``; all rows when
        ``size >= len``."""
        ...


def _total_ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def use_out_of_core(n: int, dim: int, out_of_core: bool | None = None) -> bool:
    """The size switch: whether ``n`` vectors of ``dim`` floats are read shard by shard instead of loaded.

    ``out_of_core`` True/False (the CLI's ``--out-of-core`` / ``--in-memory``) decides; None ("auto") reads
    ``CURATE_OUT_OF_CORE`` (``1``/``0``) and otherwise goes out of core when there are more than
    ``CURATE_OUT_OF_CORE_MIN_N`` (default 2,000,000) vectors or their float32 matrix would exceed a quarter of the
    machine's memory.
    """
    if out_of_core is not None:
        return bool(out_of_core)
    env = os.environ.get("CURATE_OUT_OF_CORE", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    try:
        min_n = int(os.environ.get("CURATE_OUT_OF_CORE_MIN_N", OUT_OF_CORE_MIN_N))
    except ValueError:
        raise CurateError("CURATE_OUT_OF_CORE_MIN_N must be an integer number of samples, e.g. 2000000") from None
    return n > min_n or n * dim * 4 > OUT_OF_CORE_MAX_RAM_FRACTION * _total_ram()


@dataclass
class Inputs:
    """The inputs of one audit (or one ``curate audit`` command), resolved once and loaded lazily.

    Build it with :meth:`open`.  ``encoder`` is the stored encoder the analyses read (None when the project has no
    embeddings yet; :attr:`embeddings` then raises the "run curate embed" error), ``out_of_core`` the size switch,
    ``k`` the kNN-graph degree.  The embeddings and each graph are loaded on first use and shared by every analysis
    that runs on the same :class:`Inputs`.
    """

    cat: Catalog
    encoder: str | None
    out_of_core: bool
    n: int = 0
    dim: int = 0
    k: int = 10
    progress: Any = None
    _cache: dict = field(default_factory=dict, repr=False)  # "emb" -> Embeddings; ("graph", k) -> graph; "labels"

    @classmethod
    def open(cls, cat: Catalog, encoder: str | None = None, out_of_core: bool | None = None, k: int = 10,
             progress: Any = None) -> "Inputs":
        """Resolve the encoder (None = the most recent embedding set) and decide the size switch, reading no vector.

        A project without embeddings opens too (``encoder`` None), so analyses that read only files or labels
        run; asking such inputs for embeddings raises the error that says to run ``curate embed``.
        """
        from curate.engine.embed import _resolve_stored_encoder

        try:
            name = _resolve_stored_encoder(cat, encoder)
        except CurateError:
            if encoder not in (None, "auto"):
                raise
            return cls(cat, None, bool(out_of_core), k=k, progress=progress)
        dim = int(cat.scalar("SELECT dim FROM embedding_sets WHERE encoder = ?", [name]))
        n = int(cat.scalar("""SELECT count(*) FROM embedded e JOIN samples s ON s.id = e.sample_id
                              WHERE e.encoder = ?""", [name]))
        return cls(cat, name, use_out_of_core(n, dim, out_of_core), n=n, dim=dim, k=k, progress=progress)

    def with_progress(self, progress: Any) -> "Inputs":
        """The same inputs (sharing what is loaded) reporting to another progress callback."""
        other = Inputs(self.cat, self.encoder, self.out_of_core, self.n, self.dim, self.k, progress)
        other._cache = self._cache
        return other

    def _need_encoder(self) -> str:
        if self.encoder is None:
            from curate.engine.embed import _resolve_stored_encoder

            _resolve_stored_encoder(self.cat, None)  # raises the "no embeddings: run curate embed" error
            raise CurateError("this project has no embeddings; run `curate embed`")  # pragma: no cover
        return self.encoder

    @property
    def embeddings(self) -> Embeddings:
        """The vectors: an :class:`~curate.engine.embed.EmbeddingSet` in memory, else the memory-mapped shards."""
        if "emb" not in self._cache:
            name = self._need_encoder()
            if self.out_of_core:
                from curate.engine.shards import ShardedEmbeddings

                self._cache["emb"] = ShardedEmbeddings.open(self.cat, name)
            else:
                from curate.engine.embed import load_embeddings

                self._cache["emb"] = load_embeddings(self.cat, name)
        return self._cache["emb"]

    def graph(self, k: int | None = None) -> Any:
        """The cached kNN graph of degree ``k`` (default ``self.k``) over :attr:`embeddings`, rows in its row order.

        In memory a :class:`~curate.indexes.knn.KnnGraph`; out of core the memory-mapped sharded graph (same
        ``indices`` / ``similarities`` attributes, read by row blocks).
        """
        k = int(self.k if k is None else k)
        key = ("graph", k)
        if key not in self._cache:
            # a graph of more neighbours already in hand holds this one (what the on-disk cache also does)
            wider = [key2[1] for key2 in self._cache if isinstance(key2, tuple) and key2[0] == "graph"
                     and key2[1] > k and hasattr(self._cache[key2], "truncate")]
            if wider:
                self._cache[key] = self._cache[("graph", min(wider))].truncate(k)
        if key not in self._cache:
            name = self._need_encoder()
            from curate.engine.progress import step

            if self.out_of_core:
                from curate.indexes.graph import load_or_build_sharded_graph

                with step(self.progress, "sharded kNN graph"):
                    shards, g = load_or_build_sharded_graph(self.cat, name, k=k)
                self._cache.setdefault("emb", shards)
            else:
                from curate.indexes.store import index_dir
                from curate.indexes.graph import cached_graph

                es = self.embeddings  # loaded once, shared with the analyses
                with step(self.progress, "kNN graph"):
                    g = cached_graph(index_dir(self.cat.root, es.encoder), es.encoder, es.sample_ids, es.vectors, k,
                                     catalog_version=self.cat.version_token(), progress=self.progress)
            self._cache[key] = g
        return self._cache[key]

    def sample_ids(self) -> np.ndarray:
        """int64 ids of the embedded samples, in the embeddings' row order."""
        return np.asarray(self.embeddings.ids(), np.int64)

    def label_codes(self) -> tuple[list[str], np.ndarray]:
        """The current labels (live relabels applied) of the embedded samples, in row order, as ``(sorted class
        names, int64 codes)`` with -1 = unlabeled (:meth:`Catalog.label_codes`).  Read once and shared by every
        analysis on these inputs: no analysis changes labels, only the decisions made after the audit do."""
        if "labels" not in self._cache:
            self._cache["labels"] = self.cat.label_codes(self.sample_ids())
        return self._cache["labels"]

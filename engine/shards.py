"""Out-of-core access to an encoder's embedding shards: one memory-mapped shard at a time, never the whole matrix.

:func:`engine.embed.load_embeddings` gathers every vector into one float32 array — right for a laptop-sized
project, impossible at 10^8 images.  :class:`ShardedEmbeddings` describes the same vectors (the shards recorded in
``embedding_shards``, the live rows recorded in ``embedded``) and hands them out shard by shard or block by block,
each block converted exactly as ``load_embeddings`` converts it (float16 -> float32 -> unit rows), so results
computed over shards equal results computed over the loaded matrix.

The object is small and picklable (paths, row counts, the live-row lists of shards that have stale rows), so it
can be shipped to Ray workers, which open the shard files themselves (a shared filesystem is assumed, as for the
catalog's image paths).

Global row order is shard order, then row order inside a shard.  The embedding pipeline writes shards in
sample-id order, so this normally equals the ascending ``sample_ids`` order of ``load_embeddings``;
:meth:`ShardedEmbeddings.sample_ids` gives the ids in global row order either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from curate.engine.catalog import Catalog, CurateError, verified_sha256


@dataclass(frozen=True)
class Shard:
    """One shard file pair and which of its rows are live.

    Attributes
    ----------
    name : ``shard-000123``.
    path, ids_path : the ``.npy`` vectors (float16 [n_file, dim]) and the row-aligned int64 sample ids.
    n_file : rows in the file.
    sha256 : checksum recorded in the catalog.
    rows : live row positions (ascending) when some rows were superseded by a later shard or belong to deleted
        samples; None when every row is live.
    """

    name: str
    path: Path
    ids_path: Path
    n_file: int
    sha256: str
    rows: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Live rows."""
        return self.n_file if self.rows is None else int(len(self.rows))


def _unit(block: np.ndarray) -> np.ndarray:
    """float16 rows -> float32 unit rows, exactly as ``engine.embed.load_embeddings`` converts them."""
    out = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1e-12)
    return out


@dataclass
class ShardedEmbeddings:
    """An encoder's embeddings as a list of memory-mapped shards.

    Build it with :meth:`open` (from the catalog).  Memory use of every method is bounded by one shard (or one
    block), except :meth:`sample_ids` (8 bytes per vector) and :meth:`take` (the rows asked for).

    Attributes
    ----------
    encoder : str
    dim : int
    shards : list of :class:`Shard`, in shard order.
    """

    encoder: str
    dim: int
    shards: list[Shard]
    _offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._offsets = np.concatenate([[0], np.cumsum([s.n for s in self.shards], dtype=np.int64)]).astype(np.int64)
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:  # memory maps are reopened by whoever unpickles (a Ray worker)
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def open(cls, cat: Catalog, encoder: str | None = None, verify: bool = True) -> "ShardedEmbeddings":
        """Describe an encoder's stored shards (None = the most recently created embedding set).

        Parameters
        ----------
        cat : the project catalog.
        encoder : encoder name.
        verify : check every shard's SHA-256 against the catalog (reads each file once).

        Raises
        ------
        CurateError : no embeddings, or a missing/corrupt shard (the message names the file and the fix).
        """
        from curate.engine.embed import _resolve_stored_encoder, embeddings_dir, recompute_hint

        name = _resolve_stored_encoder(cat, encoder)
        dim = int(cat.scalar("SELECT dim FROM embedding_sets WHERE encoder = ?", [name]))
        recorded = cat.query("SELECT shard, n, sha256 FROM embedding_shards WHERE encoder = ? ORDER BY shard", [name])
        # live rows per shard: a row is live when the catalog maps a still-existing sample to it
        live = cat.query(
            """SELECT e.shard, count(*) FROM embedded e JOIN samples s ON s.id = e.sample_id
               WHERE e.encoder = ? GROUP BY e.shard""", [name])
        live_n = dict(live)
        folder = embeddings_dir(cat, name)
        shards = []
        for shard, n, sha in recorded:
            n_live = int(live_n.get(shard, 0))
            if n_live == 0:
                continue
            path = folder / f"{shard}.npy"
            if not path.is_file():
                raise CurateError(f"embedding shard {path} is missing; {recompute_hint(name)}")
            if verify and verified_sha256(path) != sha:
                raise CurateError(f"embedding shard {path} is corrupt (checksum mismatch); {recompute_hint(name)}")
            rows = None
            if n_live != int(n):
                df = cat.query_df(
                    """SELECT e.row FROM embedded e JOIN samples s ON s.id = e.sample_id
                       WHERE e.encoder = ? AND e.shard = ? ORDER BY e.row""", [name, shard])
                rows = df["row"].to_numpy(np.int64)
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            if arr.ndim != 2 or arr.shape != (int(n), dim):
                raise CurateError(f"embedding shard {path} has shape {arr.shape}, expected ({int(n)}, {dim}); {recompute_hint(name)}")
            shards.append(Shard(shard, path, folder / f"{shard}.ids.npy", int(n), str(sha), rows))
        if not shards:
            raise CurateError(f"no live embeddings for encoder {name} in {cat.root}; run `curate embed`")
        return cls(name, dim, shards)

    # ------------------------------------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def offsets(self) -> np.ndarray:
        """Global row position of each shard's first live row, plus the total at the end."""
        return self._offsets

    def content_key(self) -> str:
        """SHA-256 over the shards' recorded checksums and live-row lists: changes whenever any vector does."""
        h = hashlib.sha256(f"{self.encoder}|{self.dim}|{len(self)}".encode())
        for s in self.shards:
            h.update(f"|{s.name}:{s.sha256}:{s.n_file}".encode())
            if s.rows is not None:
                h.update(np.ascontiguousarray(s.rows, np.int64).tobytes())
        return h.hexdigest()

    @property
    def nbytes_float32(self) -> int:
        """What the whole matrix would take as float32 (what this class avoids holding)."""
        return len(self) * self.dim * 4

    # ------------------------------------------------------------------------------------------- reading
    def shard_ids(self, i: int) -> np.ndarray:
        """Sample ids of shard ``i``'s live rows."""
        s = self.shards[i]
        ids = np.load(s.ids_path, allow_pickle=False)
        return ids if s.rows is None else ids[s.rows]

    def _mmap(self, i: int) -> np.ndarray:
        if i not in self._maps:
            self._maps[i] = np.load(self.shards[i].path, mmap_mode="r", allow_pickle=False)
        return self._maps[i]

    def shard_vectors(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 unit rows ``start:stop`` of shard ``i``'s live rows."""
        s = self.shards[i]
        stop = s.n if stop is None else min(stop, s.n)
        arr = self._mmap(i)
        block = arr[start:stop] if s.rows is None else arr[s.rows[start:stop]]
        return _unit(block)

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(global start row, sample ids, float32 vectors)`` per shard."""
        for i in range(len(self.shards)):
            yield int(self._offsets[i]), self.shard_ids(i), self.shard_vectors(i)

    def iter_blocks(self, block_rows: int = 65_536) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(global start row, sample ids, float32 vectors)`` in blocks of at most ``block_rows`` (within shards)."""
        for i, s in enumerate(self.shards):
            ids = self.shard_ids(i)
            for a in range(0, s.n, block_rows):
                b = min(s.n, a + block_rows)
                yield int(self._offsets[i]) + a, ids[a:b], self.shard_vectors(i, a, b)

    in_memory = False  # the :class:`curate.engine.inputs.Embeddings` interface, read shard by shard

    def ids(self) -> np.ndarray:
        """All sample ids in global row order (the :class:`~curate.engine.inputs.Embeddings` name)."""
        return self.sample_ids()

    def sample_ids(self) -> np.ndarray:
        """All sample ids in global row order (int64, 8 bytes per vector)."""
        return np.concatenate([self.shard_ids(i) for i in range(len(self.shards))])

    def take(self, positions: np.ndarray) -> np.ndarray:
        """float32 unit rows at global ``positions`` (any order), reading only the shards they fall in."""
        pos = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(pos), self.dim), np.float32)
        if not len(pos):
            return out
        if pos.min() < 0 or pos.max() >= len(self):
            raise IndexError(f"row positions must be in [0, {len(self)})")
        which = np.searchsorted(self._offsets, pos, side="right") - 1
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(self.shards) + 1))
        for i in range(len(self.shards)):
            sel = order[bounds[i]:bounds[i + 1]]
            if not len(sel):
                continue
            local = pos[sel] - self._offsets[i]
            s = self.shards[i]
            file_rows = local if s.rows is None else s.rows[local]
            srt = np.argsort(file_rows, kind="stable")  # sorted reads are sequential on the memory map
            block = np.empty((len(sel), self.dim), np.float16)
            block[srt] = self._mmap(i)[file_rows[srt]]
            out[sel] = _unit(block)
        return out

    def sample(self, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of rows without replacement: ``(sorted global positions, float32 vectors)``."""
        n = len(self)
        size = int(min(max(size, 0), n))
        pos = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else np.arange(n)
        return pos, self.take(pos)


# ------------------------------------------------------------------------------------------- counts


def embedded_count(cat: Catalog, encoder: str | None = None) -> tuple[str, int, int]:
    """``(encoder, live embedded rows, dim)`` from the catalog alone (no vector is read)."""
    from curate.engine.embed import _resolve_stored_encoder

    name = _resolve_stored_encoder(cat, encoder)
    dim = int(cat.scalar("SELECT dim FROM embedding_sets WHERE encoder = ?", [name]))
    n = int(cat.scalar("""SELECT count(*) FROM embedded e JOIN samples s ON s.id = e.sample_id
                          WHERE e.encoder = ?""", [name]))
    return name, n, dim


class ShardRows:
    """An :class:`engine.embed.EmbeddingSet`-shaped view of shards for code that looks up single rows.

    ``sample_ids`` are ascending (as in ``EmbeddingSet``), ``rows(ids)`` gives positions in that order, and
    ``vectors[pos]`` reads the vector(s) at those positions from the shards — nothing else is loaded.
    """

    def __init__(self, shards: ShardedEmbeddings):
        self.encoder = shards.encoder
        self._shards = shards
        ids = shards.sample_ids()
        self._order = np.argsort(ids, kind="stable")
        self.sample_ids = ids[self._order]
        self.vectors = self

    def __len__(self) -> int:
        return int(len(self.sample_ids))

    @property
    def dim(self) -> int:
        return self._shards.dim

    def rows(self, sample_ids) -> np.ndarray:
        ids = np.asarray(sample_ids, dtype=np.int64)
        if not len(self.sample_ids):
            return np.full(len(ids), -1, np.int64)
        pos = np.clip(np.searchsorted(self.sample_ids, ids), 0, len(self.sample_ids) - 1)
        return np.where(self.sample_ids[pos] == ids, pos, -1)

    def __getitem__(self, pos):
        rows = np.atleast_1d(np.asarray(pos, dtype=np.int64))
        out = self._shards.take(self._order[rows])
        return out[0] if np.ndim(pos) == 0 else out


# ------------------------------------------------------------------------------------------- Parquet parts
def write_parquet_parts(out_dir: str | Path, n: int, block_rows: int, frame_of) -> list[Path]:
    """Write ``frame_of(start, stop)`` for each block of ``block_rows`` of ``n`` rows as ``part-NNNNN.parquet`` in
    ``out_dir`` (replacing old parts); returns the paths.

    For per-sample results too large for one catalog table: expose the parts to DuckDB with
    :meth:`curate.engine.catalog.Catalog.register_parquet_view`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):
        old.unlink()
    paths = []
    for b, s in enumerate(range(0, n, block_rows)):
        path = out / f"part-{b:05d}.parquet"
        frame_of(s, min(n, s + block_rows)).to_parquet(path, index=False)
        paths.append(path)
    return paths

"""The embedding pipeline: catalog samples -> L2-normalised vectors in checksummed shards.

Storage (one folder per encoder)::

    <project>/embeddings/<encoder-slug>/shard-000000.npy        float16 [n, dim], rows L2-normalised
    <project>/embeddings/<encoder-slug>/shard-000000.ids.npy    int64   [n]      sample ids, row-aligned

A shard is written to a temporary file and moved into place with ``os.replace``; only then is it recorded in
the catalog — ``embedding_shards`` (with its SHA-256) and one ``embedded(encoder, sample_id, shard, row)`` row
per vector — in a single transaction.  The catalog is therefore the source of truth: a process killed
mid-shard leaves either nothing or a complete, recorded shard, and a file without catalog rows (an orphan) is
deleted at the start of the next run.  A rerun embeds only the samples that have no ``embedded`` row.

Images that cannot be decoded at embed time are quarantined (stage ``embed``) with the reason; they are
retried only when their content changes (re-ingest updates the sample's hash).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from curate.engine.catalog import Catalog, CurateError, utcnow, verified_sha256

log = logging.getLogger("curate.embed")

STORE_DTYPE = "float16"
SHARD_SIZE = int(os.environ.get("CURATE_EMBED_SHARD_SIZE", 8192))
# A shard is also flushed after this many seconds, so a slow CPU run never risks more than this much work.
FLUSH_SECONDS = float(os.environ.get("CURATE_EMBED_FLUSH_SECONDS", 120))
CPU_BATCH_SIZE = 32
# test hooks: seconds to sleep after a shard is committed / after its file is in place but before the commit
_PAUSE_AFTER_COMMIT = float(os.environ.get("CURATE_TEST_EMBED_PAUSE", 0))
_PAUSE_BEFORE_COMMIT = float(os.environ.get("CURATE_TEST_EMBED_PAUSE_PRECOMMIT", 0))

_SHARD_RE = re.compile(r"^shard-(\d{6,})(\.ids)?\.npy$")


# ================================================================================================ results
@dataclass
class EmbeddingSet:
    """The vectors of one encoder.

    Attributes
    ----------
    encoder : encoder name the vectors were computed with.
    sample_ids : int64 [n], ascending.
    vectors : float32 [n, dim], rows L2-normalised, row i belongs to ``sample_ids[i]``.
    """

    encoder: str
    sample_ids: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    # the :class:`curate.engine.inputs.Embeddings` interface: the in-memory set is its one-block case
    in_memory = True

    def ids(self) -> np.ndarray:
        """Sample ids in row order (ascending)."""
        return self.sample_ids

    def iter_blocks(self, block_rows: int = 65_536):
        """``(first row, ids, vectors)`` blocks of at most ``block_rows`` rows (views, no copy)."""
        for a in range(0, len(self), max(int(block_rows), 1)):
            b = min(len(self), a + int(block_rows))
            yield a, self.sample_ids[a:b], self.vectors[a:b]

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The vectors at row ``positions``."""
        return self.vectors[np.asarray(positions, dtype=np.int64)]

    def sample(self, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A seeded uniform sample of rows without replacement: ``(sorted rows, vectors)``; every row (no copy)
        when ``size >= len``."""
        n = len(self)
        size = int(min(max(size, 0), n))
        if size >= n:
            return np.arange(n), self.vectors
        pos = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        return pos, self.vectors[pos]

    def rows(self, sample_ids: Sequence[int]) -> np.ndarray:
        """Row positions of ``sample_ids`` (-1 where a sample has no vector)."""
        ids = np.asarray(sample_ids, dtype=np.int64)
        pos = np.searchsorted(self.sample_ids, ids)
        pos = np.clip(pos, 0, max(len(self) - 1, 0))
        found = (len(self) > 0) & (self.sample_ids[pos] == ids) if len(self) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)


@dataclass
class EmbedReport:
    encoder: str
    embedded: int = 0
    already_embedded: int = 0
    skipped_quarantined: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    shards: int = 0
    device: str = "cpu"
    batch_size: int = 0
    seconds: float = 0.0  # whole run, model loading included
    model_load_seconds: float = 0.0
    run_id: int | None = None
    bad_shards: list[str] = field(default_factory=list)  # corrupt/missing shards dropped and recomputed

    @property
    def images_per_s(self) -> float:
        """Throughput of the pipeline itself (decode + model + shard writes), model loading excluded."""
        busy = self.seconds - self.model_load_seconds
        return self.embedded / busy if busy > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "embedded": self.embedded,
            "already_embedded": self.already_embedded,
            "skipped_quarantined": self.skipped_quarantined,
            "quarantined": len(self.quarantined),
            "shards": self.shards,
            "device": self.device,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 3),
            "model_load_seconds": round(self.model_load_seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "bad_shards": list(self.bad_shards),
        }


# ================================================================================================ storage
def encoder_slug(encoder: str) -> str:
    """Folder name for an encoder: safe characters only, with a short hash when the name had to be changed."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", encoder).strip("-.") or "encoder"
    if slug != encoder or len(slug) > 80:
        slug = f"{slug[:80]}-{hashlib.sha1(encoder.encode()).hexdigest()[:8]}"
    return slug


def embeddings_dir(cat: Catalog, encoder: str) -> Path:
    return cat.project.embeddings_dir / encoder_slug(encoder)


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def encoder_lock(cat: Catalog, encoder: str) -> Iterator[Path]:
    """Exclusive lock on an encoder's shard folder (one writer per encoder; others fail fast)."""
    folder = embeddings_dir(cat, encoder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: the catalog transaction still serialises the records
        yield folder
        return
    fh = open(folder / ".lock", "w")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise CurateError(f"another curate process is writing embeddings for {encoder} in {folder}; "
                              "wait for it to finish, then retry") from exc
        yield folder
    finally:
        fh.close()


def _recorded_shards(cat: Catalog, encoder: str) -> pd.DataFrame:
    return cat.query_df("SELECT shard, n, sha256 FROM embedding_shards WHERE encoder = ? ORDER BY shard", [encoder])


def remove_orphan_shards(cat: Catalog, encoder: str, held_lock: bool = False) -> list[Path]:
    """Delete shard files in the encoder's folder that the catalog does not record (left by a killed run).

    Takes the encoder's lock (unless the caller ``held_lock``), so it never removes the file of a shard another
    process is about to commit.
    """
    if not embeddings_dir(cat, encoder).is_dir():
        return []
    if not held_lock:
        with encoder_lock(cat, encoder):
            return remove_orphan_shards(cat, encoder, held_lock=True)
    folder = embeddings_dir(cat, encoder)
    if not folder.is_dir():
        return []
    recorded = set(_recorded_shards(cat, encoder)["shard"])
    removed = []
    for p in folder.iterdir():
        m = _SHARD_RE.match(p.name)
        is_tmp = ".npy.tmp" in p.name
        if (m and _shard_name(int(m.group(1))) not in recorded) or is_tmp:
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d orphan shard file(s) from %s", len(removed), folder)
    return removed


def shard_problem(folder: Path, shard: str, n: int, sha256: str) -> str | None:
    """Why a recorded shard cannot be used (``"shard-000003.npy is missing"``, ``"... checksum mismatch"``), or
    None when its file is intact."""
    path, ids_path = folder / f"{shard}.npy", folder / f"{shard}.ids.npy"
    if not path.is_file():
        return f"{path.name} is missing"
    if verified_sha256(path) != sha256:
        return f"{path.name} is corrupt (checksum mismatch)"
    try:
        ids = np.load(ids_path, allow_pickle=False)
    except Exception:
        return f"{ids_path.name} is missing or unreadable"
    if ids.shape != (int(n),):
        return f"{ids_path.name} holds {ids.shape} ids, expected {int(n)}"
    return None


def drop_bad_shards(cat: Catalog, encoder: str, held_lock: bool = False) -> list[str]:
    """Forget the recorded shards of ``encoder`` whose files are missing or fail their SHA-256 (catalog rows
    first, in one transaction, then the files), so the next embed run recomputes exactly those samples.

    Returns one line per dropped shard saying what was wrong with it.
    """
    if not held_lock:
        with encoder_lock(cat, encoder):
            return drop_bad_shards(cat, encoder, held_lock=True)
    folder = embeddings_dir(cat, encoder)
    bad = {}
    for shard, n, sha in _recorded_shards(cat, encoder).itertuples(index=False):
        problem = shard_problem(folder, shard, n, sha)
        if problem:
            bad[shard] = problem
    if not bad:
        return []
    with cat.transaction() as con:
        con.execute("DELETE FROM embedded WHERE encoder = ? AND shard IN (SELECT unnest(?))", [encoder, list(bad)])
        con.execute("DELETE FROM embedding_shards WHERE encoder = ? AND shard IN (SELECT unnest(?))", [encoder, list(bad)])
    for shard in bad:
        for name in (f"{shard}.npy", f"{shard}.ids.npy"):
            (folder / name).unlink(missing_ok=True)
    log.warning("dropped %d bad shard(s) of %s: %s", len(bad), encoder, "; ".join(bad.values()))
    return [f"{folder / shard}: {problem}" for shard, problem in bad.items()]


def write_shard(
    cat: Catalog,
    encoder: str,
    sample_ids: np.ndarray,
    vectors: np.ndarray,
    description: dict,
    run_id: int | None = None,
    extra: Callable | None = None,
) -> str:
    """Write one shard file atomically, then record it (and its rows) in one catalog transaction.

    Parameters
    ----------
    cat : project catalog.
    encoder : encoder name.
    sample_ids : int64 [n] sample ids (unique, existing samples).
    vectors : [n, dim] vectors; stored L2-normalised as float16.
    description : JSON-able dict stored in ``embedding_sets.preprocessing`` when the set is created.
    run_id : run that produced the shard.
    extra : optional ``f(con)`` executed inside the same transaction (e.g. quarantine rows).

    Returns
    -------
    The shard name (``shard-000123``).  Rows replace any earlier vectors of the same samples.
    """
    ids = np.ascontiguousarray(sample_ids, dtype=np.int64)
    vec = np.asarray(vectors, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != ids.shape[0]:
        raise ValueError(f"vectors {vec.shape} do not match {ids.shape[0]} ids")
    dim = int(vec.shape[1])
    norms = np.linalg.norm(vec, axis=1, keepdims=True)
    vec16 = (vec / np.maximum(norms, 1e-12)).astype(STORE_DTYPE)

    folder = embeddings_dir(cat, encoder)
    folder.mkdir(parents=True, exist_ok=True)
    known = _recorded_shards(cat, encoder)["shard"]
    index = 1 + max((int(s.split("-")[1]) for s in known), default=-1)
    shard = _shard_name(index)
    data = _npy_bytes(vec16)
    digest = hashlib.sha256(data).hexdigest()
    _atomic_write(folder / f"{shard}.ids.npy", _npy_bytes(ids))
    _atomic_write(folder / f"{shard}.npy", data)
    if _PAUSE_BEFORE_COMMIT:
        time.sleep(_PAUSE_BEFORE_COMMIT)

    rows = pd.DataFrame({"encoder": encoder, "sample_id": ids, "shard": shard,
                         "row": np.arange(len(ids), dtype=np.int32)})
    now = utcnow()
    with cat.transaction() as con:
        have = con.execute("SELECT dim FROM embedding_sets WHERE encoder = ?", [encoder]).fetchone()
        if have is None:
            con.execute("INSERT INTO embedding_sets VALUES (?, ?, ?, ?, ?)",
                        [encoder, dim, STORE_DTYPE, json.dumps(description, default=str), now])
        elif int(have[0]) != dim:
            raise CurateError(f"encoder {encoder} already has {have[0]}-d vectors but this shard is {dim}-d; "
                              f"use another encoder name or rerun with --rebuild")
        con.execute("INSERT INTO embedding_shards VALUES (?, ?, ?, ?, ?, ?)",
                    [encoder, shard, int(len(ids)), digest, run_id, now])
        con.execute("DELETE FROM embedded WHERE encoder = ? AND sample_id IN (SELECT unnest(?))",
                    [encoder, ids.tolist()])
        con.register("_rows", rows)
        con.execute("INSERT INTO embedded (encoder, sample_id, shard, row) SELECT encoder, sample_id, shard, row FROM _rows")
        con.unregister("_rows")
        if extra is not None:
            extra(con)
    return shard


def drop_embeddings(cat: Catalog, encoder: str, held_lock: bool = False) -> None:
    """Forget an encoder's vectors: catalog rows first (one transaction), then its shard files.

    Takes the encoder's lock unless the caller ``held_lock`` (a concurrent embed of that encoder is an error).
    """
    if not held_lock:
        with encoder_lock(cat, encoder):
            return drop_embeddings(cat, encoder, held_lock=True)
    with cat.transaction() as con:
        for table in ("embedded", "embedding_shards", "embedding_sets"):
            con.execute(f"DELETE FROM {table} WHERE encoder = ?", [encoder])
    folder = embeddings_dir(cat, encoder)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name != ".lock":
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)


def embedding_sets(cat: Catalog) -> pd.DataFrame:
    """encoder, dim, dtype, created_at, vectors (count of embedded samples), newest first."""
    return cat.query_df(
        """SELECT s.encoder, s.dim, s.dtype, s.created_at,
                  (SELECT count(*) FROM embedded e JOIN samples x ON x.id = e.sample_id WHERE e.encoder = s.encoder)
                  AS vectors
           FROM embedding_sets s ORDER BY s.created_at DESC, s.encoder"""
    )


def embedding_version(cat: Catalog, encoder: str) -> str:
    """A token that changes whenever the encoder's stored vectors change (for cache invalidation downstream)."""
    n, shards, digest = cat.query(
        """SELECT (SELECT count(*) FROM embedded WHERE encoder = ?), count(*), coalesce(string_agg(sha256, ',' ORDER BY shard), '')
           FROM embedding_shards WHERE encoder = ?""",
        [encoder, encoder],
    )[0]
    return f"{n}:{shards}:{hashlib.sha1(digest.encode()).hexdigest()[:12]}"


def _resolve_stored_encoder(cat: Catalog, encoder: str | None) -> str:
    sets = embedding_sets(cat)
    sets = sets[sets["vectors"] > 0]
    if sets.empty:
        raise CurateError(f"no embeddings in project {cat.root}; run `curate embed` (or `curate import-embeddings`) first")
    if encoder is None or encoder == "auto":
        return str(sets.iloc[0]["encoder"])
    names = list(sets["encoder"])
    if encoder in names:
        return encoder
    try:
        from curate.engine.encoders import canonical_name

        canon = canonical_name(encoder)
    except CurateError:
        canon = None
    if canon in names:
        return canon
    raise CurateError(f"no embeddings for encoder {encoder!r} in {cat.root}; available: {', '.join(names)}; "
                      f"run `curate embed --encoder {encoder}` to compute them")


def recompute_hint(name: str) -> str:
    """How to get an encoder's vectors back, for error messages (imports the encoders, i.e. torch: errors only)."""
    from curate.engine.encoders import is_builtin_name

    if not is_builtin_name(name):
        return f"import them again with `curate import-embeddings FILE --encoder {name}`"
    return (f"run `curate embed --encoder {name}` to recompute the bad shard's vectors "
            f"(`curate embed --encoder {name} --rebuild` recomputes every vector)")


def load_embeddings(cat: Catalog, encoder: str | None = None, verify: bool = True) -> EmbeddingSet:
    """Load an encoder's vectors for every sample that has one.

    Parameters
    ----------
    cat : project catalog.
    encoder : encoder name; None picks the most recently created embedding set.
    verify : check every shard's SHA-256 against the catalog (a corrupt or missing shard is an error).

    Returns
    -------
    EmbeddingSet with ``sample_ids`` ascending and float32, L2-normalised ``vectors``.

    Raises
    ------
    CurateError : no embeddings, or a missing/corrupt shard (the message names the file and says to run
        ``curate embed --rebuild``).
    """
    name = _resolve_stored_encoder(cat, encoder)
    dim = int(cat.scalar("SELECT dim FROM embedding_sets WHERE encoder = ?", [name]))
    rows = cat.query_df(
        """SELECT e.sample_id, e.shard, e.row FROM embedded e JOIN samples s ON s.id = e.sample_id
           WHERE e.encoder = ? ORDER BY e.sample_id""",
        [name],
    )
    shards = _recorded_shards(cat, name).set_index("shard")
    folder = embeddings_dir(cat, name)
    ids = rows["sample_id"].to_numpy(np.int64)
    out = np.empty((len(rows), dim), dtype=np.float32)
    for shard, group in rows.groupby("shard", sort=True):
        path = folder / f"{shard}.npy"
        if shard not in shards.index:
            raise CurateError(f"catalog rows point to unrecorded shard {path}; {recompute_hint(name)}")
        if not path.is_file():
            raise CurateError(f"embedding shard {path} is missing; {recompute_hint(name)}")
        if verify and verified_sha256(path) != shards.loc[shard, "sha256"]:
            raise CurateError(f"embedding shard {path} is corrupt (checksum mismatch); {recompute_hint(name)}")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            shard_ids = np.load(folder / f"{shard}.ids.npy", allow_pickle=False)
        except Exception as exc:
            raise CurateError(f"cannot read embedding shard {path} ({str(exc).splitlines()[0][:120]}); {recompute_hint(name)}") from exc
        if arr.ndim != 2 or arr.shape != (int(shards.loc[shard, "n"]), dim) or shard_ids.shape != (arr.shape[0],):
            raise CurateError(f"embedding shard {path} has shape {arr.shape}, expected "
                              f"({int(shards.loc[shard, 'n'])}, {dim}); {recompute_hint(name)}")
        r = group["row"].to_numpy(np.int64)
        if not np.array_equal(shard_ids[r], group["sample_id"].to_numpy(np.int64)):
            raise CurateError(f"embedding shard ids {folder / (shard + '.ids.npy')} disagree with the catalog; {recompute_hint(name)}")
        pos = np.searchsorted(ids, group["sample_id"].to_numpy(np.int64))
        out[pos] = arr[r]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1e-12)  # float16 storage rounds norms to ~1e-3
    return EmbeddingSet(encoder=name, sample_ids=ids, vectors=out)


# ================================================================================================ decoding
def is_jpeg(data: bytes | memoryview) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"


def load_rgb(path: str | os.PathLike):
    """Open an image as RGB (EXIF orientation applied, alpha composited on white, 16-bit scaled); raises on bad
    files.  See :func:`engine.images.open_rgb`."""
    from curate.engine.images import open_rgb

    return open_rgb(path)


def _reason(exc: BaseException) -> str:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"cannot decode at embed time ({type(exc).__name__}: {msg[:160]})"


class _ImageFiles:
    """torch Dataset over (sample_id, path): a transformed tensor, raw JPEG bytes (GPU decode), or a failure."""

    def __init__(self, items: list[tuple[int, str]], transform, raw_jpeg: bool):
        self.items = items
        self.transform = transform
        self.raw_jpeg = raw_jpeg

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        sid, path = self.items[i]
        try:
            if self.raw_jpeg:
                with open(path, "rb") as fh:
                    data = fh.read()
                if _gpu_decodable(data):
                    return sid, path, None, torch.frombuffer(bytearray(data), dtype=torch.uint8), None
            return sid, path, self.transform(load_rgb(path)), None, None
        except Exception as exc:  # any decode problem becomes a quarantine row, never a crash
            return sid, path, None, None, _reason(exc)


def _gpu_decodable(data: bytes) -> bool:
    """A baseline RGB/grey JPEG without an EXIF rotation: nvjpeg decodes it exactly like PIL (it ignores EXIF)."""
    if not is_jpeg(data):
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # header only, no pixel decode
            return im.mode in ("RGB", "L") and im.getexif().get(0x0112, 1) == 1
    except Exception:
        return False  # let the PIL path produce the precise error


def _collate(items):
    """(ids, stacked CPU tensor or None, [(id, path, jpeg bytes)], [(id, path, reason)]) for one batch."""
    import torch

    ids, tensors, raw, bad = [], [], [], []
    for sid, path, tensor, data, err in items:
        if err is not None:
            bad.append((sid, path, err))
        elif data is not None:
            raw.append((sid, path, data))
        else:
            ids.append(sid)
            tensors.append(tensor)
    return ids, (torch.stack(tensors) if tensors else None), raw, bad


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _gpu_decode(enc, raw: list[tuple[int, str, object]], transform) -> tuple[list, list, list]:
    """Decode JPEG bytes on the GPU in one batched call; files nvjpeg rejects fall back to PIL on the CPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    ok_ids, tensors, failed = [], [], []
    try:
        imgs = decode_jpeg([r[2] for r in raw], mode=ImageReadMode.RGB, device=enc.device)
        decoded = list(zip(raw, imgs))
    except Exception:  # one bad file fails the whole batched call: retry one by one
        decoded = []
        for r in raw:
            try:
                decoded.append((r, decode_jpeg(r[2], mode=ImageReadMode.RGB, device=enc.device)))
            except Exception:
                decoded.append((r, None))
    for (sid, path, _), img in decoded:
        try:
            x = transform(img) if img is not None else enc.transform(load_rgb(path)).to(enc.device)
        except Exception as exc:
            failed.append((sid, path, _reason(exc)))
            continue
        ok_ids.append(sid)
        tensors.append(x)
    return ok_ids, tensors, failed


# ================================================================================================ pipeline
def auto_batch_size(enc, device) -> int:
    """CPU: a fixed 32.  GPU: measure one probe batch's peak memory and fill ~60% of the free memory."""
    import torch

    if device.type != "cuda":
        return CPU_BATCH_SIZE if device.type == "cpu" else 64
    size = enc.preprocessing.crop
    probe = 8
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    enc.encode_images(torch.zeros(probe, 3, size, size, device=device))
    torch.cuda.synchronize(device)
    per_image = max((torch.cuda.max_memory_allocated(device) - base) / probe, 1.0)
    free, _total = torch.cuda.mem_get_info(device)
    fit = int(0.6 * free / per_image)
    bs = 1 << max(4, min(10, fit.bit_length() - 1))  # power of two in [16, 1024]
    return bs


def _todo(cat: Catalog, encoder: str) -> tuple[list[tuple[int, str, str]], int, int]:
    """(id, path, content_hash) of samples without a vector for ``encoder``, in id order, minus quarantined ones
    (a quarantine row counts while the file's hash is unchanged); plus the (already embedded, quarantined) counts."""
    df = cat.query_df(
        """SELECT s.id, s.path, s.content_hash,
                  EXISTS (SELECT 1 FROM embedded e WHERE e.encoder = ? AND e.sample_id = s.id) AS done,
                  EXISTS (SELECT 1 FROM quarantine q WHERE q.path = s.path
                          AND (q.content_hash IS NULL OR q.content_hash = s.content_hash)) AS bad
           FROM samples s ORDER BY s.id""",
        [encoder],
    )
    done = df["done"].astype(bool)
    bad = df["bad"].astype(bool) & ~done
    rest = df[~done & ~bad]
    items = [(int(i), str(p), h) for i, p, h in zip(rest["id"], rest["path"], rest["content_hash"])]
    return items, int(done.sum()), int(bad.sum())


def embed_project(
    cat: Catalog,
    encoder="auto",
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool = False,
    workers: int | None = None,
    rebuild: bool = False,
    shard_size: int | None = None,
    report: EmbedReport | None = None,
) -> str:
    """Embed every catalog sample that has no vector yet for ``encoder``.

    Parameters
    ----------
    cat : project catalog.
    encoder : encoder name (``auto``, ``effnet-lite0``, ``clip:...``) or an already loaded
        :class:`engine.encoders.Encoder` (reused as is, on its own device; ``device`` is then ignored).
    batch_size : images per forward pass; default 32 on CPU, sized from free GPU memory on CUDA.
    device : ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda`` or ``mps``.
    progress : show a progress bar with images/s and print which encoder was chosen.
    workers : DataLoader worker processes decoding images (default: CPU count - 1, at most 8).
    rebuild : drop this encoder's stored vectors first and embed everything again.
    shard_size : vectors per shard (default 8192; a shard is also flushed every 120 s).
    report : optional :class:`EmbedReport` filled in place (counts, quarantined files, images/s).

    Returns
    -------
    The encoder name the vectors are stored under (pass it to :func:`load_embeddings`).
    """
    from curate.engine.encoders import Encoder, canonical_name, explain_auto, get_encoder, resolve_device

    if isinstance(encoder, Encoder):
        enc, name = encoder, encoder.name
        dev = enc.device
    else:
        requested = encoder or "auto"
        if requested == "auto":
            name, why = explain_auto()
            log.info("encoder auto -> %s: %s", name, why)
            if progress:
                print(f"encoder: {name} ({why})", file=sys.stderr)
        else:
            name = canonical_name(requested)
        enc = None
        dev = resolve_device(device)
    report = report if report is not None else EmbedReport(encoder=name)
    report.encoder = name
    shard_size = int(shard_size or SHARD_SIZE)
    if cat.scalar("SELECT count(*) FROM samples") == 0:
        raise CurateError(f"project {cat.root} has no samples; run `curate ingest <folder>` first")

    with encoder_lock(cat, name):
        if rebuild:
            drop_embeddings(cat, name, held_lock=True)
        remove_orphan_shards(cat, name, held_lock=True)
        # a truncated or bit-rotten shard is never used: its samples are embedded again below
        report.bad_shards = drop_bad_shards(cat, name, held_lock=True)
        if report.bad_shards and progress:
            for line in report.bad_shards:
                print(f"recomputing the vectors of a bad shard: {line}", file=sys.stderr)
        items, report.already_embedded, report.skipped_quarantined = _todo(cat, name)
        if not items:
            if progress:
                print(f"embeddings for {name} are up to date ({report.already_embedded} vectors)", file=sys.stderr)
            return name
        params = {"encoder": name, "batch_size": batch_size, "device": str(dev), "workers": workers,
                  "rebuild": rebuild, "todo": len(items)}
        t0 = time.perf_counter()

        def body(run_id: int) -> None:
            model = enc
            if model is None:
                model = get_encoder(name, device=dev)
                report.model_load_seconds = time.perf_counter() - t0
            _run_pipeline(cat, model, items, batch_size, workers, shard_size, progress, report, run_id)

        embed_run(cat, params, report, body)
    return name


def embed_run(cat: Catalog, params: dict, report: EmbedReport, body: Callable[[int], None]) -> None:
    """One ``embed`` run record around ``body(run_id)``: timed, finished with the report, failed on any exception
    (shared by the local, synthetic and Ray pipelines)."""
    run_id = cat.start_run("embed", params)
    report.run_id = run_id
    t0 = time.perf_counter()
    try:
        body(run_id)
    except BaseException:
        report.seconds = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            cat.finish_run(run_id, report.as_dict(), status="failed")
        raise
    report.seconds = time.perf_counter() - t0
    cat.finish_run(run_id, report.as_dict())


def _run_pipeline(cat, enc, items, batch_size, workers, shard_size, progress, report, run_id) -> None:
    import torch
    from torch.utils.data import DataLoader

    dev = enc.device
    on_cuda = dev.type == "cuda"
    bs = int(batch_size or auto_batch_size(enc, dev))
    report.device, report.batch_size = str(dev), bs
    if workers is None:
        workers = max(0, min(8, (os.cpu_count() or 1) - 1))
    dataset = _ImageFiles([(sid, path) for sid, path, _ in items], enc.transform, raw_jpeg=on_cuda)
    loader = DataLoader(
        dataset,
        batch_size=bs,
        shuffle=False,
        num_workers=int(workers),
        collate_fn=_collate,
        pin_memory=on_cuda,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
    )
    tensor_transform = enc.tensor_transform if on_cuda else None
    description = enc.describe()
    path_of = {sid: path for sid, path, _ in items}
    hash_of = {path: h for _, path, h in items}

    buf_ids: list[np.ndarray] = []
    buf_vecs: list[np.ndarray] = []
    bad: list[tuple[str, str, str, str | None]] = []
    last_flush = time.monotonic()

    def flush(final: bool) -> None:
        """Write full shards from the buffer (and the remainder when ``final`` or the flush timer fired)."""
        nonlocal last_flush
        ids = np.concatenate(buf_ids) if buf_ids else np.empty(0, np.int64)
        vecs = np.concatenate(buf_vecs) if buf_vecs else None
        buf_ids.clear()
        buf_vecs.clear()
        start = 0
        while len(ids) - start >= shard_size or (final and start < len(ids)):
            stop = min(start + shard_size, len(ids))
            chunk_ids, chunk_vecs = ids[start:stop], vecs[start:stop]
            new_bad = list(bad)
            bad.clear()
            done_paths = [path_of[int(s)] for s in chunk_ids]

            def extra(con, done_paths=done_paths, new_bad=new_bad):
                # a file that embeds now is no longer an embed-time problem
                con.execute("DELETE FROM quarantine WHERE stage = 'embed' AND path IN (SELECT unnest(?))", [done_paths])
                cat.add_quarantine(new_bad, run_id=run_id, con=con)

            write_shard(cat, enc.name, chunk_ids, chunk_vecs, description, run_id=run_id, extra=extra)
            report.shards += 1
            report.embedded += len(chunk_ids)
            if _PAUSE_AFTER_COMMIT:
                time.sleep(_PAUSE_AFTER_COMMIT)
            start = stop
            last_flush = time.monotonic()
        if start < len(ids):
            buf_ids.append(ids[start:])
            buf_vecs.append(vecs[start:])
        if final and bad:
            cat.add_quarantine(list(bad), run_id=run_id)
            bad.clear()

    def quarantine(path: str, reason: str) -> None:
        bad.append((path, reason, "embed", hash_of.get(path)))
        report.quarantined.append((path, reason))

    bar = None
    from curate.engine.progress import enabled as progress_enabled

    if progress and progress_enabled():  # the bar only on a terminal (or CURATE_PROGRESS=1)
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"embed {enc.name}", unit="img", dynamic_ncols=True)
    buffered = 0
    try:
        for ids, x, raw, failed in loader:
            ids = list(ids)
            n_batch = len(ids) + len(raw) + len(failed)
            for _sid, path, err in failed:
                quarantine(path, err)
            parts = [x.to(dev, non_blocking=True)] if x is not None else []
            if raw:  # CUDA only: JPEG bytes decoded on the GPU, PIL fallback inside
                gids, gtensors, gfailed = _gpu_decode(enc, [tuple(r) for r in raw], tensor_transform)
                ids += gids
                if gtensors:
                    parts.append(torch.stack(gtensors))
                for _sid, path, err in gfailed:
                    quarantine(path, err)
            if parts:
                vecs = enc.encode_images(torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()
                buf_ids.append(np.asarray(ids, dtype=np.int64))
                buf_vecs.append(vecs)
                buffered += len(ids)
            timer = time.monotonic() - last_flush >= FLUSH_SECONDS
            if buffered >= shard_size or (buffered and timer):
                flush(final=timer)
                buffered = sum(len(b) for b in buf_ids)
            if bar is not None:
                bar.update(n_batch)
        flush(final=True)
    finally:
        if bar is not None:
            bar.close()

"""Bring your own: import embeddings and class probabilities computed outside Curate.

``import_embeddings`` accepts

* ``vectors.npy`` plus a companion file naming the rows: ``--ids FILE`` or, next to it, ``vectors.ids.npy`` /
  ``vectors.ids.txt`` (sample ids) or ``vectors.paths.npy`` / ``vectors.paths.txt`` (file paths);
* ``.npz`` with ``vectors`` (or ``embeddings``) and ``ids`` / ``sample_ids`` or ``paths``;
* Parquet with a ``sample_id`` or ``path`` column and one list column of floats (``vector``/``embedding`` or
  the only list column);

and stores them in the same checksummed shard format as ``curate embed`` (rows L2-normalised).

``import_predictions`` accepts Parquet/CSV with ``sample_id`` or ``path`` plus one numeric column per class, or
an ``.npz`` with ``probs`` (or ``pred_probs``), ``ids``/``paths`` and ``class_names``; rows must be probability
distributions over the project's classes and land in the ``predictions`` table.

Every problem is one line that names the file, the first offending rows and what to do.  Relative paths are
resolved from the imported file's folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from curate.engine.catalog import Catalog, CurateError, utcnow

log = logging.getLogger("curate.byo")

VECTOR_COLUMNS = ("vector", "vectors", "embedding", "embeddings", "features")
ID_COLUMNS = ("sample_id", "id")
PATH_COLUMNS = ("path", "filepath", "file")
SUM_TOLERANCE = 0.01  # rows whose sum is within this of 1 are renormalised with a warning
MAX_LISTED = 5


@dataclass
class ImportReport:
    """What an import did: where to, how many rows, and any warnings (already logged)."""

    file: str
    target: str
    rows: int = 0
    warnings: list[str] = field(default_factory=list)
    run_id: int | None = None

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning(msg)

    def as_dict(self) -> dict:
        return {"file": self.file, "target": self.target, "rows": self.rows, "warnings": list(self.warnings)}


# ================================================================================================ helpers
def _listing(values: Sequence, rows: Sequence[int]) -> str:
    shown = [f"{v!r} (row {r})" if isinstance(v, str) else f"{v} (row {r})"
             for v, r in list(zip(values, rows))[:MAX_LISTED]]
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return ", ".join(shown) + more


def _rows_listing(values: Sequence) -> str:
    """First few values (row numbers, lengths, sums) joined with commas."""
    values = [int(v) if isinstance(v, (int, np.integer)) else v for v in values]
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return ", ".join(str(v) for v in values[:MAX_LISTED]) + more


def _lower_map(columns) -> dict[str, str]:
    return {str(c).lower().strip(): c for c in columns}


def resolve_samples(cat: Catalog, file: Path, ids=None, paths=None) -> np.ndarray:
    """Map row keys (sample ids or paths) to sample ids; unknown or repeated keys are a one-line error.

    Row numbers in messages are 1-based data rows (a header line is not counted).
    """
    if (ids is None) == (paths is None):
        raise CurateError(f"{file}: give either sample ids or paths for the rows")
    if ids is not None:
        raw = np.asarray(ids)
        if raw.ndim != 1:
            raise CurateError(f"{file}: ids must be one-dimensional, got shape {raw.shape}")
        try:
            as_float = raw.astype(np.float64)
        except (TypeError, ValueError):
            bad = [i for i, v in enumerate(raw) if not _is_int(v)]
            raise CurateError(f"{file}: sample ids must be integers; got {_listing([str(raw[i]) for i in bad], [i + 1 for i in bad])}")
        nonint = np.flatnonzero(~np.isfinite(as_float) | (as_float != np.round(as_float)))
        if len(nonint):
            raise CurateError(f"{file}: sample ids must be integers; got {_listing([str(raw[i]) for i in nonint], nonint + 1)}")
        sids = as_float.astype(np.int64)
        known = {r[0] for r in cat.query("SELECT id FROM samples WHERE id IN (SELECT unnest(?))", [sids.tolist()])}
        unknown = np.flatnonzero([s not in known for s in sids])
        if len(unknown):
            raise CurateError(
                f"{file}: {len(unknown)} of {len(sids)} sample ids are not in this project: "
                f"{_listing(sids[unknown].tolist(), (unknown + 1).tolist())}; check that the file belongs to this project"
            )
    else:
        raw = [str(p) for p in np.asarray(paths).tolist()]
        by_path = dict(cat.query("SELECT path, id FROM samples"))
        sids_list, unknown = [], []
        for i, p in enumerate(raw):
            sid = by_path.get(p)
            if sid is None:
                cand = Path(p).expanduser()
                cand = cand if cand.is_absolute() else file.parent / cand
                sid = by_path.get(os.path.abspath(cand))
                if sid is None and cand.exists():
                    sid = by_path.get(str(cand.resolve()))
            if sid is None:
                unknown.append(i)
                sids_list.append(-1)
            else:
                sids_list.append(int(sid))
        if unknown:
            raise CurateError(
                f"{file}: {len(unknown)} of {len(raw)} paths are not samples of this project: "
                f"{_listing([raw[i] for i in unknown], [i + 1 for i in unknown])}; ingest them first or fix the paths "
                "(relative paths are resolved from the file's folder)"
            )
        sids = np.asarray(sids_list, dtype=np.int64)
    _, first = np.unique(sids, return_index=True)
    if len(first) < len(sids):
        repeat = np.ones(len(sids), dtype=bool)
        repeat[first] = False
        dup_rows = np.flatnonzero(repeat)
        raise CurateError(f"{file}: {len(dup_rows)} rows repeat a sample listed earlier: "
                          f"{_listing(sids[dup_rows].tolist(), (dup_rows + 1).tolist())}; keep one row per sample")
    return sids


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v))
    except (TypeError, ValueError):
        return False


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _read_keys(path: Path) -> tuple[np.ndarray | None, list[str] | None]:
    """A companion file of ids or paths: .npy (ints -> ids, strings -> paths), .txt (one per line) or .csv."""
    name = path.name.lower()
    if name.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
        return (arr, None) if np.issubdtype(arr.dtype, np.number) else (None, [str(v) for v in arr.tolist()])
    if name.endswith(".csv"):
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        cols = _lower_map(df.columns)
        for c in ID_COLUMNS:
            if c in cols:
                return df[cols[c]].to_numpy(), None
        for c in PATH_COLUMNS:
            if c in cols:
                return None, df[cols[c]].tolist()
        raise CurateError(f"{path}: needs a sample_id or path column (found: {', '.join(map(str, df.columns))})")
    lines = _read_lines(path)
    looks_like_ids = ".ids" in name or (lines and all(_is_int(v) for v in lines))
    return (np.asarray(lines), None) if looks_like_ids else (None, lines)


def _companion(file: Path) -> Path | None:
    stem = file.name[: -len(".npy")]
    for suffix in (".ids.npy", ".ids.txt", ".paths.npy", ".paths.txt", "_ids.npy", "_paths.txt", ".ids.csv"):
        cand = file.with_name(stem + suffix)
        if cand.is_file():
            return cand
    return None


def _load_npz(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:
        raise CurateError(f"cannot read {file}: {str(exc).splitlines()[0][:200]}") from exc


def _keys_from(mapping: dict, file: Path, what: str) -> tuple[np.ndarray | None, list[str] | None]:
    keys = {k.lower(): k for k in mapping}
    for k in ("ids", "sample_ids", "sample_id"):
        if k in keys:
            return np.asarray(mapping[keys[k]]), None
    for k in ("paths", "path", "files"):
        if k in keys:
            return None, [str(v) for v in np.asarray(mapping[keys[k]]).tolist()]
    raise CurateError(f"{file}: {what} needs an 'ids' (sample ids) or 'paths' entry next to the values "
                      f"(found: {', '.join(mapping) or 'nothing'})")


# ================================================================================================ embeddings
def read_embeddings_file(file: Path, ids_file: Path | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """(vectors, ids or None, paths or None) from a .npy(+companion), .npz or Parquet file."""
    name = file.name.lower()
    if name.endswith(".npz"):
        z = _load_npz(file)
        keys = {k.lower(): k for k in z}
        vkey = next((keys[k] for k in ("vectors", "embeddings", "features", "vector") if k in keys), None)
        if vkey is None:
            raise CurateError(f"{file}: no 'vectors' array (found: {', '.join(z) or 'nothing'}); "
                              "save with np.savez(FILE, vectors=..., ids=...) or paths=...")
        ids, paths = _read_keys(ids_file) if ids_file else _keys_from(z, file, "an .npz of vectors")
        return z[vkey], ids, paths
    if name.endswith(".npy"):
        try:
            vectors = np.load(file, allow_pickle=False)
        except Exception as exc:
            raise CurateError(f"cannot read {file}: {str(exc).splitlines()[0][:200]}") from exc
        comp = ids_file or _companion(file)
        if comp is None:
            stem = file.name[:-4]
            raise CurateError(f"{file}: no companion file naming its rows; put sample ids in {stem}.ids.npy / "
                              f"{stem}.ids.txt or paths in {stem}.paths.txt next to it, or pass --ids FILE")
        ids, paths = _read_keys(comp)
        return vectors, ids, paths
    if name.endswith((".parquet", ".pq")):
        try:
            df = pd.read_parquet(file)
        except Exception as exc:
            raise CurateError(f"cannot read {file}: {str(exc).splitlines()[0][:200]}") from exc
        cols = _lower_map(df.columns)
        vcol = next((cols[c] for c in VECTOR_COLUMNS if c in cols), None)
        if vcol is None:
            listy = [c for c in df.columns if len(df) and isinstance(df[c].iloc[0], (list, tuple, np.ndarray))]
            if len(listy) != 1:
                raise CurateError(f"{file}: cannot tell which column holds the vectors; name it 'vector' "
                                  f"(list columns found: {', '.join(map(str, listy)) or 'none'})")
            vcol = listy[0]
        lengths = df[vcol].map(lambda v: -1 if v is None or np.isscalar(v) else len(v)).to_numpy()
        if len(lengths) and (lengths != lengths[0]).any():
            bad = np.flatnonzero(lengths != lengths[0])
            raise CurateError(f"{file}: vectors have different lengths: row 1 has {lengths[0]} values but rows "
                              f"{_rows_listing(bad + 1)} have {_rows_listing(lengths[bad])}; every row needs the same dimension")
        vectors = np.stack([np.asarray(v, dtype=np.float64) for v in df[vcol]]) if len(df) else np.empty((0, 0))
        for c in ID_COLUMNS:
            if c in cols:
                return vectors, df[cols[c]].to_numpy(), None
        for c in PATH_COLUMNS:
            if c in cols:
                return vectors, None, [str(v) for v in df[cols[c]]]
        raise CurateError(f"{file}: needs a sample_id or path column next to {vcol!r} "
                          f"(found: {', '.join(map(str, df.columns))})")
    raise CurateError(f"{file}: unsupported embeddings file; use .npy (+ ids/paths companion), .npz or .parquet")


def validate_vectors(file: Path, vectors: np.ndarray, n_keys: int) -> np.ndarray:
    """Shape, dtype and finiteness checks; returns float32 vectors."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise CurateError(f"{file}: vectors must be a 2-D array [samples, dim], got shape {vectors.shape}")
    if vectors.shape[0] != n_keys:
        raise CurateError(f"{file}: {vectors.shape[0]} vectors but {n_keys} ids/paths; both must have one row per sample")
    if vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise CurateError(f"{file}: no vectors (shape {vectors.shape})")
    if not np.issubdtype(vectors.dtype, np.number) or np.iscomplexobj(vectors):
        raise CurateError(f"{file}: vectors must be real numbers, got dtype {vectors.dtype}")
    vectors = vectors.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise CurateError(f"{file}: {len(bad)} vectors contain NaN or infinity (rows {_rows_listing(bad + 1)}); "
                          "recompute or drop those rows")
    zero = np.flatnonzero(np.linalg.norm(vectors, axis=1) == 0)
    if len(zero):
        raise CurateError(f"{file}: {len(zero)} vectors are all zeros (rows {_rows_listing(zero + 1)}); "
                          "they have no direction to compare; recompute or drop those rows")
    return vectors


def import_embeddings(cat: Catalog, file: str | os.PathLike, encoder: str | None = None,
                      ids_file: str | os.PathLike | None = None, shard_size: int | None = None) -> ImportReport:
    """Store externally computed vectors as an embedding set.

    Parameters
    ----------
    cat : project catalog.
    file : ``.npy`` (with an ids/paths companion), ``.npz`` or ``.parquet`` file (see module docs).
    encoder : name for the set (default ``byo:<file stem>``); built-in encoder names are refused so imported
        and computed vectors never mix.
    ids_file : explicit companion naming the rows (overrides the automatic lookup).
    shard_size : vectors per shard.

    Returns
    -------
    ImportReport (``target`` is the encoder name to pass to ``load_embeddings``).  Vectors of samples already
    in the set are replaced; the rows are L2-normalised.
    """
    from curate.engine.embed import SHARD_SIZE, encoder_lock, remove_orphan_shards, write_shard
    from curate.engine.encoders import is_builtin_name

    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise CurateError(f"{path} does not exist; pass the embeddings file to import")
    name = encoder or f"byo:{path.name.split('.')[0]}"
    if is_builtin_name(name):
        raise CurateError(f"--encoder {name} is a built-in encoder; pick another name for imported vectors, e.g. byo:{name}")
    vectors, ids, paths = read_embeddings_file(path, Path(ids_file).expanduser().resolve() if ids_file else None)
    n_keys = len(ids) if ids is not None else len(paths)
    vectors = validate_vectors(path, vectors, n_keys)
    sids = resolve_samples(cat, path, ids=ids, paths=paths)
    have = cat.scalar("SELECT dim FROM embedding_sets WHERE encoder = ?", [name])
    if have is not None and int(have) != vectors.shape[1]:
        raise CurateError(f"{path}: vectors are {vectors.shape[1]}-d but encoder {name} already holds {have}-d vectors; "
                          f"import under another --encoder name")
    report = ImportReport(file=str(path), target=name)
    run_id = cat.start_run("import-embeddings", {"file": str(path), "encoder": name, "rows": int(len(sids))})
    report.run_id = run_id
    description = {"encoder": name, "family": "imported", "dim": int(vectors.shape[1]), "source_file": str(path)}
    size = int(shard_size or SHARD_SIZE)
    try:
        with encoder_lock(cat, name):
            remove_orphan_shards(cat, name, held_lock=True)
            for start in range(0, len(sids), size):
                write_shard(cat, name, sids[start:start + size], vectors[start:start + size], description, run_id=run_id)
                report.rows += len(sids[start:start + size])
    except BaseException:
        cat.finish_run(run_id, report.as_dict(), status="failed")
        raise
    cat.finish_run(run_id, report.as_dict())
    return report


# ================================================================================================ predictions
def read_predictions_file(file: Path) -> tuple[np.ndarray, list[str] | None, np.ndarray | None, list[str] | None]:
    """(probs [n, k], class names or None, ids or None, paths or None)."""
    name = file.name.lower()
    if name.endswith(".npz"):
        z = _load_npz(file)
        keys = {k.lower(): k for k in z}
        pkey = next((keys[k] for k in ("probs", "pred_probs", "probabilities") if k in keys), None)
        if pkey is None:
            raise CurateError(f"{file}: no 'probs' array (found: {', '.join(z) or 'nothing'}); "
                              "save with np.savez(FILE, probs=..., ids=..., class_names=...)")
        cn = next((keys[k] for k in ("class_names", "classes") if k in keys), None)
        ids, paths = _keys_from(z, file, "an .npz of probabilities")
        return z[pkey], ([str(c) for c in z[cn].tolist()] if cn else None), ids, paths
    if name.endswith(".csv"):
        try:
            df = pd.read_csv(file)
        except Exception as exc:
            raise CurateError(f"cannot read {file}: {str(exc).splitlines()[0][:200]}") from exc
    elif name.endswith((".parquet", ".pq")):
        try:
            df = pd.read_parquet(file)
        except Exception as exc:
            raise CurateError(f"cannot read {file}: {str(exc).splitlines()[0][:200]}") from exc
    else:
        raise CurateError(f"{file}: unsupported predictions file; use .parquet, .csv or .npz")
    cols = _lower_map(df.columns)
    key_col = next((cols[c] for c in ID_COLUMNS if c in cols), None)
    path_col = None if key_col is not None else next((cols[c] for c in PATH_COLUMNS if c in cols), None)
    if key_col is None and path_col is None:
        raise CurateError(f"{file}: needs a sample_id or path column plus one column per class "
                          f"(found: {', '.join(map(str, df.columns))})")
    class_cols = [c for c in df.columns if c not in (key_col, path_col)]
    if not class_cols:
        raise CurateError(f"{file}: no class columns; add one probability column per class")
    nonnum = [str(c) for c in class_cols if not pd.api.types.is_numeric_dtype(df[c])]
    if nonnum:
        raise CurateError(f"{file}: class columns must be numeric probabilities, but {', '.join(nonnum[:MAX_LISTED])} "
                          "are not; keep only sample_id|path and one numeric column per class")
    probs = df[class_cols].to_numpy(dtype=np.float64)
    ids = df[key_col].to_numpy() if key_col is not None else None
    paths = [str(v) for v in df[path_col]] if path_col is not None else None
    return probs, [str(c) for c in class_cols], ids, paths


def validate_probs(file: Path, probs: np.ndarray, class_names: list[str] | None, catalog_classes: list[str],
                   n_keys: int, report: ImportReport, tolerance: float = SUM_TOLERANCE) -> np.ndarray:
    """Check and align probabilities to ``catalog_classes`` order; returns float32 [n, len(catalog_classes)]."""
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise CurateError(f"{file}: probabilities must be a 2-D array [samples, classes], got shape {probs.shape}")
    if probs.shape[0] != n_keys:
        raise CurateError(f"{file}: {probs.shape[0]} probability rows but {n_keys} ids/paths")
    if not np.issubdtype(probs.dtype, np.number):
        raise CurateError(f"{file}: probabilities must be numbers, got dtype {probs.dtype}")
    if not catalog_classes:
        raise CurateError(f"{file}: this project has no classes yet; ingest labeled data before importing predictions")
    if class_names is None:
        if probs.shape[1] != len(catalog_classes):
            raise CurateError(f"{file}: {probs.shape[1]} probability columns but no class_names entry; add "
                              f"class_names (the project has {len(catalog_classes)} classes)")
        class_names = list(catalog_classes)
        report.warn(f"{file.name}: no class_names given; assuming the project's sorted class order "
                    f"({', '.join(catalog_classes[:MAX_LISTED])}{', ...' if len(catalog_classes) > MAX_LISTED else ''})")
    if len(class_names) != probs.shape[1]:
        raise CurateError(f"{file}: {len(class_names)} class names but {probs.shape[1]} probability columns")
    dup = sorted({c for c in class_names if class_names.count(c) > 1})
    if dup:
        raise CurateError(f"{file}: class names repeated: {', '.join(dup[:MAX_LISTED])}")
    unknown = [c for c in class_names if c not in set(catalog_classes)]
    if unknown:
        raise CurateError(f"{file}: classes not in this project: {', '.join(map(repr, unknown[:MAX_LISTED]))}"
                          f"{' and more' if len(unknown) > MAX_LISTED else ''}; project classes are "
                          f"{', '.join(catalog_classes[:10])}{', ...' if len(catalog_classes) > 10 else ''}; rename the columns")
    probs = probs.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if len(bad):
        raise CurateError(f"{file}: {len(bad)} rows contain NaN or infinity (rows {_rows_listing(bad + 1)})")
    neg = np.flatnonzero((probs < 0).any(axis=1))
    if len(neg):
        raise CurateError(f"{file}: {len(neg)} rows have negative values (rows {_rows_listing(neg + 1)}); "
                          "pass probabilities (softmax outputs), not logits")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0)
    far = np.flatnonzero(off > tolerance)
    if len(far):
        raise CurateError(f"{file}: {len(far)} rows do not sum to 1 (rows {_rows_listing(far + 1)} sum to "
                          f"{_rows_listing([f'{s:.3g}' for s in sums[far]])}); pass probabilities (softmax outputs)")
    close = np.flatnonzero(off > 1e-6)
    if len(close):
        probs = probs / sums[:, None]
        report.warn(f"{file.name}: {len(close)} rows summed to within {tolerance} of 1 and were renormalised")
    missing = [c for c in catalog_classes if c not in set(class_names)]
    if missing:
        report.warn(f"{file.name}: no column for classes {', '.join(missing[:MAX_LISTED])}"
                    f"{' ...' if len(missing) > MAX_LISTED else ''}; their probability is stored as 0")
    order = {c: i for i, c in enumerate(class_names)}
    aligned = np.zeros((probs.shape[0], len(catalog_classes)), dtype=np.float32)
    for j, c in enumerate(catalog_classes):
        if c in order:
            aligned[:, j] = probs[:, order[c]]
    return aligned


def import_predictions(cat: Catalog, file: str | os.PathLike, source: str | None = None,
                       tolerance: float = SUM_TOLERANCE) -> ImportReport:
    """Import per-sample class probabilities from the user's own model into the ``predictions`` table.

    Parameters
    ----------
    cat : project catalog.
    file : Parquet/CSV (``sample_id`` or ``path`` + one numeric column per class) or ``.npz`` (``probs``,
        ``ids``/``paths``, ``class_names``).
    source : recorded in ``predictions.source`` (default ``import:<file name>``).
    tolerance : rows whose sum is within this of 1 are renormalised with a warning; others are an error.

    Returns
    -------
    ImportReport.  Probabilities are stored in the project's sorted class order (``Catalog.class_names()``);
    earlier predictions for the same samples are replaced.
    """
    import pyarrow as pa

    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise CurateError(f"{path} does not exist; pass the predictions file to import")
    probs, class_names, ids, paths = read_predictions_file(path)
    report = ImportReport(file=str(path), target="predictions")
    n_keys = len(ids) if ids is not None else len(paths)
    classes = cat.class_names()
    aligned = validate_probs(path, probs, class_names, classes, n_keys, report, tolerance)
    sids = resolve_samples(cat, path, ids=ids, paths=paths)
    src = source or f"import:{path.name}"
    run_id = cat.start_run("import-predictions", {"file": str(path), "rows": int(len(sids))})
    report.run_id = run_id
    k = aligned.shape[1]
    table = pa.table({
        "sample_id": pa.array(sids, pa.int64()),
        "probs": pa.ListArray.from_arrays(pa.array(np.arange(0, (len(sids) + 1) * k, k, dtype=np.int32)),
                                          pa.array(aligned.reshape(-1), pa.float32())),
    })
    try:
        with cat.transaction() as con:
            con.execute("DELETE FROM predictions WHERE sample_id IN (SELECT unnest(?))", [sids.tolist()])
            con.register("_preds", table)
            con.execute("INSERT INTO predictions (sample_id, probs, class_names, source, created_at) "
                        "SELECT sample_id, probs, ?, ?, ? FROM _preds", [classes, src, utcnow()])
            con.unregister("_preds")
            report.rows = len(sids)
            cat.finish_run(run_id, report.as_dict(), con=con)
    except BaseException:
        cat.finish_run(run_id, report.as_dict(), status="failed")
        raise
    return report

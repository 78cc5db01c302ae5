"""Ingest images into the catalog: ImageFolder trees, CSV/Parquet manifests and unlabeled folders.

Every file is content-hashed (SHA-256) and fully decoded once, so broken files are caught here and recorded in
the ``quarantine`` table with a one-line reason instead of crashing a run.  Re-ingesting the same files is a
no-op; new files append.  Work is committed in chunks, each chunk one transaction, so a killed ingest keeps
the chunks it finished and a rerun picks up the rest.

What every importer produces (:class:`engine.formats.base.Candidate`) and the folder walking shared with the
format importers (:func:`engine.formats.base.walk_files`, :func:`~engine.formats.base.discover_imagefolder`) live in
:mod:`engine.formats.base`, below both this module and :mod:`engine.formats`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd
from PIL import Image, UnidentifiedImageError

from curate.engine import images
from curate.engine.catalog import Catalog, CurateError, utcnow
from curate.engine.formats.base import Candidate, discover_imagefolder, display_path, is_image, walk_files

MANIFEST_EXTENSIONS = {".csv", ".parquet", ".pq"}
# Decompression-bomb guard (CURATE_MAX_PIXELS): images above this many pixels are quarantined rather than decoded.
MAX_PIXELS = images.MAX_PIXELS
CHUNK = int(os.environ.get("CURATE_INGEST_CHUNK", 2000))
# test hook: seconds to sleep after each committed chunk (lets fault tests kill a run between chunks)
_CHUNK_PAUSE = float(os.environ.get("CURATE_TEST_INGEST_PAUSE", 0))


@dataclass
class FileInfo:
    path: str
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    nbytes: int = 0
    error: str | None = None


@dataclass
class IngestReport:
    source: str
    kind: str
    added: int = 0
    unchanged: int = 0
    changed: int = 0
    labels_added: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    row_problems: list[str] = field(default_factory=list)
    run_id: int | None = None

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "added": self.added,
            "unchanged": self.unchanged,
            "changed": self.changed,
            "labels_added": self.labels_added,
            "quarantined": len(self.quarantined),
            "row_problems": len(self.row_problems),
        }

    def print(self, console=None) -> None:
        out = console.print if console is not None else print
        out(
            f"ingested {self.source} ({self.kind}): {self.added} new, {self.unchanged} unchanged, "
            f"{self.changed} changed, {self.labels_added} labels, {len(self.quarantined)} quarantined"
        )
        for problem in self.row_problems:
            out(f"  skipped {problem}")
        for path, reason in self.quarantined:
            out(f"  quarantined {path}: {reason}")
        if self.quarantined:
            out("  quarantined files are left out of every analysis; fix or replace them and run `curate ingest` "
                "again (they are retried), see them with `curate status`")


# ----------------------------------------------------------------------------------------------- layout discovery
def detect_kind(source: Path) -> str:
    """The ingest kind of ``source``: a format that :func:`engine.formats.detect_format` recognises unambiguously
    (COCO JSON, YOLO data.yaml, Hugging Face save_to_disk folder, FiftyOne labels.json), else a manifest,
    an ImageFolder tree or an unlabeled folder."""
    from curate.engine.formats import detect_format

    fmt = detect_format(source)
    if fmt is not None:
        return fmt
    if source.is_file():
        if source.suffix.lower() in MANIFEST_EXTENSIONS:
            return "manifest"
        raise CurateError(f"{source} is a file but not a manifest (.csv/.parquet) nor a COCO JSON / YOLO data.yaml; "
                          "pass a folder, a manifest, or --kind coco|yolo|hf|fiftyone")
    if not source.is_dir():
        raise CurateError(f"{source} does not exist; pass an image folder or a CSV/Parquet manifest")
    subdirs = [d for d in source.iterdir() if d.is_dir() and not d.name.startswith(".")]
    direct_images = [f for f in source.iterdir() if f.is_file() and is_image(f)]
    if subdirs and not direct_images:
        return "imagefolder"
    return "unlabeled"


def discover_unlabeled(root: Path, split: str | None = None, skipped: list[str] | None = None) -> list[Candidate]:
    return [Candidate(f, label=None, split=split) for f in walk_files(root, skipped)]


def read_manifest(path: Path, split: str | None = None) -> tuple[list[Candidate], list[str]]:
    """Parse a CSV/Parquet manifest with columns path, label (optional), split (optional); any other column is
    kept as sample metadata (empty cells are left out)."""
    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
    except UnicodeDecodeError as exc:
        raise CurateError(f"cannot read manifest {path}: it is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8 CSV") from exc
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fix = ("; put double quotes around values that contain commas, e.g. \"cat, tabby\""
               if "tokenizing" in msg or "fields" in msg else "; check that it is a CSV or Parquet file with a header row")
        raise CurateError(f"cannot read manifest {path}: {msg}{fix}") from exc
    cols = {c.lower().strip(): c for c in df.columns}
    if "path" not in cols:
        raise CurateError(
            f"manifest {path} has no 'path' column (found: {', '.join(map(str, df.columns)) or 'none'}); "
            "add a header row with path,label[,split]"
        )
    base = path.parent
    problems: list[str] = []
    out: list[Candidate] = []
    seen: set[str] = set()
    has_label = "label" in cols
    # every other column is kept as sample metadata (filterable in the UI, usable by `curate query --balance-by KEY`)
    extra_cols = [c for k, c in cols.items() if k not in ("path", "label", "split")]
    for i, rec in enumerate(df.to_dict("records"), start=1):
        raw = rec[cols["path"]]
        raw = "" if raw is None or (isinstance(raw, float) and pd.isna(raw)) else str(raw).strip()
        if not raw:
            problems.append(f"{path.name} row {i}: empty path; fill it in or delete the row")
            continue
        p = Path(raw)
        p = p if p.is_absolute() else base / p
        label = None
        if has_label:
            lv = rec[cols["label"]]
            label = None if lv is None or (isinstance(lv, float) and pd.isna(lv)) else str(lv).strip()
            if not label:
                problems.append(f"{path.name} row {i}: empty label for {raw}; give it a label or drop the label column")
                continue
        if not p.exists():
            problems.append(f"{path.name} row {i}: file not found: {raw}; fix the path (relative paths are resolved from the manifest's folder)")
            continue
        key = str(p.resolve())
        if key in seen:
            problems.append(f"{path.name} row {i}: duplicate row for {raw}; the first occurrence was kept")
            continue
        seen.add(key)
        sp = split
        if "split" in cols:
            sv = rec[cols["split"]]
            sp = str(sv).strip().lower() if sv is not None and str(sv).strip() and not (isinstance(sv, float) and pd.isna(sv)) else split
        meta = {}
        for c in extra_cols:
            v = rec[c]
            if v is None or (isinstance(v, float) and pd.isna(v)) or not str(v).strip():
                continue
            meta[str(c).strip()] = str(v).strip()
        out.append(Candidate(p, label=label, split=sp, row=i, metadata=meta))
    return out, problems


# ----------------------------------------------------------------------------------------------- per-file work
def inspect_file(path: Path) -> FileInfo:
    """Hash and fully decode one file; any failure becomes ``error`` (a one-line reason)."""
    display = display_path(path)
    info = FileInfo(path=display)
    if display != os.path.abspath(os.fspath(path)):
        # the catalog stores text: a name that is not UTF-8 could not be found again from its stored path
        info.error = ("file name is not valid UTF-8; rename the file to a UTF-8 name "
                      "(e.g. `convmv -f latin1 -t utf8 --notest`) and ingest again")
        return info
    try:
        data = path.read_bytes()
    except OSError as exc:
        info.error = f"unreadable ({exc.strerror or exc.__class__.__name__})"
        return info
    info.nbytes = len(data)
    info.content_hash = hashlib.sha256(data).hexdigest()
    if not data:
        info.error = "zero-byte file"
        return info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                info.width, info.height = images.upright_size(im)  # as displayed (EXIF rotation applied)
                info.format = im.format
                info.mode = im.mode
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    info.error = (f"image too large ({im.size[0]}x{im.size[1]} px > {MAX_PIXELS} px decompression-bomb "
                                  "limit); if it is genuine, raise CURATE_MAX_PIXELS and ingest again")
                    return info
                im.load()
    except UnidentifiedImageError:
        info.error = "not an image (unrecognised format)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        info.error = (f"image too large (decompression-bomb guard: {str(exc).splitlines()[0][:120]}); "
                      "if it is genuine, raise CURATE_MAX_PIXELS and ingest again")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        info.error = f"corrupt or truncated image ({msg[:160]})"
    return info


# ----------------------------------------------------------------------------------------------- ingest
def ingest(
    cat: Catalog,
    source: str | os.PathLike,
    kind: str = "auto",
    split: str | None = None,
    progress: bool = False,
    workers: int | None = None,
    label_rule: str = "majority",
    images_dir: str | os.PathLike | None = None,
) -> IngestReport:
    """Ingest a folder or manifest into the catalog.

    Parameters
    ----------
    cat : the project's catalog.
    source : an ImageFolder root (``root/<class>/*`` or ``root/<split>/<class>/*``), an unlabeled folder, or a
        CSV/Parquet manifest with columns ``path``, ``label`` (optional) and ``split`` (optional).
    kind : ``auto`` (detect), ``imagefolder``, ``manifest``, ``unlabeled``, or a dataset format of
        :mod:`engine.formats`: ``coco`` (instances JSON), ``yolo`` (data.yaml), ``hf`` (a Hugging Face
        ``save_to_disk`` folder, or the name of a dataset in the local cache), ``fiftyone``
        (FiftyOneImageClassificationDataset or ImageClassificationDirectoryTree).
    split : split assigned to files whose layout names none.
    progress : show a progress bar.
    workers : threads used to hash and decode files (default: CPU count, at most 8).
    label_rule : detection formats (COCO, YOLO): how an image's label follows from its boxes' categories —
        ``majority`` (most boxes), ``single`` (only images whose boxes all share one category get a label) or
        ``multi`` (the sorted set of categories joined by ``|``).  The boxes are kept either way.
    images_dir : COCO: the folder the ``file_name`` entries are relative to (default: found next to the JSON).

    Returns
    -------
    IngestReport with counts, quarantined files and manifest row problems.
    """
    from curate.engine import formats

    src = Path(source).expanduser()
    info: dict | None = None
    if not src.exists() and kind == "hf" and formats.hf.looks_like_name(str(source)):
        src_name = str(source)  # a dataset name: read from the local Hugging Face cache
    elif not src.exists():
        raise CurateError(f"{src} does not exist; pass an image folder or a CSV/Parquet manifest")
    else:
        src = src.resolve()
        src_name = str(src)
        kind = detect_kind(src) if kind == "auto" else kind
    if split is not None:
        split = split.lower()
    problems: list[str] = []
    if kind in formats.FORMATS:
        parsed = formats.parse(kind, src_name, split=split, label_rule=label_rule, images_dir=images_dir,
                               project_root=cat.root)
        cands, problems, info = parsed.candidates, parsed.problems, parsed.info
    elif kind == "imagefolder":
        if not src.is_dir():
            raise CurateError(f"{src} is not a folder; --kind imagefolder needs root/<class>/<image> folders")
        cands = discover_imagefolder(src, split, problems)
    elif kind == "unlabeled":
        if not src.is_dir():
            raise CurateError(f"{src} is not a folder; --kind unlabeled needs a folder of images")
        cands = discover_unlabeled(src, split, problems)
    elif kind == "manifest":
        cands, problems = read_manifest(src, split)
    else:
        raise CurateError(f"unknown ingest kind {kind!r}; use auto, imagefolder, manifest, unlabeled, "
                          f"{', '.join(formats.FORMATS)}")

    report = IngestReport(source=src_name, kind=kind, row_problems=problems)
    run_id = cat.start_run("ingest", {"source": src_name, "kind": kind, "split": split,
                                      **({"label_rule": label_rule} if kind in formats.BOX_FORMATS else {})})
    if info is not None:
        cat.set_import_info(src_name, kind, info)
    report.run_id = run_id
    workers = workers or min(8, os.cpu_count() or 1)

    existing = {
        p: (sid, h)
        for sid, p, h in cat.query("SELECT id, path, content_hash FROM samples")
    }
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cands), desc="ingest", unit="file")
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(cands), CHUNK):
                chunk = cands[start : start + CHUNK]
                infos = list(pool.map(lambda c: inspect_file(c.path), chunk))
                _write_chunk(cat, chunk, infos, existing, report, run_id)
                if _CHUNK_PAUSE:
                    import time

                    time.sleep(_CHUNK_PAUSE)
                if bar is not None:
                    bar.update(len(chunk))
    except BaseException:
        cat.finish_run(run_id, report.as_dict(), status="failed")
        raise
    finally:
        if bar is not None:
            bar.close()
    cat.finish_run(run_id, report.as_dict())
    return report


def _write_chunk(cat: Catalog, chunk: list[Candidate], infos: list[FileInfo], existing: dict, report: IngestReport,
                 run_id: int) -> None:
    new_rows, changed_rows, label_rows_by_path, quarantine = [], [], [], []
    now = utcnow()
    for cand, info in zip(chunk, infos):
        if info.error:
            where = f" ({cand.where})" if cand.where else (f" (manifest row {cand.row})" if cand.row else "")
            quarantine.append((info.path, info.error + where, "ingest", info.content_hash))
            continue
        prev = existing.get(info.path)
        if prev is None:
            new_rows.append((info.content_hash, info.path, info.width, info.height, info.format, info.mode,
                             info.nbytes, cand.split, report.kind, run_id, now))
        elif prev[1] != info.content_hash:
            changed_rows.append((info.content_hash, info.width, info.height, info.format, info.mode, info.nbytes,
                                 prev[0]))
        if cand.label is not None:
            label_rows_by_path.append((info.path, cand.label))

    with cat.transaction() as con:
        if new_rows:
            df = pd.DataFrame(new_rows, columns=["content_hash", "path", "width", "height", "format", "mode", "bytes",
                                                 "split", "source", "ingest_run", "ingested_at"])
            con.register("_new", df)
            con.execute(
                """INSERT INTO samples (id, content_hash, path, width, height, format, mode, bytes, split, source,
                                        ingest_run, ingested_at)
                   SELECT nextval('seq_sample'), content_hash, path, width, height, format, mode, bytes, split, source,
                          ingest_run, ingested_at FROM _new"""
            )
            con.unregister("_new")
        for row in changed_rows:
            con.execute(
                "UPDATE samples SET content_hash=?, width=?, height=?, format=?, mode=?, bytes=? WHERE id=?", list(row)
            )
            # the file's pixels changed: its vectors are stale and must be recomputed
            con.execute("DELETE FROM embedded WHERE sample_id = ?", [row[-1]])
        # a file that now decodes leaves quarantine
        ok_paths = [i.path for i in infos if not i.error]
        if ok_paths:
            con.execute("DELETE FROM quarantine WHERE stage = 'ingest' AND path IN (SELECT unnest(?))", [ok_paths])
        if label_rows_by_path:
            ldf = pd.DataFrame(label_rows_by_path, columns=["path", "class_name"])
            con.register("_lab", ldf)
            # append a label only when it differs from the sample's latest label (idempotent reruns)
            rows = con.execute(
                """SELECT s.id, l.class_name FROM _lab l JOIN samples s ON s.path = l.path
                   LEFT JOIN given_labels t ON t.sample_id = s.id
                   WHERE t.label IS DISTINCT FROM l.class_name"""
            ).fetchall()
            con.unregister("_lab")
            cat.add_labels(rows, source=report.kind, con=con)
            report.labels_added += len(rows)
        _write_extras(cat, con, chunk, infos, report)
        cat.add_quarantine(quarantine, run_id=run_id, con=con)
        new_ids = con.execute(
            "SELECT path, id, content_hash FROM samples WHERE ingest_run = ?", [run_id]
        ).fetchall()
    for p, sid, h in new_ids:
        existing[p] = (sid, h)
    report.added += len(new_rows)
    report.changed += len(changed_rows)
    report.unchanged += len(chunk) - len(new_rows) - len(changed_rows) - len(quarantine)
    report.quarantined.extend((q[0], q[1]) for q in quarantine)


def _write_extras(cat: Catalog, con, chunk: list[Candidate], infos: list[FileInfo], report: IngestReport) -> None:
    """Metadata, boxes and the format's own record of the chunk's good files (inside the chunk's transaction)."""
    good = [(c, i) for c, i in zip(chunk, infos) if not i.error
            and (c.metadata or c.boxes is not None or c.source_id is not None or c.record is not None)]
    if not good:
        return
    ids = cat.sample_ids_by_path([i.path for _, i in good], con=con)
    metadata, boxes, boxed, sources = [], [], [], []
    for cand, info in good:
        sid = ids.get(info.path)
        if sid is None:
            continue
        metadata += [(sid, str(k), None if v is None else str(v)) for k, v in cand.metadata.items()]
        if cand.boxes is not None:
            boxed.append(sid)
            boxes += [(sid, j, b.category, float(b.x), float(b.y), float(b.w), float(b.h),
                       json.dumps(b.attributes) if b.attributes else None) for j, b in enumerate(cand.boxes)]
        if cand.source_id is not None or cand.record is not None:
            sources.append((sid, report.kind, report.source, cand.source_id,
                            json.dumps(cand.record) if cand.record is not None else None))
    cat.write_sample_extras(con, metadata=metadata, boxes=boxes, boxed_samples=boxed, sources=sources)


def ingest_many(cat: Catalog, sources: Iterable[tuple[str | os.PathLike, str, str | None]], progress: bool = False) -> list[IngestReport]:
    """Ingest several (source, kind, split) triples in order."""
    return [ingest(cat, s, kind=k, split=sp, progress=progress) for s, k, sp in sources]

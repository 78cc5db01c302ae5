"""Label files in and out of the annotation loop: a query batch written as files, annotators' labels read back.

* :func:`export_batch` writes one ``curate query`` batch as ``queue.csv``, ``queue.json`` and ``label_studio.json``
  (the formats of :func:`curate.engine.export.export_queue`);
* :func:`import_labels` ingests the labels that come back (``curate import-labels FILE``): CSV/TSV/Parquet/JSON
  rows keyed by ``sample_id`` or ``path``, or a Label Studio JSON export of the tasks :func:`export_batch` wrote.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from curate.engine.catalog import Catalog, CurateError


def export_batch(cat: Catalog, batch_id: int, out_dir: str | Path | None = None,
                 url_prefix: str | None = None) -> list[Path]:
    """Write one query batch as ``queue.csv``, ``queue.json`` and ``label_studio.json``.

    Uses :func:`engine.export.export_queue` (one format definition for the whole app); the default folder is
    ``<project>/exports/query-<batch_id>/`` (replaced if it exists).
    """
    from curate.engine.export import export_queue, queue_table

    queue = queue_table(cat)
    queue = queue[queue["batch_id"] == int(batch_id)].reset_index(drop=True)
    if queue.empty:
        raise CurateError(f"query batch {batch_id} does not exist; run `curate query` first")
    out = Path(out_dir) if out_dir is not None else cat.project.exports_dir / f"query-{int(batch_id)}"
    out.mkdir(parents=True, exist_ok=True)
    return export_queue(cat, out, url_prefix=url_prefix, queue=queue)


# ------------------------------------------------------------------------------------------------ labels back
@dataclass
class LabelImport:
    """What :func:`import_labels` did."""

    added: int
    new_classes: list[str]
    skipped_empty: int
    already_same: int
    rows: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


_ID_COLS = ("sample_id", "id")
_PATH_COLS = ("path", "image", "file", "filepath")
_LABEL_COLS = ("label", "class", "class_name", "choice")


def _records_from_file(path: Path) -> list[dict]:
    """Rows of {sample_id?, path?, label} from a CSV/TSV/Parquet/JSON file (Label Studio JSON export too)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        return df.to_dict("records")
    if suffix == ".parquet":
        return pd.read_parquet(path).astype(object).to_dict("records")
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise CurateError(f"{path}: expected a JSON list of records or Label Studio tasks")
        out = []
        for r in data:
            if isinstance(r, dict) and "annotations" in r:  # Label Studio export
                meta = {**(r.get("meta") or {}), **(r.get("data") or {})}
                label = None
                for ann in reversed(r.get("annotations") or []):
                    if ann.get("was_cancelled"):
                        continue
                    for res in ann.get("result") or []:
                        choices = (res.get("value") or {}).get("choices")
                        if choices:
                            label = choices[0]
                            break
                    if label is not None:
                        break
                out.append({"sample_id": meta.get("sample_id"), "path": meta.get("image"), "label": label})
            else:
                out.append(r)
        return out
    raise CurateError(f"{path}: unsupported labels file type {suffix!r}; use .csv, .tsv, .parquet or .json")


def import_labels(cat: Catalog, file: str | Path, source: str = "annotation") -> LabelImport:
    """Ingest labels that came back from annotators (``curate import-labels FILE``).

    The file has a ``label`` column (or ``class``/``class_name``) and identifies samples by ``sample_id`` or
    ``path`` (absolute, or as stored in the catalog).  Label Studio JSON exports of tasks made by
    :func:`export_batch` work as they are.  Rows with an empty label are skipped; when a sample appears twice the
    last row wins; a sample whose current label already equals the new one is not re-added.  Unknown samples or a
    missing column abort the whole import (nothing is written) with the offending row number.

    Returns
    -------
    LabelImport
    """
    path = Path(file).expanduser()
    if not path.is_file():
        raise CurateError(f"labels file {path} not found")
    records = _records_from_file(path)
    if not records:
        return LabelImport(added=0, new_classes=[], skipped_empty=0, already_same=0, rows=0)
    keys = {k for r in records for k in r}
    id_col = next((c for c in _ID_COLS if c in keys), None)
    path_col = next((c for c in _PATH_COLS if c in keys), None)
    label_col = next((c for c in _LABEL_COLS if c in keys), None)
    if label_col is None or (id_col is None and path_col is None):
        raise CurateError(f"{path}: needs a 'label' column and a 'sample_id' or 'path' column; found "
                          f"{', '.join(sorted(map(str, keys)))}")
    samples = cat.samples("id, path")
    by_path = dict(zip(samples["path"], samples["id"]))
    known_ids = set(samples["id"].tolist())
    wanted: dict[int, str] = {}
    skipped = 0
    for row_no, r in enumerate(records, start=2 if path.suffix.lower() in (".csv", ".tsv", ".txt") else 1):
        label = r.get(label_col)
        if label is None or (isinstance(label, float) and math.isnan(label)) or not str(label).strip():
            skipped += 1
            continue
        sid = None
        raw_id = r.get(id_col) if id_col else None
        if raw_id is not None and str(raw_id).strip() not in ("", "nan", "None"):
            try:
                sid = int(float(str(raw_id).strip()))
            except ValueError:
                raise CurateError(f"{path} row {row_no}: sample_id {raw_id!r} is not a number") from None
            if sid not in known_ids:
                raise CurateError(f"{path} row {row_no}: sample {sid} does not exist in this project")
        else:
            p = str(r.get(path_col) or "").strip() if path_col else ""
            sid = by_path.get(p)
            if sid is None and p:
                sid = by_path.get(str(Path(p).expanduser().resolve()))
            if sid is None:
                raise CurateError(f"{path} row {row_no}: no sample with path {p!r} in this project "
                                  f"(use the path shown by `curate query` or a sample_id column)")
        wanted[int(sid)] = str(label).strip()
    current = cat.current_labels().set_index("sample_id")["label"]
    rows = [(s, lab) for s, lab in wanted.items() if current.get(s) != lab]
    before = set(cat.class_names())
    cat.add_labels(rows, source=source)
    new_classes = sorted({lab for _, lab in rows} - before)
    return LabelImport(added=len(rows), new_classes=new_classes, skipped_empty=skipped,
                       already_same=len(wanted) - len(rows), rows=len(records))

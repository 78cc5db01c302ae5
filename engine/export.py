"""Export a cleaned dataset: manifest, ImageFolder tree, changes report and the annotation queue.

Decisions are applied by one rule, *the latest live decision about a sample wins* (undone decisions and
the undo records themselves are ignored; the catalog's ``decisions_in_force`` view, read through
:meth:`engine.catalog.Catalog.decisions_in_force`):

- ``remove``  -> the sample is left out;
- ``relabel`` -> the sample keeps its place with the new label (the label is the latest live relabel,
  exactly what :meth:`engine.catalog.Catalog.current_labels` reports);
- ``keep``    -> unchanged (reviewed, not an issue);
- ``merge`` on X -> X is the keeper of its duplicate set(s): X stays, and the decision counts as a
  ``remove`` of every other member of those sets, made at the time of the merge.  A member's own later
  decision (e.g. ``keep``) overrides it.

Everything is written inside one output folder, by default ``<project>/exports/<timestamp>/``::

    manifest.csv | manifest.parquet   path, label, split, sample_id of the samples that stay
    changes.csv + changes.json        what was removed / relabelled / labelled, why and by which decision
    imagefolder/[<split>/]<class>/<sample_id>_<file>   symlinks (default) or copies
    coco/annotations.json + coco/images/      COCO instances (removed images dropped, relabels moved to boxes)
    yolo/data.yaml + yolo/{images,labels}/<split>/      YOLO detection layout
    hf/                               Hugging Face ``save_to_disk`` (DatasetDict by split when there are splits)
    label_studio_review.json + label_studio_config.xml  review tasks for label issues or duplicates
    queue.csv + queue.json            the active-learning queue (``queries`` table), when there is one
    label_studio.json                 the queue's unlabelled samples as Label Studio import tasks
    export.json                       counts and options of this export

Class and split names become folder names only through :func:`engine.formats.base.safe_name`, and every path
is checked to stay inside the output folder, so a label such as ``../../etc`` cannot write outside it.

An export is all or nothing: it is written into a hidden sibling folder ``.<name>.partial-<pid>`` and renamed
to the chosen folder only when complete, so a killed export never leaves a half-written folder under the
chosen name (rerun the same command; the leftover partial folder of a dead process is removed then, or by
``curate doctor --repair``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from curate.engine.catalog import Catalog, CurateError, code_version, fault_pause, utcnow
from curate.engine.formats.base import safe_name
from curate.engine.formats.labelstudio import task_image

MANIFEST_FORMATS = ("csv", "parquet")
DATASET_FORMATS = ("coco", "yolo", "hf")  # engine.formats writers: the cleaned set in a detection / HF format
REVIEW_TARGETS = ("label-issues", "duplicates")
FORMATS = MANIFEST_FORMATS + ("imagefolder",) + DATASET_FORMATS + ("labelstudio", "source")
# what `--format source` exports for samples ingested as each kind (a FiftyOne directory tree is an ImageFolder)
SOURCE_FORMATS = {"coco": "coco", "yolo": "yolo", "hf": "hf", "fiftyone": "imagefolder", "imagefolder": "imagefolder",
                  "manifest": "csv", "unlabeled": "csv"}
LINK_MODES = ("symlink", "copy")
MANIFEST_COLUMNS = ["path", "label", "split", "sample_id"]
CHANGES_COLUMNS = ["sample_id", "path", "change", "given_label", "new_label", "action", "reason", "decision_id",
                   "decided_by", "decided_at"]
QUEUE_COLUMNS = ["batch_id", "rank", "sample_id", "path", "strategy", "score", "reason", "label"]
PARTIAL_MARK = ".partial-"


@dataclass
class ExportResult:
    """What :func:`export_dataset` wrote."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    n_samples: int = 0
    n_exported: int = 0
    n_removed: int = 0
    n_relabelled: int = 0
    n_labelled: int = 0
    n_unlabelled_skipped: int = 0
    n_missing_files: int = 0
    n_queue: int = 0
    format_counts: dict = field(default_factory=dict)  # per dataset format: images, boxes, ... written

    def summary(self) -> dict:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["files"] = [str(p.relative_to(self.out_dir)) for p in self.files]
        return d


# ------------------------------------------------------------------------------------------- names
def folder_names(names: Sequence[object]) -> dict[object, str]:
    """Map each distinct name to a distinct :func:`safe_name` folder (case-insensitively distinct).

    Two names that sanitise to the same folder (``a/b`` and ``a_b``) are told apart by a short hash suffix;
    the assignment is deterministic (sorted by name).
    """
    out: dict[object, str] = {}
    used: set[str] = set()
    for name in sorted({n for n in names}, key=lambda n: str(n)):
        d = safe_name(name)
        if d.lower() in used:
            d = safe_name(f"{d}-{hashlib.sha1(str(name).encode()).hexdigest()[:8]}")
        used.add(d.lower())
        out[name] = d
    return out


def _inside(root: Path, path: Path) -> Path:
    """``path`` if it lies inside ``root`` (checked on the resolved parent: the file may be a symlink)."""
    parent = path.parent.resolve()
    if not parent.is_relative_to(root.resolve()):
        raise CurateError(f"refusing to write {path}: it is outside the export folder {root}")
    return path


# ------------------------------------------------------------------------------------------- pure part
def apply_decisions(samples: pd.DataFrame, labels: pd.DataFrame, decisions: pd.DataFrame,
                    duplicates: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply live decisions to the catalog's samples; returns ``(manifest, changes)``.

    Parameters
    ----------
    samples : columns ``sample_id, path, split`` (one row per sample).
    labels : columns ``sample_id, label, given_label`` — the current label (after live relabels) and the
        label as ingested; missing or NULL means unlabelled.
    decisions : live decisions (not undone, not undo records), columns ``id, sample_id, action, new_label,
        reason, who, created_at``; ids increase with time.
    duplicates : columns ``set_id, sample_id`` (membership of duplicate sets; used by ``merge``).

    Returns
    -------
    manifest : ``path, label, split, sample_id`` of the samples that stay, ordered by ``sample_id``.
    changes : one row per removed, relabelled or newly labelled sample with the deciding decision
        (columns :data:`CHANGES_COLUMNS`), ordered by ``sample_id``.
    """
    s = samples[["sample_id", "path", "split"]].copy()
    s["sample_id"] = s["sample_id"].astype("int64")
    lab = labels[["sample_id", "label", "given_label"]].copy()
    lab["sample_id"] = lab["sample_id"].astype("int64")
    s = s.merge(lab, on="sample_id", how="left")

    cols = ["id", "sample_id", "action", "new_label", "reason", "who", "created_at"]
    d = decisions[cols].copy() if len(decisions) else pd.DataFrame({c: pd.Series(dtype="object") for c in cols})
    d[["id", "sample_id"]] = d[["id", "sample_id"]].astype("int64")
    d["reason"] = d["reason"].fillna("").astype(str)
    d["implied"] = False

    # merge on X -> an implied 'remove' of the other members of X's duplicate sets, with X's decision id
    merges = d[d["action"] == "merge"]
    events = [d]
    if len(merges) and len(duplicates):
        dup = duplicates[["set_id", "sample_id"]].astype("int64").drop_duplicates()
        keeper_sets = merges.merge(dup, on="sample_id")  # one row per (merge decision, set of its keeper)
        implied = keeper_sets.merge(dup.rename(columns={"sample_id": "member"}), on="set_id")
        implied = implied[implied["member"] != implied["sample_id"]]
        if len(implied):
            why = ("duplicate of sample " + implied["sample_id"].astype(str) + " (merge decision "
                   + implied["id"].astype(str) + ")")
            implied = implied.assign(
                reason=np.where(implied["reason"].str.len() > 0, why + ": " + implied["reason"], why),
                sample_id=implied["member"], action="remove", new_label=None, implied=True,
            )[cols + ["implied"]]
            events.append(implied)
    ev = pd.concat(events, ignore_index=True) if len(events) > 1 else d
    # the latest event per sample decides whether it stays; an own decision beats an implied one at equal id
    ev = ev.sort_values(["sample_id", "id", "implied"], ascending=[True, True, False])
    latest = ev.drop_duplicates("sample_id", keep="last").set_index("sample_id")

    removed_mask = s["sample_id"].map(latest["action"]).eq("remove").to_numpy()
    kept = s[~removed_mask]
    manifest = kept[["path", "label", "split", "sample_id"]].sort_values("sample_id").reset_index(drop=True)

    # ---- changes report
    removed = s[removed_mask].copy()
    rl = latest.loc[removed["sample_id"]]
    removed = removed.assign(change="removed", new_label=None, action=np.where(rl["implied"], "merge", "remove"),
                             reason=rl["reason"].to_numpy(), decision_id=rl["id"].to_numpy(),
                             decided_by=rl["who"].to_numpy(), decided_at=rl["created_at"].to_numpy())

    relabels = d[d["action"] == "relabel"].sort_values("id").drop_duplicates("sample_id", keep="last")
    relabels = relabels.set_index("sample_id")
    changed = kept[kept["label"].notna() & kept["sample_id"].isin(relabels.index)
                   & (kept["label"].astype(str) != kept["given_label"].astype(str))].copy()
    rr = relabels.loc[changed["sample_id"]]
    changed = changed.assign(
        change=np.where(changed["given_label"].isna(), "labelled", "relabelled"), new_label=changed["label"],
        action="relabel", reason=rr["reason"].to_numpy(), decision_id=rr["id"].to_numpy(),
        decided_by=rr["who"].to_numpy(), decided_at=rr["created_at"].to_numpy(),
    )
    changes = pd.concat([x for x in (removed, changed) if len(x)], ignore_index=True) if (len(removed) or len(changed)) \
        else pd.DataFrame(columns=CHANGES_COLUMNS)
    changes = changes[CHANGES_COLUMNS].sort_values("sample_id").reset_index(drop=True)
    return manifest, changes


# ------------------------------------------------------------------------------------------- catalog inputs
QUEUE_SQL = """
    SELECT q.batch_id, q.rank, q.sample_id, s.path, q.strategy, q.score, q.reason, cl.label
    FROM queries q JOIN samples s ON s.id = q.sample_id LEFT JOIN current_labels cl ON cl.sample_id = q.sample_id
    ORDER BY q.batch_id DESC, q.rank, q.sample_id
"""


def load_inputs(cat: Catalog) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(samples, labels, live decisions, duplicates)`` from the catalog, for :func:`apply_decisions`."""
    samples = cat.samples("id AS sample_id, path, split")
    labels = cat.current_labels()
    decisions = cat.decisions_in_force()
    duplicates = cat.query_df("SELECT set_id, sample_id FROM duplicates")
    return samples, labels, decisions, duplicates


def cleaned_dataset(cat: Catalog) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(manifest, changes)`` of the project with its live decisions applied (see :func:`apply_decisions`)."""
    return apply_decisions(*load_inputs(cat))


def queue_table(cat: Catalog) -> pd.DataFrame:
    """The annotation queue (``queries`` table) with each sample's path and current label, newest batch first."""
    return cat.query_df(QUEUE_SQL)[QUEUE_COLUMNS]


# ------------------------------------------------------------------------------------------- writers
def default_out_dir(cat: Catalog) -> Path:
    return cat.project.exports_dir / utcnow().strftime("%Y%m%d-%H%M%S")


def _prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """The resolved output folder, checked to be new or empty (it is not created here)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise CurateError(f"export folder {out} exists and is not a folder; pass another --out")
    if out.exists() and any(out.iterdir()):
        raise CurateError(f"export folder {out} is not empty; pass a new or empty --out folder")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_partial_exports(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Hidden ``.<name>.partial-<pid>`` folders in ``folder`` left by export processes that no longer run."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob(f".{name if name is not None else '*'}{PARTIAL_MARK}*")):
        pid = p.name.rsplit(PARTIAL_MARK, 1)[-1]
        if p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            out.append(p)
    return out


def _start_partial(out: Path) -> Path:
    """Create the hidden work folder next to ``out`` (removing dead exports' leftovers for the same name)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in stale_partial_exports(out.parent, out.name):
        shutil.rmtree(old, ignore_errors=True)
    work = out.parent / f".{out.name}{PARTIAL_MARK}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return work


def _finish_partial(work: Path, out: Path) -> None:
    """Move the completed export into place (one rename; an empty ``out`` made by the user is replaced)."""
    if out.exists():
        if any(out.iterdir()):
            raise CurateError(f"export folder {out} was filled by something else during the export; "
                              f"the export is in {work}")
        out.rmdir()
    os.rename(work, out)


def write_imagefolder(manifest: pd.DataFrame, root: Path, link: str = "symlink", out_dir: Path | None = None) -> tuple[int, int, int]:
    """Write ``root/[<split>/]<class>/<sample_id>_<file name>`` for the labelled rows of ``manifest``.

    The split level is used when any sample has a split.  Returns ``(n_written, n_unlabelled, n_missing)``.
    """
    if link not in LINK_MODES:
        raise CurateError(f"unknown link mode {link!r}; use one of {', '.join(LINK_MODES)}")
    out_dir = out_dir or root
    root.mkdir(parents=True, exist_ok=True)
    labelled = manifest[manifest["label"].notna()]
    n_unlabelled = len(manifest) - len(labelled)
    class_dirs = folder_names(labelled["label"].astype(str).tolist())
    use_split = labelled["split"].notna().any()
    split_dirs = folder_names(labelled["split"].fillna("unsplit").astype(str).tolist()) if use_split else {}
    n_written = n_missing = 0
    made: set[Path] = set()
    for path, label, split, sid in labelled[["path", "label", "split", "sample_id"]].itertuples(index=False):
        src = Path(path)
        if not src.is_file():
            n_missing += 1
            continue
        folder = root / split_dirs[str("unsplit" if split is None or pd.isna(split) else split)] if use_split else root
        folder = folder / class_dirs[str(label)]
        if folder not in made:
            _inside(out_dir, folder / "x")
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        dest = _inside(out_dir, folder / f"{int(sid)}_{safe_name(src.name)}")
        if link == "symlink":
            os.symlink(src.resolve(), dest)
        else:
            shutil.copy2(src, dest)
        n_written += 1
    return n_written, n_unlabelled, n_missing


def label_studio_tasks(queue: pd.DataFrame, url_prefix: str | None = None) -> list[dict]:
    """Label Studio import tasks for the unlabelled samples of the queue.

    ``data.image`` is the absolute file path, or ``url_prefix`` + the URL-quoted path (e.g.
    ``"/data/local-files/?d="`` for Label Studio's local-files storage); ``meta`` keeps the sample id,
    strategy, score and rank so annotations can be matched back.  Review tasks for label issues and duplicates
    (with pre-annotations) are :func:`engine.formats.labelstudio.review_tasks`.
    """
    tasks = []
    todo = queue[queue["label"].isna()]
    for r in todo.itertuples(index=False):
        image = task_image(r.path, url_prefix)
        tasks.append({
            "data": {"image": image, "sample_id": int(r.sample_id)},
            "meta": {"sample_id": int(r.sample_id), "batch_id": int(r.batch_id), "strategy": r.strategy,
                     "score": None if pd.isna(r.score) else float(r.score),
                     "rank": None if pd.isna(r.rank) else int(r.rank), "reason": r.reason},
        })
    return tasks


def _records_json(df: pd.DataFrame, path: Path) -> None:
    path.write_text(df.to_json(orient="records", date_format="iso", indent=1, force_ascii=False), encoding="utf-8")


def export_queue(cat: Catalog, out_dir: str | os.PathLike, url_prefix: str | None = None,
                 queue: pd.DataFrame | None = None) -> list[Path]:
    """Write ``queue.csv``, ``queue.json`` and ``label_studio.json`` into ``out_dir`` (an existing folder)."""
    out = Path(out_dir)
    queue = queue_table(cat) if queue is None else queue
    files = [_inside(out, out / "queue.csv"), out / "queue.json", out / "label_studio.json"]
    queue.to_csv(files[0], index=False)
    _records_json(queue, files[1])
    files[2].write_text(json.dumps(label_studio_tasks(queue, url_prefix), indent=1, ensure_ascii=False), encoding="utf-8")
    return files


def source_formats(cat: Catalog) -> list[str]:
    """The export formats matching how the project's samples were ingested (``--format source``)."""
    return list(dict.fromkeys(SOURCE_FORMATS.get(k, "csv") for k in cat.ingest_kinds())) or ["csv"]


def format_items(cat: Catalog, manifest: pd.DataFrame, fmt: str,
                 base: tuple[list[dict], list[dict], dict[int, tuple]] | None = None) -> tuple[list[dict], dict | None]:
    """The kept samples of ``manifest`` with what a format writer needs (given label, size, boxes, metadata, the
    format's own record and label rule), and the ``info`` of the first dataset imported in format ``fmt``.

    ``base``: :func:`_format_base` of the same manifest, read once when several formats are exported.
    """
    items, infos, sources = base if base is not None else _format_base(cat, manifest)
    info = next((i["info"] for i in infos if i["format"] == fmt), None)
    out = []
    for it in items:
        src = sources.get(it["sample_id"])
        own = src is not None and src[0] == fmt
        out.append({**it, "record": json.loads(src[1]) if own and isinstance(src[1], str) else None})
    return out, info


def _format_base(cat: Catalog, manifest: pd.DataFrame) -> tuple[list[dict], list[dict], dict[int, tuple]]:
    """The catalog reads :func:`format_items` needs, once per export: the items without their format record,
    the import infos, and ``sample_id -> (format, record JSON)``."""
    ids = manifest["sample_id"].astype("int64").tolist()
    infos = cat.import_infos()
    rule_by_source = {i["source"]: (i["info"] or {}).get("label_rule", "majority") for i in infos}
    given = cat.current_labels().set_index("sample_id")["given_label"]
    sizes = cat.samples("id, width, height").set_index("id")
    srcs = cat.sample_sources(ids)
    sources = {int(r.sample_id): (r.format, r.record, r.source) for r in srcs.itertuples(index=False)}
    widths, heights = sizes["width"].to_dict(), sizes["height"].to_dict()
    boxes = cat.boxes(ids)
    box_lists: dict[int, list[dict]] = {}
    for r in boxes.itertuples(index=False):
        box_lists.setdefault(int(r.sample_id), []).append(
            {"category": r.category, "x": r.x, "y": r.y, "w": r.w, "h": r.h,
             "attributes": json.loads(r.attributes) if isinstance(r.attributes, str) else {}})
    meta = cat.metadata(ids)
    meta_by_id: dict[int, dict] = {}
    for sid, k, v in meta.itertuples(index=False):
        meta_by_id.setdefault(int(sid), {})[k] = v
    items = []
    for path, label, split, sid in manifest[["path", "label", "split", "sample_id"]].itertuples(index=False):
        sid = int(sid)
        src = sources.get(sid)
        g = given.get(sid)
        w, h = widths.get(sid), heights.get(sid)
        items.append({
            "sample_id": sid, "path": path, "label": None if pd.isna(label) else label,
            "given_label": None if g is None or pd.isna(g) else g,
            "split": None if split is None or pd.isna(split) else split,
            "width": None if pd.isna(w) else int(w),
            "height": None if pd.isna(h) else int(h), "record": None,  # set per format by format_items
            "boxes": box_lists.get(sid, []), "metadata": meta_by_id.get(sid, {}),
            "label_rule": rule_by_source.get(src[2], "majority") if src is not None else "majority",
        })
    return items, infos, {sid: src[:2] for sid, src in sources.items()}


def export_dataset(cat: Catalog, out_dir: str | os.PathLike | None = None, formats: Sequence[str] = ("csv",),
                   link: str = "symlink", queue: bool = True, url_prefix: str | None = None,
                   review: str = "label-issues") -> ExportResult:
    """Export the cleaned dataset of a project (see the module docstring for the layout and the rules).

    Parameters
    ----------
    cat : the project catalog.
    out_dir : a new or empty folder; default ``<project>/exports/<UTC timestamp>/``.
    formats : any of ``csv``, ``parquet`` (manifest formats), ``imagefolder``, ``coco``, ``yolo``, ``hf``
        (dataset formats, :mod:`engine.formats`), ``labelstudio`` (review tasks, see ``review``) and ``source``
        (the format(s) the samples were ingested from); ``csv`` is added when no manifest format is given.
    link : ``symlink`` (default) or ``copy`` for the ImageFolder tree and the COCO / YOLO images.
    queue : also export the annotation queue when the project has one.
    url_prefix : prefix for ``data.image`` in the Label Studio files (default: absolute file paths).
    review : ``labelstudio`` tasks for ``label-issues`` or ``duplicates``.

    Returns
    -------
    ExportResult
        The folder, the files written and the counts (also saved as ``export.json``).
    """
    formats = [f.lower() for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise CurateError(f"unknown export format {bad[0]!r}; use one or more of {', '.join(FORMATS)}")
    if "source" in formats:
        formats = list(dict.fromkeys([f for f in formats if f != "source"] + source_formats(cat)))
    if review not in REVIEW_TARGETS:
        raise CurateError(f"unknown review target {review!r}; use --for {' or '.join(REVIEW_TARGETS)}")
    if link not in LINK_MODES:
        raise CurateError(f"unknown link mode {link!r}; use one of {', '.join(LINK_MODES)}")
    final = _prepare_out_dir(out_dir or default_out_dir(cat))
    samples, labels, decisions, duplicates = load_inputs(cat)
    manifest, changes = apply_decisions(samples, labels, decisions, duplicates)
    res = ExportResult(out_dir=final, n_samples=len(samples), n_exported=len(manifest),
                       n_removed=int((changes["change"] == "removed").sum()),
                       n_relabelled=int((changes["change"] == "relabelled").sum()),
                       n_labelled=int((changes["change"] == "labelled").sum()))
    out = _start_partial(final)
    try:
        res.out_dir = out  # while writing; export.json names the final folder
        _write_export(cat, out, final, res, manifest, changes, formats, link, queue, url_prefix, review)
        _finish_partial(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    res.out_dir, res.files = final, [final / p.relative_to(out) for p in res.files]
    return res


def _write_export(cat: Catalog, out: Path, final: Path, res: ExportResult, manifest: pd.DataFrame, changes: pd.DataFrame,
                  formats: list[str], link: str, queue: bool, url_prefix: str | None, review: str = "label-issues"
                  ) -> None:
    manifest_formats = [f for f in formats if f in MANIFEST_FORMATS] or ["csv"]
    for fmt in dict.fromkeys(manifest_formats):
        p = _inside(out, out / f"manifest.{fmt}")
        manifest.to_csv(p, index=False) if fmt == "csv" else manifest.to_parquet(p, index=False)
        res.files.append(p)
    fault_pause("CURATE_TEST_EXPORT_PAUSE", f"{out} half written")  # fault tests kill an export here
    changes.to_csv(out / "changes.csv", index=False)
    _records_json(changes, out / "changes.json")
    res.files += [out / "changes.csv", out / "changes.json"]

    if "imagefolder" in formats:
        n_written, res.n_unlabelled_skipped, res.n_missing_files = write_imagefolder(
            manifest, out / "imagefolder", link=link, out_dir=out)
        res.files.append(out / "imagefolder")

    def place(src: Path, dest: Path) -> None:
        _inside(out, dest)
        os.symlink(src.resolve(), dest) if link == "symlink" else shutil.copy2(src, dest)

    base = _format_base(cat, manifest) if any(f in formats for f in DATASET_FORMATS) else None
    for fmt in (f for f in DATASET_FORMATS if f in formats):
        from curate.engine.formats import coco, hf, yolo

        items, info = format_items(cat, manifest, fmt, base)
        folder = _inside(out, out / fmt / "x").parent
        if fmt == "hf":
            res.format_counts[fmt] = hf.write(items, folder, info)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            res.format_counts[fmt] = (coco if fmt == "coco" else yolo).write(items, folder, info, link, place)
        res.files.append(folder)

    if "labelstudio" in formats:
        from curate.engine.formats import labelstudio

        res.files += labelstudio.write_review(cat, out, review, url_prefix)
        res.format_counts["labelstudio"] = {"for": review}

    if queue:
        q = queue_table(cat)
        if len(q):
            res.n_queue = len(q)
            res.files += export_queue(cat, out, url_prefix=url_prefix, queue=q)

    info = {**res.summary(), "out_dir": str(final), "formats": formats, "link": link, "created_at": utcnow().isoformat(),
            "code_version": code_version(), "project": str(cat.root)}
    (out / "export.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    res.files.append(out / "export.json")

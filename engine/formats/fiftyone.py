"""FiftyOne classification exports, read from their documented on-disk layouts (no ``fiftyone`` package needed).

``fiftyone.types.FiftyOneImageClassificationDataset``::

    <dir>/data/<uuid>.<ext>
    <dir>/labels.json   {"classes": [...], "labels": {"<uuid>": <target>, ...}}

where a target is a class index into ``classes`` (or a class name when ``classes`` is null), ``null`` for an
unlabeled image, or ``{"label": ..., "confidence": ..., "attributes": {...}}``; a folder whose ``train/``,
``val``... subfolders each hold this layout is read split by split.

``fiftyone.types.ImageClassificationDirectoryTree``: ``<dir>/<class>/<image>``, with ``_unlabeled/`` for
unlabeled images (an ImageFolder; ``curate export --format imagefolder`` writes it back).

A confidence becomes metadata ``fiftyone_confidence``; attributes become metadata.
"""

from __future__ import annotations

from pathlib import Path

from curate.engine.catalog import CurateError
from curate.engine.formats.base import (
    SPLIT_NAMES,
    Candidate,
    Parsed,
    discover_imagefolder,
    is_image,
    peek_json,
    read_json,
    scalar_metadata,
    walk_files,
)

UNLABELED_DIR = "_unlabeled"


def _is_labels_json(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        data = peek_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "labels" in data and "classes" in data


def looks_like_fiftyone(root: Path) -> bool:
    """A folder with ``labels.json`` holding ``classes`` and ``labels`` (or split subfolders that each have one)."""
    if root.is_file():  # the labels.json itself
        return root.name == "labels.json" and _is_labels_json(root)
    if _is_labels_json(root / "labels.json"):
        return True
    subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    return bool(subs) and all(_is_labels_json(d / "labels.json") for d in subs)


def _target(value, classes: list | None, where: str) -> tuple[str | None, dict]:
    extra: dict = {}
    if isinstance(value, dict):
        if value.get("confidence") is not None:
            extra["fiftyone_confidence"] = str(value["confidence"])
        extra.update(scalar_metadata(value.get("attributes") or {}))
        value = value.get("label")
    if value is None:
        return None, extra
    if classes is not None and isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(classes):
            raise ValueError(f"{where}: class index {value} but 'classes' has {len(classes)} entries")
        return str(classes[value]), extra
    return str(value), extra


def _parse_labels_dataset(root: Path, split: str | None, out: list, problems: list[str]) -> dict:
    lj = root / "labels.json"
    data = read_json(lj, "FiftyOne labels file")
    classes = data.get("classes")
    labels = data.get("labels")
    if not isinstance(labels, dict) or (classes is not None and not isinstance(classes, list)):
        raise CurateError(f"{lj}: 'labels' must map image names to targets and 'classes' be a list or null; "
                          "export it again as FiftyOneImageClassificationDataset")
    files = {}
    data_dir = root / "data"
    for f in (walk_files(data_dir) if data_dir.is_dir() else []):
        if is_image(f):
            files.setdefault(str(f.relative_to(data_dir).with_suffix("")), f)
    for key, value in labels.items():
        where = f"{lj.name} ({root.name}) entry {key!r}"
        f = files.pop(str(key), None)
        if f is None:
            problems.append(f"{where}: no image data/{key}.* found; the label was skipped (add the image or "
                            "delete the entry)")
            continue
        try:
            label, meta = _target(value, classes, where)
        except ValueError as exc:
            problems.append(f"{exc}; the image was skipped (fix the index)")
            continue
        out.append(Candidate(f, label=label, split=split, metadata=meta, source_id=str(key),
                             record={"key": key}, where=where))
    for key, f in sorted(files.items()):  # images without an entry: unlabeled
        out.append(Candidate(f, label=None, split=split, source_id=key, record={"key": key}))
    return {"classes": classes}


def parse(root: Path, split: str | None = None) -> Parsed:
    """Read a FiftyOne classification export (see the module docstring)."""
    root = Path(root).expanduser().resolve()
    if root.is_file() and root.name == "labels.json":
        root = root.parent
    if not root.is_dir():
        raise CurateError(f"{root} is not a folder; --kind fiftyone needs a FiftyOne export folder")
    out: list = []
    problems: list[str] = []
    if (root / "labels.json").is_file():
        info = _parse_labels_dataset(root, split, out, problems)
        return Parsed(out, problems, {"type": "FiftyOneImageClassificationDataset", **info})
    subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subs and all((d / "labels.json").is_file() for d in subs):
        classes = None
        for d in subs:
            sp = d.name.lower() if d.name.lower() in SPLIT_NAMES else split
            classes = _parse_labels_dataset(d, sp, out, problems)["classes"] or classes
        return Parsed(out, problems, {"type": "FiftyOneImageClassificationDataset", "classes": classes,
                                      "splits": [d.name for d in subs]})
    # ImageClassificationDirectoryTree
    cands = discover_imagefolder(root, split, problems)
    for c in cands:
        if c.label == UNLABELED_DIR:
            c.label = None
    return Parsed(cands, problems, {"type": "ImageClassificationDirectoryTree"})

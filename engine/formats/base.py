"""What every importer and writer shares: the records ingest consumes, file discovery and safe names.

The lowest module of the ingest / formats / export trio, importing none of them: :mod:`engine.ingest` (generic
ingest), the format modules of :mod:`engine.formats` (COCO, YOLO, Hugging Face, FiftyOne, Label Studio) and
:mod:`engine.export` all build on it.

* records — :class:`Candidate` (one file to ingest and what its layout / format says about it), :class:`Box`
  (one object box) and :class:`Parsed` (what a format importer read);
* labels — :func:`image_label` (an image's label from its boxes' categories, by rule) and its inverse
  :func:`label_categories`;
* files — :func:`walk_files` (every file under a folder, symlink loops walked once), :func:`is_image`,
  :func:`discover_imagefolder` (``root/<class>/<img>`` or ``root/<split>/<class>/<img>``) and
  :func:`display_path` (the path text the catalog stores);
* reading and writing — :func:`read_json`, :func:`scalar_metadata` and :func:`safe_name` (a harmless path
  component for class / split / file names).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from curate.engine.catalog import CurateError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = {"train", "val", "valid", "validation", "test", "dev"}
LABEL_RULES = ("majority", "single", "multi")
MULTI_SEP = "|"
_MAX_NAME = 120
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


# ----------------------------------------------------------------------------------------------- records
@dataclass
class Box:
    """One object box in pixels, COCO's convention: top-left corner ``x, y``, width ``w``, height ``h``.

    ``attributes`` keeps what the format had besides the box (COCO annotation id, iscrowd, area, segmentation;
    a YOLO polygon), so an export can write it back.
    """

    category: str
    x: float
    y: float
    w: float
    h: float
    attributes: dict = field(default_factory=dict)


@dataclass
class Candidate:
    """One file to ingest: where it is, and what the layout / format says about it.

    Every importer (ImageFolder, manifest, :mod:`engine.formats`) produces a list of these;
    :func:`engine.ingest.ingest` does the rest (hashing, decoding, quarantine, transactional writes) the same way
    for all of them.
    """

    path: Path
    label: str | None = None
    split: str | None = None
    row: int | None = None  # manifest row number (1-based, header excluded) for error messages
    metadata: dict[str, str] = field(default_factory=dict)  # extra columns / attributes, kept as sample metadata
    boxes: list[Box] | None = None  # None: the format has no boxes; []: it has, and this image has none
    source_id: str | None = None  # the sample's id in its format (COCO image id, YOLO relative path, HF row)
    record: dict | None = None  # the format's own record (e.g. the COCO image dict), written back on export
    where: str | None = None  # where it came from, for messages (e.g. "COCO image id 7")


@dataclass
class Parsed:
    """What an importer read: the candidates for ingest, skipped rows (one line each) and dataset info."""

    candidates: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- labels
def image_label(categories: Sequence[str], rule: str = "majority", areas: Sequence[float] | None = None) -> str | None:
    """The image-level label of an image whose boxes have ``categories``.

    Parameters
    ----------
    categories : the category of each box (empty: the image has no boxes -> unlabeled).
    rule : ``majority`` — the category with the most boxes (ties: the larger total box area, then the name);
        ``single`` — the category when every box shares it, else None; ``multi`` — the sorted distinct
        categories joined by ``|``.
    areas : box areas, for the majority tie-break.

    Examples
    --------
    >>> image_label(["dog", "cat", "dog"]), image_label(["dog", "cat"], "single"), image_label(["dog", "cat"], "multi")
    ('dog', None, 'cat|dog')
    """
    if rule not in LABEL_RULES:
        raise CurateError(f"unknown label rule {rule!r}; use one of {', '.join(LABEL_RULES)}")
    if not categories:
        return None
    counts = Counter(categories)
    if rule == "single":
        return categories[0] if len(counts) == 1 else None
    if rule == "multi":
        return MULTI_SEP.join(sorted(counts))
    area: Counter = Counter()
    for c, a in zip(categories, areas if areas is not None else [0.0] * len(categories)):
        area[c] += float(a or 0.0)
    return sorted(counts, key=lambda c: (-counts[c], -area[c], c))[0]


def label_categories(label: str | None, rule: str) -> list[str]:
    """The categories an image-level label stands for (the inverse of :func:`image_label` for ``multi``)."""
    if label is None:
        return []
    return str(label).split(MULTI_SEP) if rule == "multi" else [str(label)]


# ----------------------------------------------------------------------------------------------- files
def is_image(p: Path) -> bool:
    """Whether ``p`` has an image file extension (:data:`IMAGE_EXTENSIONS`)."""
    return p.suffix.lower() in IMAGE_EXTENSIONS


def walk_files(root: Path, skipped: list[str] | None = None) -> list[Path]:
    """All regular files under root, sorted.  Symlinked folders are followed once: a link back to a folder already
    walked (a symlink loop, or a second link to the same folder) is skipped and noted in ``skipped``."""
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link: walk nothing twice
            if skipped is not None:
                skipped.append(f"{display_path(Path(dirpath))}: symlink loop or second link to "
                               f"{display_path(Path(os.path.realpath(dirpath)))}; "
                               "skipped (its files are ingested once)")
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                files.append(Path(dirpath) / name)
    return files


def discover_imagefolder(root: Path, split: str | None = None, skipped: list[str] | None = None) -> list[Candidate]:
    """root/<class>/<img> or root/<split>/<class>/<img>; images directly under a split folder are unlabeled."""
    out: list[Candidate] = []
    for f in walk_files(root, skipped):
        rel = f.relative_to(root).parts
        if len(rel) < 2:
            continue  # a stray file at the root of an ImageFolder has no class
        if rel[0].lower() in SPLIT_NAMES:
            sp = rel[0].lower()
            label = rel[1] if len(rel) >= 3 else None
        else:
            sp = split
            label = rel[0]
        out.append(Candidate(f, label=label, split=sp))
    return out


def display_path(path: Path) -> str:
    """Absolute path as text that DuckDB can store (undecodable bytes are backslash-escaped)."""
    s = os.path.abspath(os.fspath(path))
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------------------------- reading and writing
_PARSED: dict[tuple, object] = {}  # at most one file: what format detection parsed, for the reader that follows


def _json_key(path: Path) -> tuple:
    st = Path(path).stat()
    return str(Path(path).resolve()), st.st_mtime_ns, st.st_size


def peek_json(path: Path) -> object:
    """Parse a JSON file for format detection and keep the result for :func:`read_json`, so that detecting and then
    reading a large COCO / FiftyOne file parses it once.  Raises what ``json.loads`` / ``open`` raise."""
    key = _json_key(path)
    if key not in _PARSED:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        _PARSED.clear()
        _PARSED[key] = data
    return _PARSED[key]


def read_json(path: Path, what: str) -> object:
    try:
        cached = _PARSED.pop(_json_key(path), None) if _PARSED else None
        if cached is not None:
            return cached
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CurateError(f"cannot read {what} {path}: not UTF-8 text; save it as UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise CurateError(f"cannot read {what} {path}: invalid JSON at line {exc.lineno} column {exc.colno} "
                          f"({exc.msg}); fix the file (e.g. check it with `python -m json.tool`)") from exc
    except OSError as exc:
        raise CurateError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def scalar_metadata(record: dict, skip: Sequence[str] = ()) -> dict[str, str]:
    """The scalar fields of ``record`` (str/int/float/bool, not None) as strings, for sample metadata."""
    out = {}
    for k, v in record.items():
        if k in skip or v is None or isinstance(v, (list, dict)):
            continue
        if isinstance(v, float) and v != v:  # NaN
            continue
        out[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def safe_name(name: object) -> str:
    """A single, harmless path component for a class / split / file name.

    Path separators, ``:``, control and Windows-invalid characters become ``_``; leading and trailing dots
    and spaces are stripped (so ``.``, ``..`` and hidden names cannot occur); Windows device names get a
    ``_`` suffix; empty results become ``_``.  Unicode letters are kept (NFC-normalised).

    Examples
    --------
    >>> safe_name("../../etc"), safe_name("/abs/path"), safe_name("cat"), safe_name("..")
    ('_.._etc', '_abs_path', 'cat', '_')
    """
    s = unicodedata.normalize("NFC", "" if name is None else str(name))
    s = re.sub(r'[\\/:*?"<>|\x00-\x1f\x7f]', "_", s)
    s = s.strip(" .")
    if s.split(".")[0].lower() in _WINDOWS_RESERVED:
        s += "_"
    if len(s) > _MAX_NAME:  # keep it unique when truncating
        s = s[: _MAX_NAME - 9] + "-" + hashlib.sha1(s.encode()).hexdigest()[:8]
    return s or "_"

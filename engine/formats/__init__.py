"""Dataset formats in and out: COCO, YOLO, Hugging Face ``datasets``, FiftyOne exports, Label Studio.

Each importer module turns a dataset on disk into the same intermediate list that :func:`engine.ingest.ingest`
consumes — :class:`engine.ingest.Candidate` records (path, label, split, metadata, boxes, the format's own id and
record) — plus a dataset-level ``info`` dict (COCO categories, YOLO names, HF features) that the catalog keeps
(``imports`` table) so an export can write the same format back.  Hashing, decoding, quarantine, transactions and
idempotent reruns are ingest's job, done once for every format.

=========  ==========================================================  =========================================
kind       source                                                      detected when
=========  ==========================================================  =========================================
coco       an instances JSON (``images``, ``annotations``,             a .json holding those three keys
           ``categories``)
yolo       ``data.yaml`` (``names``, ``train``/``val``/``test``)        a .yaml file, or a folder with data.yaml
           + ``labels/*.txt``
hf         a ``save_to_disk`` folder, or a dataset name in the local   a folder with dataset_info.json /
           Hugging Face cache                                          state.json / dataset_dict.json
fiftyone   FiftyOneImageClassificationDataset (``labels.json`` +       a folder with labels.json holding
           ``data/``) or ImageClassificationDirectoryTree              ``classes`` and ``labels``
=========  ==========================================================  =========================================

Detection formats (COCO, YOLO) keep every box (:class:`engine.ingest.Box`, pixels, top-left corner); the image's
label follows from its boxes' categories by a rule the user picks (:func:`image_label`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from curate.engine.catalog import CurateError

FORMATS = ("coco", "yolo", "hf", "fiftyone")
BOX_FORMATS = ("coco", "yolo")
LABEL_RULES = ("majority", "single", "multi")
MULTI_SEP = "|"


@dataclass
class Parsed:
    """What an importer read: the candidates for ingest, skipped rows (one line each) and dataset info."""

    candidates: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


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


def read_json(path: Path, what: str) -> object:
    try:
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


def detect_format(source: Path) -> str | None:
    """The format of ``source`` when its files say so unambiguously, else None (see the module table)."""
    source = Path(source)
    if source.is_file():
        suffix = source.suffix.lower()
        if suffix == ".json":
            from curate.engine.formats import coco, fiftyone

            if coco.looks_like_coco(source):
                return "coco"
            return "fiftyone" if fiftyone.looks_like_fiftyone(source) else None
        if suffix in (".yaml", ".yml"):
            return "yolo"
        return None
    if not source.is_dir():
        return None
    if (source / "data.yaml").is_file():
        return "yolo"
    if any((source / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return "hf"
    from curate.engine.formats import fiftyone

    if fiftyone.looks_like_fiftyone(source):
        return "fiftyone"
    return None


def parse(kind: str, source: str, split: str | None = None, label_rule: str = "majority",
          images_dir=None, project_root: Path | None = None) -> Parsed:
    """Read ``source`` in format ``kind`` (one of :data:`FORMATS`) into a :class:`Parsed`."""
    if label_rule not in LABEL_RULES:
        raise CurateError(f"unknown label rule {label_rule!r}; use one of {', '.join(LABEL_RULES)}")
    if kind == "coco":
        from curate.engine.formats import coco

        return coco.parse(Path(source), images_dir=images_dir, label_rule=label_rule, split=split)
    if kind == "yolo":
        from curate.engine.formats import yolo

        return yolo.parse(Path(source), label_rule=label_rule, split=split)
    if kind == "hf":
        from curate.engine.formats import hf

        return hf.parse(source, out_root=Path(project_root) / "imported", split=split)
    if kind == "fiftyone":
        from curate.engine.formats import fiftyone

        return fiftyone.parse(Path(source), split=split)
    raise CurateError(f"unknown format {kind!r}; use one of {', '.join(FORMATS)}")


from curate.engine.formats import hf  # noqa: E402  (hf.looks_like_name is used by ingest before any parse)

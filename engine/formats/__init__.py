"""Dataset formats in and out: COCO, YOLO, Hugging Face ``datasets``, FiftyOne exports, Label Studio.

Each importer module turns a dataset on disk into the same intermediate list that :func:`engine.ingest.ingest`
consumes — :class:`engine.formats.base.Candidate` records (path, label, split, metadata, boxes, the format's own
id and record) — plus a dataset-level ``info`` dict (COCO categories, YOLO names, HF features) that the catalog
keeps (``imports`` table) so an export can write the same format back.  Hashing, decoding, quarantine,
transactions and idempotent reruns are ingest's job, done once for every format.

The records and helpers every format shares (:class:`Candidate`, :class:`Box`, :class:`Parsed`,
:func:`image_label`, file discovery, :func:`engine.formats.base.safe_name`) live in :mod:`engine.formats.base`,
which imports neither ingest, export nor the format modules, so those can all build on it without import circles.

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

Detection formats (COCO, YOLO) keep every box (:class:`engine.formats.base.Box`, pixels, top-left corner); the
image's label follows from its boxes' categories by a rule the user picks (:func:`image_label`).
"""

from __future__ import annotations

from pathlib import Path

from curate.engine.catalog import CurateError
from curate.engine.formats.base import (  # noqa: F401  (the shared vocabulary, importable from the package)
    LABEL_RULES,
    MULTI_SEP,
    Box,
    Candidate,
    Parsed,
    image_label,
    label_categories,
    read_json,
    scalar_metadata,
)

FORMATS = ("coco", "yolo", "hf", "fiftyone")
BOX_FORMATS = ("coco", "yolo")


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

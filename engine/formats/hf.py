"""Hugging Face ``datasets`` in and out (needs the ``datasets`` package: ``pip install 'curate[formats]'``).

In: a ``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict`` whose keys are the splits), or the name of a
dataset already in the local Hugging Face cache (read offline: nothing is downloaded).  The image column is the
one with the ``Image`` feature (``image`` preferred), the label column ``label`` (or the first ``ClassLabel``);
ClassLabel ids become their names and ``-1`` means unlabeled.  The images live inside the Arrow data, and the
catalog points at files, so each is written once, with its original bytes, to
``<project>/imported/<dataset>/<split>/<row>.<ext>``.  Other scalar columns and the row index (``hf_row``) are kept
as sample metadata.

Out (:func:`write`): ``save_to_disk`` of the cleaned set with the original features (ClassLabel names in their
original order; classes only a relabel introduced are appended), a ``DatasetDict`` by split when the samples have
splits.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

from curate.engine.catalog import CurateError
from curate.engine.formats.base import Candidate, Parsed, safe_name

_PIL_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
            "PPM": ".ppm"}


def looks_like_name(text: str) -> bool:
    """``owner/name`` or ``name``: a Hub dataset id rather than a path."""
    return bool(re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", text)) and not text.startswith(".")


def _datasets():
    try:
        import datasets
    except ImportError as exc:
        raise CurateError("Hugging Face datasets need the 'datasets' package: pip install 'curate[formats]'") from exc
    return datasets


def load(source: str):
    """The ``Dataset`` / ``DatasetDict`` at ``source`` (a save_to_disk folder, or a cached dataset's name)."""
    p = Path(source).expanduser()
    if p.is_dir():
        ds = _datasets()
        try:
            return ds.load_from_disk(str(p))
        except FileNotFoundError as exc:
            raise CurateError(f"{p} is not a Hugging Face save_to_disk folder ({str(exc).splitlines()[0]}); "
                              "pass the folder given to Dataset.save_to_disk") from exc
    # the local cache only: never reach the network (set before `datasets` reads its config)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    ds = _datasets()
    for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(ds.config, attr):
            setattr(ds.config, attr, True)
    try:
        return ds.load_dataset(source)
    except Exception as exc:
        raise CurateError(f"dataset {source!r} is not in the local Hugging Face cache ({type(exc).__name__}); "
                          "on a machine with access run `datasets.load_dataset(NAME).save_to_disk(DIR)` and pass DIR"
                          ) from exc


def _columns(d, source: str) -> tuple[str, str | None]:
    ds = _datasets()
    images = [k for k, f in d.features.items() if isinstance(f, ds.Image)]
    if not images:
        raise CurateError(f"{source}: no column with the Image feature (columns: {', '.join(d.features)}); "
                          "cast the image column with `ds.cast_column('image', datasets.Image())` and save again")
    image = "image" if "image" in images else images[0]
    label = "label" if "label" in d.features else next(
        (k for k, f in d.features.items() if isinstance(f, ds.ClassLabel)), None)
    return image, label


def parse(source: str, out_root: Path, split: str | None = None) -> Parsed:
    """Read a Hugging Face dataset and write its images under ``out_root`` (see the module docstring)."""
    from PIL import Image as PILImage

    ds = _datasets()
    data = load(source)
    parts = list(data.items()) if isinstance(data, ds.DatasetDict) else [(None, data)]
    name = safe_name(Path(source).name if Path(source).expanduser().exists() else source.replace("/", "__"))
    problems: list[str] = []
    out = []
    info: dict = {"splits": [k for k, _ in parts] if isinstance(data, ds.DatasetDict) else None, "source": source}
    for key, d in parts:
        image_col, label_col = _columns(d, source)
        names = None
        if label_col is not None and isinstance(d.features[label_col], ds.ClassLabel):
            names = list(d.features[label_col].names)
        info.update(image_column=image_col, label_column=label_col, class_names=names,
                    features=d.features.to_dict())
        scalar_cols = [k for k, f in d.features.items()
                       if k not in (image_col, label_col) and isinstance(f, ds.Value)]
        raw = d.cast_column(image_col, ds.Image(decode=False))
        folder = out_root / name / safe_name(key or split or "all")
        folder.mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(raw):
            where = f"{source} {key + ' ' if key else ''}row {i}"
            img = row[image_col] or {}
            data_bytes = img.get("bytes")
            if data_bytes is None and img.get("path") and Path(img["path"]).is_file():
                data_bytes = Path(img["path"]).read_bytes()
            if data_bytes is None:
                problems.append(f"{where}: the image is empty (no bytes, no readable path); the row was skipped")
                continue
            ext = Path(str(img.get("path") or "")).suffix.lower()
            if not ext:
                try:
                    with PILImage.open(io.BytesIO(data_bytes)) as im:
                        ext = _PIL_EXT.get(im.format or "", ".img")
                except Exception:
                    ext = ".img"  # ingest quarantines it with the reason
            target = folder / f"{i:06d}{ext}"
            if not (target.is_file() and target.read_bytes() == data_bytes):
                tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
                tmp.write_bytes(data_bytes)
                os.replace(tmp, target)  # a rerun finds the same bytes and writes nothing
            label = None
            if label_col is not None and row[label_col] is not None:
                v = row[label_col]
                if names is not None:
                    if int(v) >= 0:
                        if int(v) >= len(names):
                            problems.append(f"{where}: label id {v} but ClassLabel has {len(names)} names; "
                                            "the row was skipped (fix the label)")
                            continue
                        label = names[int(v)]
                elif str(v).strip():
                    label = str(v).strip()
            meta = {"hf_row": str(i)}
            for c in scalar_cols:
                v = row[c]
                if v is not None and str(v) != "":
                    meta[c] = str(v).lower() if isinstance(v, bool) else str(v)
            out.append(Candidate(target, label=label, split=(key or split), metadata=meta,
                                 source_id=f"{key or ''}:{i}", record={"split": key, "row": i}, where=where))
    return Parsed(out, problems, info)


# ------------------------------------------------------------------------------------------- out
def _typed(values: list, feature) -> list:
    ds = _datasets()
    if not isinstance(feature, ds.Value):
        return values
    dtype = feature.dtype
    conv = (int if dtype.startswith(("int", "uint")) else float if dtype.startswith("float")
            else (lambda v: str(v).lower() == "true") if dtype == "bool" else str)
    out = []
    for v in values:
        try:
            out.append(None if v is None else conv(v))
        except (TypeError, ValueError):
            out.append(None)
    return out


def write(items: list[dict], out_dir: Path, info: dict | None) -> dict:
    """``save_to_disk`` the cleaned set into ``out_dir``.

    ``items``: one dict per kept sample — ``path, label, split, metadata`` (dict).  Returns counts.
    """
    ds = _datasets()
    info = info or {}
    names = list(info.get("class_names") or [])
    for it in items:
        if it.get("label") is not None and str(it["label"]) not in names:
            names.append(str(it["label"]))
    orig = ds.Features.from_dict(info["features"]) if info.get("features") else None
    image_col = info.get("image_column") or "image"
    label_col = info.get("label_column") or "label"
    meta_keys = sorted({k for it in items for k in (it.get("metadata") or {}) if k != "hf_row"})
    features = {image_col: ds.Image(), label_col: ds.ClassLabel(names=names)}
    for k in meta_keys:
        features[k] = orig[k] if orig is not None and k in orig and isinstance(orig[k], ds.Value) else ds.Value("string")
    feats = ds.Features(features)

    def build(rows: list[dict]):
        cols = {image_col: [{"bytes": Path(r["path"]).read_bytes(), "path": Path(r["path"]).name} for r in rows],
                label_col: [names.index(str(r["label"])) if r.get("label") is not None else -1 for r in rows]}
        for k in meta_keys:
            cols[k] = _typed([(r.get("metadata") or {}).get(k) for r in rows], features[k])
        return ds.Dataset.from_dict(cols, features=feats)

    items = [it for it in items if Path(it["path"]).is_file()]
    splits = sorted({str(it["split"]) for it in items if it.get("split")})
    if splits or info.get("splits"):
        order = [s for s in (info.get("splits") or []) if s in splits] + [s for s in splits if s not in (info.get("splits") or [])]
        parts = {s: build([it for it in items if (it.get("split") or "train") == s]) for s in order or ["train"]}
        if any(not it.get("split") for it in items) and "train" not in parts:
            parts["train"] = build([it for it in items if not it.get("split")])
        data = ds.DatasetDict(parts)
    else:
        data = build(items)
    data.save_to_disk(str(out_dir))
    return {"rows": len(items), "classes": len(names), "splits": splits}

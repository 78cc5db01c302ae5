"""YOLO detection datasets (Ultralytics layout) in and out.

In: ``data.yaml`` names the classes (``names``: a list, or a ``{id: name}`` map) and the splits (``train``,
``val``, ``test``: a folder of images, a .txt list of image paths, or a list of either; relative to ``path`` when
given, else to the yaml's folder).  Each image ``.../images/.../x.jpg`` has its boxes in ``.../labels/.../x.txt``,
one ``class cx cy w h`` line per box (normalised to the image size; a longer line is a polygon, whose bounding box
is used and whose points are kept).  A missing label file means no boxes.  The image label follows from the
boxes' classes by the chosen rule (:func:`engine.formats.image_label`).

Out (:func:`write`): ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/`` with removed images dropped and a
relabel moving the image's boxes of the old class to the new one (same rule as COCO).
"""

from __future__ import annotations

from pathlib import Path

from curate.engine.catalog import CurateError
from curate.engine.formats.base import Box, Candidate, Parsed, image_label, is_image, walk_files

SPLIT_KEYS = ("train", "val", "test")


def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CurateError(f"cannot read YOLO file {path}: invalid YAML{where}; fix the file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CurateError(f"cannot read YOLO file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CurateError(f"{path} is not a YOLO data.yaml (expected a mapping with 'names' and 'train'/'val')")
    return data


def _names(data: dict, path: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise CurateError(f"{path}: 'names' keys must be class ids 0, 1, ...; fix the mapping") from None
        if ids != list(range(len(ids))):
            raise CurateError(f"{path}: 'names' ids must be 0..{len(ids) - 1} without gaps; fix the mapping")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if not isinstance(names, list) or not names:
        raise CurateError(f"{path}: needs 'names' (a list of class names, or {{0: name, ...}}); add it")
    return [str(n) for n in names]


def _image_files(entry: str, root: Path, path: Path) -> list[Path]:
    p = Path(entry)
    p = p if p.is_absolute() else root / p
    if p.is_dir():
        return [f for f in walk_files(p) if is_image(f)]
    if p.is_file() and p.suffix.lower() == ".txt":
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line:
                q = Path(line)
                out.append(q if q.is_absolute() else (root / q if (root / q).exists() else p.parent / q))
        return out
    raise CurateError(f"{path}: split entry {entry!r} is neither a folder nor a .txt list ({p} not found); "
                      "fix the path (relative paths are resolved from 'path' or the yaml's folder)")


def label_file(image: Path) -> Path:
    """``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the last ``images`` folder; else next to the image)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def parse(path: Path, label_rule: str = "majority", split: str | None = None) -> Parsed:
    """Read a YOLO dataset from its ``data.yaml`` (or the folder holding it); see the module docstring."""
    from PIL import Image

    path = Path(path).expanduser().resolve()
    if path.is_dir():
        path = path / "data.yaml"
    if not path.is_file():
        raise CurateError(f"{path} not found; --kind yolo needs a data.yaml (or the folder holding it)")
    data = _yaml(path)
    names = _names(data, path)
    root = Path(str(data.get("path") or path.parent)).expanduser()
    root = (root if root.is_absolute() else path.parent / root).resolve()
    problems: list[str] = []
    out = []
    seen: set[Path] = set()
    splits = [k for k in SPLIT_KEYS if data.get(k)]
    if not splits:
        raise CurateError(f"{path}: names no split ('train', 'val' or 'test'); add e.g. 'train: images/train'")
    for key in splits:
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        for entry in entries:
            for img in _image_files(str(entry), root, path):
                img = img.resolve()
                if img in seen:
                    continue
                seen.add(img)
                lf = label_file(img)
                rel = str(img.relative_to(root)) if img.is_relative_to(root) else str(img)
                width = height = None
                if lf.is_file():  # the size only denormalises boxes; ingest decodes every image anyway
                    try:
                        with Image.open(img) as im:
                            width, height = im.size
                    except Exception:
                        pass  # ingest quarantines it with the reason
                boxes, bad = [], None
                if width:
                    for n, line in enumerate(lf.read_text(encoding="utf-8").splitlines(), start=1):
                        vals = line.split()
                        if not vals:
                            continue
                        try:
                            cls, nums = int(vals[0]), [float(v) for v in vals[1:]]
                        except ValueError:
                            bad = f"{lf} line {n}: expected 'class cx cy w h' numbers, got {line.strip()[:60]!r}"
                            break
                        if not 0 <= cls < len(names):
                            bad = (f"{lf} line {n}: class {cls} but data.yaml names {len(names)} classes; fix the "
                                   "class id or add the name to data.yaml")
                            break
                        if len(nums) == 4:
                            cx, cy, w, h = nums
                            attrs = {}
                        elif len(nums) >= 6 and len(nums) % 2 == 0:
                            xs, ys = nums[0::2], nums[1::2]
                            cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
                            w, h = max(xs) - min(xs), max(ys) - min(ys)
                            attrs = {"polygon": nums}
                        else:
                            bad = f"{lf} line {n}: expected 4 box values or an even number of polygon values"
                            break
                        boxes.append(Box(names[cls], (cx - w / 2) * width, (cy - h / 2) * height, w * width,
                                         h * height, attrs))
                if bad:
                    problems.append(bad + "; the image was skipped (fix the line and ingest again)")
                    continue
                label = image_label([b.category for b in boxes], label_rule, [b.w * b.h for b in boxes])
                out.append(Candidate(img, label=label, split=split or key, boxes=boxes, source_id=rel,
                                     record={"split": key, "file": rel}, where=f"YOLO image {rel}"))
    info = {"names": names, "label_rule": label_rule, "root": str(root), "file": str(path)}
    return Parsed(out, problems, info)


# ------------------------------------------------------------------------------------------- out
def write(items: list[dict], out_dir: Path, info: dict | None, link: str, place) -> dict:
    """Write ``out_dir/data.yaml``, ``images/<split>/`` and ``labels/<split>/`` for the cleaned set.

    ``items`` as in :func:`engine.formats.coco.write`; the original class order is kept and classes that only a
    relabel introduced are appended.
    """
    import yaml
    from PIL import Image

    from curate.engine.formats.coco import relabel_box_category

    names = list((info or {}).get("names") or [])
    index = {n: i for i, n in enumerate(names)}

    def cls_id(name: str) -> int:
        if name not in index:
            index[name] = len(names)
            names.append(name)
        return index[name]

    taken: set[tuple[str, str]] = set()
    splits: set[str] = set()
    n_boxes = n_moved = 0
    for it in items:
        split = str(it.get("split") or "train")
        split = {"valid": "val", "validation": "val", "dev": "val"}.get(split, split)
        splits.add(split)
        src = Path(it["path"])
        name = src.name
        if (split, Path(name).stem) in taken:
            name = f"{int(it['sample_id'])}_{src.name}"
        taken.add((split, Path(name).stem))
        img_dir, lab_dir = out_dir / "images" / split, out_dir / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        width, height = it.get("width"), it.get("height")
        if src.is_file():
            place(src, img_dir / name)
            try:
                with Image.open(src) as im:  # the raw pixel size boxes were normalised by on import
                    width, height = im.size
            except Exception:
                pass
        lines = []
        for b in it["boxes"]:
            category = relabel_box_category(b["category"], it.get("given_label"), it.get("label"), it["label_rule"])
            n_moved += category != b["category"]
            c = cls_id(category)
            poly = (b.get("attributes") or {}).get("polygon")
            if poly:
                lines.append(" ".join([str(c)] + [f"{v:.6g}" for v in poly]))
            elif width and height:
                cx, cy = (b["x"] + b["w"] / 2) / width, (b["y"] + b["h"] / 2) / height
                lines.append(f"{c} {cx:.6f} {cy:.6f} {b['w'] / width:.6f} {b['h'] / height:.6f}")
            n_boxes += 1
        (lab_dir / f"{Path(name).stem}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    doc = {"path": ".", **{s: f"images/{s}" for s in sorted(splits)}, "names": {i: n for i, n in enumerate(names)}}
    (out_dir / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return {"images": len(items), "boxes": n_boxes, "boxes_relabelled": n_moved, "classes": len(names)}

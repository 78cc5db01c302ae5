"""COCO instances JSON in and out.

In: one sample per ``images`` entry; its ``annotations`` become boxes (``bbox`` = ``[x, y, w, h]`` in pixels,
the annotation's other fields — id, iscrowd, area, segmentation — kept as box attributes); the image label follows
from the boxes' categories by the chosen rule (:func:`engine.formats.image_label`); the image entry's other scalar
fields (e.g. ``camera``, ``date_captured``) become sample metadata; the split is taken from the file name when it
names one (``instances_val2017.json`` -> ``val``).

Out (:func:`write`): the cleaned set as ``annotations.json`` + ``images/``: removed images are dropped with their
annotations, original image / annotation / category ids and extra fields are kept, and a relabel of an image
from A to B moves its A boxes to category B (for ``multi`` labels: when exactly one category was swapped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from curate.engine.catalog import CurateError
from curate.engine.formats.base import (
    MULTI_SEP,
    SPLIT_NAMES,
    Box,
    Candidate,
    Parsed,
    image_label,
    peek_json,
    read_json,
    scalar_metadata,
)

IMAGE_FIELDS = ("id", "file_name", "width", "height")


def looks_like_coco(path: Path) -> bool:
    """True when ``path`` is a JSON object with ``images``, ``annotations`` and ``categories`` lists."""
    try:
        if path.stat().st_size > 0:
            with open(path, "rb") as fh:  # cheap check before parsing a possibly large file
                if fh.read(1 << 16).lstrip()[:1] != b"{":
                    return False
        data = peek_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories"))


def _split_from_name(path: Path) -> str | None:
    for token in re.split(r"[_\-.]+", path.stem.lower()):
        token = token.rstrip("0123456789")
        if token in SPLIT_NAMES:
            return token
    return None


def _images_root(json_path: Path, images: list[dict], images_dir) -> Path:
    if images_dir is not None:
        root = Path(images_dir).expanduser().resolve()
        if not root.is_dir():
            raise CurateError(f"--images {root} is not a folder; pass the folder the COCO file_name entries are in")
        return root
    here = json_path.parent
    tries = [here, here / "images", here.parent / "images", here.parent / _stem_folder(json_path), here.parent]
    sample = [str(im.get("file_name", "")) for im in images[:20] if im.get("file_name")]
    for root in tries:
        if sample and any((root / f).is_file() for f in sample):
            return root
    return here


def _stem_folder(json_path: Path) -> str:
    # instances_val2017.json -> val2017 (the official COCO layout: annotations/ next to val2017/)
    stem = json_path.stem
    return stem.split("_", 1)[1] if "_" in stem else stem


def parse(path: Path, images_dir=None, label_rule: str = "majority", split: str | None = None) -> Parsed:
    """Read a COCO instances JSON (see the module docstring)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise CurateError(f"{path} is not a file; --kind coco needs a COCO instances JSON")
    data = read_json(path, "COCO file")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise CurateError(f"{path} is not a COCO instances file: it needs 'images' and 'categories' lists "
                          "(and 'annotations'); export it again as COCO instances JSON")
    problems: list[str] = []
    cats: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or not str(c.get("name", "")).strip():
            raise CurateError(f"{path.name}: categories[{i}] needs an 'id' and a 'name'; fix that entry")
        cats[c["id"]] = str(c["name"]).strip()
    images: dict[object, dict] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not str(im.get("file_name", "")).strip():
            problems.append(f"{path.name} images[{i}]: needs an 'id' and a 'file_name'; fix or delete the entry")
            continue
        if im["id"] in images:
            problems.append(f"{path.name} images[{i}]: duplicate image id {im['id']}; the first entry was kept")
            continue
        images[im["id"]] = im
    anns: dict[object, list[dict]] = {k: [] for k in images}
    for i, a in enumerate(data.get("annotations") or []):
        where = f"{path.name} annotations[{i}] (id {a.get('id') if isinstance(a, dict) else '?'})"
        if not isinstance(a, dict) or a.get("image_id") not in images:
            problems.append(f"{where}: image_id {a.get('image_id') if isinstance(a, dict) else '?'} is not in "
                            "'images'; the annotation was skipped (fix its image_id)")
            continue
        if a.get("category_id") not in cats:
            problems.append(f"{where}: category_id {a.get('category_id')} is not in 'categories'; "
                            "the annotation was skipped (add the category or fix the id)")
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            problems.append(f"{where}: 'bbox' must be [x, y, width, height] numbers; the annotation was skipped")
            continue
        anns[a["image_id"]].append(a)

    root = _images_root(path, list(images.values()), images_dir)
    split = split or _split_from_name(path)
    out = []
    for iid, im in images.items():
        f = root / str(im["file_name"])
        if not f.is_file():
            problems.append(f"{path.name} image id {iid}: file not found: {f}; pass --images DIR (the folder the "
                            "file_name entries are relative to) or fix file_name")
            continue
        boxes = []
        for a in anns[iid]:
            x, y, w, h = (float(v) for v in a["bbox"])
            attrs = {k: v for k, v in a.items() if k not in ("image_id", "category_id", "bbox")}
            boxes.append(Box(cats[a["category_id"]], x, y, w, h, attrs))
        label = image_label([b.category for b in boxes], label_rule, [b.w * b.h for b in boxes])
        out.append(Candidate(f, label=label, split=split, metadata=scalar_metadata(im, IMAGE_FIELDS), boxes=boxes,
                             source_id=str(iid), record=im, where=f"COCO image id {iid}"))
    info = {"categories": data["categories"], "info": data.get("info"), "licenses": data.get("licenses"),
            "label_rule": label_rule, "images_dir": str(root), "file": str(path)}
    return Parsed(out, problems, info)


# ------------------------------------------------------------------------------------------- out
def relabel_box_category(category: str, old_label: str | None, new_label: str | None, label_rule: str) -> str:
    """The category a box gets when its image is relabelled from ``old_label`` to ``new_label``.

    Single / majority labels: boxes of the old label move to the new one.  ``multi`` labels (``a|b``): when the
    new set swaps exactly one category for another, that category's boxes move; other boxes stay as they are.

    Examples
    --------
    >>> relabel_box_category("cat", "cat", "dog", "majority"), relabel_box_category("car", "cat", "dog", "majority")
    ('dog', 'car')
    >>> relabel_box_category("cat", "cat|car", "car|dog", "multi")
    'dog'
    """
    if old_label is None or new_label is None or old_label == new_label:
        return category
    if label_rule == "multi" or MULTI_SEP in str(old_label) or MULTI_SEP in str(new_label):
        old, new = set(str(old_label).split(MULTI_SEP)), set(str(new_label).split(MULTI_SEP))
        gone, came = old - new, new - old
        if len(gone) == 1 and len(came) == 1 and category in gone:
            return next(iter(came))
        return category
    return new_label if category == old_label else category


def write(items: list[dict], out_dir: Path, info: dict | None, link: str, place) -> dict:
    """Write ``out_dir/annotations.json`` and ``out_dir/images/`` for the cleaned set.

    ``items``: one dict per kept sample — ``sample_id, path, label, given_label, width, height, record`` (the
    original COCO image dict or None), ``boxes`` (list of box dicts from the catalog), ``label_rule``.
    ``place(src, dest)`` links or copies one file.  Returns counts.
    """
    info = info or {}
    categories = [dict(c) for c in info.get("categories") or []]
    by_name = {str(c["name"]): c["id"] for c in categories}
    next_cat = max([int(c["id"]) for c in categories if isinstance(c["id"], int)] + [0]) + 1

    def cat_id(name: str) -> int:
        nonlocal next_cat
        if name not in by_name:
            by_name[name] = next_cat
            categories.append({"id": next_cat, "name": name, "supercategory": ""})
            next_cat += 1
        return by_name[name]

    used_ids = {it["record"]["id"] for it in items if it.get("record")}
    next_img = max([int(i) for i in used_ids if isinstance(i, int)] + [0]) + 1
    ann_ids = {b["attributes"].get("id") for it in items for b in it["boxes"] if b.get("attributes")}
    next_ann = max([int(i) for i in ann_ids if isinstance(i, int)] + [0]) + 1
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    assigned: set = set()
    assigned_ann: set = set()
    images, annotations = [], []
    n_moved = 0
    for it in items:
        rec = dict(it["record"]) if it.get("record") else {}
        if "id" not in rec or rec["id"] in assigned:  # no COCO id, or two COCO sources share one
            rec["id"] = next_img
            next_img += 1
        assigned.add(rec["id"])
        src = Path(it["path"])
        name = str(rec.get("file_name") or src.name)
        if name in taken or not name or name.startswith("/") or ".." in Path(name).parts:
            name = f"{int(it['sample_id'])}_{src.name}"
        taken.add(name)
        rec["file_name"] = name
        rec.setdefault("width", it.get("width"))
        rec.setdefault("height", it.get("height"))
        if src.is_file():
            dest = images_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            place(src, dest)
        images.append(rec)
        for b in it["boxes"]:
            a = dict(b.get("attributes") or {})
            category = relabel_box_category(b["category"], it.get("given_label"), it.get("label"), it["label_rule"])
            n_moved += category != b["category"]
            if "id" not in a or a["id"] in assigned_ann:
                a["id"] = next_ann
                next_ann += 1
            assigned_ann.add(a["id"])
            a.update(image_id=rec["id"], category_id=cat_id(category), bbox=[b["x"], b["y"], b["w"], b["h"]])
            a.setdefault("area", b["w"] * b["h"])
            a.setdefault("iscrowd", 0)
            annotations.append(a)
    doc = {"info": info.get("info") or {"description": "exported by curate"}, "licenses": info.get("licenses") or [],
           "images": images, "annotations": annotations, "categories": categories}
    (out_dir / "annotations.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False), encoding="utf-8")
    return {"images": len(images), "annotations": len(annotations), "boxes_relabelled": n_moved}

"""Dataset formats (issue 18): COCO, YOLO, Hugging Face datasets and FiftyOne exports in; COCO, YOLO and HF out;
the Label Studio review round trip; sample metadata and `curate query --balance-by`.

Every test writes a tiny dataset in the format's documented on-disk shape (PNG files made with PIL), ingests it
through the real ingest API / CLI, records decisions and exports, then re-parses the export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from engine.catalog import CurateError
from engine.ingest import detect_kind, ingest
from tests.conftest import write_image


# ------------------------------------------------------------------------------------------- dataset writers
def write_coco(root: Path) -> Path:
    """root/annotations/instances_val.json + root/images/*.png: 5 images, boxes of 3 categories."""
    for i in range(5):
        write_image(root / "images" / f"img{i}.png", seed=100 + i, size=(40, 30))
    doc = {
        "info": {"description": "tiny"},
        "licenses": [{"id": 1, "name": "cc"}],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"},
                       {"id": 2, "name": "dog", "supercategory": "animal"},
                       {"id": 7, "name": "car", "supercategory": "vehicle"}],
        "images": [
            {"id": 10, "file_name": "img0.png", "width": 40, "height": 30, "camera": "A", "license": 1},
            {"id": 11, "file_name": "img1.png", "width": 40, "height": 30, "camera": "B"},
            {"id": 12, "file_name": "img2.png", "width": 40, "height": 30, "camera": "A"},
            {"id": 13, "file_name": "img3.png", "width": 40, "height": 30},
            {"id": 14, "file_name": "img4.png", "width": 40, "height": 30, "camera": "B"},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [1, 2, 10, 8], "area": 80, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [5, 5, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 2, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 11, "category_id": 2, "bbox": [3, 3, 6, 6], "area": 36, "iscrowd": 0},
            {"id": 5, "image_id": 12, "category_id": 7, "bbox": [0.5, 1.5, 9, 9], "area": 81, "iscrowd": 0},
            {"id": 6, "image_id": 14, "category_id": 1, "bbox": [2, 2, 5, 5], "area": 25, "iscrowd": 0},
            # img3 (id 13) has no annotation: unlabeled
        ],
    }
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_yolo(root: Path) -> Path:
    """root/data.yaml + images/{train,val}/*.png + labels/{train,val}/*.txt."""
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_image(root / "images" / split / f"{split}{i}.png", seed=200 + i + (10 if split == "val" else 0),
                        size=(50, 40))
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "train" / "train0.txt").write_text("0 0.5 0.5 0.2 0.25\n0 0.3 0.3 0.1 0.1\n1 0.5 0.5 0.9 0.9\n")
    (root / "labels" / "train" / "train1.txt").write_text("1 0.4 0.6 0.2 0.2\n")
    # train2 has no label file: a background image, unlabeled
    (root / "labels" / "val" / "val0.txt").write_text("2 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5\n")  # polygon
    (root / "labels" / "val" / "val1.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\n"
                                    "names:\n  0: person\n  1: bike\n  2: sign\n")
    return root / "data.yaml"


def write_hf(root: Path) -> Path:
    """A DatasetDict (train/test) with an Image column, a ClassLabel label and a camera column, saved to disk."""
    datasets = pytest.importorskip("datasets")
    import io

    from PIL import Image

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        arr = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(arr).save(buf, "PNG")
        return buf.getvalue()

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["ant", "bee", "cow"]),
                               "camera": datasets.Value("string"), "score": datasets.Value("int32")})
    train = datasets.Dataset.from_dict({"image": [{"bytes": png(i), "path": None} for i in range(4)],
                                        "label": [0, 1, 2, -1], "camera": ["A", "B", "A", "B"],
                                        "score": [1, 2, 3, 4]}, features=feats)
    test = datasets.Dataset.from_dict({"image": [{"bytes": png(50 + i), "path": None} for i in range(2)],
                                       "label": [1, 0], "camera": ["A", "A"], "score": [5, 6]}, features=feats)
    out = root / "hfdata"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(out))
    return out


def write_fiftyone(root: Path) -> Path:
    """FiftyOneImageClassificationDataset: data/<uuid>.png + labels.json (index, dict and null targets)."""
    for i in range(4):
        write_image(root / "data" / f"u{i}.png", seed=300 + i)
    (root / "labels.json").write_text(json.dumps({
        "classes": ["plane", "ship"],
        "labels": {"u0": 0, "u1": {"label": 1, "confidence": 0.75, "attributes": {"weather": "fog"}}, "u2": None},
        # u3 has no entry: unlabeled
    }))
    return root


def _samples(cat) -> pd.DataFrame:
    """path -> label, split, metadata dict, boxes list, for assertions by file name."""
    s = cat.samples("id AS sample_id, path, split").merge(cat.current_labels()[["sample_id", "label"]], on="sample_id")
    meta = cat.metadata()
    boxes = cat.boxes()
    s["name"] = [Path(p).name for p in s["path"]]
    s["metadata"] = [dict(meta[meta["sample_id"] == i][["key", "value"]].values.tolist()) for i in s["sample_id"]]
    s["boxes"] = [boxes[boxes["sample_id"] == i][["category", "x", "y", "w", "h"]].values.tolist()
                  for i in s["sample_id"]]
    return s.set_index("name")


# ------------------------------------------------------------------------------------------- COCO in
@pytest.mark.parametrize("rule, expected", [
    ("majority", {"img0.png": "cat", "img1.png": "dog", "img2.png": "car", "img3.png": None, "img4.png": "cat"}),
    ("single", {"img0.png": None, "img1.png": "dog", "img2.png": "car", "img3.png": None, "img4.png": "cat"}),
    ("multi", {"img0.png": "cat|dog", "img1.png": "dog", "img2.png": "car", "img3.png": None, "img4.png": "cat"}),
])
def test_coco_import_labels_boxes_metadata(tmp_path, project, rule, expected):
    path = write_coco(tmp_path / "coco")
    assert detect_kind(path) == "coco"
    rep = ingest(project, path, kind="auto", label_rule=rule)
    assert rep.kind == "coco" and rep.added == 5 and not rep.row_problems and not rep.quarantined
    s = _samples(project)
    assert {n: (None if pd.isna(v) else v) for n, v in s["label"].items()} == expected
    assert set(s["split"]) == {"val"}  # from the file name instances_val.json
    assert s.at["img0.png", "boxes"] == [["cat", 1, 2, 10, 8], ["cat", 5, 5, 4, 4], ["dog", 0, 0, 20, 20]]
    assert s.at["img2.png", "boxes"] == [["car", 0.5, 1.5, 9, 9]]
    assert s.at["img3.png", "boxes"] == []
    assert s.at["img0.png", "metadata"] == {"camera": "A", "license": "1"}
    assert s.at["img3.png", "metadata"] == {}
    src = project.sample_sources().set_index("sample_id")
    assert sorted(src["source_id"]) == ["10", "11", "12", "13", "14"] and set(src["format"]) == {"coco"}
    # the annotation's own fields are kept with the box
    attrs = json.loads(project.boxes().iloc[0]["attributes"])
    assert attrs == {"id": 1, "area": 80, "iscrowd": 0}
    # rerun: nothing new, boxes and metadata not duplicated
    rep2 = ingest(project, path, kind="coco", label_rule=rule)
    assert rep2.added == 0 and rep2.unchanged == 5
    assert len(project.boxes()) == 6 and len(project.metadata()) == 5


def test_coco_bad_input_is_named(tmp_path, project):
    path = write_coco(tmp_path / "coco")
    doc = json.loads(path.read_text())
    doc["annotations"].append({"id": 99, "image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1]})
    doc["annotations"].append({"id": 98, "image_id": 10, "category_id": 55, "bbox": [0, 0, 1, 1]})
    doc["images"].append({"id": 15, "file_name": "missing.png"})
    path.write_text(json.dumps(doc))
    rep = ingest(project, path, kind="coco")
    assert rep.added == 5
    text = "\n".join(rep.row_problems)
    assert "annotations[6] (id 99): image_id 999" in text
    assert "category_id 55" in text
    assert "image id 15: file not found" in text and "--images" in text
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [}')
    with pytest.raises(CurateError, match=r"broken.json: invalid JSON at line 1"):
        ingest(project, bad, kind="coco")
    (tmp_path / "nocat.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(CurateError, match="needs 'images' and 'categories'"):
        ingest(project, tmp_path / "nocat.json", kind="coco")


def test_coco_images_dir_option(tmp_path, project):
    path = write_coco(tmp_path / "coco")
    moved = tmp_path / "elsewhere"
    (tmp_path / "coco" / "images").rename(moved)
    rep = ingest(project, path, kind="coco")
    assert rep.added == 0 and len(rep.row_problems) == 5
    rep = ingest(project, path, kind="coco", images_dir=moved)
    assert rep.added == 5


# ------------------------------------------------------------------------------------------- YOLO in
def test_yolo_import(tmp_path, project):
    root = tmp_path / "yolo"
    write_yolo(root)
    assert detect_kind(root) == "yolo"
    rep = ingest(project, root, kind="auto")
    assert rep.kind == "yolo" and rep.added == 5 and not rep.row_problems
    s = _samples(project)
    assert s["split"].to_dict() == {"train0.png": "train", "train1.png": "train", "train2.png": "train",
                                    "val0.png": "val", "val1.png": "val"}
    assert s.at["train0.png", "label"] == "person" and s.at["train1.png", "label"] == "bike"
    assert pd.isna(s.at["train2.png", "label"]) and s.at["train2.png", "boxes"] == []
    assert s.at["val0.png", "label"] == "sign"
    # normalised centre boxes -> pixels (image 50 x 40)
    assert np.allclose([b[1:] for b in s.at["train0.png", "boxes"]],
                       [[20, 15, 10, 10], [12.5, 10, 5, 4], [2.5, 2, 45, 36]])
    assert np.allclose(s.at["val0.png", "boxes"][0][1:], [5, 4, 20, 16])  # polygon's bounding box


def test_yolo_bad_line_skips_the_image_with_a_named_problem(tmp_path, project):
    root = tmp_path / "yolo"
    write_yolo(root)
    (root / "labels" / "train" / "train1.txt").write_text("1 0.4 0.6 0.2 0.2\n5 0.1 0.1 0.1 0.1\n")
    rep = ingest(project, root / "data.yaml", kind="yolo")
    assert rep.added == 4
    assert len(rep.row_problems) == 1
    assert "train1.txt line 2: class 5 but data.yaml names 3 classes" in rep.row_problems[0]
    (root / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(CurateError, match="needs 'names'"):
        ingest(project, root, kind="yolo")


# ------------------------------------------------------------------------------------------- HF in
def test_hf_save_to_disk_import(tmp_path, project):
    src = write_hf(tmp_path)
    assert detect_kind(src) == "hf"
    rep = ingest(project, src, kind="auto")
    assert rep.kind == "hf" and rep.added == 6 and not rep.row_problems and not rep.quarantined
    s = _samples(project).reset_index()
    assert all(Path(p).is_relative_to(project.root / "imported") for p in s["path"])
    s["row"] = [int(m["hf_row"]) for m in s["metadata"]]
    train = s[s["split"] == "train"].set_index("row")
    assert [None if pd.isna(v) else v for v in train["label"].sort_index()] == ["ant", "bee", "cow", None]
    assert train.at[1, "metadata"] == {"hf_row": "1", "camera": "B", "score": "2"}
    test = s[s["split"] == "test"].set_index("row")
    assert test["label"].sort_index().tolist() == ["bee", "ant"]
    # the images are the dataset's own bytes
    datasets = pytest.importorskip("datasets")
    raw = datasets.load_from_disk(str(src))["train"].cast_column("image", datasets.Image(decode=False))
    assert Path(train.at[2, "path"]).read_bytes() == raw[2]["image"]["bytes"]
    rep2 = ingest(project, src, kind="hf")
    assert rep2.added == 0 and rep2.unchanged == 6


def test_hf_missing_cached_dataset_is_a_clear_error(project):
    pytest.importorskip("datasets")
    with pytest.raises(CurateError, match="not in the local Hugging Face cache"):
        ingest(project, "nobody-xyz/no-such-dataset-curate", kind="hf")


# ------------------------------------------------------------------------------------------- FiftyOne in
def test_fiftyone_labels_json_import(tmp_path, project):
    root = write_fiftyone(tmp_path / "fo")
    assert detect_kind(root) == "fiftyone"
    rep = ingest(project, root)
    assert rep.kind == "fiftyone" and rep.added == 4 and not rep.row_problems
    s = _samples(project)
    assert s.at["u0.png", "label"] == "plane" and s.at["u1.png", "label"] == "ship"
    assert pd.isna(s.at["u2.png", "label"]) and pd.isna(s.at["u3.png", "label"])
    assert s.at["u1.png", "metadata"] == {"fiftyone_confidence": "0.75", "weather": "fog"}


def test_fiftyone_directory_tree_and_bad_index(tmp_path, project):
    tree = tmp_path / "tree"
    write_image(tree / "plane" / "a.png", seed=1)
    write_image(tree / "ship" / "b.png", seed=2)
    write_image(tree / "_unlabeled" / "c.png", seed=3)
    rep = ingest(project, tree, kind="fiftyone")
    s = _samples(project)
    assert rep.added == 3 and s.at["a.png", "label"] == "plane" and pd.isna(s.at["c.png", "label"])
    root = write_fiftyone(tmp_path / "fo")
    (root / "labels.json").write_text(json.dumps({"classes": ["plane"], "labels": {"u0": 3}}))
    rep = ingest(project, root, kind="fiftyone")
    assert any("entry 'u0': class index 3" in p for p in rep.row_problems)


# ------------------------------------------------------------------------------------------- manifests keep metadata
def test_manifest_extra_columns_become_metadata(tmp_path, project):
    for i in range(3):
        write_image(tmp_path / "m" / f"{i}.png", seed=400 + i)
    (tmp_path / "m" / "list.csv").write_text("path,label,camera,site\n0.png,a,A,north\n1.png,b,B,\n2.png,a,A,south\n")
    rep = ingest(project, tmp_path / "m" / "list.csv")
    assert rep.added == 3
    s = _samples(project)
    assert s.at["0.png", "metadata"] == {"camera": "A", "site": "north"}
    assert s.at["1.png", "metadata"] == {"camera": "B"}  # empty cells are left out
    keys = project.metadata_keys().set_index("key")
    assert keys.at["camera", "samples"] == 3 and keys.at["camera", "distinct_values"] == 2


def test_cli_ingest_coco_with_label_rule(tmp_path):
    from engine.catalog import open_project
    from engine.cli import app

    path = write_coco(tmp_path / "coco")
    res = CliRunner().invoke(app, ["ingest", str(path), "--kind", "coco", "--coco-label", "single",
                                   "-p", str(tmp_path / "proj")])
    assert res.exit_code == 0, res.output
    assert "5 new" in res.output
    labels = open_project(tmp_path / "proj").current_labels()["label"]
    assert labels.isna().sum() == 2  # img0 (two categories) and img3 (no boxes)

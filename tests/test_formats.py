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

from curate.engine.catalog import CurateError
from curate.engine.ingest import detect_kind, ingest
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
    assert detect_kind(root) == "fiftyone" and detect_kind(root / "labels.json") == "fiftyone"
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
    from curate.engine.catalog import open_project
    from curate.engine.cli import app

    path = write_coco(tmp_path / "coco")
    res = CliRunner().invoke(app, ["ingest", str(path), "--kind", "coco", "--coco-label", "single",
                                   "-p", str(tmp_path / "proj")])
    assert res.exit_code == 0, res.output
    assert "5 new" in res.output
    labels = open_project(tmp_path / "proj").current_labels()["label"]
    assert labels.isna().sum() == 2  # img0 (two categories) and img3 (no boxes)


# ------------------------------------------------------------------------------------------- exports back
def _sid(cat, name: str) -> int:
    s = cat.samples("id, path")
    return int(s[[Path(p).name == name for p in s["path"]]]["id"].iloc[0])


def test_coco_round_trip_applies_decisions(tmp_path, project):
    from curate.engine.export import export_dataset
    from curate.engine.formats import coco

    path = write_coco(tmp_path / "coco")
    ingest(project, path, kind="coco")
    project.add_decision(_sid(project, "img1.png"), "remove", reason="blurry")
    project.add_decision(_sid(project, "img0.png"), "relabel", new_label="bird")  # a category COCO did not have
    project.add_decision(_sid(project, "img4.png"), "relabel", new_label="dog")
    project.add_decision(_sid(project, "img2.png"), "keep")
    res = export_dataset(project, tmp_path / "out", formats=["coco"], queue=False)
    assert res.format_counts["coco"] == {"images": 4, "annotations": 5, "boxes_relabelled": 3}
    doc = json.loads((tmp_path / "out" / "coco" / "annotations.json").read_text())
    assert sorted(im["id"] for im in doc["images"]) == [10, 12, 13, 14]  # img1 (id 11) removed, ids kept
    assert {im["file_name"]: im.get("camera") for im in doc["images"]} == {
        "img0.png": "A", "img2.png": "A", "img3.png": None, "img4.png": "B"}
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    assert cats == {1: "cat", 2: "dog", 7: "car", 8: "bird"}
    by_img = {}
    for a in doc["annotations"]:
        by_img.setdefault(a["image_id"], []).append((a["id"], cats[a["category_id"]], a["bbox"]))
    assert by_img[10] == [(1, "bird", [1, 2, 10, 8]), (2, "bird", [5, 5, 4, 4]), (3, "dog", [0, 0, 20, 20])]
    assert by_img[14] == [(6, "dog", [2, 2, 5, 5])]
    assert by_img[12] == [(5, "car", [0.5, 1.5, 9, 9])]
    assert 11 not in by_img
    # the export is a COCO dataset curate reads back, with the decisions now in its labels
    parsed = coco.parse(tmp_path / "out" / "coco" / "annotations.json")
    assert not parsed.problems
    assert {c.path.name: c.label for c in parsed.candidates} == {
        "img0.png": "bird", "img2.png": "car", "img3.png": None, "img4.png": "dog"}
    assert (tmp_path / "out" / "coco" / "images" / "img0.png").read_bytes() == (tmp_path / "coco" / "images" / "img0.png").read_bytes()


def test_yolo_round_trip_applies_decisions(tmp_path, project):
    from curate.engine.catalog import init_project
    from curate.engine.export import export_dataset

    write_yolo(tmp_path / "yolo")
    ingest(project, tmp_path / "yolo", kind="yolo")
    before = _samples(project)
    project.add_decision(_sid(project, "val1.png"), "remove")
    project.add_decision(_sid(project, "train1.png"), "relabel", new_label="person")
    res = export_dataset(project, tmp_path / "out", formats=["yolo"], link="copy", queue=False)
    assert res.format_counts["yolo"]["images"] == 4 and res.format_counts["yolo"]["boxes_relabelled"] == 1
    out = tmp_path / "out" / "yolo"
    assert not (out / "images" / "val" / "val1.png").exists()
    assert (out / "labels" / "train" / "train1.txt").read_text().split()[0] == "0"  # bike box -> person
    again = init_project(tmp_path / "p2")
    rep = ingest(again, out, kind="auto")
    assert rep.kind == "yolo" and rep.added == 4 and not rep.row_problems
    after = _samples(again)
    assert sorted(after.index) == ["train0.png", "train1.png", "train2.png", "val0.png"]
    assert after.at["train1.png", "label"] == "person" and after.at["train0.png", "label"] == "person"
    assert after["split"].to_dict() == before["split"].drop("val1.png").to_dict()
    for name in ("train0.png", "val0.png"):
        got = [b[1:] for b in after.at[name, "boxes"]]
        assert np.allclose(got, [b[1:] for b in before.at[name, "boxes"]], atol=1e-3)
        assert [b[0] for b in after.at[name, "boxes"]] == [b[0] for b in before.at[name, "boxes"]]


def test_hf_round_trip_applies_decisions(tmp_path, project):
    datasets = pytest.importorskip("datasets")
    from curate.engine.export import export_dataset

    ingest(project, write_hf(tmp_path), kind="hf")
    s = _samples(project).reset_index()
    key = {(r.split, int(r.metadata["hf_row"])): int(r.sample_id) for r in s.itertuples()}
    project.add_decision(key[("train", 0)], "remove")
    project.add_decision(key[("test", 1)], "relabel", new_label="dog")
    export_dataset(project, tmp_path / "out", formats=["source"], queue=False)  # source = hf here
    back = datasets.load_from_disk(str(tmp_path / "out" / "hf"))
    assert sorted(back) == ["test", "train"]
    names = back["train"].features["label"].names
    assert names == ["ant", "bee", "cow", "dog"]  # original order, the new class appended
    train = back["train"]
    assert [names[v] if v >= 0 else None for v in train["label"]] == ["bee", "cow", None]
    assert train["camera"] == ["B", "A", "B"] and train["score"] == [2, 3, 4]  # original dtypes back
    test = back["test"]
    assert [names[v] for v in test["label"]] == ["bee", "dog"]
    raw = datasets.load_from_disk(str(tmp_path / "hfdata"))["train"].cast_column("image", datasets.Image(decode=False))
    out_raw = train.cast_column("image", datasets.Image(decode=False))
    assert out_raw[0]["image"]["bytes"] == raw[1]["image"]["bytes"]


def test_export_source_and_unknown_format(tmp_path, project):
    from curate.engine.export import export_dataset, source_formats

    ingest(project, write_coco(tmp_path / "coco"), kind="coco")
    write_image(tmp_path / "folder" / "x" / "a.png", seed=9)
    ingest(project, tmp_path / "folder")
    assert source_formats(project) == ["coco", "imagefolder"]
    res = export_dataset(project, tmp_path / "out", formats=["source"], queue=False)
    assert (tmp_path / "out" / "coco" / "annotations.json").is_file() and (tmp_path / "out" / "imagefolder").is_dir()
    doc = json.loads((tmp_path / "out" / "coco" / "annotations.json").read_text())
    assert len(doc["images"]) == 6  # the ImageFolder sample is in the COCO file too (no boxes)
    assert res.n_exported == 6
    with pytest.raises(CurateError, match="unknown export format 'voc'"):
        export_dataset(project, tmp_path / "out2", formats=["voc"])


# ------------------------------------------------------------------------------------------- Label Studio round trip
def _with_findings(cat) -> dict[str, int]:
    """A COCO project plus recorded label-issue and duplicate findings (as the analyses store them)."""
    ids = {n: _sid(cat, n) for n in ("img0.png", "img1.png", "img2.png", "img3.png", "img4.png")}
    run = cat.start_run("label_issues", {})
    cat.replace_analysis("label_issues", pd.DataFrame({
        "sample_id": [ids["img0.png"], ids["img1.png"], ids["img2.png"], ids["img4.png"]],
        "given_label": ["cat", "dog", "car", "cat"], "suggested_label": ["dog", "cat", "cat", "cat"],
        "suggested_confidence": [0.9, 0.8, 0.7, 0.99], "label_quality": [0.05, 0.1, 0.2, 0.95],
        "is_issue": [True, True, True, False], "rank": [1, 2, 3, 4]}), run)
    run = cat.start_run("duplicates", {})
    cat.replace_analysis("duplicates", pd.DataFrame({
        "set_id": [1, 1], "sample_id": [ids["img2.png"], ids["img3.png"]], "kind": ["near", "near"],
        "similarity": [0.97, 0.97], "is_keeper": [True, False], "crosses_splits": [False, False]}), run)
    return ids


def test_labelstudio_round_trip(tmp_path, project):
    from curate.engine.cli import app
    from curate.engine.export import cleaned_dataset

    ingest(project, write_coco(tmp_path / "coco"), kind="coco")
    ids = _with_findings(project)
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--format", "labelstudio", "--for", "label-issues", "-o",
                              str(tmp_path / "ls"), "-p", str(project.root), "--url-prefix", "/data/local-files/?d="])
    assert res.exit_code == 0, res.output
    tasks = json.loads((tmp_path / "ls" / "label_studio_review.json").read_text())
    assert [t["data"]["sample_id"] for t in tasks] == [ids["img0.png"], ids["img1.png"], ids["img2.png"]]
    t0 = tasks[0]
    assert t0["data"]["image"].startswith("/data/local-files/?d=") and t0["data"]["image"].endswith("img0.png")
    assert t0["data"]["current_label"] == "cat" and t0["data"]["suggested_label"] == "dog"
    assert t0["predictions"] == [
        {"model_version": "curate-suggestion", "score": 0.9,
         "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}]},
        {"model_version": "current-label", "score": 0.05,
         "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]}]
    config = (tmp_path / "ls" / "label_studio_config.xml").read_text()
    assert '<Choices name="label" toName="image"' in config and '<Choice value="car"/>' in config

    # what Label Studio's JSON export gives back after annotation
    def ann(choice, who, cancelled=False):
        return {"id": 1, "completed_by": who, "was_cancelled": cancelled, "result": [
            {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]}

    exported = [
        {**tasks[0], "id": 101, "annotations": [ann("dog", {"id": 3, "email": "ann@example.org"})]},  # takes suggestion
        {**tasks[1], "id": 102, "annotations": [ann("dog", 7)]},  # confirms the current label
        {**tasks[2], "id": 103, "annotations": [ann("cat", 7, cancelled=True)]},  # skipped
    ]
    (tmp_path / "done.json").write_text(json.dumps(exported))
    res = runner.invoke(app, ["import-labelstudio", str(tmp_path / "done.json"), "-p", str(project.root)])
    assert res.exit_code == 0, res.output
    assert "1 relabelled, 1 kept, 0 removed, 0 already recorded, 1 without an annotation" in res.output
    d = project.live_decisions().set_index("sample_id")
    assert d.at[ids["img0.png"], "action"] == "relabel" and d.at[ids["img0.png"], "new_label"] == "dog"
    assert d.at[ids["img0.png"], "who"] == "ann@example.org"
    assert d.at[ids["img1.png"], "action"] == "keep" and d.at[ids["img1.png"], "who"] == "7"
    assert ids["img2.png"] not in d.index
    # idempotent: the same file again records nothing
    res = runner.invoke(app, ["import-labelstudio", str(tmp_path / "done.json"), "-p", str(project.root)])
    assert "0 relabelled, 0 kept, 0 removed, 2 already recorded" in res.output
    assert len(project.decisions()) == 2
    manifest, _ = cleaned_dataset(project)
    assert manifest.set_index("sample_id").at[ids["img0.png"], "label"] == "dog"
    # reviewed samples leave the next batch of tasks
    res = runner.invoke(app, ["export", "--format", "labelstudio", "-o", str(tmp_path / "ls2"), "-p", str(project.root)])
    assert [t["data"]["sample_id"] for t in json.loads((tmp_path / "ls2" / "label_studio_review.json").read_text())] \
        == [ids["img2.png"]]


def test_labelstudio_duplicates_round_trip_and_bad_tasks(tmp_path, project):
    from curate.engine.export import cleaned_dataset, export_dataset
    from curate.engine.formats.labelstudio import import_review

    ingest(project, write_coco(tmp_path / "coco"), kind="coco")
    ids = _with_findings(project)
    export_dataset(project, tmp_path / "ls", formats=["labelstudio"], review="duplicates", queue=False)
    tasks = json.loads((tmp_path / "ls" / "label_studio_review.json").read_text())
    assert len(tasks) == 1 and tasks[0]["data"]["sample_id"] == ids["img3.png"]
    assert tasks[0]["data"]["keeper_id"] == ids["img2.png"] and tasks[0]["data"]["keeper_image"].endswith("img2.png")
    assert tasks[0]["predictions"][0]["score"] == pytest.approx(0.97)
    assert tasks[0]["predictions"][0]["result"][0]["from_name"] == "decision"
    tasks[0]["annotations"] = [{"completed_by": {"email": "rev@example.org"}, "result": [
        {"from_name": "decision", "to_name": "image", "type": "choices", "value": {"choices": ["remove"]}}]}]
    (tmp_path / "done.json").write_text(json.dumps(tasks))
    rep = import_review(project, tmp_path / "done.json")
    assert rep.removed == 1
    manifest, changes = cleaned_dataset(project)
    assert ids["img3.png"] not in manifest["sample_id"].values
    assert changes.set_index("sample_id").at[ids["img3.png"], "decided_by"] == "rev@example.org"
    # a task curate cannot match: nothing is recorded, the task is named
    bad = [{"id": 5, "data": {"image": "/nowhere.png"}, "annotations": []}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    n = len(project.decisions())
    with pytest.raises(CurateError, match=r"bad.json task 1 \(id 5\): has no data.sample_id"):
        import_review(project, tmp_path / "bad.json")
    assert len(project.decisions()) == n


# ------------------------------------------------------------------------------------------- metadata -> balanced batches
def test_select_spreads_a_batch_across_groups():
    from curate.engine.analyses.active import balanced_group_cap, select

    X = np.random.default_rng(0).normal(size=(82, 8)).astype("float32")
    groups = np.array([0] * 50 + [1] * 30 + [2] * 2)
    plain = select("random", X, np.zeros(82, bool), budget=12, seed=1)
    assert np.bincount(groups[plain.indices], minlength=3)[0] > 5  # unbalanced: mostly the big group
    for strategy in ("random", "coreset", "typiclust"):
        sel = select(strategy, X, np.zeros(82, bool), budget=12, seed=1, groups=groups)
        assert np.bincount(groups[sel.indices], minlength=3).tolist() == [5, 5, 2], strategy
    assert balanced_group_cap([50, 30, 2], 12) == 5


def test_query_balance_by_metadata(tmp_path, project):
    from curate.engine.analyses import active
    from curate.engine.byo import import_embeddings
    from curate.engine.cli import app

    cams = ["A"] * 20 + ["B"] * 8 + ["C"] * 2
    lines = ["path,camera"]
    for i, cam in enumerate(cams):
        write_image(tmp_path / "m" / f"{i:02d}.png", seed=500 + i, size=(12, 12))
        lines.append(f"{i:02d}.png,{cam}")
    (tmp_path / "m" / "list.csv").write_text("\n".join(lines) + "\n")
    ingest(project, tmp_path / "m" / "list.csv")
    s = project.samples("id, path")
    X = np.random.default_rng(0).normal(size=(len(s), 8)).astype("float32")
    np.savez(tmp_path / "vecs.npz", vectors=X, ids=s["id"].to_numpy())
    enc = import_embeddings(project, tmp_path / "vecs.npz", encoder="byo:toy").target
    res = active.run(project, strategy="random", budget=9, encoder=enc, balance_by="camera", export=False)
    cam_of = dict(zip(project.metadata()["sample_id"], project.metadata()["value"]))
    counts = pd.Series([cam_of[i] for i in res.table["sample_id"]]).value_counts()
    assert len(res.table) == 9 and counts.max() <= 4 and set(counts.index) == {"A", "B", "C"}
    assert res.info["group_cap"] == 4
    with pytest.raises(CurateError, match="no sample has metadata 'site'; --balance-by takes one of: camera"):
        active.run(project, strategy="random", budget=3, encoder=enc, balance_by="site")
    out = CliRunner().invoke(app, ["query", "--strategy", "random", "--budget", "3", "--balance-by", "camera",
                                   "-p", str(project.root)])
    assert out.exit_code == 0, out.output


def test_ui_label_issues_filter_by_metadata(tmp_path, project, monkeypatch):
    from streamlit.testing.v1 import AppTest

    ingest(project, write_coco(tmp_path / "coco"), kind="coco")
    ids = _with_findings(project)  # flagged: img0 (camera A), img1 (B), img2 (A)
    monkeypatch.setenv("CURATE_PROJECT", str(project.root))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=60)
    at.switch_page("views/label_issues.py").run()
    assert not at.exception, [e.value for e in at.exception]

    def shown() -> set[int]:
        text = "\n".join(m.value for m in at.markdown)
        return {i for i in ids.values() if f"**#{i}**" in text}

    assert shown() == {ids["img0.png"], ids["img1.png"], ids["img2.png"]}
    at.selectbox(key="li-meta-key").select("camera").run()
    assert at.multiselect(key="li-meta-values").options == ["A", "B"]
    at.multiselect(key="li-meta-values").select("A").run()
    assert not at.exception, [e.value for e in at.exception]
    assert shown() == {ids["img0.png"], ids["img2.png"]}


def test_detecting_then_ingesting_a_coco_file_parses_it_once(tmp_path, project, monkeypatch):
    """Auto-detection reads the JSON to recognise the format; the reader reuses that parse (a COCO file can be
    gigabytes)."""
    from curate.engine.formats import base

    path = write_coco(tmp_path)
    calls = []
    real = base.json.loads
    monkeypatch.setattr(base.json, "loads", lambda *a, **k: calls.append(1) or real(*a, **k))
    rep = ingest(project, path)
    assert rep.kind == "coco" and rep.added > 0 and len(calls) == 1
    calls.clear()
    path.write_text(path.read_text().replace('"images"', '"images" ', 1))  # changed file: parsed again
    ingest(project, path)
    assert len(calls) == 1  # parsed afresh once (a stale parse would be 0 calls: the key has mtime and size)

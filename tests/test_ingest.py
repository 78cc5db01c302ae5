import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import write_image
from curate.engine import ingest as ingest_mod
from curate.engine.catalog import CurateError
from curate.engine.ingest import ingest


def test_imagefolder_with_splits_and_quarantine(project, image_folder):
    rep = ingest(project, image_folder)
    assert rep.kind == "imagefolder"
    assert rep.added == 12 and rep.labels_added == 12
    reasons = dict(rep.quarantined)
    assert len(reasons) == 3
    assert reasons[str(image_folder / "train" / "cat" / "zero.png")] == "zero-byte file"
    assert "not an image" in reasons[str(image_folder / "train" / "dog" / "notes.jpg")]
    assert "truncated" in reasons[str(image_folder / "test" / "dog" / "truncated.png")]
    s = project.samples().set_index("path")
    assert set(s["split"]) == {"train", "test"}
    row = s.loc[str(image_folder / "train" / "cat" / "1.png")]
    assert (row.width, row.height, row.format) == (32, 32, "PNG") and len(row.content_hash) == 64
    labels = project.current_labels().merge(project.samples()[["id", "path"]], left_on="sample_id", right_on="id")
    assert set(labels["label"]) == {"cat", "dog"}
    assert all(Path(p).parent.name == lab for p, lab in zip(labels["path"], labels["label"]))
    assert project.class_names() == ["cat", "dog"]
    assert project.counts()["quarantined"] == 3


def test_reingest_is_noop_and_new_files_append(project, image_folder):
    ingest(project, image_folder)
    before = project.query("SELECT * FROM samples ORDER BY id")
    labels_before = project.scalar("SELECT count(*) FROM labels")
    rep = ingest(project, image_folder)
    assert rep.added == 0 and rep.unchanged == 12 and rep.labels_added == 0
    assert project.query("SELECT * FROM samples ORDER BY id") == before
    assert project.scalar("SELECT count(*) FROM labels") == labels_before
    assert project.scalar("SELECT count(*) FROM quarantine") == 3  # not repeated
    write_image(image_folder / "train" / "dog" / "new.png", seed=99)
    rep = ingest(project, image_folder)
    assert rep.added == 1 and rep.unchanged == 12
    assert project.counts()["samples"] == 13


def test_fixed_file_leaves_quarantine_and_changed_file_is_updated(project, image_folder):
    ingest(project, image_folder)
    write_image(image_folder / "train" / "cat" / "zero.png", seed=7)  # user repaired the file
    target = image_folder / "train" / "cat" / "0.png"
    old_hash = project.scalar("SELECT content_hash FROM samples WHERE path = ?", [str(target)])
    write_image(target, seed=1234)  # pixels changed in place
    rep = ingest(project, image_folder)
    assert rep.added == 1 and rep.changed == 1
    assert project.scalar("SELECT count(*) FROM quarantine WHERE path LIKE '%zero.png'") == 0
    assert project.scalar("SELECT content_hash FROM samples WHERE path = ?", [str(target)]) != old_hash


def test_exact_duplicate_files_are_separate_samples_with_same_hash(project, tmp_path):
    root = tmp_path / "d"
    write_image(root / "a" / "x.png", seed=1)
    (root / "b").mkdir()
    (root / "b" / "y.png").write_bytes((root / "a" / "x.png").read_bytes())
    ingest(project, root)
    assert project.scalar("SELECT count(DISTINCT content_hash) FROM samples") == 1
    assert project.counts()["samples"] == 2


def test_unlabeled_folder(project, tmp_path):
    root = tmp_path / "pool"
    for i in range(4):
        write_image(root / f"{i}.jpg", seed=i, fmt="JPEG")
    write_image(root / "nested" / "deep.png", seed=9)
    rep = ingest(project, root, split="train")
    assert rep.kind == "unlabeled" and rep.added == 5 and rep.labels_added == 0
    assert project.current_labels()["label"].isna().all()
    assert set(project.samples()["split"]) == {"train"}


def test_manifest_csv_reports_bad_rows_with_row_numbers(project, tmp_path):
    imgs = [write_image(tmp_path / "imgs" / f"{i}.png", seed=i) for i in range(4)]
    manifest = tmp_path / "m.csv"
    rows = [
        {"path": "imgs/0.png", "label": 'cat, "fluffy"', "split": "train"},  # comma and quotes survive
        {"path": str(imgs[1]), "label": "dog", "split": "test"},  # absolute path
        {"path": "imgs/missing.png", "label": "dog", "split": "train"},  # row 3: file missing
        {"path": "imgs/2.png", "label": "", "split": "train"},  # row 4: empty label
        {"path": "imgs/0.png", "label": "cat", "split": "train"},  # row 5: duplicate row
        {"path": "", "label": "cat", "split": "train"},  # row 6: empty path
        {"path": "imgs/3.png", "label": "bird", "split": ""},
    ]
    pd.DataFrame(rows).to_csv(manifest, index=False)
    rep = ingest(project, manifest)
    assert rep.kind == "manifest" and rep.added == 3
    problems = "\n".join(rep.row_problems)
    assert "row 3: file not found" in problems
    assert "row 4: empty label" in problems
    assert "row 5: duplicate row" in problems
    assert "row 6: empty path" in problems
    labels = dict(zip(project.current_labels()["sample_id"], project.current_labels()["label"]))
    assert 'cat, "fluffy"' in labels.values()
    s = project.samples().set_index("path")
    assert s.loc[str(imgs[1].resolve()), "split"] == "test"


def test_manifest_parquet_and_label_change(project, tmp_path):
    img = write_image(tmp_path / "a.png", seed=3)
    m = tmp_path / "m.parquet"
    pd.DataFrame({"path": [str(img)], "label": ["cat"]}).to_parquet(m)
    ingest(project, m)
    pd.DataFrame({"path": [str(img)], "label": ["dog"]}).to_parquet(m)
    rep = ingest(project, m)
    assert rep.added == 0 and rep.labels_added == 1
    assert project.current_labels()["label"].tolist() == ["dog"]
    assert project.scalar("SELECT count(*) FROM labels") == 2  # history kept


def test_manifest_without_path_column_is_one_clear_error(project, tmp_path):
    m = tmp_path / "bad.csv"
    m.write_text("file,label\na.png,cat\n")
    with pytest.raises(CurateError, match="no 'path' column .*found: file, label"):
        ingest(project, m)


def test_missing_source_and_wrong_kind(project, tmp_path):
    with pytest.raises(CurateError, match="does not exist"):
        ingest(project, tmp_path / "nothing")
    f = tmp_path / "x.txt"
    f.write_text("hi")
    with pytest.raises(CurateError, match="not a manifest"):
        ingest(project, f)


def test_decompression_bomb_guard(project, tmp_path, monkeypatch):
    write_image(tmp_path / "d" / "big" / "huge.png", size=(400, 300))
    write_image(tmp_path / "d" / "big" / "ok.png", size=(10, 10))
    monkeypatch.setattr(ingest_mod, "MAX_PIXELS", 100_000)
    rep = ingest(project, tmp_path / "d")
    assert rep.added == 1
    assert "image too large" in dict(rep.quarantined)[str(tmp_path / "d" / "big" / "huge.png")]


def test_killed_ingest_resumes_to_the_same_result(tmp_path):
    from curate.engine.catalog import init_project

    root = tmp_path / "data"
    for i in range(40):
        write_image(root / f"c{i % 4}" / f"{i}.png", seed=i, size=(16, 16))
    proj = tmp_path / "p"
    init_project(proj)
    env = dict(os.environ, CURATE_INGEST_CHUNK="5", CURATE_TEST_INGEST_PAUSE="0.4", PYTHONPATH=str(Path(__file__).parents[1]))
    code = f"from curate.engine.catalog import open_project; from engine.ingest import ingest; ingest(open_project({str(proj)!r}), {str(root)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    cat = init_project(proj)
    deadline = time.time() + 60
    while time.time() < deadline and (cat.scalar("SELECT count(*) FROM samples") or 0) < 10:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = cat.scalar("SELECT count(*) FROM samples")
    assert 10 <= partial < 40 and partial % 5 == 0  # only whole chunks are visible
    assert cat.scalar("SELECT count(*) FROM labels") == partial
    rep = ingest(cat, root)
    assert rep.added == 40 - partial
    # equal to an uninterrupted run
    fresh = init_project(tmp_path / "fresh")
    ingest(fresh, root)
    q = "SELECT s.path, s.content_hash, l.class_name FROM samples s JOIN labels l ON l.sample_id = s.id ORDER BY s.path"
    assert cat.query(q) == fresh.query(q)

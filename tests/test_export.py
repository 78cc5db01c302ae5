"""Export: decisions applied to the manifest / ImageFolder tree, the changes report, the queue, path safety,
thumbnails, and the decide / undo / decisions / export commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from curate.engine import thumbnails
from curate.engine.catalog import CurateError
from curate.engine.export import apply_decisions, export_dataset, folder_names, label_studio_tasks, safe_name
from tests.ui_fixtures import build_ui_project, clone_project


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build_ui_project(tmp_path_factory.mktemp("ui-export"))


@pytest.fixture
def proj(template, tmp_path):
    return clone_project(template, tmp_path / "project")


def _tiny():
    samples = pd.DataFrame({"sample_id": [1, 2, 3, 4, 5, 6], "path": [f"/d/{i}.png" for i in range(1, 7)],
                            "split": ["train"] * 5 + [None]})
    labels = pd.DataFrame({"sample_id": [1, 2, 3, 4, 5, 6], "label": ["a", "b", "a", "a", "b", None],
                           "given_label": ["a", "a", "a", "a", "b", None]})
    dups = pd.DataFrame({"set_id": [7, 7, 7], "sample_id": [3, 4, 5]})
    return samples, labels, dups


def _decisions(rows):
    return pd.DataFrame([dict(id=i, sample_id=s, action=a, new_label=l, reason=r, who="t", created_at=pd.Timestamp(2025, 1, 1))
                         for i, s, a, l, r in rows])


# ------------------------------------------------------------------------------------------- pure rules
def test_apply_decisions_remove_relabel_keep():
    samples, labels, dups = _tiny()
    d = _decisions([(1, 1, "remove", None, "blurry"), (2, 2, "relabel", "b", "wrong label"), (3, 3, "keep", None, "")])
    manifest, changes = apply_decisions(samples, labels, d, dups)
    assert manifest["sample_id"].tolist() == [2, 3, 4, 5, 6]
    assert manifest.columns.tolist() == ["path", "label", "split", "sample_id"]
    assert manifest.set_index("sample_id").at[2, "label"] == "b"
    assert changes[["sample_id", "change", "decision_id"]].values.tolist() == [[1, "removed", 1], [2, "relabelled", 2]]
    assert changes.set_index("sample_id").at[1, "reason"] == "blurry"
    assert changes.set_index("sample_id").at[2, "given_label"] == "a"


def test_merge_keeps_the_keeper_and_removes_the_rest_of_its_set():
    samples, labels, dups = _tiny()
    manifest, changes = apply_decisions(samples, labels, _decisions([(5, 4, "merge", None, "same photo")]), dups)
    assert 4 in manifest["sample_id"].values
    assert not {3, 5} & set(manifest["sample_id"])
    removed = changes.set_index("sample_id")
    assert set(removed.index) == {3, 5} and set(removed["action"]) == {"merge"}
    assert "duplicate of sample 4" in removed.at[3, "reason"] and "same photo" in removed.at[3, "reason"]


def test_later_own_decision_overrides_a_merge_and_latest_merge_wins():
    samples, labels, dups = _tiny()
    d = _decisions([(5, 4, "merge", None, ""), (6, 3, "keep", None, "not a duplicate")])
    manifest, _ = apply_decisions(samples, labels, d, dups)
    assert {3, 4} <= set(manifest["sample_id"]) and 5 not in set(manifest["sample_id"])
    d = _decisions([(5, 4, "merge", None, ""), (8, 5, "merge", None, "")])  # 5 became the keeper later
    manifest, _ = apply_decisions(samples, labels, d, dups)
    assert 5 in set(manifest["sample_id"]) and not {3, 4} & set(manifest["sample_id"])


def test_relabel_after_remove_brings_the_sample_back_and_unlabelled_gets_labelled():
    samples, labels, dups = _tiny()
    labels.loc[labels.sample_id == 6, "label"] = "b"  # what current_labels reports after the relabel below
    d = _decisions([(1, 1, "remove", None, ""), (2, 1, "relabel", "a", ""), (3, 6, "relabel", "b", "annotated")])
    manifest, changes = apply_decisions(samples, labels, d, dups)
    assert {1, 6} <= set(manifest["sample_id"])
    assert changes.set_index("sample_id").at[6, "change"] == "labelled"
    assert 1 not in set(changes["sample_id"])  # relabelled to its own given label: no change


def test_no_decisions_exports_everything():
    samples, labels, dups = _tiny()
    manifest, changes = apply_decisions(samples, labels, _decisions([]).reindex(
        columns=["id", "sample_id", "action", "new_label", "reason", "who", "created_at"]), dups)
    assert len(manifest) == 6 and changes.empty


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name, expected", [
    ("cat", "cat"), ("../../etc", "_.._etc"), ("/etc/passwd", "_etc_passwd"), ("..", "_"), (".", "_"), ("", "_"),
    ("a\\b", "a_b"), ("C:evil", "C_evil"), (".hidden", "hidden"), ("con", "con_"), ("chat été", "chat été"),
    ("nul\x00byte", "nul_byte"),
])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


def test_folder_names_are_distinct_and_bounded():
    m = folder_names(["a/b", "a_b", "A_B", "x" * 500])
    assert len(set(v.lower() for v in m.values())) == 4
    assert all("/" not in v and len(v) <= 120 for v in m.values())


# ------------------------------------------------------------------------------------------- catalog exports
def test_export_applies_live_decisions_and_writes_reports(proj, tmp_path):
    cat = proj.cat
    f0, f1 = proj.flagged[:2]
    rid = cat.add_decision(f0, "relabel", "cat", reason="accepted suggestion")
    cat.add_decision(f1, "remove", reason="ambiguous")
    undone = cat.add_decision(proj.outliers[0], "remove", reason="oops")
    cat.undo_decision(undone)
    cat.add_decision(proj.near_set[1], "merge", reason="best copy")

    res = export_dataset(cat, out_dir=tmp_path / "out", formats=["csv", "parquet"])
    m = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert m.columns.tolist() == ["path", "label", "split", "sample_id"]
    pq = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert pq["sample_id"].tolist() == m["sample_id"].tolist()
    kept = set(m["sample_id"])
    removed = {f1, proj.near_set[0], proj.near_set[2]}
    assert not removed & kept
    assert {f0, proj.outliers[0], proj.near_set[1]} <= kept
    assert m.set_index("sample_id").at[f0, "label"] == "cat"
    assert res.n_samples == 26 and res.n_exported == 26 - 3 and res.n_removed == 3 and res.n_relabelled == 1

    ch = pd.read_csv(tmp_path / "out" / "changes.csv").set_index("sample_id")
    assert ch.at[f0, "change"] == "relabelled" and ch.at[f0, "decision_id"] == rid
    assert ch.at[f1, "reason"] == "ambiguous"
    assert ch.at[proj.near_set[0], "action"] == "merge"
    assert len(json.loads((tmp_path / "out" / "changes.json").read_text())) == 4
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["n_removed"] == 3 and "manifest.csv" in info["files"]


def test_imagefolder_tree_symlinks_and_copies(proj, tmp_path):
    res = export_dataset(proj.cat, out_dir=tmp_path / "sym", formats=["imagefolder"])
    tree = tmp_path / "sym" / "imagefolder"
    files = [p for p in tree.rglob("*") if p.is_symlink() or p.is_file()]
    assert {p.relative_to(tree).parts[0] for p in files} == {"train", "val"}
    assert all(p.is_symlink() and p.resolve().is_file() for p in files)
    # 22 labelled samples, one file deleted after ingest, 4 unlabelled in the pool
    assert len(files) == 21 and res.n_missing_files == 1 and res.n_unlabelled_skipped == 4
    assert (tmp_path / "sym" / "manifest.csv").is_file()  # csv manifest comes with the tree

    export_dataset(proj.cat, out_dir=tmp_path / "copy", formats=["imagefolder"], link="copy")
    copies = [p for p in (tmp_path / "copy" / "imagefolder").rglob("*.png")]
    assert len(copies) == 21 and not any(p.is_symlink() for p in copies)


def test_hostile_labels_never_write_outside_the_export_folder(proj, tmp_path):
    cat = proj.cat
    hostile = ["../../escaped", "/tmp/abs_escape", "..", "a/../../b", "..\\..\\win"]
    for sid, label in zip(proj.flagged + [proj.outliers[0]], hostile):
        cat.add_decision(sid, "relabel", label)
    before = set(tmp_path.iterdir())
    out = tmp_path / "exp" / "run"
    export_dataset(cat, out_dir=out, formats=["imagefolder"])
    assert set(tmp_path.iterdir()) - before == {tmp_path / "exp"}
    assert not Path("/tmp/abs_escape").exists()
    for p in out.rglob("*"):
        assert p.parent.resolve().is_relative_to(out.resolve()), p
    class_dirs = {p.name for p in (out / "imagefolder" / "train").iterdir()} | {p.name for p in (out / "imagefolder" / "val").iterdir()}
    assert not any(d in ("..", ".") or "/" in d for d in class_dirs)
    m = pd.read_csv(out / "manifest.csv")  # the manifest keeps the labels as given by the user
    assert "../../escaped" in set(m["label"])


def test_export_refuses_a_non_empty_folder_and_unknown_format(proj, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("keep me")
    with pytest.raises(CurateError, match="not empty"):
        export_dataset(proj.cat, out_dir=tmp_path / "busy")
    with pytest.raises(CurateError, match="unknown export format"):
        export_dataset(proj.cat, out_dir=tmp_path / "new", formats=["xlsx"])


def test_default_folder_and_queue_exports(proj):
    cat = proj.cat
    cat.add_decision(proj.pool[0], "relabel", "dog", reason="annotated")
    res = export_dataset(cat, url_prefix="/data/local-files/?d=")
    assert res.out_dir.parent == cat.project.exports_dir
    q = pd.read_csv(res.out_dir / "queue.csv")
    assert q["sample_id"].tolist() == proj.pool and q.set_index("sample_id").at[proj.pool[0], "label"] == "dog"
    assert len(json.loads((res.out_dir / "queue.json").read_text())) == 4
    tasks = json.loads((res.out_dir / "label_studio.json").read_text())
    assert [t["meta"]["sample_id"] for t in tasks] == proj.pool[1:]  # the annotated one is not sent again
    assert all(t["data"]["image"].startswith("/data/local-files/?d=tmp") or "%2F" not in t["data"]["image"] for t in tasks)
    assert tasks[0]["meta"]["strategy"] == "margin" and tasks[0]["data"]["sample_id"] == proj.pool[1]


def test_label_studio_tasks_use_absolute_paths_by_default():
    q = pd.DataFrame({"batch_id": [1], "rank": [1], "sample_id": [9], "path": ["/x/y z.png"], "strategy": ["s"],
                      "score": [0.5], "reason": ["r"], "label": [None]})
    assert label_studio_tasks(q)[0]["data"]["image"] == "/x/y z.png"
    assert label_studio_tasks(q, "http://h/")[0]["data"]["image"] == "http://h/x/y%20z.png"


# ------------------------------------------------------------------------------------------- thumbnails
def test_thumbnails_are_made_once_and_missing_files_give_none(proj, tmp_path):
    src = next(proj.data_dir.rglob("*.png"))
    t = thumbnails.thumbnail(tmp_path / "th", 5, src, size=16)
    assert t == tmp_path / "th" / "5.jpg" and t.is_file()
    from PIL import Image

    with Image.open(t) as im:
        assert max(im.size) <= 16
    made = t.stat().st_mtime_ns
    assert thumbnails.thumbnail(tmp_path / "th", 5, src).stat().st_mtime_ns == made  # reused, not rewritten
    os.utime(t, (1, 1))  # older than its source (the file changed after the thumbnail was made): remade
    assert thumbnails.thumbnail(tmp_path / "th", 5, src).stat().st_mtime > 1
    assert thumbnails.thumbnail(tmp_path / "th", 6, tmp_path / "nope.png") is None
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    assert thumbnails.thumbnail(tmp_path / "th", 7, bad) is None
    assert thumbnails.placeholder()[:2] == b"\xff\xd8"  # a JPEG


# ------------------------------------------------------------------------------------------- CLI
def test_cli_decide_undo_decisions_export(proj, tmp_path):
    from curate.engine.cli import app

    runner = CliRunner()
    p = str(proj.cat.root)
    sid = proj.flagged[0]
    r = runner.invoke(app, ["decide", str(sid), "relabel", "--label", "cat", "--reason", "cli test", "-p", p])
    assert r.exit_code == 0, r.output
    did = int(proj.cat.scalar("SELECT max(id) FROM decisions"))
    assert proj.cat.current_labels().set_index("sample_id").at[sid, "label"] == "cat"
    r = runner.invoke(app, ["decisions", "-p", p])
    assert r.exit_code == 0 and "relabel" in r.output and "live" in r.output
    r = runner.invoke(app, ["undo", str(did), "-p", p])
    assert r.exit_code == 0, r.output
    assert proj.cat.current_labels().set_index("sample_id").at[sid, "label"] != "cat"
    assert "undo of" in runner.invoke(app, ["decisions", "-p", p]).output
    r = runner.invoke(app, ["decide", str(sid), "explode", "-p", p])
    assert isinstance(r.exception, CurateError)
    r = runner.invoke(app, ["decide", str(sid), "remove", "-p", p])
    assert r.exit_code == 0
    out = tmp_path / "cli-out"
    r = runner.invoke(app, ["export", "-p", p, "--out", str(out), "-f", "parquet", "-f", "imagefolder", "--copy"])
    assert r.exit_code == 0, r.output
    assert sid not in set(pd.read_parquet(out / "manifest.parquet")["sample_id"])
    assert not any(p.is_symlink() for p in (out / "imagefolder").rglob("*"))

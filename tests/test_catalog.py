import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from curate.engine.catalog import (
    SCHEMA_VERSION,
    Catalog,
    CurateError,
    ProjectBusyError,
    ProjectNotFoundError,
    init_project,
    open_project,
)


def _add_samples(cat, n=3):
    with cat.transaction() as con:
        for i in range(n):
            con.execute(
                "INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (nextval('seq_sample'), ?, ?, now())",
                [f"h{i}", f"/x/{i}.png"],
            )
    return [r[0] for r in cat.query("SELECT id FROM samples ORDER BY id")]


def test_init_creates_workspace_and_schema(tmp_path):
    cat = init_project(tmp_path / "p")
    for d in ("embeddings", "indexes", "thumbnails", "exports"):
        assert (tmp_path / "p" / d).is_dir()
    assert (tmp_path / "p" / "catalog.duckdb").is_file()
    assert cat.schema_version() == SCHEMA_VERSION
    # re-init is idempotent and keeps data
    ids = _add_samples(cat)
    cat2 = init_project(tmp_path / "p")
    assert cat2.counts()["samples"] == len(ids)
    assert cat2.query("SELECT count(*) FROM schema_version")[0][0] == SCHEMA_VERSION


def test_open_missing_project_is_a_clear_error(tmp_path):
    with pytest.raises(ProjectNotFoundError, match="curate init"):
        open_project(tmp_path / "nope")


def test_newer_schema_is_refused(tmp_path):
    cat = init_project(tmp_path / "p")
    with cat.transaction() as con:
        con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    with pytest.raises(CurateError, match="newer than this curate"):
        open_project(tmp_path / "p")


def test_transaction_rolls_back_on_error(project):
    _add_samples(project, 2)
    with pytest.raises(RuntimeError):
        with project.transaction() as con:
            con.execute(
                "INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (nextval('seq_sample'), 'h', '/y', now())"
            )
            raise RuntimeError("boom")
    assert project.counts()["samples"] == 2


def test_decisions_append_only_with_undo_and_current_labels(project):
    ids = _add_samples(project, 3)
    project.add_labels([(ids[0], "cat"), (ids[1], "dog")], source="test")
    d1 = project.add_decision(ids[0], "relabel", "dog", reason="looks like a dog")
    labels = project.current_labels().set_index("sample_id")
    assert labels.loc[ids[0], "label"] == "dog" and labels.loc[ids[0], "given_label"] == "cat"
    assert pd.isna(labels.loc[ids[2], "label"])
    undo = project.undo_decision(d1)
    assert project.current_labels().set_index("sample_id").loc[ids[0], "label"] == "cat"
    hist = project.decisions()
    assert set(hist["id"]) == {d1, undo}  # nothing deleted
    assert bool(hist.set_index("id").loc[d1, "undone"])
    with pytest.raises(CurateError, match="already undone"):
        project.undo_decision(d1)
    with pytest.raises(CurateError, match="unknown decision action"):
        project.add_decision(ids[1], "explode")
    with pytest.raises(CurateError, match="needs a new label"):
        project.add_decision(ids[1], "relabel", "  ")
    with pytest.raises(CurateError, match="does not exist"):
        project.add_decision(99999, "keep")
    # a failed batch writes nothing
    before = len(project.decisions())
    with pytest.raises(CurateError):
        project.add_decisions([(ids[1], "keep", None, ""), (ids[2], "bogus", None, "")])
    assert len(project.decisions()) == before
    assert "dog" in project.class_names()


def test_replace_analysis_is_atomic_and_finishes_run(project):
    ids = _add_samples(project, 3)
    run = project.start_run("outliers", {"k": 5})
    df = pd.DataFrame({"sample_id": ids, "score": [0.1, 0.5, 0.9], "is_outlier": [True, False, False], "rank": [1, 2, 3]})
    project.replace_analysis("outliers", df, run, summary={"n": 1})
    assert project.scalar("SELECT count(*) FROM outliers") == 3
    assert project.last_run("outliers")["summary"] == {"n": 1}
    run2 = project.start_run("outliers")
    bad = pd.DataFrame({"sample_id": ids, "no_such_column": [1, 2, 3]})
    with pytest.raises(Exception):
        project.replace_analysis("outliers", bad, run2)
    assert project.scalar("SELECT count(*) FROM outliers") == 3  # old results intact


def test_second_writer_gets_project_busy(project):
    # another process holds the catalog's write lock for a few seconds
    code = textwrap.dedent(
        f"""
        import duckdb, sys, time
        con = duckdb.connect({str(project.path)!r})
        print("locked", flush=True)
        time.sleep(6)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        busy = Catalog(project.root, wait_s=0.5)
        with pytest.raises(ProjectBusyError, match="project is busy"):
            busy.add_labels([(1, "x")], source="t")
        # a patient writer waits for the lock and succeeds
        patient = Catalog(project.root, wait_s=20)
        _add_samples(patient, 1)
        assert patient.counts()["samples"] == 1
    finally:
        proc.kill()
        proc.wait()

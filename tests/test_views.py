"""The domain rules as catalog views (migration 4): which decisions are live, a sample's given and current label.

The views replaced several hand-written copies of the same rules (``Catalog.LIVE_SQL`` and ``CURRENT_LABELS_SQL``,
the review app's ``LIVE_CTE`` / ``GIVEN_CTE`` / ``RELABEL_CTE``, the export's ``LIVE_DECISIONS_SQL``, the active
learning exclusions).  Those copies are kept below, verbatim, as the reference the views must agree with.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from curate.engine.catalog import MIGRATIONS, RULE_VIEWS, SCHEMA_VERSION, Catalog, open_project

# ------------------------------------------------------------------------------ the replaced formulations
OLD_LIVE_SQL = """SELECT d.* FROM decisions d
        WHERE d.undoes IS NULL AND d.id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)"""

OLD_CURRENT_LABELS_SQL = f"""
    WITH given AS (
        SELECT sample_id, class_name FROM labels
        QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) = 1
    ), live AS (
        {OLD_LIVE_SQL}
    ), relabel AS (
        SELECT sample_id, new_label FROM live WHERE action = 'relabel'
        QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) = 1
    )
    SELECT s.id AS sample_id, coalesce(r.new_label, g.class_name) AS label, g.class_name AS given_label
    FROM samples s LEFT JOIN given g ON g.sample_id = s.id LEFT JOIN relabel r ON r.sample_id = s.id
"""

OLD_APP_LIVE_CTE = """live AS (
    SELECT id AS decision_id, sample_id, action, new_label FROM decisions
    WHERE undoes IS NULL AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)
    QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) = 1)"""

OLD_APP_GIVEN_CTE = "given AS (SELECT sample_id, arg_max(class_name, id) AS label FROM labels GROUP BY sample_id)"

OLD_APP_RELABEL_CTE = """relabel AS (
    SELECT sample_id, arg_max(new_label, id) AS new_label FROM decisions
    WHERE action = 'relabel' AND undoes IS NULL
      AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)
    GROUP BY sample_id)"""

OLD_EXPORT_LIVE_DECISIONS_SQL = """
    SELECT id, sample_id, action, new_label, reason, who, created_at FROM decisions
    WHERE undoes IS NULL AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)
    ORDER BY id
"""

OLD_ACTIVE_BLOCKED_SQL = """SELECT id AS sample_id FROM samples WHERE path IN (SELECT path FROM quarantine)
           UNION
           SELECT sample_id FROM (
               SELECT sample_id, action FROM decisions d
               WHERE d.undoes IS NULL AND d.id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL)
               QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) = 1
           ) WHERE action = 'remove'"""


# ------------------------------------------------------------------------------ helpers
def _add_samples(con, n: int) -> list[int]:
    for i in range(n):
        con.execute("INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (nextval('seq_sample'), ?, ?, now())",
                    [f"h{i}", f"/x/{i}.png"])
    return [r[0] for r in con.execute("SELECT id FROM samples ORDER BY id").fetchall()]


def _frame(con, sql: str) -> pd.DataFrame:
    return con.execute(sql).df()


def _same(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    a = a.sort_values(keys).reset_index(drop=True)
    b = b[list(a.columns)].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


@pytest.fixture
def decided(project):
    """A project whose decisions exercise every part of the rules.

    s0  given cat, then re-annotated dog (the latest labels row wins) and no decision
    s1  given cat, relabel -> dog
    s2  given cat, relabel -> dog, undone: current label is cat again, no live decision
    s3  given cat, remove, then keep: the later decision supersedes (live = keep, not blocked)
    s4  given cat, relabel -> bird, then relabel -> fish: the latest relabel wins
    s5  given cat, relabel -> dog, then keep: the relabel still holds, the live decision is the keep
    s6  unlabeled, relabel -> cat (a newly labelled sample)
    s7  unlabeled, no decision
    s8  given dog, remove (blocked); s9 given dog, keep then remove, the remove undone (live = keep)
    s10 quarantined path (blocked), given dog
    """
    cat = project
    with cat.transaction() as con:
        ids = _add_samples(con, 11)
    s = dict(enumerate(ids))
    cat.add_labels([(s[i], "cat") for i in range(6)] + [(s[8], "dog"), (s[9], "dog"), (s[10], "dog")], source="t")
    cat.add_labels([(s[0], "dog")], source="annotation")
    cat.add_decision(s[1], "relabel", "dog")
    cat.undo_decision(cat.add_decision(s[2], "relabel", "dog"))
    cat.add_decision(s[3], "remove")
    cat.add_decision(s[3], "keep")
    cat.add_decisions([(s[4], "relabel", "bird", ""), (s[4], "relabel", "fish", "")])
    cat.add_decision(s[5], "relabel", "dog")
    cat.add_decision(s[5], "keep")
    cat.add_decision(s[6], "relabel", "cat")
    cat.add_decision(s[8], "remove")
    cat.add_decision(s[9], "keep")
    cat.undo_decision(cat.add_decision(s[9], "remove"))
    cat.add_quarantine([("/x/10.png", "unreadable", "thumbnail", None)])
    return cat, s


# ------------------------------------------------------------------------------ tests
def test_views_give_what_the_rules_say(decided):
    cat, s = decided
    cur = cat.current_labels().set_index("sample_id")
    expect = {0: ("dog", "dog"), 1: ("dog", "cat"), 2: ("cat", "cat"), 3: ("cat", "cat"), 4: ("fish", "cat"),
              5: ("dog", "cat"), 6: ("cat", None), 7: (None, None), 8: ("dog", "dog"), 9: ("dog", "dog"),
              10: ("dog", "dog")}
    for i, (label, given) in expect.items():
        got = cur.loc[s[i]]
        assert (None if pd.isna(got["label"]) else got["label"]) == label, i
        assert (None if pd.isna(got["given_label"]) else got["given_label"]) == given, i
    live = cat.live_decisions().set_index("sample_id")
    assert {k: live.loc[s[k], "action"] for k in (1, 3, 4, 5, 6, 8, 9)} == {
        1: "relabel", 3: "keep", 4: "relabel", 5: "keep", 6: "relabel", 8: "remove", 9: "keep"}
    assert s[2] not in live.index and s[0] not in live.index
    assert live.loc[s[4], "new_label"] == "fish"
    assert live["undoes"].isna().all()
    from curate.engine.analyses.active import _blocked

    assert sorted(_blocked(cat).tolist()) == [s[8], s[10]]
    dist = cat.label_distribution().set_index("label")
    assert dist.loc["cat", "given"] == 5 and dist.loc["cat", "current"] == 3  # given s1-s5; current s2, s3, s6
    assert dist.loc["fish", "given"] == 0 and dist.loc["fish", "current"] == 1


def test_views_match_the_old_formulations(decided):
    cat, _ = decided
    with cat.connect(read_only=True) as con:
        # decisions in force: the old Catalog.LIVE_SQL and the export's LIVE_DECISIONS_SQL
        in_force = _frame(con, "SELECT * FROM decisions_in_force")
        _same(in_force, _frame(con, OLD_LIVE_SQL), ["id"])
        _same(cat.decisions_in_force(), _frame(con, OLD_EXPORT_LIVE_DECISIONS_SQL), ["id"])
        # the live decision per sample: the old Catalog.live_decisions and the app's LIVE_CTE
        old_live = _frame(con, f"""{OLD_LIVE_SQL}
               QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) = 1 ORDER BY sample_id""")
        pd.testing.assert_frame_equal(cat.live_decisions(), old_live, check_dtype=False)
        _same(_frame(con, "SELECT id AS decision_id, sample_id, action, new_label FROM live_decisions"),
              _frame(con, f"WITH {OLD_APP_LIVE_CTE} SELECT * FROM live"), ["sample_id"])
        # labels: the old CURRENT_LABELS_SQL, the app's GIVEN_CTE and RELABEL_CTE
        pd.testing.assert_frame_equal(cat.current_labels(),
                                      _frame(con, OLD_CURRENT_LABELS_SQL + " ORDER BY s.id"), check_dtype=False)
        _same(_frame(con, "SELECT sample_id, label FROM given_labels"),
              _frame(con, f"WITH {OLD_APP_GIVEN_CTE} SELECT * FROM given"), ["sample_id"])
        _same(_frame(con, "SELECT sample_id, new_label FROM live_relabels"),
              _frame(con, f"WITH {OLD_APP_RELABEL_CTE} SELECT * FROM relabel"), ["sample_id"])
        # the relabel's decision id is the latest relabel in force
        ids = _frame(con, "SELECT r.decision_id, d.sample_id, d.new_label FROM live_relabels r "
                          "JOIN decisions d ON d.id = r.decision_id")
        _same(ids.drop(columns="decision_id"), _frame(con, "SELECT sample_id, new_label FROM live_relabels"),
              ["sample_id"])
        # active learning's exclusions
        old_blocked = _frame(con, OLD_ACTIVE_BLOCKED_SQL)["sample_id"].to_numpy()
    from curate.engine.analyses.active import _blocked

    assert sorted(_blocked(cat).tolist()) == sorted(old_blocked.tolist())


def test_catalog_readers_agree_with_the_old_formulations(decided):
    """The Catalog methods that read the views give what they gave over the old SQL."""
    cat, s = decided
    names, codes = cat.label_codes(np.array([s[7], s[4], s[2], s[6], 999_999], dtype=np.int64))
    assert names == ["cat", "dog", "fish"]
    assert codes.tolist() == [-1, 2, 0, 0, -1]
    run = cat.start_run("duplicates")
    cat.replace_analysis("duplicates", pd.DataFrame({
        "set_id": [1, 1, 1, 2, 2], "sample_id": [s[0], s[1], s[7], s[2], s[3]], "kind": "near",
        "similarity": 0.99, "is_keeper": [True, False, False, True, False], "crosses_splits": False}), run,
        also={"semdedup": pd.DataFrame({"sample_id": [s[1], s[2], s[7]], "max_similarity": [0.99, 0.97, 0.95],
                                        "kmeans_partition": 0})})
    dup = cat.duplicate_candidates()
    assert dup["sample_id"].tolist() == [s[7]]  # s1 and s3 have live decisions
    assert sorted(cat.duplicate_candidates(include_reviewed=True)["sample_id"]) == sorted([s[1], s[7], s[3]])
    assert cat.duplicate_candidates(include_reviewed=True).set_index("sample_id").loc[s[1], "current_label"] == "dog"
    assert cat.semdedup_pruned(0.9).tolist() == [s[2], s[7]]  # s2's decision was undone: not reviewed
    run = cat.start_run("label_issues")
    cat.replace_analysis("label_issues", pd.DataFrame({
        "sample_id": [s[0], s[4], s[2]], "given_label": ["dog", "cat", "cat"], "suggested_label": "dog",
        "suggested_confidence": 0.9, "label_quality": [0.1, 0.2, 0.3], "is_issue": True, "rank": [1, 2, 3]}), run)
    li = cat.label_issue_candidates()
    assert li["sample_id"].tolist() == [s[0], s[2]]
    assert li["current_label"].tolist() == ["dog", "cat"]
    assert cat.label_issue_candidates(include_reviewed=True).set_index("sample_id").loc[s[4], "current_label"] == "fish"


def _v3_catalog(path) -> None:
    """A catalog file as curate wrote it before the views (schema v3), with a few labels and decisions."""
    con = duckdb.connect(str(path))
    try:
        for version, sql in MIGRATIONS:
            if version > 3:
                break
            con.execute(sql)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
        _add_samples(con, 3)
        con.execute("INSERT INTO labels VALUES (nextval('seq_label'), 1, 'cat', 't', now()), "
                    "(nextval('seq_label'), 2, 'cat', 't', now()), (nextval('seq_label'), 2, 'dog', 't', now())")
        con.execute("INSERT INTO decisions VALUES (1, 1, 'relabel', 'bird', '', 'u', now(), NULL), "
                    "(2, 3, 'relabel', 'fish', '', 'u', now(), NULL), (3, 3, 'relabel', NULL, 'undo', 'u', now(), 2)")
    finally:
        con.close()


def test_migrating_a_v3_catalog_creates_the_views(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    _v3_catalog(root / "catalog.duckdb")
    with duckdb.connect(str(root / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchone()[0] == 0
    cat = open_project(root)  # migrates
    assert cat.schema_version() == SCHEMA_VERSION >= 4
    views = {r[0] for r in cat.query("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    assert set(RULE_VIEWS) <= views
    cur = cat.current_labels()
    assert cur.astype(object).where(cur.notna(), None).values.tolist() == [
        [1, "bird", "cat"], [2, "dog", "dog"], [3, None, None]]
    assert cat.live_decisions()[["id", "sample_id", "action"]].values.tolist() == [[1, 1, "relabel"]]
    # migrating again (another process opening the project) changes nothing; rerunning v4 itself is harmless
    assert Catalog(root).migrate() == SCHEMA_VERSION
    with cat.transaction() as con:
        con.execute(dict(MIGRATIONS)[4])
    assert cat.query("SELECT count(*) FROM schema_version WHERE version = 4")[0][0] == 1
    pd.testing.assert_frame_equal(cat.current_labels(), cur)


def test_read_only_connections_read_the_views(decided):
    cat, s = decided
    expected = {v: cat.query_df(f"SELECT * FROM {v}") for v in RULE_VIEWS}
    con = duckdb.connect(str(cat.path), read_only=True)  # what the review app opens
    try:
        for view in RULE_VIEWS:
            got = con.execute(f"SELECT * FROM {view}").df()
            assert len(got) == len(expected[view]) > 0, view
        assert con.execute("SELECT label FROM current_labels WHERE sample_id = ?", [s[4]]).fetchone()[0] == "fish"
        with pytest.raises(duckdb.Error):  # and it is really read-only
            con.execute("CREATE OR REPLACE VIEW live_decisions AS SELECT 1")
    finally:
        con.close()


def test_rule_views_cannot_be_replaced_by_a_parquet_view(project, tmp_path):
    pd.DataFrame({"sample_id": [1]}).to_parquet(tmp_path / "x.parquet")
    for view in RULE_VIEWS:
        with pytest.raises(ValueError, match="not a valid view name"):
            project.register_parquet_view(view, tmp_path / "x.parquet")


def test_metadata_filter(project):
    with project.transaction() as con:
        ids = _add_samples(con, 3)
        project.write_sample_extras(con, metadata=[(ids[0], "camera", "a"), (ids[1], "camera", "b"),
                                                   (ids[2], "site", "a")])
    sql, params = Catalog.metadata_filter("s.id", "camera", ["a", "c"])
    assert project.query(f"SELECT s.id FROM samples s WHERE {sql}", params) == [(ids[0],)]
    sql, params = Catalog.metadata_filter("s.id", "camera", ["x'); DROP TABLE samples; --"])
    assert project.query(f"SELECT s.id FROM samples s WHERE {sql}", params) == []
    assert project.counts()["samples"] == 3
    with pytest.raises(ValueError, match="not a column reference"):
        Catalog.metadata_filter("s.id) OR (1=1", "camera", ["a"])

"""Cached, paginated reads over a project's catalog for the review app.

Every query of the app lives here (or in :class:`engine.catalog.Catalog`).  Rules:

- user input (filters, search text, labels) reaches DuckDB only as bound parameters (``?``);
  SQL text is assembled only from the constant fragments below;
- filtering, sorting and pagination happen in DuckDB (``LIMIT ? OFFSET ?``) — a page never loads a whole
  table, so pages stay fast on million-sample catalogs;
- reads use read-only connections (:meth:`Catalog.connect`) that never outlive a script run: the reads of
  one run share one connection (:func:`run_scope`), so the CLI and tests can use the catalog in between;
- results are cached with ``st.cache_data`` keyed by the filters and by :func:`revision`, a cheap token
  that changes whenever a decision or a run is recorded, so a decision shows up on the next rerun.

The functions take the project root (a string) rather than a :class:`Catalog` so that the cache keys are
hashable; :func:`catalog` returns the process-wide ``Catalog`` (``st.cache_resource``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pandas as pd
import streamlit as st

from curate.engine.catalog import DEFAULT_PROJECT, Catalog, open_project

TTL_S = 60  # safety net only: revision() already invalidates on every decision / run
LONG_TTL_S = 600  # reads that only change with runs (their key has the runs part of the revision)
PAGE_SIZE = 24
MAP_POINTS = 20_000  # points drawn on the 2-D map; beyond this the map is a seeded sample
ISSUE_KINDS = ("label issue", "duplicate", "outlier", "image issue")

# The domain rules (which decision is live, a sample's given and current label) are the catalog's views
# (``live_decisions``, ``given_labels``, ``live_relabels``, ``current_labels``; see engine.catalog); the pages join
# ``live_decisions`` as ``live``.
LIVE_COLUMNS = "live.action, live.new_label, live.id AS decision_id"

STATUS_SQL = {"unreviewed": "live.sample_id IS NULL", "reviewed": "live.sample_id IS NOT NULL", "all": None}


# ------------------------------------------------------------------------------------------- project
def project_root() -> str:
    """The project folder: ``CURATE_PROJECT``, else ``--project DIR`` after ``streamlit run app/main.py --``."""
    env = os.environ.get("CURATE_PROJECT")
    if env:
        return str(Path(env).expanduser().resolve())
    argv = sys.argv[1:]
    for i, a in enumerate(argv):
        if a in ("--project", "-p") and i + 1 < len(argv):
            return str(Path(argv[i + 1]).expanduser().resolve())
        if a.startswith("--project="):
            return str(Path(a.split("=", 1)[1]).expanduser().resolve())
    return str(Path(DEFAULT_PROJECT).resolve())


@st.cache_resource(show_spinner=False)
def catalog(root: str) -> Catalog:
    """The project's catalog (it holds no open connection, so one object serves every session)."""
    return open_project(root)


class _RunConnection:
    """One read-only connection shared by the reads of one script run, opened on first use."""

    def __init__(self, root: str):
        self.root = root
        self._cm: contextlib.AbstractContextManager | None = None
        self.con: duckdb.DuckDBPyConnection | None = None

    def get(self) -> duckdb.DuckDBPyConnection:
        if self.con is None:
            self._cm = catalog(self.root).connect(read_only=True)
            self.con = self._cm.__enter__()
        return self.con

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm, self.con = self._cm, None, None
            cm.__exit__(None, None, None)


_local = threading.local()


@contextlib.contextmanager
def run_scope(root: str) -> Iterator[None]:
    """Share one catalog connection between the reads of a script run and close it when the run ends.

    Opening a DuckDB connection costs more than most of the page's queries; one per run keeps reruns fast
    while no connection outlives the run (the CLI and other processes can use the catalog in between).
    """
    run = _RunConnection(root)
    _local.run = run
    try:
        yield
    finally:
        _local.run = None
        run.close()


def release() -> None:
    """Close this run's shared connection now (before work that opens its own connections, e.g. an export)."""
    run = getattr(_local, "run", None)
    if run is not None:
        run.close()


@contextlib.contextmanager
def connection(root: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """The run's shared read-only connection inside :func:`run_scope`, else a short-lived one."""
    run = getattr(_local, "run", None)
    if run is not None and run.root == root:
        yield run.get()
        return
    with catalog(root).connect(read_only=True) as con:
        yield con


def revision(root: str) -> tuple[int, int, int]:
    """A token that changes when a decision is recorded or a run starts/finishes (uncached, ~1 ms)."""
    with connection(root) as con:
        row = con.execute(
            "SELECT (SELECT count(*) FROM decisions), (SELECT coalesce(max(id), 0) FROM runs), "
            "(SELECT count(*) FROM runs WHERE finished_at IS NOT NULL)"
        ).fetchone()
    return tuple(int(v) for v in row)  # type: ignore[return-value]


def _df(con, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    return con.execute(sql, list(params)).df()


def _where(clauses: list[tuple[str, list]]) -> tuple[str, list]:
    """Join constant SQL fragments with AND; their values are returned as bound parameters."""
    parts = [c for c, _ in clauses]
    params = [p for _, ps in clauses for p in ps]
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def _attach_samples(con, df: pd.DataFrame) -> pd.DataFrame:
    """Add ``path``, ``split`` and the current ``label`` of the page's samples (one small query)."""
    if df.empty:
        return df.assign(path=pd.Series(dtype="object"), split=pd.Series(dtype="object"),
                         label=pd.Series(dtype="object"))
    ids = sorted({int(i) for i in df["sample_id"]})
    # the ids filter the view directly: DuckDB then scans only their labels rows, not the whole labels table
    info = _df(con, """
        SELECT cur.sample_id, s.path, s.split, cur.label
        FROM current_labels cur JOIN samples s ON s.id = cur.sample_id
        WHERE cur.sample_id IN (SELECT unnest(?::BIGINT[]))""", [ids])
    return df.drop(columns=[c for c in ("path", "split", "label") if c in df.columns]).merge(info, on="sample_id", how="left")


def _metadata_clause(sample_col: str, meta: tuple) -> list[tuple[str, list]]:
    """``meta`` = ``(key, (value, ...))`` -> a clause keeping the rows whose ``sample_col`` sample has metadata
    ``key`` equal to one of the values (``()``: no clause); :meth:`Catalog.metadata_filter` writes it."""
    if not meta or not meta[1]:
        return []
    key, values = meta
    return [Catalog.metadata_filter(sample_col, key, values)]


@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def metadata_keys(root: str, runs_rev: tuple) -> list[str]:
    """Sample metadata keys (extra manifest columns, COCO attributes, HF columns), most common first."""
    with connection(root) as con:
        return catalog(root).metadata_keys(con=con)["key"].tolist()


@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def metadata_values(root: str, runs_rev: tuple, key: str, limit: int = 500) -> list[str]:
    """The most common values of metadata ``key`` (at most ``limit``), for a filter's choices."""
    with connection(root) as con:
        return [r[0] for r in con.execute(
            "SELECT value FROM sample_metadata WHERE key = ? AND value IS NOT NULL GROUP BY value "
            "ORDER BY count(*) DESC, value LIMIT ?", [key, int(limit)]).fetchall()]


def _contains_pattern(text: str) -> str:
    """An ``ILIKE ... ESCAPE '\\'`` pattern matching ``text`` anywhere, with ``%`` and ``_`` taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _paged(con, base: str, params: list, order: str, limit: int, offset: int) -> tuple[int, pd.DataFrame]:
    total = int(con.execute(f"SELECT count(*) FROM ({base})", params).fetchone()[0])
    page = _df(con, f"{base} ORDER BY {order} LIMIT ? OFFSET ?", params + [int(limit), int(offset)])
    return total, page


# ------------------------------------------------------------------------------------------- overview
@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def dataset_overview(root: str, runs_rev: tuple) -> dict:
    """What only changes with runs (ingest, analyses): counts, the given-label distribution, issues, last runs.

    Keyed by the runs part of :func:`revision`, so a review decision does not recompute it (on a million
    samples the label distribution is the most expensive query of the app).
    """
    with connection(root) as con:
        one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
        counts = {
            "samples": one("SELECT count(*) FROM samples"),
            "classes": one("SELECT count(*) FROM classes"),
            "quarantined": one("SELECT count(DISTINCT path) FROM quarantine"),
        }
        given = _df(con, "SELECT label, count(*) AS samples FROM given_labels GROUP BY label")
        counts["labeled"] = int(given["samples"].sum())
        issues = _df(con, """
            SELECT 'label issues' AS issue, count(*) FILTER (WHERE is_issue) AS flagged, count(*) AS scored FROM label_issues
            UNION ALL SELECT 'duplicate sets', count(DISTINCT set_id), count(*) FROM duplicates
            UNION ALL SELECT 'extra duplicate copies', count(*) FILTER (WHERE NOT coalesce(is_keeper, false)), count(*) FROM duplicates
            UNION ALL SELECT 'outliers', count(*) FILTER (WHERE is_outlier), count(*) FROM outliers
            UNION ALL (SELECT 'image: ' || issue, count(*), count(*) FROM image_issues GROUP BY issue ORDER BY issue)
            UNION ALL SELECT 'clusters', count(DISTINCT cluster), count(*) FROM clusters
            UNION ALL SELECT 'annotation queue', count(*), count(*) FROM queries
            """)
        runs = _df(con, "SELECT id, kind, status, started_at, seconds, summary FROM runs ORDER BY id DESC LIMIT 10")
    return {"counts": counts, "given": given, "issues": issues, "runs": runs}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def analysis_runs(root: str, runs_rev: tuple) -> pd.DataFrame:
    """One row per registered analysis (the registry's order): what it finds, its last run and the rows it wrote."""
    from curate.engine.analyses import registry

    rows = []
    with connection(root) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for a in registry.analyses():
            last = con.execute("SELECT status, started_at, seconds FROM runs WHERE kind = ? ORDER BY id DESC LIMIT 1",
                               [a.kind]).fetchone()
            first = a.tables[0] if a.tables else None
            n = con.execute(f"SELECT count(*) FROM {first}").fetchone()[0] if first in tables else None
            rows.append({"analysis": a.name, "finds": a.title, "last run": last[1] if last else None,
                         "status": last[0] if last else "not run", "seconds": last[2] if last else None,
                         "rows": n, "command": f"curate audit {a.name}"})
    return pd.DataFrame(rows)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def live_relabels(root: str, rev: tuple) -> pd.DataFrame:
    """``sample_id, given_label, new_label`` for every sample with a live relabel (the latest one wins)."""
    with connection(root) as con:
        relabels = _df(con, "SELECT sample_id, new_label FROM live_relabels ORDER BY sample_id")
        # given labels of these samples only (bound ids: DuckDB reads only their labels rows)
        given = _df(con, "SELECT sample_id, label AS given_label FROM given_labels "
                         "WHERE sample_id IN (SELECT unnest(?::BIGINT[]))", [relabels["sample_id"].astype("int64").tolist()])
    out = relabels.merge(given, on="sample_id", how="left")
    return out[["sample_id", "given_label", "new_label"]]


def overview(root: str, rev: tuple) -> dict:
    """Counts, current class distribution (given labels + live relabels), issues, decisions, last runs."""
    base = dataset_overview(root, rev[1:])
    relabels = live_relabels(root, rev)
    dist = base["given"].set_index("label")["samples"].astype("int64")
    changes = pd.concat([relabels["given_label"].dropna().value_counts().mul(-1), relabels["new_label"].value_counts()])
    dist = dist.add(changes.groupby(level=0).sum(), fill_value=0).astype("int64")
    classes = (dist[dist > 0].rename("samples").rename_axis("label").reset_index()
               .sort_values(["samples", "label"], ascending=[False, True], ignore_index=True))
    live = live_decision_counts(root, rev)
    counts = {**base["counts"], "labeled": base["counts"]["labeled"] + int(relabels["given_label"].isna().sum()),
              "reviewed": sum(live.values())}
    decisions = pd.Series(live, name="samples", dtype="int64").rename_axis("action").reset_index()
    return {"counts": counts, "classes": classes, "issues": base["issues"], "decisions": decisions, "runs": base["runs"]}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def class_names(root: str, rev: tuple) -> list[str]:
    with connection(root) as con:
        return [r[0] for r in con.execute("SELECT name FROM classes ORDER BY name").fetchall()]


# ------------------------------------------------------------------------------------------- label issues
@st.cache_data(ttl=TTL_S, show_spinner=False)
def label_issues_page(root: str, rev: tuple, only_flagged: bool = True, given: tuple[str, ...] = (),
                      suggested: tuple[str, ...] = (), status: str = "unreviewed", search: str = "",
                      limit: int = PAGE_SIZE, offset: int = 0, meta: tuple = ()) -> tuple[int, pd.DataFrame]:
    """One page of label issues, most likely wrong first (lowest ``label_quality``); returns (total, page).

    ``meta`` = ``(key, (values...))`` keeps the samples whose metadata ``key`` is one of the values."""
    clauses: list[tuple[str, list]] = _metadata_clause("li.sample_id", meta)
    if only_flagged:
        clauses.append(("li.is_issue", []))
    if given:
        clauses.append(("li.given_label IN (SELECT unnest(?::VARCHAR[]))", [list(given)]))
    if suggested:
        clauses.append(("li.suggested_label IN (SELECT unnest(?::VARCHAR[]))", [list(suggested)]))
    if STATUS_SQL.get(status):
        clauses.append((STATUS_SQL[status], []))
    join = ""
    if search:
        join = " JOIN samples s ON s.id = li.sample_id"
        clauses.append(("s.path ILIKE ? ESCAPE '\\'", [_contains_pattern(search)]))
    where, params = _where(clauses)
    base = f"""SELECT li.sample_id, li.given_label, li.suggested_label, li.suggested_confidence, li.label_quality,
               li.rank, {LIVE_COLUMNS}
        FROM label_issues li LEFT JOIN live_decisions live ON live.sample_id = li.sample_id{join}{where}"""
    with connection(root) as con:
        total, page = _paged(con, base, params, "label_quality ASC NULLS LAST, sample_id", limit, offset)
        return total, _attach_samples(con, page)


@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def label_issue_classes(root: str, runs_rev: tuple) -> tuple[list[str], list[str]]:
    """Distinct given and suggested labels among label issues (for the filters)."""
    with connection(root) as con:
        given = [r[0] for r in con.execute(
            "SELECT DISTINCT given_label FROM label_issues WHERE given_label IS NOT NULL ORDER BY 1").fetchall()]
        sugg = [r[0] for r in con.execute(
            "SELECT DISTINCT suggested_label FROM label_issues WHERE suggested_label IS NOT NULL ORDER BY 1").fetchall()]
    return given, sugg


# ------------------------------------------------------------------------------------------- duplicates
@st.cache_data(ttl=TTL_S, show_spinner=False)
def duplicate_sets_page(root: str, rev: tuple, kinds: tuple[str, ...] = (), crosses_only: bool = False,
                        status: str = "unreviewed", limit: int = 10, offset: int = 0,
                        max_members: int = 50) -> tuple[int, pd.DataFrame]:
    """One page of duplicate sets (largest, most similar first); returns (n_sets, members of the page's sets).

    Members come keeper first, at most ``max_members`` per set; ``set_size`` is the full size of the set.
    ``status``: ``unreviewed`` = no member has a live decision, ``reviewed`` = at least one has.
    """
    clauses: list[tuple[str, list]] = []
    if kinds:
        clauses.append(("kind IN (SELECT unnest(?::VARCHAR[]))", [list(kinds)]))
    if crosses_only:
        clauses.append(("crosses_splits", []))
    if status == "unreviewed":
        clauses.append(("reviewed = 0", []))
    elif status == "reviewed":
        clauses.append(("reviewed > 0", []))
    where, params = _where(clauses)
    base = f"""WITH sets AS (
            SELECT d.set_id, any_value(d.kind) AS kind, count(*) AS set_size, max(d.similarity) AS similarity,
                   bool_or(coalesce(d.crosses_splits, false)) AS crosses_splits, count(live.sample_id) AS reviewed
            FROM duplicates d LEFT JOIN live_decisions live ON live.sample_id = d.sample_id GROUP BY d.set_id)
        SELECT * FROM sets{where}"""
    with connection(root) as con:
        total, sets = _paged(con, base, params, "set_size DESC, similarity DESC NULLS LAST, set_id", limit, offset)
        members = _df(con, f"""
            SELECT d.set_id, d.sample_id, d.kind, d.similarity, d.is_keeper, d.crosses_splits, {LIVE_COLUMNS}
            FROM duplicates d LEFT JOIN live_decisions live ON live.sample_id = d.sample_id
            WHERE d.set_id IN (SELECT unnest(?::BIGINT[]))
            QUALIFY row_number() OVER (PARTITION BY d.set_id ORDER BY d.is_keeper DESC NULLS LAST, d.sample_id) <= ?""",
                      [[int(s) for s in sets["set_id"]], int(max_members)])
        members = _attach_samples(con, members)
    members = members.merge(sets[["set_id", "set_size", "reviewed"]], on="set_id", how="left")
    order = {int(s): i for i, s in enumerate(sets["set_id"])}
    members["set_order"] = members["set_id"].map(order)
    members = members.sort_values(["set_order", "is_keeper", "sample_id"], ascending=[True, False, True])
    return total, members.drop(columns="set_order").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- score plots
@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def last_run_summary(root: str, runs_rev: tuple, kind: str) -> dict:
    """The summary of the last successful run of ``kind`` (``{}`` when it never ran)."""
    with connection(root) as con:
        run = catalog(root).last_run(kind, con=con)
    summary = (run or {}).get("summary")
    return dict(summary) if isinstance(summary, dict) else {}


@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def score_histogram(root: str, runs_rev: tuple, kind: str, bins: int = 40) -> tuple[pd.DataFrame, float | None]:
    """(histogram binned in DuckDB, highest flagged score) of ``label_quality`` or ``outlier_score``."""
    with connection(root) as con:
        cat = catalog(root)
        return cat.score_histogram(kind, bins=bins, con=con), cat.flag_boundary(kind, con=con)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def semdedup_pruned_count(root: str, rev: tuple, threshold: float) -> int:
    """How many samples SemDeDup prunes at ``threshold`` that have no live decision yet."""
    with connection(root) as con:
        return len(catalog(root).semdedup_pruned(threshold, con=con))


# ------------------------------------------------------------------------------------------- outliers / quality
@st.cache_data(ttl=TTL_S, show_spinner=False)
def outliers_page(root: str, rev: tuple, only_flagged: bool = True, status: str = "unreviewed",
                  limit: int = PAGE_SIZE, offset: int = 0, meta: tuple = ()) -> tuple[int, pd.DataFrame]:
    """One page of outliers, most atypical first (lowest score); ``meta`` as in :func:`label_issues_page`."""
    clauses: list[tuple[str, list]] = _metadata_clause("o.sample_id", meta)
    if only_flagged:
        clauses.append(("o.is_outlier", []))
    if STATUS_SQL.get(status):
        clauses.append((STATUS_SQL[status], []))
    where, params = _where(clauses)
    base = f"""SELECT o.sample_id, o.score, o.rank, o.is_outlier, {LIVE_COLUMNS}
        FROM outliers o LEFT JOIN live_decisions live ON live.sample_id = o.sample_id{where}"""
    with connection(root) as con:
        total, page = _paged(con, base, params, "score ASC NULLS LAST, sample_id", limit, offset)
        return total, _attach_samples(con, page)


@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def image_issue_types(root: str, runs_rev: tuple) -> pd.DataFrame:
    with connection(root) as con:
        return _df(con, "SELECT issue, count(*) AS samples FROM image_issues GROUP BY issue ORDER BY issue")


@st.cache_data(ttl=TTL_S, show_spinner=False)
def image_issues_page(root: str, rev: tuple, issues: tuple[str, ...] = (), status: str = "unreviewed",
                      limit: int = PAGE_SIZE, offset: int = 0) -> tuple[int, pd.DataFrame]:
    """One page of image-quality issues (worst first), one row per sample with its issues listed."""
    clauses: list[tuple[str, list]] = []
    if issues:
        clauses.append(("i.issue IN (SELECT unnest(?::VARCHAR[]))", [list(issues)]))
    where, params = _where(clauses)
    status_where = f" WHERE {STATUS_SQL[status]}" if STATUS_SQL.get(status) else ""
    base = f"""WITH per_sample AS (
            SELECT i.sample_id, string_agg(i.issue, ', ' ORDER BY i.issue) AS issues, min(i.score) AS score
            FROM image_issues i{where} GROUP BY i.sample_id)
        SELECT p.sample_id, p.issues, p.score, {LIVE_COLUMNS}
        FROM per_sample p LEFT JOIN live_decisions live ON live.sample_id = p.sample_id{status_where}"""
    with connection(root) as con:
        total, page = _paged(con, base, params, "score ASC NULLS LAST, sample_id", limit, offset)
        return total, _attach_samples(con, page)


# ------------------------------------------------------------------------------------------- clusters / map
@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def cluster_table(root: str, runs_rev: tuple) -> pd.DataFrame:
    """One row per cluster: size, name, majority label and purity (from ``cluster_summaries`` when present)."""
    with connection(root) as con:
        return _df(con, """
        WITH c AS (SELECT cluster, count(*) AS size FROM clusters GROUP BY cluster)
        SELECT c.cluster, c.size, cs.name, cs.majority_label, cs.purity
        FROM c LEFT JOIN cluster_summaries cs ON cs.cluster = c.cluster ORDER BY c.size DESC, c.cluster""")


@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def map_points(root: str, runs_rev: tuple, max_points: int = MAP_POINTS, seed: int = 0) -> tuple[int, pd.DataFrame]:
    """Points of the 2-D map: all of them up to ``max_points``, else a seeded sample chosen in SQL.

    Returns (total points, frame of sample_id, x, y, cluster, label, issue): ``label`` is the given label
    (apply :func:`live_relabels` for the current one) and ``issue`` the first of :data:`ISSUE_KINDS` that
    applies, or ``none``.  Keyed by the runs part of the revision: a decision does not recompute it.
    """
    with connection(root) as con:
        return catalog(root).map_points(max_points, seed=seed, con=con)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def region_page(root: str, rev: tuple, x0: float, x1: float, y0: float, y1: float, cluster: int | None = None,
                limit: int = PAGE_SIZE, offset: int = 0) -> tuple[int, pd.DataFrame]:
    """Samples inside a rectangle of the map (all of them, not only the drawn sample), or of one cluster."""
    clauses = [("c.x BETWEEN ? AND ?", [float(min(x0, x1)), float(max(x0, x1))]),
               ("c.y BETWEEN ? AND ?", [float(min(y0, y1)), float(max(y0, y1))])]
    if cluster is not None:
        clauses.append(("c.cluster = ?", [int(cluster)]))
    return _members(root, clauses, limit, offset)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def cluster_page(root: str, rev: tuple, cluster: int, limit: int = PAGE_SIZE, offset: int = 0) -> tuple[int, pd.DataFrame]:
    """Members of one cluster, most central first."""
    return _members(root, [("c.cluster = ?", [int(cluster)])], limit, offset)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def samples_by_id(root: str, rev: tuple, sample_ids: tuple[int, ...]) -> pd.DataFrame:
    """The given samples (path, split, current label, live decision), in the given order."""
    with connection(root) as con:
        df = _df(con, f"""SELECT s.id AS sample_id, {LIVE_COLUMNS} FROM samples s
            LEFT JOIN live_decisions live ON live.sample_id = s.id WHERE s.id IN (SELECT unnest(?::BIGINT[]))""",
                 [[int(i) for i in sample_ids]])
        df = _attach_samples(con, df)
    order = {int(s): i for i, s in enumerate(sample_ids)}
    return df.assign(_o=df["sample_id"].map(order)).sort_values("_o").drop(columns="_o").reset_index(drop=True)


def _members(root: str, clauses: list[tuple[str, list]], limit: int, offset: int) -> tuple[int, pd.DataFrame]:
    where, params = _where(clauses)
    base = f"""SELECT c.sample_id, c.cluster, c.distance, {LIVE_COLUMNS}
        FROM clusters c LEFT JOIN live_decisions live ON live.sample_id = c.sample_id{where}"""
    with connection(root) as con:
        total, page = _paged(con, base, params, "distance ASC NULLS LAST, sample_id", limit, offset)
        return total, _attach_samples(con, page)


# ------------------------------------------------------------------------------------------- annotation queue
@dataclass
class QueueItem:
    batch_id: int
    sample_id: int
    strategy: str
    score: float | None
    rank: int | None
    reason: str | None
    path: str
    label: str | None
    suggestions: list[tuple[str, float]]


# Queued samples still to annotate: no label yet (annotations imported with `curate import-labels` count) and
# no live decision.
# (A sample has a given label exactly when it has a ``labels`` row; testing that row's existence reads only the
# queued samples' rows, where ``given_labels`` would aggregate the whole labels table on every decision.)
TODO_CTE = """labelled AS (SELECT DISTINCT sample_id FROM labels WHERE sample_id IN (SELECT sample_id FROM queries)),
    todo AS (SELECT q.* FROM queries q
             WHERE q.sample_id NOT IN (SELECT sample_id FROM live_decisions)
               AND q.sample_id NOT IN (SELECT sample_id FROM labelled))"""


@st.cache_data(ttl=TTL_S, show_spinner=False)
def queue_status(root: str, rev: tuple) -> dict:
    """Size of the annotation queue (distinct samples) and how many of them are still to annotate."""
    with connection(root) as con:
        total, remaining = con.execute(f"""WITH {TODO_CTE}
            SELECT (SELECT count(DISTINCT sample_id) FROM queries), (SELECT count(DISTINCT sample_id) FROM todo)""").fetchone()
    return {"total": int(total), "remaining": int(remaining)}


@st.cache_data(ttl=TTL_S, show_spinner=False)
def queue_next(root: str, rev: tuple, exclude: tuple[int, ...] = ()) -> int | None:
    """The next queued sample to annotate (newest batch, best rank first), skipping ``exclude``."""
    with connection(root) as con:
        row = con.execute(f"""WITH {TODO_CTE}
            SELECT sample_id FROM todo WHERE sample_id NOT IN (SELECT unnest(?::BIGINT[]))
            ORDER BY batch_id DESC, rank NULLS LAST, sample_id LIMIT 1""", [[int(i) for i in exclude]]).fetchone()
    return None if row is None else int(row[0])


@st.cache_data(ttl=TTL_S, show_spinner=False)
def queue_item(root: str, rev: tuple, sample_id: int) -> QueueItem | None:
    """One queued sample with its path, current label and the model's top suggestions (from ``predictions``)."""
    with connection(root) as con:
        q = _df(con, """SELECT batch_id, sample_id, strategy, score, rank, reason FROM queries WHERE sample_id = ?
                        ORDER BY batch_id DESC LIMIT 1""", [int(sample_id)])
        if q.empty:
            return None
        q = _attach_samples(con, q)
        pred = con.execute("SELECT probs, class_names FROM predictions WHERE sample_id = ?", [int(sample_id)]).fetchone()
    r = q.iloc[0]
    sugg: list[tuple[str, float]] = []
    if pred is not None:
        sugg = sorted(zip(pred[1], (float(p) for p in pred[0])), key=lambda t: -t[1])[:3]
    return QueueItem(int(r.batch_id), int(r.sample_id), str(r.strategy), None if pd.isna(r.score) else float(r.score),
                     None if pd.isna(r["rank"]) else int(r["rank"]), r.reason, str(r.path),
                     None if pd.isna(r.label) else str(r.label), sugg)


# ------------------------------------------------------------------------------------------- decisions
@st.cache_data(ttl=TTL_S, show_spinner=False)
def decisions_page(root: str, rev: tuple, actions: tuple[str, ...] = (), sample_id: int | None = None,
                   live_only: bool = False, limit: int = 25, offset: int = 0) -> tuple[int, pd.DataFrame]:
    """Decision history, newest first, with whether each was undone (and by which record)."""
    clauses: list[tuple[str, list]] = []
    if actions:
        clauses.append(("d.action IN (SELECT unnest(?::VARCHAR[]))", [list(actions)]))
    if sample_id is not None:
        clauses.append(("d.sample_id = ?", [int(sample_id)]))
    if live_only:
        clauses.append(("d.id IN (SELECT id FROM decisions_in_force)", []))
    where, params = _where(clauses)
    base = f"""SELECT d.id, d.sample_id, d.action, d.new_label, d.reason, d.who, d.created_at, d.undoes,
                      u.id AS undone_by
               FROM decisions d LEFT JOIN decisions u ON u.undoes = d.id{where}"""
    with connection(root) as con:
        total, page = _paged(con, base, params, "id DESC", limit, offset)
        return total, _attach_samples(con, page)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def live_decision_counts(root: str, rev: tuple) -> dict[str, int]:
    with connection(root) as con:
        rows = con.execute("SELECT action, count(*) FROM live_decisions GROUP BY action").fetchall()
    return {a: int(n) for a, n in rows}


# ------------------------------------------------------------------------------------------- search
@st.cache_data(ttl=LONG_TTL_S, show_spinner=False)
def embedding_encoders(root: str, runs_rev: tuple) -> list[str]:
    with connection(root) as con:
        return [r[0] for r in con.execute("SELECT encoder FROM embedding_sets ORDER BY created_at DESC").fetchall()]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def find_samples(root: str, rev: tuple, text: str, limit: int = PAGE_SIZE, offset: int = 0) -> tuple[int, pd.DataFrame]:
    """Samples whose path contains ``text`` (case-insensitive) or whose id is ``text``; one scan of samples."""
    text = text.strip()
    sid = int(text) if text.isdigit() and len(text) < 19 else -1
    with connection(root) as con:
        page = _df(con, f"""WITH hits AS (SELECT id AS sample_id, count(*) OVER () AS total FROM samples
                     WHERE id = ? OR path ILIKE ? ESCAPE '\\' ORDER BY id LIMIT ? OFFSET ?)
            SELECT h.sample_id, h.total, {LIVE_COLUMNS}
            FROM hits h LEFT JOIN live_decisions live ON live.sample_id = h.sample_id ORDER BY h.sample_id""",
                   [sid, _contains_pattern(text), int(limit), int(offset)])
        total = int(page["total"].iloc[0]) if len(page) else (
            0 if offset == 0 else int(con.execute("SELECT count(*) FROM samples WHERE id = ? OR path ILIKE ? ESCAPE '\\'",
                                                  [sid, _contains_pattern(text)]).fetchone()[0]))
        return total, _attach_samples(con, page.drop(columns="total"))


def _search_api():
    """``indexes.search`` (imported lazily: it loads FAISS, and torch for image/text queries)."""
    try:
        from curate.indexes import search
    except ImportError as exc:  # a missing optional dependency must not break the page
        from curate.engine.catalog import CurateError

        raise CurateError(f"similarity search is unavailable: {exc}") from exc
    return search


@st.cache_data(ttl=TTL_S, show_spinner=False)
def similar_to_sample(root: str, rev: tuple, sample_id: int, k: int, encoder: str | None) -> pd.DataFrame:
    """``rank, sample_id, score, label, path`` of the samples nearest to a sample (``indexes.search``)."""
    return _search_api().search_sample(catalog(root), int(sample_id), k=int(k), encoder=encoder)


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=32)
def similar_to_image(root: str, rev: tuple, image: bytes, suffix: str, k: int, encoder: str | None) -> pd.DataFrame:
    """Nearest samples to an uploaded image (written to a temporary file for ``search_image``)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="curate-query-") as d:
        p = Path(d) / f"query{suffix if suffix.startswith('.') and len(suffix) <= 6 else '.img'}"
        p.write_bytes(image)
        return _search_api().search_image(catalog(root), p, k=int(k), encoder=encoder)


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def similar_to_text(root: str, rev: tuple, text: str, k: int, encoder: str | None) -> pd.DataFrame:
    """Nearest samples to a text prompt (CLIP encoders only; otherwise a CurateError explains why)."""
    return _search_api().search_text(catalog(root), text, k=int(k), encoder=encoder)

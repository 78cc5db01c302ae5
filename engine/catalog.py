"""The DuckDB workspace catalog: the only module that speaks SQL.

A *project* is one folder::

    <project>/
      catalog.duckdb        samples, labels, classes, runs, quarantine, analyses, decisions
      embeddings/<enc>/     vector shards written by ``engine.embed``
      indexes/<enc>/        FAISS indexes and the cached kNN graph
      thumbnails/           cached thumbnails for the UI
      exports/              cleaned manifests, ImageFolder trees, annotation queues

Domain rules live in the catalog as views (migration 4), so each is written once and read everywhere (engine,
export, review app, reports): ``decisions_in_force`` (neither an undo record nor undone), ``live_decisions`` (the
latest decision in force per sample), ``given_labels`` (the latest ``labels`` row per sample), ``live_relabels``
(the latest relabel in force per sample) and ``current_labels`` (live relabel, else given label, per sample).

Concurrency model: DuckDB allows one read-write process per file.  Every operation opens a short-lived
connection (``Catalog.connect``), does its work inside one transaction and closes it, so the UI and the
CLI can share a project.  A second process that finds the file locked retries for ``wait_s`` seconds and
then raises :class:`ProjectBusyError` ("project is busy") — it never corrupts the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import numpy as np
import pandas as pd

DEFAULT_PROJECT = "curate-project"
CATALOG_FILE = "catalog.duckdb"
SUBDIRS = ("embeddings", "indexes", "thumbnails", "exports")

DECISION_ACTIONS = ("keep", "relabel", "remove", "merge")


class CurateError(Exception):
    """An error with a one-line, user-facing message (the CLI prints it without a traceback)."""


class ProjectBusyError(CurateError):
    pass


class ProjectNotFoundError(CurateError):
    pass


def fault_pause(variable: str, what: str) -> None:
    """Fault-test hook: when env ``variable`` holds seconds, say ``CURATE_TEST_PAUSED <what>`` on stderr and sleep,
    so a test can SIGKILL the process at exactly this point.  Unset (always, outside tests): does nothing."""
    seconds = float(os.environ.get(variable) or 0)
    if seconds > 0:
        import sys

        print(f"CURATE_TEST_PAUSED {what}", file=sys.stderr, flush=True)
        time.sleep(seconds)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, read in ``chunk``-byte pieces (shards, indexes, graphs, doctor)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def verified_sha256(path: str | os.PathLike) -> str:
    """:func:`sha256_file` for checksum verification, remembered per process while the file's identity, size and
    modification time are unchanged: every analysis of one audit verifies the same shards, and re-hashing gigabytes
    per step is repeated I/O.  A file rewritten or modified in any way is hashed again."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = sha256_file(path)
    return digest


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    from curate.engine import __version__

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=2,
        ).stdout.strip()
    except Exception:
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


# --------------------------------------------------------------------------------------------------
# Schema and forward-only migrations.  Never edit a released migration: append a new one.
# --------------------------------------------------------------------------------------------------
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL);
        CREATE SEQUENCE IF NOT EXISTS seq_sample START 1;
        CREATE SEQUENCE IF NOT EXISTS seq_run START 1;
        CREATE SEQUENCE IF NOT EXISTS seq_decision START 1;
        CREATE SEQUENCE IF NOT EXISTS seq_label START 1;
        CREATE TABLE samples (
            id BIGINT PRIMARY KEY,
            content_hash VARCHAR NOT NULL,
            path VARCHAR NOT NULL UNIQUE,
            width INTEGER,
            height INTEGER,
            format VARCHAR,
            mode VARCHAR,
            bytes BIGINT,
            split VARCHAR,
            source VARCHAR,
            ingest_run BIGINT,
            ingested_at TIMESTAMP NOT NULL
        );
        CREATE INDEX idx_samples_hash ON samples(content_hash);
        CREATE TABLE classes (name VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL);
        CREATE TABLE labels (
            id BIGINT PRIMARY KEY,
            sample_id BIGINT NOT NULL,
            class_name VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE INDEX idx_labels_sample ON labels(sample_id);
        CREATE TABLE quarantine (
            path VARCHAR NOT NULL,
            reason VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            content_hash VARCHAR,
            run_id BIGINT,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE runs (
            id BIGINT PRIMARY KEY,
            kind VARCHAR NOT NULL,
            params JSON,
            code_version VARCHAR,
            status VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            seconds DOUBLE,
            summary JSON
        );
        CREATE TABLE embedding_sets (
            encoder VARCHAR PRIMARY KEY,
            dim INTEGER NOT NULL,
            dtype VARCHAR NOT NULL,
            preprocessing JSON,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE embedding_shards (
            encoder VARCHAR NOT NULL,
            shard VARCHAR NOT NULL,
            n INTEGER NOT NULL,
            sha256 VARCHAR NOT NULL,
            run_id BIGINT,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (encoder, shard)
        );
        CREATE TABLE embedded (
            encoder VARCHAR NOT NULL,
            sample_id BIGINT NOT NULL,
            shard VARCHAR NOT NULL,
            row INTEGER NOT NULL,
            PRIMARY KEY (encoder, sample_id)
        );
        CREATE TABLE predictions (
            sample_id BIGINT PRIMARY KEY,
            probs FLOAT[] NOT NULL,
            class_names VARCHAR[] NOT NULL,
            source VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE image_stats (
            sample_id BIGINT PRIMARY KEY,
            brightness DOUBLE, contrast DOUBLE, blur DOUBLE, entropy DOUBLE,
            colorfulness DOUBLE, aspect_ratio DOUBLE, area DOUBLE, is_grayscale BOOLEAN
        );
        CREATE TABLE label_issues (
            run_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            given_label VARCHAR,
            suggested_label VARCHAR,
            suggested_confidence DOUBLE,
            label_quality DOUBLE,
            is_issue BOOLEAN,
            rank INTEGER
        );
        CREATE TABLE duplicates (
            run_id BIGINT NOT NULL,
            set_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            kind VARCHAR NOT NULL,
            similarity DOUBLE,
            is_keeper BOOLEAN,
            crosses_splits BOOLEAN
        );
        CREATE TABLE outliers (
            run_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            score DOUBLE,
            is_outlier BOOLEAN,
            rank INTEGER
        );
        CREATE TABLE image_issues (
            run_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            issue VARCHAR NOT NULL,
            score DOUBLE
        );
        CREATE TABLE clusters (
            run_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            cluster INTEGER,
            x DOUBLE,
            y DOUBLE,
            distance DOUBLE
        );
        CREATE TABLE cluster_summaries (
            run_id BIGINT NOT NULL,
            cluster INTEGER NOT NULL,
            size INTEGER,
            name VARCHAR,
            majority_label VARCHAR,
            purity DOUBLE,
            representatives BIGINT[],
            atypical BIGINT[]
        );
        CREATE TABLE queries (
            run_id BIGINT NOT NULL,
            batch_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            strategy VARCHAR NOT NULL,
            score DOUBLE,
            rank INTEGER,
            reason VARCHAR
        );
        CREATE TABLE decisions (
            id BIGINT PRIMARY KEY,
            sample_id BIGINT NOT NULL,
            action VARCHAR NOT NULL,
            new_label VARCHAR,
            reason VARCHAR,
            who VARCHAR,
            created_at TIMESTAMP NOT NULL,
            undoes BIGINT
        );
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
        """,
    ),
    (
        2,
        # issue 18: formats (COCO, YOLO, Hugging Face, FiftyOne) and per-sample metadata
        """
        CREATE TABLE sample_metadata (
            sample_id BIGINT NOT NULL,
            key VARCHAR NOT NULL,
            value VARCHAR,
            PRIMARY KEY (sample_id, key)
        );
        CREATE INDEX idx_metadata_key ON sample_metadata(key, value);
        CREATE TABLE boxes (
            sample_id BIGINT NOT NULL,
            box_index INTEGER NOT NULL,
            category VARCHAR NOT NULL,
            x DOUBLE NOT NULL,
            y DOUBLE NOT NULL,
            w DOUBLE NOT NULL,
            h DOUBLE NOT NULL,
            attributes JSON,
            PRIMARY KEY (sample_id, box_index)
        );
        CREATE TABLE sample_sources (
            sample_id BIGINT PRIMARY KEY,
            format VARCHAR NOT NULL,
            source VARCHAR NOT NULL,
            source_id VARCHAR,
            record JSON
        );
        CREATE TABLE imports (
            source VARCHAR PRIMARY KEY,
            format VARCHAR NOT NULL,
            info JSON,
            updated_at TIMESTAMP NOT NULL
        );
        """,
    ),
    (
        3,
        # SemDeDup: per sample, the highest similarity to a sample visited before it in its k-means partition; a
        # sample is pruned at threshold t when max_similarity >= t.  Only rows pruned at the curve's lowest
        # threshold are stored (the others are kept at every point of the curve), so the table stays small.
        """
        CREATE TABLE semdedup (
            run_id BIGINT NOT NULL,
            sample_id BIGINT NOT NULL,
            max_similarity DOUBLE NOT NULL,
            kmeans_partition INTEGER
        );
        """,
    ),
    (
        4,
        # issue 17: the domain rules as views, one definition each, read by every caller (engine, export, app,
        # report).  CREATE OR REPLACE keeps a rerun harmless; a later migration that changes a table below must
        # re-create the views that read it.  Views work in read-only connections (the UI's).
        #   decisions_in_force  every decision that is neither an undo record nor undone (a sample can have several)
        #   live_decisions      the latest decision in force per sample: the one that decides the sample
        #   given_labels        a sample's label as ingested / annotated: its latest ``labels`` row
        #   live_relabels       the latest relabel in force per sample (a later keep/remove does not cancel it)
        #   current_labels      every sample: ``label`` = live relabel, else given label (NULL = unlabeled),
        #                       and ``given_label``
        """
        CREATE OR REPLACE VIEW decisions_in_force AS
            SELECT id, sample_id, action, new_label, reason, who, created_at, undoes FROM decisions
            WHERE undoes IS NULL AND id NOT IN (SELECT undoes FROM decisions WHERE undoes IS NOT NULL);
        CREATE OR REPLACE VIEW live_decisions AS
            SELECT id, sample_id, action, new_label, reason, who, created_at, undoes FROM decisions_in_force
            QUALIFY row_number() OVER (PARTITION BY sample_id ORDER BY id DESC) = 1;
        CREATE OR REPLACE VIEW given_labels AS
            SELECT sample_id, arg_max(class_name, id) AS label FROM labels GROUP BY sample_id;
        CREATE OR REPLACE VIEW live_relabels AS
            SELECT sample_id, arg_max(new_label, id) AS new_label, max(id) AS decision_id FROM decisions_in_force
            WHERE action = 'relabel' GROUP BY sample_id;
        CREATE OR REPLACE VIEW current_labels AS
            SELECT s.id AS sample_id, coalesce(r.new_label, g.label) AS label, g.label AS given_label
            FROM samples s LEFT JOIN given_labels g ON g.sample_id = s.id LEFT JOIN live_relabels r ON r.sample_id = s.id;
        """,
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# The views of migration 4 (the domain rules); no analysis or Parquet view may take these names.
RULE_VIEWS = ("decisions_in_force", "live_decisions", "given_labels", "live_relabels", "current_labels")

# Analyses tables whose rows are replaced wholesale by each run of that analysis.
ANALYSIS_TABLES = ("label_issues", "duplicates", "outliers", "image_issues", "clusters", "cluster_summaries",
                   "semdedup")


def _is_lock_error(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set lock" in msg or "locked" in msg)


def _is_config_conflict(exc: BaseException) -> bool:
    """DuckDB refuses a read-write and a read-only connection to one file in the same process (the UI server's
    sessions do this: one reads while another writes); it clears as soon as the other connection closes."""
    return "different configuration" in str(exc).lower()


@dataclass
class Project:
    """Paths of a project workspace."""

    root: Path

    @property
    def catalog_path(self) -> Path:
        return self.root / CATALOG_FILE

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def indexes_dir(self) -> Path:
        return self.root / "indexes"

    @property
    def thumbnails_dir(self) -> Path:
        return self.root / "thumbnails"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"


def init_project(root: str | os.PathLike) -> "Catalog":
    """Create (or open, if it already exists) a project workspace at ``root``."""
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise CurateError(f"{root} exists and is not a folder; choose another --project path")
    root.mkdir(parents=True, exist_ok=True)
    for d in SUBDIRS:
        (root / d).mkdir(exist_ok=True)
    cat = Catalog(root)
    cat.migrate()
    return cat


def open_project(root: str | os.PathLike | None = None, create: bool = False) -> "Catalog":
    """Open an existing project (or create it when ``create``)."""
    root = Path(root or DEFAULT_PROJECT).expanduser().resolve()
    if create:
        return init_project(root)
    if not (root / CATALOG_FILE).exists():
        raise ProjectNotFoundError(
            f"no Curate project at {root} (missing {CATALOG_FILE}); run `curate init {root}` or pass --project DIR"
        )
    cat = Catalog(root)
    cat.migrate()
    return cat


class Catalog:
    """Typed access to a project's DuckDB catalog.

    Parameters
    ----------
    root : path of the project folder.
    wait_s : how long to wait for another process holding the write lock before raising
        :class:`ProjectBusyError`.
    """

    def __init__(self, root: str | os.PathLike, wait_s: float | None = None):
        self.project = Project(Path(root).expanduser().resolve())
        self.root = self.project.root
        self.path = self.project.catalog_path
        self.wait_s = float(os.environ.get("CURATE_LOCK_WAIT", "30")) if wait_s is None else wait_s

    # ---------------------------------------------------------------- connections
    @contextlib.contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits up to ``wait_s`` for another process holding the file's lock, or for
        another connection of this process opened in the other mode (read-only vs read-write)."""
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
                break
            except duckdb.Error as exc:  # IOException on lock conflicts, ConnectionException on mode conflicts
                in_process = _is_config_conflict(exc)
                if not (in_process or _is_lock_error(exc)):
                    raise CurateError(f"cannot open catalog {self.path}: {exc}".splitlines()[0]) from exc
                if time.monotonic() >= deadline:
                    holder = ("another connection in this process (opened " + ("read-write" if read_only else "read-only")
                              + ")") if in_process else "another curate process"
                    raise ProjectBusyError(
                        f"project is busy: {holder} holds {self.path} "
                        f"(waited {self.wait_s:.0f}s); wait for it to finish or close it, then retry"
                    ) from exc
                # short, jittered polls: a waiter that backed off to long sleeps would keep losing the lock to
                # writers that poll faster (starvation under many concurrent writers)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.5, 0.1)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection, one transaction: everything inside commits together or not at all."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            else:
                con.execute("COMMIT")

    def query_df(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).df()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    # ---------------------------------------------------------------- schema
    def migrate(self) -> int:
        """Apply forward migrations; returns the schema version."""
        with self.connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL)")
            current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise CurateError(
                    f"{self.path} has schema v{current}, newer than this curate (v{SCHEMA_VERSION}); upgrade curate"
                )
            for version, sql in MIGRATIONS:
                if version <= current:
                    continue
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(sql)
                    con.execute("INSERT INTO schema_version VALUES (?, ?)", [version, utcnow()])
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            return SCHEMA_VERSION

    def schema_version(self) -> int:
        return int(self.scalar("SELECT max(version) FROM schema_version") or 0)

    # ---------------------------------------------------------------- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        v = self.scalar("SELECT value FROM meta WHERE key = ?", [key])
        return default if v is None else v

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def version_token(self) -> str:
        """A token that changes whenever samples are added (used to detect stale indexes)."""
        n, mx = self.query("SELECT count(*), coalesce(max(id), 0) FROM samples")[0]
        return f"{n}:{mx}"

    # ---------------------------------------------------------------- runs
    def start_run(self, kind: str, params: dict | None = None) -> int:
        with self.transaction() as con:
            run_id = con.execute("SELECT nextval('seq_run')").fetchone()[0]
            con.execute(
                "INSERT INTO runs (id, kind, params, code_version, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)",
                [run_id, kind, json.dumps(params or {}, default=str), code_version(), utcnow()],
            )
        return int(run_id)

    @contextlib.contextmanager
    def failing_run(self, run_id: int) -> Iterator[None]:
        """Inside: the work of run ``run_id``; an exception marks the run failed (its first line kept) and goes on."""
        try:
            yield
        except BaseException as exc:
            self.finish_run(run_id, {"error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__},
                            status="failed")
            raise

    def finish_run(self, run_id: int, summary: dict | None = None, status: str = "ok", con=None) -> None:
        sql = (
            "UPDATE runs SET status = ?, finished_at = ?, seconds = date_diff('millisecond', started_at, ?) / 1000.0, "
            "summary = ? WHERE id = ?"
        )
        now = utcnow()
        args = [status, now, now, json.dumps(summary or {}, default=_json_default), run_id]
        if con is not None:
            con.execute(sql, args)
            if status == "ok":  # inside an analysis's results transaction: the last moment before its commit
                fault_pause("CURATE_TEST_ANALYSIS_PAUSE", f"run {run_id} before commit")
        else:
            with self.transaction() as c:
                c.execute(sql, args)

    def runs(self, limit: int = 20) -> pd.DataFrame:
        return self.query_df(
            "SELECT id, kind, status, started_at, seconds, code_version, params, summary FROM runs ORDER BY id DESC LIMIT ?",
            [limit],
        )

    def last_run(self, kind: str, status: str = "ok", con=None) -> dict | None:
        """The latest run of ``kind`` with ``status`` (params and summary parsed), None when there is none;
        ``con``: an open connection to read through (the UI's shared one)."""
        sql, args = "SELECT * FROM runs WHERE kind = ? AND status = ? ORDER BY id DESC LIMIT 1", [kind, status]
        df = self.query_df(sql, args) if con is None else con.execute(sql, args).df()
        if df.empty:
            return None
        row = df.iloc[0].to_dict()
        for k in ("params", "summary"):
            if isinstance(row.get(k), str):
                row[k] = json.loads(row[k])
        return row

    # ---------------------------------------------------------------- samples & labels
    def counts(self) -> dict[str, int]:
        q = {
            "samples": "SELECT count(*) FROM samples",
            "labeled": "SELECT count(DISTINCT sample_id) FROM labels",
            "classes": "SELECT count(*) FROM classes",
            "quarantined": "SELECT count(DISTINCT path) FROM quarantine",
            "decisions": "SELECT count(*) FROM decisions",
        }
        with self.connect(read_only=True) as con:
            return {k: int(con.execute(v).fetchone()[0]) for k, v in q.items()}

    def samples(self, columns: str = "*") -> pd.DataFrame:
        """All samples ordered by id (analyses align arrays to this order)."""
        return self.query_df(f"SELECT {columns} FROM samples ORDER BY id")

    def sample(self, sample_id: int) -> dict | None:
        df = self.query_df("SELECT * FROM samples WHERE id = ?", [int(sample_id)])
        return None if df.empty else df.iloc[0].to_dict()

    def class_names(self) -> list[str]:
        return [r[0] for r in self.query("SELECT name FROM classes ORDER BY name")]

    def ingest_kinds(self) -> list[str]:
        """The ingest kinds (``imagefolder``, ``manifest``, ``coco``...) the project's samples came in as, sorted."""
        return [r[0] for r in self.query("SELECT DISTINCT source FROM samples WHERE source IS NOT NULL ORDER BY 1")]

    def current_labels(self) -> pd.DataFrame:
        """sample_id, label (after live relabel decisions), given_label (as ingested/annotated); NULL = unlabeled.

        The ``current_labels`` view (migration 4) holds the rule."""
        return self.query_df("SELECT sample_id, label, given_label FROM current_labels ORDER BY sample_id")

    def label_codes(self, sample_ids: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Current labels of ``sample_ids`` as ``(sorted class names, int64 codes)``, -1 = unlabeled.

        Computed inside DuckDB (no Python string per sample), for projects with 10^7+ samples.
        """
        ids = pd.DataFrame({"pos": np.arange(len(sample_ids), dtype=np.int64),
                            "sample_id": np.asarray(sample_ids, dtype=np.int64)})
        with self.connect(read_only=True) as con:
            con.register("_label_rows", ids)
            con.execute("CREATE TEMP TABLE _cur AS SELECT sample_id, label FROM current_labels WHERE label IS NOT NULL")
            names = [r[0] for r in con.execute("SELECT DISTINCT label FROM _cur ORDER BY label").fetchall()]
            con.register("_label_codes", pd.DataFrame({"label": pd.Series(names, dtype=object),
                                                       "code": np.arange(len(names), dtype=np.int64)}))
            codes = con.execute(
                """SELECT coalesce(c.code, -1) AS code FROM _label_rows r
                   LEFT JOIN _cur ON _cur.sample_id = r.sample_id LEFT JOIN _label_codes c ON c.label = _cur.label
                   ORDER BY r.pos""").fetchnumpy()["code"]
            con.unregister("_label_codes")
            con.unregister("_label_rows")
        return names, np.asarray(codes, dtype=np.int64)

    def add_labels(self, rows: Iterable[tuple[int, str]], source: str, con=None) -> int:
        """Append labels (sample_id, class_name) and register new classes."""
        rows = [(int(s), str(c)) for s, c in rows]
        if not rows:
            return 0

        def _do(c):
            now = utcnow()
            c.executemany(
                "INSERT INTO labels VALUES (nextval('seq_label'), ?, ?, ?, ?)", [(s, n, source, now) for s, n in rows]
            )
            c.executemany(
                "INSERT INTO classes VALUES (?, ?) ON CONFLICT DO NOTHING", [(n, now) for n in sorted({n for _, n in rows})]
            )

        if con is not None:
            _do(con)
        else:
            with self.transaction() as c:
                _do(c)
        return len(rows)

    # ---------------------------------------------------------------- metadata, boxes, sources (issue 18)
    def write_sample_extras(self, con, metadata: Sequence[tuple[int, str, str | None]] = (),
                            boxes: Sequence[tuple] = (), boxed_samples: Sequence[int] = (),
                            sources: Sequence[tuple[int, str, str, str | None, str | None]] = ()) -> None:
        """Inside an ingest transaction: upsert ``metadata`` rows (sample_id, key, value); replace the boxes of
        ``boxed_samples`` by ``boxes`` rows (sample_id, box_index, category, x, y, w, h, attributes JSON); upsert
        ``sources`` rows (sample_id, format, source, source_id, record JSON).  Reruns give the same rows."""
        if metadata:
            _insert_rows(con, "sample_metadata", ("sample_id", "key", "value"), metadata, ("sample_id", "key"))
        if boxed_samples:
            con.execute("DELETE FROM boxes WHERE sample_id IN (SELECT unnest(?::BIGINT[]))",
                        [[int(s) for s in boxed_samples]])
        if boxes:
            _insert_rows(con, "boxes", ("sample_id", "box_index", "category", "x", "y", "w", "h", "attributes"), boxes)
        if sources:
            _insert_rows(con, "sample_sources", ("sample_id", "format", "source", "source_id", "record"), sources,
                         ("sample_id",))

    def set_import_info(self, source: str, fmt: str, info: dict, con=None) -> None:
        """Remember what an imported dataset looked like (COCO categories, YOLO names, HF features...), so an
        export can write the same format back."""
        args = [source, fmt, json.dumps(info, default=_json_default), utcnow()]
        if con is not None:
            con.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?)", args)
        else:
            with self.transaction() as c:
                c.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?)", args)

    def import_infos(self) -> list[dict]:
        """The imported datasets, oldest first: ``source``, ``format``, ``info`` (dict)."""
        rows = self.query("SELECT source, format, info FROM imports ORDER BY updated_at, source")
        return [{"source": s, "format": f, "info": json.loads(i) if i else {}} for s, f, i in rows]

    def sample_sources(self, sample_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """``sample_id, format, source, source_id, record`` (JSON text) of samples that came from a format importer
        (all of them, or only ``sample_ids``)."""
        if sample_ids is None:
            return self.query_df("SELECT * FROM sample_sources ORDER BY sample_id")
        return self.query_df("SELECT * FROM sample_sources WHERE sample_id IN (SELECT unnest(?::BIGINT[])) "
                             "ORDER BY sample_id", [[int(i) for i in sample_ids]])

    def metadata(self, sample_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """Long table ``sample_id, key, value`` (all samples, or only ``sample_ids``)."""
        if sample_ids is None:
            return self.query_df("SELECT sample_id, key, value FROM sample_metadata ORDER BY sample_id, key")
        return self.query_df("SELECT sample_id, key, value FROM sample_metadata WHERE sample_id IN "
                             "(SELECT unnest(?::BIGINT[])) ORDER BY sample_id, key", [[int(i) for i in sample_ids]])

    def metadata_keys(self, con=None) -> pd.DataFrame:
        """``key, samples, distinct_values`` of every metadata key, most common first (``con`` as in
        :meth:`last_run`)."""
        sql = ("SELECT key, count(*) AS samples, count(DISTINCT value) AS distinct_values "
               "FROM sample_metadata GROUP BY key ORDER BY samples DESC, key")
        return self.query_df(sql) if con is None else con.execute(sql).df()

    @staticmethod
    def metadata_filter(sample_col: str, key: str, values: Sequence[str]) -> tuple[str, list]:
        """A clause keeping the rows whose ``sample_col`` sample has metadata ``key`` equal to one of ``values``:
        ``(SQL text, bound parameters)`` for the caller's ``WHERE``.  ``sample_col`` is a column of the caller's SQL
        (``alias.column``, checked); ``key`` and ``values`` only ever reach DuckDB as parameters."""
        import re

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", sample_col):
            raise ValueError(f"not a column reference: {sample_col!r}")
        return (f"{sample_col} IN (SELECT sample_id FROM sample_metadata WHERE key = ? "
                "AND value IN (SELECT unnest(?::VARCHAR[])))", [str(key), [str(v) for v in values]])

    def metadata_values(self, key: str, sample_ids: Sequence[int]) -> list[str | None]:
        """The value of metadata ``key`` for each of ``sample_ids`` (None where a sample has none), in order."""
        ids = pd.DataFrame({"pos": np.arange(len(sample_ids), dtype=np.int64),
                            "sample_id": np.asarray(sample_ids, dtype=np.int64)})
        with self.connect(read_only=True) as con:
            con.register("_meta_rows", ids)
            vals = con.execute("SELECT m.value FROM _meta_rows r LEFT JOIN sample_metadata m "
                               "ON m.sample_id = r.sample_id AND m.key = ? ORDER BY r.pos", [key]).fetchall()
            con.unregister("_meta_rows")
        return [v[0] for v in vals]

    def boxes(self, sample_ids: Sequence[int] | None = None) -> pd.DataFrame:
        """``sample_id, box_index, category, x, y, w, h, attributes`` (pixels, top-left corner; COCO's convention)."""
        if sample_ids is None:
            return self.query_df("SELECT * FROM boxes ORDER BY sample_id, box_index")
        return self.query_df("SELECT * FROM boxes WHERE sample_id IN (SELECT unnest(?::BIGINT[])) "
                             "ORDER BY sample_id, box_index", [[int(i) for i in sample_ids]])

    def label_issue_candidates(self, include_reviewed: bool = False) -> pd.DataFrame:
        """Flagged label issues, most likely wrong first: ``sample_id, path, current_label, suggested_label,
        suggested_confidence, label_quality`` (without the samples that already have a live decision)."""
        reviewed = "" if include_reviewed else " AND li.sample_id NOT IN (SELECT sample_id FROM live_decisions)"
        return self.query_df(f"""
            SELECT li.sample_id, s.path, cur.label AS current_label, li.suggested_label, li.suggested_confidence,
                   li.label_quality
            FROM label_issues li JOIN samples s ON s.id = li.sample_id
            LEFT JOIN current_labels cur ON cur.sample_id = li.sample_id
            WHERE li.is_issue{reviewed}
            ORDER BY li.label_quality ASC NULLS LAST, li.sample_id""")

    def duplicate_candidates(self, include_reviewed: bool = False) -> pd.DataFrame:
        """Non-keeper members of duplicate sets: ``set_id, sample_id, path, kind, similarity, current_label,
        keeper_id, keeper_path`` (without the samples that already have a live decision)."""
        reviewed = "" if include_reviewed else " AND d.sample_id NOT IN (SELECT sample_id FROM live_decisions)"
        return self.query_df(f"""
            WITH keepers AS (SELECT set_id, min(sample_id) AS keeper_id FROM duplicates WHERE is_keeper GROUP BY set_id)
            SELECT d.set_id, d.sample_id, s.path, d.kind, d.similarity, cur.label AS current_label, k.keeper_id,
                   ks.path AS keeper_path
            FROM duplicates d JOIN samples s ON s.id = d.sample_id LEFT JOIN current_labels cur ON cur.sample_id = d.sample_id
            LEFT JOIN keepers k ON k.set_id = d.set_id LEFT JOIN samples ks ON ks.id = k.keeper_id
            WHERE NOT coalesce(d.is_keeper, false){reviewed}
            ORDER BY d.set_id, d.sample_id""")

    def sample_ids_by_path(self, paths: Sequence[str], con=None) -> dict[str, int]:
        sql = "SELECT path, id FROM samples WHERE path IN (SELECT unnest(?::VARCHAR[]))"
        if con is not None:
            return dict(con.execute(sql, [list(paths)]).fetchall())
        return dict(self.query(sql, [list(paths)]))

    # ---------------------------------------------------------------- quarantine
    def quarantine_rows(self) -> pd.DataFrame:
        return self.query_df("SELECT * FROM quarantine ORDER BY created_at, path")

    def add_quarantine(self, rows: Iterable[tuple[str, str, str, str | None]], run_id: int | None = None, con=None) -> None:
        """rows of (path, reason, stage, content_hash); a (path, stage) already quarantined is not repeated."""
        rows = list(rows)
        if not rows:
            return

        def _do(c):
            now = utcnow()
            for path, reason, stage, h in rows:
                c.execute("DELETE FROM quarantine WHERE path = ? AND stage = ?", [path, stage])
                c.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)", [path, reason, stage, h, run_id, now])

        if con is not None:
            _do(con)
        else:
            with self.transaction() as c:
                _do(c)

    # ---------------------------------------------------------------- analyses results
    def replace_analysis(self, table: str, df: pd.DataFrame, run_id: int, summary: dict | None = None,
                         where: str | None = None, where_params: Sequence[Any] | None = None,
                         also: dict[str, pd.DataFrame] | None = None) -> None:
        """Atomically replace an analysis table's rows with ``df`` and mark ``run_id`` finished.

        ``where`` (with bound ``where_params``) limits the delete, e.g. ``"issue = ?"``.  ``also`` maps further
        analysis tables of the same run to their new rows (each replaced wholesale in the same transaction, e.g.
        ``duplicates`` and ``semdedup``).
        """
        frames = {table: df, **(also or {})}
        with self.transaction() as con:
            for name, frame in frames.items():
                frame = frame.copy()
                if "run_id" not in frame.columns and name != "image_stats":
                    frame.insert(0, "run_id", run_id)
                self._analysis_table(con, name, frame)
                limited = where if name == table else None
                con.execute(f"DELETE FROM {name}" + (f" WHERE {limited}" if limited else ""),
                            list(where_params or []) if limited else [])
                if len(frame):
                    con.register("_incoming", frame)
                    cols = ", ".join(frame.columns)
                    con.execute(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM _incoming")
                    con.unregister("_incoming")
            self.finish_run(run_id, summary, con=con)

    def _analysis_table(self, con, name: str, frame: pd.DataFrame) -> None:
        """Check that ``name`` may be replaced by an analysis; create it from ``frame``'s columns when it is new.

        The built-in analysis tables come from migrations.  A table of an analysis added through the registry
        (:mod:`curate.engine.analyses.registry`) is created on its first write and remembered in ``meta``
        (``analysis_tables``); no other existing table (samples, labels, decisions, ...) can be replaced this way.
        """
        if name in ANALYSIS_TABLES + ("queries", "image_stats"):
            return
        import re

        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"not a valid analysis table name: {name!r} (lower-case letters, digits and _)")
        rows = con.execute("SELECT value FROM meta WHERE key = 'analysis_tables'").fetchall()
        created = json.loads(rows[0][0]) if rows else []
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                             [name]).fetchall()[0][0]
        if exists and name not in created:
            raise ValueError(f"not an analysis table: {name}")
        if not exists:
            con.register("_shape", frame.head(0))
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _shape")
            con.unregister("_shape")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('analysis_tables', ?)", [json.dumps(created + [name])])

    def register_parquet_view(self, view: str, files: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        """(Re)create ``view`` over Parquet files that DuckDB reads in place (``read_parquet``).

        For analysis outputs too large to copy into ``catalog.duckdb`` (10^7+ rows): the files stay where the
        analysis wrote them and every query of the view scans them directly.  ``files``: a path, a glob, or a list.
        """
        import re

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", view) or view in ANALYSIS_TABLES + RULE_VIEWS:
            raise ValueError(f"not a valid view name: {view!r}")
        paths = [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
        if not paths:
            raise ValueError("no Parquet files given")
        listing = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)  # DDL takes no bound parameters
        with self.transaction() as con:
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet([{listing}])")

    def append_rows(self, table: str, df: pd.DataFrame, con=None) -> None:
        def _do(c):
            c.register("_incoming", df)
            cols = ", ".join(df.columns)
            c.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming")
            c.unregister("_incoming")

        if con is not None:
            _do(con)
        else:
            with self.transaction() as c:
                _do(c)

    # ---------------------------------------------------------------- decisions
    def add_decision(self, sample_id: int, action: str, new_label: str | None = None, reason: str = "",
                     who: str | None = None) -> int:
        return self.add_decisions([(sample_id, action, new_label, reason)], who=who)[0]

    def add_decisions(self, rows: Iterable[tuple], who: str | None = None) -> list[int]:
        """Append decisions (sample_id, action, new_label, reason[, who]) in one transaction; returns their ids.

        A row's own fifth element ``who`` (e.g. the annotator of an imported Label Studio task) overrides ``who``.
        """
        rows = list(rows)
        who = who or os.environ.get("USER") or "curate"
        with self.transaction() as con:
            known = {r[0] for r in con.execute(
                "SELECT id FROM samples WHERE id IN (SELECT unnest(?))", [[int(r[0]) for r in rows]]).fetchall()}
            records = []
            for row in rows:  # validate everything first: a bad row stops the batch before anything is written
                sample_id, action, new_label, reason = row[:4]
                row_who = str(row[4]) if len(row) > 4 and row[4] not in (None, "") else who
                if action not in DECISION_ACTIONS:
                    raise CurateError(f"unknown decision action {action!r}; use one of {', '.join(DECISION_ACTIONS)}")
                if int(sample_id) not in known:
                    raise CurateError(f"sample {sample_id} does not exist in this project")
                if action == "relabel":
                    if not new_label or not str(new_label).strip():
                        raise CurateError(f"relabel of sample {sample_id} needs a new label")
                    new_label = str(new_label).strip()
                else:
                    new_label = None
                records.append((int(sample_id), action, new_label, reason or "", row_who, utcnow()))
            if not records:
                return []
            # set-based: a SemDeDup keep fraction or a Label Studio import records 10^5 decisions at once
            new_classes = list(dict.fromkeys(r[2] for r in records if r[2] is not None))
            if new_classes:
                con.executemany("INSERT INTO classes VALUES (?, ?) ON CONFLICT DO NOTHING",
                                [[c, utcnow()] for c in new_classes])
            # ids ascending in row order, so the last row for a sample is its latest decision
            ids = sorted(int(r[0]) for r in con.execute(
                "SELECT nextval('seq_decision') FROM range(?)", [len(records)]).fetchall())
            frame = pd.DataFrame(records, columns=["sample_id", "action", "new_label", "reason", "who", "created_at"])
            frame.insert(0, "id", np.asarray(ids, dtype=np.int64))
            frame["new_label"] = frame["new_label"].astype(object)
            con.register("_new_decisions", frame)
            con.execute("INSERT INTO decisions SELECT id, sample_id, action, new_label, reason, who, created_at, NULL "
                        "FROM _new_decisions")
            con.unregister("_new_decisions")
        return ids

    def undo_decision(self, decision_id: int, who: str | None = None) -> int:
        """Append an 'undo' record for ``decision_id`` (decisions are never deleted)."""
        done, errors = self.undo_decisions([decision_id], who=who)
        if errors:
            raise CurateError(errors[0])
        return done[0][1]

    def undo_decisions(self, decision_ids: Iterable[int], who: str | None = None
                       ) -> tuple[list[tuple[int, int]], list[str]]:
        """Append an 'undo' record for each of ``decision_ids`` in one transaction (set-based: the UI undoes a
        SemDeDup batch of 10^5 decisions at once).

        Returns ``([(decision id, undo record id), ...], errors)``: an id that does not exist, is itself an undo
        or was already undone (also earlier in ``decision_ids``) gets one error line and no record.
        """
        want = [int(d) for d in decision_ids]
        who = who or os.environ.get("USER") or "curate"
        with self.transaction() as con:
            found = {r[0]: r[1:] for r in con.execute(
                "SELECT d.id, d.sample_id, d.action, d.undoes, "
                "       EXISTS (SELECT 1 FROM decisions u WHERE u.undoes = d.id) "
                "FROM decisions d WHERE d.id IN (SELECT unnest(?::BIGINT[]))", [want]).fetchall()}
            todo, errors, seen = [], [], set()
            for did in want:
                row = found.get(did)
                if row is None:
                    errors.append(f"decision {did} does not exist")
                elif row[2] is not None:
                    errors.append(f"decision {did} is itself an undo; undo is not undoable, decide again instead")
                elif row[3] or did in seen:
                    errors.append(f"decision {did} was already undone")
                else:
                    seen.add(did)
                    todo.append((did, row[0], row[1]))
            if not todo:
                return [], errors
            new_ids = sorted(int(r[0]) for r in con.execute(
                "SELECT nextval('seq_decision') FROM range(?)", [len(todo)]).fetchall())
            frame = pd.DataFrame({
                "id": np.asarray(new_ids, dtype=np.int64),
                "sample_id": np.asarray([t[1] for t in todo], dtype=np.int64),
                "action": [t[2] for t in todo],
                "reason": [f"undo of decision {t[0]}" for t in todo],
                "who": who, "created_at": [utcnow() for _ in todo],
                "undoes": np.asarray([t[0] for t in todo], dtype=np.int64)})
            con.register("_undos", frame)
            con.execute("INSERT INTO decisions SELECT id, sample_id, action, NULL, reason, who, created_at, undoes "
                        "FROM _undos")
            con.unregister("_undos")
        return [(t[0], n) for t, n in zip(todo, new_ids)], errors

    def decisions(self, limit: int = 100, offset: int = 0) -> pd.DataFrame:
        return self.query_df(
            """SELECT d.*, (SELECT count(*) FROM decisions u WHERE u.undoes = d.id) > 0 AS undone
               FROM decisions d ORDER BY d.id DESC LIMIT ? OFFSET ?""",
            [limit, offset],
        )

    def live_decisions(self) -> pd.DataFrame:
        """The latest live (not undone, not an undo) decision per sample (the ``live_decisions`` view)."""
        return self.query_df("SELECT * FROM live_decisions ORDER BY sample_id")

    def decisions_in_force(self) -> pd.DataFrame:
        """Every decision in force (not undone, not an undo), oldest first: ``id, sample_id, action, new_label,
        reason, who, created_at`` (the ``decisions_in_force`` view; a sample can have several, the latest wins)."""
        return self.query_df("SELECT id, sample_id, action, new_label, reason, who, created_at FROM decisions_in_force "
                             "ORDER BY id")

    # ---------------------------------------------------------------- dataset-level reads (report, UI plots)
    def analysis_aggregates(self) -> dict[str, Any]:
        """Counts and mean scores of the analysis tables, for the dataset health scores (one connection).

        Returns a dict with ``samples``; ``label_issues`` / ``outliers``: ``(scored, mean score, flagged)``;
        ``duplicates``: ``(rows in sets, sets, copies beyond the keeper)``; ``image_issues``: ``{issue: (flagged,
        sum of 1 - score)}``; ``images_measured``: rows of ``image_stats``.
        """
        with self.connect(read_only=True) as con:
            one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
            return {
                "samples": int(one("SELECT count(*) FROM samples")[0]),
                "label_issues": one("SELECT count(*), avg(label_quality), count(*) FILTER (WHERE is_issue) "
                                    "FROM label_issues WHERE label_quality IS NOT NULL"),
                "outliers": one("SELECT count(*), avg(score), count(*) FILTER (WHERE is_outlier) FROM outliers "
                                "WHERE score IS NOT NULL"),
                "duplicates": one("SELECT count(*), count(DISTINCT set_id), "
                                  "count(*) FILTER (WHERE NOT coalesce(is_keeper, false)) FROM duplicates"),
                "image_issues": {r[0]: (int(r[1]), float(r[2] or 0.0)) for r in con.execute(
                    "SELECT issue, count(*), sum(1 - least(greatest(score, 0), 1)) FROM image_issues "
                    "GROUP BY issue ORDER BY issue").fetchall()},
                "images_measured": int(one("SELECT count(*) FROM image_stats")[0]),
            }

    def label_distribution(self) -> pd.DataFrame:
        """``label, given, current``: samples per class as ingested/annotated and after live relabel decisions."""
        return self.query_df("""
            WITH both_ AS (SELECT given_label AS label, 1 AS given, 0 AS current FROM current_labels
                           WHERE given_label IS NOT NULL
                           UNION ALL SELECT label, 0, 1 FROM current_labels WHERE label IS NOT NULL)
            SELECT label, sum(given)::BIGINT AS given, sum(current)::BIGINT AS current FROM both_
            GROUP BY label ORDER BY current DESC, label""")

    # score column, flag column of the per-sample score tables a histogram can be drawn of
    SCORE_COLUMNS = {"label_quality": ("label_issues", "label_quality", "is_issue"),
                     "outlier_score": ("outliers", "score", "is_outlier")}

    def score_histogram(self, kind: str, bins: int = 40, con=None) -> pd.DataFrame:
        """Histogram of a per-sample score in [0, 1], binned in DuckDB: ``bin_start, bin_end, flagged, samples``.

        ``kind``: ``label_quality`` or ``outlier_score`` (:attr:`SCORE_COLUMNS`).  ``flagged`` splits each bin
        into flagged and unflagged samples.
        """
        if kind not in self.SCORE_COLUMNS:
            raise ValueError(f"no score histogram for {kind!r}; use one of {', '.join(self.SCORE_COLUMNS)}")
        table, col, flag = self.SCORE_COLUMNS[kind]
        sql = f"""SELECT least(greatest(floor({col} * ?), 0), ? - 1)::INTEGER AS bin, coalesce({flag}, false) AS flagged,
                         count(*) AS samples
                  FROM {table} WHERE {col} IS NOT NULL AND isfinite({col}) GROUP BY ALL ORDER BY bin, flagged"""
        args = [int(bins), int(bins)]
        if con is None:
            df = self.query_df(sql, args)
        else:
            df = con.execute(sql, args).df()
        df.insert(1, "bin_start", df["bin"] / bins)
        df.insert(2, "bin_end", (df["bin"] + 1) / bins)
        return df.drop(columns="bin")

    def flag_boundary(self, kind: str, con=None) -> float | None:
        """The highest score among flagged samples (where the flags stop), ``None`` when nothing is flagged."""
        table, col, flag = self.SCORE_COLUMNS[kind]
        sql = f"SELECT max({col}) FROM {table} WHERE {flag}"
        v = (con.execute(sql).fetchone() if con is not None else self.query(sql)[0])[0]
        return None if v is None else float(v)

    def map_points(self, max_points: int, seed: int = 0, con=None) -> tuple[int, pd.DataFrame]:
        """Points of the 2-D map: all of them up to ``max_points``, else a seeded sample chosen in SQL.

        Returns (total points, frame of sample_id, x, y, cluster, label, issue): ``label`` is the given label
        and ``issue`` the first of ``label issue``, ``duplicate``, ``outlier``, ``image issue`` that applies, or
        ``none``.
        """
        def _read(c):
            total = int(c.execute("SELECT count(*) FROM clusters WHERE x IS NOT NULL").fetchone()[0])
            ids = [int(r[0]) for r in c.execute(
                "SELECT sample_id FROM clusters WHERE x IS NOT NULL ORDER BY hash(sample_id, ?) LIMIT ?",
                [int(seed), int(max_points)]).fetchall()]
            # the points' ids are bound, so DuckDB reads only their rows of the labels table for given_labels
            df = c.execute("""
                WITH pts AS (SELECT sample_id, cluster, x, y FROM clusters
                             WHERE x IS NOT NULL AND sample_id IN (SELECT unnest(?::BIGINT[]))),
                g AS (SELECT sample_id, label FROM given_labels WHERE sample_id IN (SELECT unnest(?::BIGINT[])))
                SELECT p.sample_id, p.x, p.y, p.cluster, g.label,
                       CASE WHEN p.sample_id IN (SELECT sample_id FROM label_issues WHERE is_issue) THEN 'label issue'
                            WHEN p.sample_id IN (SELECT sample_id FROM duplicates WHERE NOT coalesce(is_keeper, false)) THEN 'duplicate'
                            WHEN p.sample_id IN (SELECT sample_id FROM outliers WHERE is_outlier) THEN 'outlier'
                            WHEN p.sample_id IN (SELECT sample_id FROM image_issues) THEN 'image issue'
                            ELSE 'none' END AS issue
                FROM pts p LEFT JOIN g ON g.sample_id = p.sample_id
                ORDER BY p.sample_id""", [ids, ids]).df()
            return total, df

        if con is not None:
            return _read(con)
        with self.connect(read_only=True) as c:
            return _read(c)

    def semdedup_pruned(self, threshold: float, con=None) -> np.ndarray:
        """Sample ids SemDeDup prunes at ``threshold`` (``max_similarity >= threshold``) with no live decision.

        Samples a reviewer already decided on are left out: applying a keep fraction never overrides them.
        """
        sql = """SELECT sample_id FROM semdedup
                  WHERE max_similarity >= ? AND sample_id NOT IN (SELECT sample_id FROM live_decisions)
                  ORDER BY sample_id"""
        args = [float(threshold) - 1e-6]  # the tolerance of duplicates.semdedup_curve (float32 similarities)
        rows = con.execute(sql, args).fetchall() if con is not None else self.query(sql, args)
        return np.array([r[0] for r in rows], dtype=np.int64)


def _insert_rows(con, table: str, columns: Sequence[str], rows: Sequence[Sequence], replace_on: Sequence[str] = ()) -> None:
    """One set-based INSERT of ``rows`` (tuples in ``columns`` order) into ``table`` — not one statement per row,
    which is what makes 10^6 boxes slow.  With ``replace_on`` (the table's key) it is an upsert, and of several rows
    with one key the last wins (as row-by-row upserts would leave it)."""
    df = pd.DataFrame([list(r) for r in rows], columns=list(columns))
    for c in df.columns:
        if df[c].dtype == object and df[c].isna().all():
            df[c] = df[c].astype("string")  # all-NULL column: give DuckDB a type to cast from
    if replace_on:
        df = df.drop_duplicates(list(replace_on), keep="last")
    cols = ", ".join(columns)
    con.register("_rows_in", df)
    try:
        con.execute(f"INSERT {'OR REPLACE ' if replace_on else ''}INTO {table} ({cols}) SELECT {cols} FROM _rows_in")
    finally:
        con.unregister("_rows_in")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, datetime)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")

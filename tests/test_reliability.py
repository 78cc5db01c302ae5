"""Concurrency and input-safety checks on the catalog's write path."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from curate.engine.catalog import init_project

ROOT = Path(__file__).resolve().parents[1]


def test_concurrent_decision_writers_lose_nothing(tmp_path):
    cat = init_project(tmp_path / "p")
    cat.wait_s = 120  # every writer, this one included, may wait as long as the others (a loaded CI machine is slow)
    with cat.transaction() as con:
        for i in range(5):
            con.execute("INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (nextval('seq_sample'), ?, ?, now())",
                        [f"h{i}", f"/img/{i}.png"])
    code = textwrap.dedent(
        """
        import sys
        from curate.engine.catalog import Catalog
        cat = Catalog(sys.argv[1], wait_s=120)
        w = int(sys.argv[2])
        for i in range(15):
            cat.add_decision(1 + (i % 5), "relabel", f"w{w}-{i}", reason=f"writer {w}")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cat.root), str(w)], env=env) for w in range(4)]
    # this process reads and writes while the others do
    for i in range(10):
        cat.add_decision(1, "keep", reason=f"main {i}")
        cat.counts()
    assert all(p.wait(timeout=300) == 0 for p in procs)
    assert cat.scalar("SELECT count(*) FROM decisions") == 4 * 15 + 10
    assert cat.scalar("SELECT count(DISTINCT id) FROM decisions") == 70


def test_user_strings_are_bound_parameters(project):
    with project.transaction() as con:
        con.execute("INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (nextval('seq_sample'), 'h', '/a.png', now())")
    evil = "x'); DROP TABLE samples; --"
    project.add_decision(1, "relabel", evil, reason="'; DELETE FROM decisions; --")
    assert project.counts()["samples"] == 1
    assert project.current_labels()["label"].tolist() == [evil]
    assert evil in project.class_names()
    assert project.scalar("SELECT count(*) FROM decisions") == 1


# ------------------------------------------------------------------------------------------- in-process mode conflict
def _hold(cat, read_only: bool, seconds: float, ready):
    import threading

    def run():
        with cat.connect(read_only=read_only) as con:
            con.execute("SELECT count(*) FROM samples").fetchone()
            ready.set()
            time.sleep(seconds)

    t = threading.Thread(target=run)
    t.start()
    assert ready.wait(10)
    return t


def test_connect_waits_out_an_in_process_read_only_connection_then_says_busy(project):
    import threading

    from curate.engine.catalog import Catalog, ProjectBusyError

    with project.transaction() as con:
        con.execute("INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (1, 'h', '/a.png', now())")
    # a UI session reads (read-only) while another writes (read-write) in the same process: the write waits
    holder = _hold(project, read_only=True, seconds=1.0, ready=threading.Event())
    t0 = time.monotonic()
    project.add_decision(1, "keep")
    assert time.monotonic() - t0 > 0.5  # it waited for the reader instead of failing
    holder.join()
    # and the other way round: a read waits for an open read-write connection
    holder = _hold(project, read_only=False, seconds=1.0, ready=threading.Event())
    assert project.counts()["decisions"] == 1
    holder.join()
    # a holder that stays longer than wait_s: one clear line, no DuckDB jargon
    holder = _hold(project, read_only=True, seconds=2.0, ready=threading.Event())
    impatient = Catalog(project.root, wait_s=0.3)
    with pytest.raises(ProjectBusyError, match=r"^project is busy: another connection in this process \(opened "
                                               r"read-only\) holds .*catalog\.duckdb .*then retry$"):
        impatient.add_decision(1, "remove")
    holder.join()
    assert project.counts()["decisions"] == 1


# ------------------------------------------------------------------------------------------- CLI analysis vs UI writes
def test_cli_analysis_running_while_the_ui_writes_many_decisions_loses_nothing(tmp_path, monkeypatch):
    """`curate audit outliers` holds the catalog's write lock in its results transaction (paused there 2 s) while
    four UI sessions write 40 decisions through app.components.record and read through app.data: every decision
    lands, the analysis completes, and the writers waited rather than failed."""
    import threading

    from curate.app import components, data
    from tests.fault_helpers import byo_project, cli_env

    cat, _ = byo_project(tmp_path)
    root = str(cat.root)
    ids = cat.samples()["id"].tolist()
    proc = subprocess.Popen([sys.executable, "-m", "curate.engine.cli", "audit", "outliers", "-p", root], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
                            env=cli_env(CURATE_TEST_ANALYSIS_PAUSE="2"))
    for line in proc.stderr:  # wait until the analysis holds the lock (inside its transaction)
        if "CURATE_TEST_PAUSED" in line:
            break
    assert proc.poll() is None, proc.stderr.read()

    saved: list[list[int]] = []
    waits: list[float] = []
    errors: list[BaseException] = []

    def session(w: int) -> None:
        try:
            for i in range(10):
                t0 = time.monotonic()
                sid = ids[(w * 10 + i) % len(ids)]
                saved.append(components.record(root, [(sid, "relabel", f"w{w}-{i}", "concurrency")], "relabel"))
                waits.append(time.monotonic() - t0)
                data.revision(root)  # a read in between, as a page rerun does
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert not errors, errors
    assert all(len(s) == 1 for s in saved) and len(saved) == 40  # every record call saved its decision
    assert max(waits) > 0.5  # the first writes had to wait for the CLI's transaction
    assert cat.scalar("SELECT count(*) FROM decisions") == 40
    assert sorted(i for s in saved for i in s) == [r[0] for r in cat.query("SELECT id FROM decisions ORDER BY id")]
    assert cat.scalar("SELECT count(*) FROM outliers") == len(ids)  # the analysis wrote all its rows
    assert cat.last_run("outliers") is not None and "flagged as outliers" in out


def test_a_writer_that_cannot_wait_gets_one_clear_line(tmp_path, monkeypatch):
    """CLI and UI writers facing a long-running CLI transaction fail with 'project is busy', nothing half-done."""
    import streamlit as st

    from curate.app import components
    from tests.fault_helpers import byo_project, cli_env, curate

    cat, _ = byo_project(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "curate.engine.cli", "audit", "outliers", "-p", str(cat.root)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT),
                            env=cli_env(CURATE_TEST_ANALYSIS_PAUSE="60"))
    try:
        for line in proc.stderr:
            if "CURATE_TEST_PAUSED" in line:
                break
        r = curate("decide", "1", "keep", "-p", cat.root, env=cli_env(CURATE_LOCK_WAIT="1"))
        out = r.stdout + r.stderr
        assert r.returncode == 1 and "Traceback" not in out, out
        assert out.strip().startswith("error: project is busy: another curate process holds")
        assert "wait for it to finish or close it, then retry" in out and len(out.strip().splitlines()) == 1
        monkeypatch.setenv("CURATE_LOCK_WAIT", "0.5")
        root = str(tmp_path / "copy-of-path")  # a fresh cached Catalog that reads the short wait
        os.symlink(cat.root, root)
        assert components.record(root, [(1, "keep", None, "")], "kept") == []
        kind, message, _ = st.session_state["flash"]
        assert kind == "error" and message.startswith("project is busy")
    finally:
        proc.kill()
        proc.communicate()
    assert cat.scalar("SELECT count(*) FROM decisions") == 0  # nothing half-written
    cat.add_decision(1, "keep")  # and the project is usable again at once


# ------------------------------------------------------------------------------------------- UI is local-only
def _listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp[6]) of sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:  # 0A = LISTEN
                found.append(addr)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the listening sockets from Linux /proc")
def test_curate_ui_listens_on_localhost_only_by_default(tmp_path):
    import socket
    import urllib.request

    from curate.engine.catalog import init_project as init
    from tests.fault_helpers import cli_env

    init(tmp_path / "p")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "curate.engine.cli", "ui", "-p", str(tmp_path / "p"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT), env=cli_env())
    try:
        deadline = time.monotonic() + 90
        while not _listening(port):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "curate ui did not start listening"
            time.sleep(0.2)
        assert _listening(port) == ["0100007F"]  # 127.0.0.1 only: not 0.0.0.0, not ::
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as resp:
            assert resp.read() == b"ok"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)

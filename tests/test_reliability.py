"""Concurrency and input-safety checks on the catalog's write path."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from engine.catalog import init_project

ROOT = Path(__file__).resolve().parents[1]


def test_concurrent_decision_writers_lose_nothing(tmp_path):
    cat = init_project(tmp_path / "p")
    with cat.transaction() as con:
        for i in range(5):
            con.execute("INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (nextval('seq_sample'), ?, ?, now())",
                        [f"h{i}", f"/img/{i}.png"])
    code = textwrap.dedent(
        """
        import sys
        from engine.catalog import Catalog
        cat = Catalog(sys.argv[1], wait_s=60)
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
    assert all(p.wait(timeout=180) == 0 for p in procs)
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

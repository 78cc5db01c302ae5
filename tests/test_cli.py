import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def curate(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_init_ingest_status(tmp_path, image_folder):
    proj = tmp_path / "proj"
    r = curate("init", proj)
    assert r.returncode == 0, r.stderr
    assert "project ready" in r.stdout
    r = curate("ingest", image_folder, "--project", proj)
    assert r.returncode == 0, r.stderr
    assert "12 new" in r.stdout and "3 quarantined" in r.stdout
    assert "zero.png: zero-byte file" in r.stdout
    r = curate("ingest", image_folder, "-p", proj)
    assert "0 new, 12 unchanged" in r.stdout
    r = curate("status", "-p", proj)
    assert r.returncode == 0, r.stderr
    assert "samples" in r.stdout and "12" in r.stdout and "ingest" in r.stdout
    assert "train=6" in r.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    r = curate("status", "--project", tmp_path / "missing")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "no Curate project" in out and "Traceback" not in out
    r = curate("ingest", tmp_path / "nothing-here", "-p", tmp_path / "p")
    assert r.returncode == 1 and "does not exist" in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr


def test_default_project_is_cwd_curate_project(tmp_path, image_folder):
    r = curate("ingest", image_folder, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "curate-project" / "catalog.duckdb").exists()

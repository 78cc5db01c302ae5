import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def curate(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "curate.engine.cli", *map(str, args)], capture_output=True, text=True,
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


# ------------------------------------------------------------------------------------------- issue 15: a newcomer's first minutes
def entry_point(*args, cwd=None, **env):
    """The installed `curate` script when there is one (importing this tree), else `python -m engine.cli`."""
    script = Path(sys.executable).parent / "curate"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "curate.engine.cli"]
    e = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", **env)
    e.pop("CURATE_PROGRESS", None) if "CURATE_PROGRESS" not in env else None
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=e, timeout=300)


def test_unknown_option_is_one_line_and_exit_2(tmp_path):
    for args, expect in ((["audit", "-p", tmp_path], "No such option: -p; `curate audit` takes a command first: all, "),
                         (["embed", "--encodr", "x"], "No such option: --encodr (Possible options: --encoder)"),
                         (["index", "-k", "many"], "Invalid value for '-k'")):
        r = entry_point(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("Usage: curate "), r.stderr
        assert lines[1].startswith("error: ") and expect in lines[1] and "--help`" in lines[1], lines[1]
        assert "Traceback" not in r.stdout + r.stderr and r.stdout == ""


def test_unknown_command_is_one_line_with_did_you_mean_and_exit_2():
    r = entry_point("audit", "lables")
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == ["Usage: curate audit [OPTIONS] COMMAND [ARGS]...",
                     "error: No such command 'lables'. Did you mean 'labels'? See `curate audit --help`."]
    r = entry_point("audti")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: No such command 'audti'.")
    assert "Did you mean 'audit'?" in r.stderr
    r = entry_point("audit", "--help")  # --help still points at the fix
    assert r.returncode == 0 and "labels" in r.stdout and "Example: curate audit all -p my-project" in r.stdout


def test_curate_error_is_one_line_exit_1_and_debug_shows_the_traceback(tmp_path):
    r = entry_point("status", "-p", tmp_path / "missing")
    assert r.returncode == 1 and r.stdout.strip().startswith("error: no Curate project")
    assert len((r.stdout + r.stderr).strip().splitlines()) == 1
    r = entry_point("--debug", "status", "-p", tmp_path / "missing")
    assert r.returncode == 1 and "Traceback" in r.stderr and "ProjectNotFoundError" in r.stderr


def test_an_unexpected_error_is_one_line_naming_the_traceback_file(tmp_path):
    """A bug (here a command that raises RuntimeError, added to the real app) does not dump a traceback."""
    code = ("import sys\nfrom curate.engine import cli\n@cli.app.command('boom')\ndef boom():\n"
            "    raise RuntimeError('kaput\\nsecond line')\nsys.argv = ['curate', *sys.argv[1:]]\ncli.main()\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    env.pop("CURATE_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", code, "boom"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: RuntimeError: kaput (full traceback in "), lines
    log = Path(lines[0].split("full traceback in ")[1].split(";")[0])
    assert log.parent == tmp_path and "in boom\nRuntimeError: kaput" in log.read_text() and "rerun with --debug" in lines[0]
    r = subprocess.run([sys.executable, "-c", code, "boom"], capture_output=True, text=True,
                       env=dict(env, CURATE_DEBUG="1"), timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr and "RuntimeError: kaput" in r.stderr


def test_bare_curate_prints_getting_started_then_the_commands():
    r = entry_point()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    order = [out.index(c) for c in ("curate demo", "curate ingest FOLDER -p PROJECT", "curate audit all -p PROJECT",
                                    "curate ui -p PROJECT", "curate export -p PROJECT")]
    assert order == sorted(order) and out.index("Getting started") < order[0] < out.index("Commands")
    assert "import-labels" in out and "--debug" in out


def test_audit_all_shows_progress_for_every_step_and_a_timing_table(tmp_path):
    """A 24-image project through `curate audit all` with progress forced on (stderr is a pipe here)."""
    from tests.fault_helpers import write_dataset

    write_dataset(tmp_path / "data", 8)
    assert entry_point("ingest", tmp_path / "data", "-p", tmp_path / "p").returncode == 0
    r = entry_point("audit", "all", "-p", tmp_path / "p", "--encoder", "effnet-lite0:64", CURATE_PROGRESS="1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from curate.engine.pipeline import audit_steps

    steps = [name for name, _ in audit_steps()]
    assert len(steps) == 8
    for name in steps:
        assert f"progress {name}: " in r.stderr, (name, r.stderr)
    for stage in ("label issues: probe folds 5/5", "clusters: kmeans clustering", "clusters: 2-D map",
                  "knn graph: kNN graph", "image quality: image stats"):
        assert f"progress {stage}" in r.stderr, (stage, r.stderr)
    table = r.stdout[r.stdout.index("audit steps"):]
    for name in [*steps, "total"]:
        assert f"│ {name} " in table
    # a rerun: --quiet wins over CURATE_PROGRESS=1; and without a TTY nothing is drawn unless forced
    r = entry_point("audit", "outliers", "-p", tmp_path / "p", "--quiet", CURATE_PROGRESS="1")
    assert r.returncode == 0 and "progress " not in r.stderr, r.stderr
    r = entry_point("audit", "labels", "-p", tmp_path / "p")
    assert r.returncode == 0 and "progress " not in r.stderr, r.stderr
    r = entry_point("audit", "labels", "-p", tmp_path / "p", CURATE_PROGRESS="1")
    assert r.returncode == 0 and "progress label issues: probe folds 5/5" in r.stderr, r.stderr

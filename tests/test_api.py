"""The front door: ``import curate`` -> ``curate.open`` -> a Project whose methods run the whole loop, and an install
that claims only the name ``curate``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import curate
from conftest import write_image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    for c, rgb in colours.items():
        for i in range(8):
            write_image(tmp_path / "photos" / c / f"{c}{i}.png", seed=i + (100 if c == "blue" else 0), size=(40, 40))
    return tmp_path / "photos"


def test_the_whole_loop_through_the_front_door(tmp_path, photos):
    project = curate.open(tmp_path / "proj")
    assert isinstance(project, curate.Project) and project.root == tmp_path / "proj"
    rep = project.ingest(photos)
    assert rep.added == 16 and project.status()["samples"] == 16
    assert project.ingest(photos).added == 0  # idempotent

    results = project.audit(options={"clusters": {"k": 2, "name_clusters": False}})
    assert set(results) == set(project.analyses())
    for name, res in results.items():
        assert isinstance(res.summary, dict), name

    issues = project.label_issues(all=True)
    assert isinstance(issues, pd.DataFrame) and len(issues) == 16
    assert {"sample_id", "path", "given_label", "suggested_label", "rank"} <= set(issues.columns)
    assert list(issues["rank"]) == sorted(issues["rank"])
    assert len(project.outliers(all=True)) == 16
    assert set(project.clusters()["cluster"]) == {0, 1}
    assert isinstance(project.duplicates(), pd.DataFrame) and isinstance(project.image_issues(), pd.DataFrame)

    batch = project.query(strategy="random", budget=3)
    assert isinstance(batch, pd.DataFrame)

    sid = int(issues.sample_id.iloc[0])
    did = project.decide(sid, "relabel", label="blue" if issues.given_label.iloc[0] == "red" else "red")
    assert project.decisions().iloc[0]["id"] == did
    project.undo(did)
    did = project.decide(sid, "remove", reason="blurry")
    out = project.export(tmp_path / "clean", formats=["csv"])
    assert out.n_removed == 1 and out.n_exported == 15
    html = project.report(tmp_path / "report.html")
    assert html.exists() and html.stat().st_size > 1000

    again = curate.open(tmp_path / "proj", create=False)
    assert again.status()["samples"] == 16


def test_the_wheel_installs_under_curate_only(tmp_path):
    """The built wheel holds curate/, curate/engine/, curate/indexes/, curate/app/ and no generic top-level name;
    installed on its own, `import curate` works and `import engine` does not."""
    import shutil

    # build from a copy: setuptools writes build/ next to pyproject.toml, and must not leave it in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for folder in ("curate", "engine", "indexes", "app"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "w"),
                                  str(src)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1:]}")
    wheel = next((tmp_path / "w").glob("curate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"curate"}, tops
    for must in ("curate/__init__.py", "curate/api.py", "curate/engine/cli.py", "curate/engine/analyses/registry.py",
                 "curate/indexes/knn.py", "curate/app/main.py", "curate/app/views/overview.py",
                 "curate/engine/templates/report.html.j2"):
        assert must in names, must

    target = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import importlib.util, curate, curate.engine.cli, curate.app.data; "
            "print(curate.__file__); print(importlib.util.find_spec('engine'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    where, engine_spec = res.stdout.split()
    assert where.startswith(str(target)) and engine_spec == "None"

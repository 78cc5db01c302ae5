"""`curate report`: the self-contained HTML report and its Markdown summary, over a small real audited project.

The project (tests/ui_fixtures.build_audited_project) is ingested from PNG files and audited by the real analyses
over imported embeddings; the report is written by the real command in a subprocess.  The browser check of the
same file lives in tests/test_ui_browser.py.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate.engine.html_report import SECTIONS, health_scores, keep_fraction_table, noise_matrix

ROOT = Path(__file__).resolve().parents[1]


def curate(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "curate.engine.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    from tests.ui_fixtures import build_audited_project

    return build_audited_project(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(audited, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out") / "ticket" / "audit.html"
    res = curate("report", "-p", str(audited.cat.root), "--out", str(out), "--top", "5")
    assert res.returncode == 0, res.stdout + res.stderr
    return out, res.stdout, out.read_text(encoding="utf-8"), out.with_suffix(".md").read_text(encoding="utf-8")


class _Tags(html.parser.HTMLParser):
    """Every start tag with its attributes and the ids on the page (script bodies are not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(text)
    return p.tags


# ------------------------------------------------------------------------------------------- pure parts
def test_health_scores_follow_the_definitions():
    agg = {"samples": 20, "label_issues": (10, 0.6, 3), "outliers": (20, 0.42, 1), "duplicates": (6, 2, 4),
           "image_issues": {"dark": (2, 1.5), "blurry": (1, 0.25)}, "images_measured": 20, "duplicates_ran": True}
    h = {x.issue: x for x in health_scores(agg, image_mean_scores={"dark": 0.8})}
    assert h["label"].score == 0.6 and h["label"].flagged == 3 and h["label"].scored == 10
    assert h["outlier"].score == 0.42
    assert h["duplicate"].score == pytest.approx(1 - 4 / 20) and h["duplicate"].flagged == 4
    assert h["image: dark"].score == 0.8  # the run's mean over every image wins
    assert h["image: blurry"].score == pytest.approx(1 - 0.25 / 20)  # fallback: flagged deficits only
    empty = {"samples": 5, "label_issues": (0, None, 0), "outliers": (0, None, 0), "duplicates": (0, 0, 0),
             "image_issues": {}, "images_measured": 0, "duplicates_ran": False}
    assert [(x.issue, x.score) for x in health_scores(empty)] == [("label", None), ("outlier", None),
                                                                   ("duplicate", None)]
    ran_clean = dict(empty, duplicates_ran=True)
    assert {x.issue: x.score for x in health_scores(ran_clean)}["duplicate"] == 1.0


def test_noise_matrix_is_p_given_given_true():
    joint = np.array([[0.30, 0.05, 0.0], [0.10, 0.25, 0.0], [0.0, 0.0, 0.30]])
    M = noise_matrix(joint)
    assert np.allclose(M.sum(axis=0), 1.0)
    assert M[1, 0] == pytest.approx(0.10 / 0.40)  # given 1 when true 0
    assert np.allclose(noise_matrix(np.zeros((2, 2))), 0.0)


def test_joint_summary_keeps_the_most_confused_classes():
    from curate.engine.analyses.label_issues import joint_summary

    J = np.diag(np.full(5, 0.18))
    J[3, 1] = J[1, 3] = 0.05
    s = joint_summary(J / J.sum(), list("abcde"), max_classes=2)
    assert s["classes"] == ["b", "d"] and s["n_classes"] == 5 and len(s["matrix"]) == 2
    json.dumps(s)  # fits in a run summary


# ------------------------------------------------------------------------------------------- persisted inputs
def test_analyses_persist_the_noise_estimate_and_the_semdedup_pruning(audited):
    cat = audited.cat
    li = cat.last_run("label_issues")["summary"]
    joint = np.asarray(li["joint"]["matrix"])
    assert li["joint"]["classes"] == ["bird", "cat", "dog"] and joint.shape == (3, 3)
    assert joint.sum() == pytest.approx(1.0, abs=1e-4)
    assert 1 - np.trace(joint) == pytest.approx(li["estimated_noise_rate"], abs=1e-4)
    curve = keep_fraction_table(cat.last_run("duplicates")["summary"]["semdedup"])
    assert len(curve) >= 5
    pruned = cat.query_df("SELECT sample_id, max_similarity FROM semdedup")
    for t, n_removed in zip(curve["threshold"], curve["n_removed"]):
        assert int((pruned["max_similarity"] >= t - 1e-6).sum()) == n_removed
        assert len(cat.semdedup_pruned(t)) == n_removed  # no decisions yet
    # the duplicate copies are pruned at the strictest threshold
    strict = set(cat.semdedup_pruned(float(curve["threshold"].max())).tolist())
    assert len(strict & set(audited.exact_set)) == 1 and len(strict & set(audited.near_set)) == 2
    assert set(cat.last_run("image_quality")["summary"]["mean_scores"]) >= {"dark", "blurry"}


# ------------------------------------------------------------------------------------------- the report
def test_command_prints_both_paths(report):
    out, stdout, _, _ = report
    assert str(out) in stdout.replace("\n", "") and str(out.with_suffix(".md")) in stdout.replace("\n", "")


def test_html_has_every_section_and_plot(report):
    _, _, text, _ = report
    tags = _tags(text)
    ids = {a.get("id") for _, a in tags}
    assert set(SECTIONS) <= ids
    for fig in ("fig-health", "fig-class-balance", "fig-noise-matrix", "fig-label-hist", "fig-outlier-hist", "fig-map",
                "fig-semdedup"):
        assert fig in ids, fig
        assert re.search(r'Plotly\.newPlot\(\s*"' + fig + '"', text), fig  # each div gets its figure
    assert text.count("Plotly.newPlot(") == 7
    assert len([1 for t, a in tags if t == "script" and a.get("id") == "plotlyjs"]) == 1  # the bundle, once


def test_html_is_self_contained(report):
    _, _, text, _ = report
    for tag, attrs in _tags(text):
        for key in ("src", "href"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value[:80])
        assert not (tag == "script" and attrs.get("src")), attrs
        assert not (tag == "link" and attrs.get("rel") == "stylesheet"), attrs


def test_html_embeds_thumbnails_of_each_gallery(audited, report):
    _, _, text, _ = report
    imgs = [a for t, a in _tags(text) if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/jpeg;base64,") for a in imgs)
    shown = {int(a["alt"].split()[-1]) for a in imgs}
    assert set(audited.flagged) <= shown  # the 4 flagged label issues (top 5)
    assert set(audited.exact_set) | set(audited.near_set) <= shown  # both duplicate sets, every member
    assert audited.outliers[0] in shown
    # the file deleted after ingest gets the placeholder, the others real thumbnails (distinct images)
    srcs = {int(a["alt"].split()[-1]): a["src"] for a in imgs}
    from curate.engine.thumbnails import placeholder
    import base64

    ph = "data:image/jpeg;base64," + base64.b64encode(placeholder()).decode()
    assert all(v != ph for k, v in srcs.items() if k != audited.missing)
    assert len(set(srcs.values())) >= len(srcs) - 2


def test_html_numbers_match_the_catalog(audited, report):
    _, _, text, _ = report
    cat = audited.cat
    li = cat.query_df("SELECT label_quality FROM label_issues")
    mean_quality = float(li["label_quality"].mean())
    health = re.search(r'<section id="health">(.*?)</section>', text, re.S).group(1)
    assert f"{mean_quality:.3f}" in health
    dup_score = 1 - cat.scalar("SELECT count(*) FROM duplicates WHERE NOT is_keeper") / cat.counts()["samples"]
    assert f"{dup_score:.3f}" in health
    semdedup = re.search(r'<section id="semdedup">(.*?)</section>', text, re.S).group(1)
    curve = cat.last_run("duplicates")["summary"]["semdedup"]["curve"]
    for point in curve:
        assert f"{point['keep_fraction']:.1%}" in semdedup


def test_markdown_summary(audited, report):
    out, _, _, md = report
    for heading in ("## Dataset health", "## Counts", "## Class balance", "## Label issues", "## Duplicates",
                    "## SemDeDup keep-fraction curve", "## Decisions so far", "## Definitions"):
        assert heading in md, heading
    assert out.name in md
    rows = [line for line in md.splitlines() if line.startswith("| label |") or line.startswith("| duplicate |")]
    assert len(rows) == 2 and all(re.search(r"\| 0\.\d{3} \|", r) for r in rows)
    n = audited.cat.last_run("label_issues")["summary"]["n_issues"]
    assert f"{n} of " in md


def test_report_shows_decisions_and_a_fresh_project(audited, tmp_path):
    from tests.ui_fixtures import clone_project

    proj = clone_project(audited, tmp_path / "copy")
    cat = proj.cat
    ids = cat.add_decisions([(proj.flagged[0], "relabel", "cat", "ticket 18"), (proj.outliers[0], "remove", None, "")])
    cat.undo_decision(ids[1])
    res = curate("report", "-p", str(cat.root))
    assert res.returncode == 0, res.stdout + res.stderr
    text = (cat.root / "exports" / "report.html").read_text()
    decisions = re.search(r'<section id="decisions">(.*?)</section>', text, re.S).group(1)
    assert "<b>relabel</b> 1" in decisions and "<b>remove</b>" not in decisions  # the undone one is not live
    assert "ticket 18" in decisions and "undone" in decisions
    md = (cat.root / "exports" / "report.md").read_text()
    assert "Live decisions: relabel 1 (3 records including undos)." in md

    from curate.engine.catalog import init_project

    fresh = init_project(tmp_path / "fresh")
    res = curate("report", "-p", str(fresh.root), "--out", str(tmp_path / "fresh.html"))
    assert res.returncode == 0, res.stdout + res.stderr
    text = (tmp_path / "fresh.html").read_text()
    assert set(SECTIONS) <= {a.get("id") for _, a in _tags(text)}
    assert "not run" in text and "No review decisions yet." in text


def test_bad_out_path_is_a_one_line_error(audited, tmp_path):
    res = curate("report", "-p", str(audited.cat.root), "--out", str(tmp_path / "report.pdf"))
    assert res.returncode == 1 and "must name an .html file" in res.stdout and "Traceback" not in res.stdout + res.stderr
    res = curate("report", "-p", str(tmp_path / "missing"))
    assert res.returncode == 1 and "no Curate project" in res.stdout

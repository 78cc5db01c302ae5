"""`curate report`: one self-contained HTML file and a Markdown summary of a project's audit.

The report reads the catalog only (data flows one way: nothing is recomputed here).  It shows

* **health scores** per issue type in [0, 1] (1 = healthy), defined as cleanlab's Datalab defines the score of an
  issue type: the mean over samples of that issue type's per-sample quality score (:data:`HEALTH_DEFINITIONS`);
* counts, class balance, the estimated noise matrix, the most likely label issues, duplicate sets, outliers and
  image-quality issues as thumbnail galleries (JPEG thumbnails from :mod:`engine.thumbnails`, embedded as base64),
  the 2-D map coloured by issue, the SemDeDup keep-fraction curve and the review decisions taken so far.

Plots are Plotly figures; the plotly.js bundle is inlined once, so the file opens offline and can be attached to
a ticket.  The page is rendered from the Jinja2 template ``engine/templates/report.html.j2``.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curate.engine import thumbnails
from curate.engine.catalog import Catalog, CurateError, utcnow

DEFAULT_TOP = 12
MAP_POINTS = 5_000  # points drawn on the report's map (SVG, no WebGL: it must render anywhere)

# section id -> title, in page order (the browser test checks every id is visible)
SECTIONS = {
    "health": "Dataset health",
    "counts": "Counts",
    "class-balance": "Class balance",
    "noise-matrix": "Estimated noise matrix",
    "label-issues": "Label issues",
    "duplicates": "Duplicate sets",
    "outliers": "Outliers",
    "image-issues": "Image quality",
    "map": "2-D map by issue",
    "semdedup": "SemDeDup keep-fraction curve",
    "decisions": "Decisions so far",
    "definitions": "How the scores are defined",
}

HEALTH_DEFINITIONS = {
    "label": "mean label quality (cleanlab self-confidence or normalized margin of the given label under "
             "out-of-sample probabilities) over the labeled, scored samples",
    "outlier": "mean outlier score exp(-d / t) over the embedded samples (d = mean cosine distance to the k nearest "
               "neighbours, t = its median): cleanlab's outlier quality",
    "duplicate": "1 - (samples in an exact or near-duplicate set beyond its keeper) / (samples in the project)",
    "image": "mean of the issue's per-image score over every measured image (flagged or not), as written by "
             "`curate audit quality`; from runs older than the report, 1 - sum(1 - score of flagged images) / "
             "images measured",
}


@dataclass
class HealthScore:
    """One issue type's dataset-level score: ``score`` in [0, 1] (1 = healthy) or ``None`` when not computed."""

    issue: str
    score: float | None
    flagged: int
    scored: int
    definition: str


@dataclass
class ReportData:
    """Everything the report shows, read from the catalog by :func:`collect`."""

    project: str
    generated_at: datetime
    counts: dict[str, int]
    health: list[HealthScore]
    classes: pd.DataFrame
    label_summary: dict | None
    joint: dict | None
    label_top: pd.DataFrame
    label_hist: pd.DataFrame
    label_boundary: float | None
    dup_sets: pd.DataFrame
    dup_members: pd.DataFrame
    dup_summary: dict | None
    outlier_top: pd.DataFrame
    outlier_hist: pd.DataFrame
    outlier_cutoff: float | None
    image_worst: pd.DataFrame
    map_total: int
    map_points: pd.DataFrame
    semdedup: dict | None
    live_decisions: dict[str, int]
    decision_records: int
    recent_decisions: pd.DataFrame
    runs: pd.DataFrame
    thumbs: dict[int, str] = field(default_factory=dict)  # sample id -> data: URI


@dataclass
class ReportFiles:
    html: Path
    markdown: Path


# ------------------------------------------------------------------------------------------- pure parts
def health_scores(agg: dict[str, Any], image_mean_scores: dict[str, float] | None = None) -> list[HealthScore]:
    """Dataset health per issue type from :meth:`Catalog.analysis_aggregates` (and the image-quality run's means).

    Parameters
    ----------
    agg : the aggregates (counts and mean scores of the analysis tables).
    image_mean_scores : ``{issue: mean per-image score}`` from the last image-quality run summary, if recorded.

    Returns
    -------
    list of :class:`HealthScore`: ``label``, ``outlier``, ``duplicate``, then ``image: <issue>`` per issue type.

    Examples
    --------
    >>> agg = {"samples": 10, "label_issues": (8, 0.75, 2), "outliers": (0, None, 0), "duplicates": (3, 1, 2),
    ...        "image_issues": {"dark": (1, 0.9)}, "images_measured": 10}
    >>> [(h.issue, h.score) for h in health_scores(agg)]
    [('label', 0.75), ('outlier', None), ('duplicate', 0.8), ('image: dark', 0.91)]
    """
    n = int(agg["samples"])
    out = []
    scored, mean, flagged = agg["label_issues"]
    out.append(HealthScore("label", _unit(mean) if scored else None, int(flagged), int(scored),
                           HEALTH_DEFINITIONS["label"]))
    scored, mean, flagged = agg["outliers"]
    out.append(HealthScore("outlier", _unit(mean) if scored else None, int(flagged), int(scored),
                           HEALTH_DEFINITIONS["outlier"]))
    in_sets, _, extra = agg["duplicates"]
    dup_ran = agg.get("duplicates_ran", in_sets > 0)
    out.append(HealthScore("duplicate", round(1.0 - extra / n, 6) if n and dup_ran else None, int(extra), n,
                           HEALTH_DEFINITIONS["duplicate"]))
    measured = int(agg["images_measured"]) or n
    flagged_issues = agg["image_issues"]
    issues = sorted(set(image_mean_scores or {}) | set(flagged_issues))
    for issue in issues:
        k, deficit = flagged_issues.get(issue, (0, 0.0))
        if image_mean_scores and issue in image_mean_scores:
            score = _unit(image_mean_scores[issue])
        else:
            score = round(1.0 - deficit / measured, 6) if measured else None
        out.append(HealthScore(f"image: {issue}", score, int(k), measured, HEALTH_DEFINITIONS["image"]))
    return out


def _unit(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(float(min(max(v, 0.0), 1.0)), 6)


def noise_matrix(joint: np.ndarray) -> np.ndarray:
    """cleanlab's noise matrix ``P(given = i | true = j)`` from the estimated joint ``P(given, true)``.

    Each column (true class) is normalised to sum to 1; an empty column stays 0.

    >>> noise_matrix(np.array([[0.4, 0.1], [0.0, 0.5]])).round(3).tolist()
    [[1.0, 0.167], [0.0, 0.833]]
    """
    J = np.asarray(joint, dtype=np.float64)
    col = J.sum(axis=0, keepdims=True)
    return np.divide(J, col, out=np.zeros_like(J), where=col > 0)


def keep_fraction_table(semdedup: dict | None) -> pd.DataFrame:
    """The SemDeDup curve of a duplicates run summary as a frame: threshold, n_removed, keep_fraction."""
    if not semdedup or not semdedup.get("curve"):
        return pd.DataFrame(columns=["threshold", "n_removed", "keep_fraction"])
    return pd.DataFrame(semdedup["curve"])[["threshold", "n_removed", "keep_fraction"]]


# ------------------------------------------------------------------------------------------- reads
def collect(cat: Catalog, top: int = DEFAULT_TOP) -> ReportData:
    """Read everything the report shows from the catalog (no analysis is recomputed)."""
    from curate.engine.analyses import duplicates, image_quality, label_issues, outliers

    if top < 1:
        raise CurateError(f"--top must be at least 1, got {top}")
    agg = cat.analysis_aggregates()
    runs = {k: cat.last_run(k) for k in ("label_issues", "duplicates", "outliers", "image_quality")}
    image_means = (runs["image_quality"] or {}).get("summary", {}) or {}
    agg["duplicates_ran"] = runs["duplicates"] is not None
    label_summary = (runs["label_issues"] or {}).get("summary")
    dup_summary = (runs["duplicates"] or {}).get("summary")
    out_summary = (runs["outliers"] or {}).get("summary") or {}

    dup_sets = duplicates.largest_sets(cat, limit=top)
    live = cat.live_decisions()
    counts = cat.counts()
    total, pts = cat.map_points(MAP_POINTS)
    data = ReportData(
        project=str(cat.root),
        generated_at=utcnow(),
        counts=counts,
        health=health_scores(agg, image_means.get("mean_scores")),
        classes=cat.label_distribution(),
        label_summary=label_summary,
        joint=(label_summary or {}).get("joint"),
        label_top=label_issues.top_issues(cat, limit=top),
        label_hist=cat.score_histogram("label_quality"),
        label_boundary=cat.flag_boundary("label_quality"),
        dup_sets=dup_sets,
        dup_members=duplicates.set_members(cat, dup_sets["set_id"].tolist()),
        dup_summary=dup_summary,
        outlier_top=outliers.top_outliers(cat, limit=top),
        outlier_hist=cat.score_histogram("outlier_score"),
        outlier_cutoff=out_summary.get("score_cutoff"),
        image_worst=image_quality.worst_examples(cat, per_issue=max(1, top // 3)),
        map_total=total,
        map_points=pts,
        semdedup=(dup_summary or {}).get("semdedup"),
        live_decisions={str(a): int(n) for a, n in live["action"].value_counts().items()} if len(live) else {},
        decision_records=int(counts["decisions"]),
        recent_decisions=cat.decisions(limit=20),
        runs=cat.runs(limit=20),
    )
    data.thumbs = _thumbnails(cat, [data.label_top, data.dup_members, data.outlier_top, data.image_worst])
    return data


def _thumbnails(cat: Catalog, frames: list[pd.DataFrame]) -> dict[int, str]:
    """``data:`` URIs of the cached thumbnails of every sample in ``frames`` (a placeholder for unreadable files)."""
    items: dict[int, str] = {}
    for df in frames:
        for sid, path in zip(df.get("sample_id", []), df.get("path", [])):
            items.setdefault(int(sid), path)
    out = {}
    for sid, path in items.items():
        thumb = None
        if isinstance(path, str):
            thumb = thumbnails.thumbnail(cat.project.thumbnails_dir, sid, thumbnails.resolve_source(cat.root, path))
        raw = thumb.read_bytes() if thumb is not None else thumbnails.placeholder()
        out[sid] = "data:image/jpeg;base64," + base64.b64encode(raw).decode("ascii")
    return out


# ------------------------------------------------------------------------------------------- figures
def _fig_html(fig, div_id: str) -> str:
    import plotly.io as pio

    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), template="plotly_white")
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def health_figure(health: list[HealthScore]):
    import plotly.graph_objects as go

    rows = [h for h in health if h.score is not None]
    fig = go.Figure(go.Bar(x=[h.score for h in rows], y=[h.issue for h in rows], orientation="h",
                           marker_color="#1565c0",
                           text=[f"{h.score:.3f}" for h in rows], textposition="auto"))
    fig.update_layout(title="Health per issue type (1 = healthy)", xaxis=dict(range=[0, 1]), height=120 + 30 * len(rows),
                      yaxis=dict(autorange="reversed"))
    return fig


def histogram_figure(hist: pd.DataFrame, title: str, xlabel: str, threshold: float | None, threshold_label: str):
    """A stacked histogram (flagged / not flagged) of a per-sample score with the flag threshold as a line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for flagged, name, colour in ((False, "not flagged", "#90a4ae"), (True, "flagged", "#c62828")):
        h = hist[hist["flagged"] == flagged]
        fig.add_trace(go.Bar(x=(h["bin_start"] + h["bin_end"]) / 2, y=h["samples"], width=(h["bin_end"] - h["bin_start"]),
                             name=name, marker_color=colour))
    fig.update_layout(barmode="stack", title=title, xaxis=dict(title=xlabel, range=[0, 1]),
                      yaxis=dict(title="samples"), height=320, bargap=0.05)
    if threshold is not None:
        fig.add_vline(x=float(threshold), line_dash="dash", line_color="#212121",
                      annotation_text=f"{threshold_label} {threshold:.3f}", annotation_position="top")
    return fig


def noise_matrix_figure(joint: dict):
    """Heatmap of cleanlab's noise matrix P(given | true) from a run summary's ``joint`` record."""
    import plotly.graph_objects as go

    classes = [str(c) for c in joint["classes"]]
    M = noise_matrix(np.asarray(joint["matrix"], dtype=np.float64))
    fig = go.Figure(go.Heatmap(z=M, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                               text=np.round(M, 2), texttemplate="%{text}" if len(classes) <= 20 else None,
                               hovertemplate="given %{y}, true %{x}: %{z:.3f}<extra></extra>",
                               colorbar=dict(title="P(given | true)")))
    side = min(900, 260 + 28 * len(classes))
    fig.update_layout(title="Estimated noise matrix P(given label | true label)", height=side,
                      xaxis=dict(title="true label", type="category"),
                      yaxis=dict(title="given label", type="category", autorange="reversed"))
    return fig


def semdedup_figure(curve: pd.DataFrame, n: int | None = None):
    """Keep fraction (and samples pruned) against the SemDeDup similarity threshold."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=curve["threshold"], y=curve["keep_fraction"], mode="lines+markers",
                               customdata=curve["n_removed"], name="keep fraction",
                               hovertemplate="threshold %{x:.2f}: keep %{y:.1%} (%{customdata} pruned)<extra></extra>"))
    fig.update_layout(title="SemDeDup: fraction kept at each similarity threshold" + (f" ({n:,} samples)" if n else ""),
                      xaxis=dict(title="similarity threshold (pruned when >= threshold)"),
                      yaxis=dict(title="keep fraction", tickformat=".0%"), height=340)
    return fig


def class_balance_figure(classes: pd.DataFrame, max_classes: int = 60):
    import plotly.graph_objects as go

    c = classes.head(max_classes)
    fig = go.Figure([go.Bar(x=c["label"].astype(str), y=c["given"], name="given"),
                     go.Bar(x=c["label"].astype(str), y=c["current"], name="after relabel decisions")])
    fig.update_layout(barmode="group", title="Samples per class" + (f" (largest {max_classes})" if len(classes) > max_classes else ""),
                      xaxis=dict(type="category"), yaxis=dict(title="samples"), height=340)
    return fig


ISSUE_COLOURS = {"label issue": "#c62828", "duplicate": "#6a1b9a", "outlier": "#ef6c00", "image issue": "#1565c0",
                 "none": "#b0bec5"}


def map_figure(points: pd.DataFrame):
    """The 2-D map, one SVG scatter trace per issue kind (``none`` drawn first, underneath)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for issue in ("none", "image issue", "outlier", "duplicate", "label issue"):
        g = points[points["issue"] == issue]
        if g.empty:
            continue
        fig.add_trace(go.Scatter(x=g["x"], y=g["y"], mode="markers", name=issue, customdata=g["sample_id"],
                                 text=g["label"].fillna("(unlabeled)").astype(str),
                                 hovertemplate="#%{customdata} · %{text}<extra>" + issue + "</extra>",
                                 marker=dict(size=5 if len(points) > 2000 else 8, color=ISSUE_COLOURS[issue],
                                             opacity=0.85)))
    fig.update_layout(title="2-D map coloured by issue", height=520, legend_title_text="issue",
                      xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False))
    return fig


# ------------------------------------------------------------------------------------------- rendering
def render_html(data: ReportData) -> str:
    """The self-contained HTML page (plotly.js inlined once, thumbnails as base64)."""
    import jinja2
    import plotly.offline

    env = jinja2.Environment(loader=jinja2.PackageLoader("curate.engine", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    figs: dict[str, str] = {"health": _fig_html(health_figure(data.health), "fig-health")}
    if len(data.classes):
        figs["class-balance"] = _fig_html(class_balance_figure(data.classes), "fig-class-balance")
    if data.joint and data.joint.get("matrix"):
        figs["noise-matrix"] = _fig_html(noise_matrix_figure(data.joint), "fig-noise-matrix")
    if len(data.label_hist):
        figs["label-hist"] = _fig_html(histogram_figure(
            data.label_hist, "Label quality", "label quality (lower = more likely wrong)", data.label_boundary,
            "highest flagged"), "fig-label-hist")
    if len(data.outlier_hist):
        figs["outlier-hist"] = _fig_html(histogram_figure(
            data.outlier_hist, "Outlier score", "outlier score (lower = more atypical)", data.outlier_cutoff,
            "flag cutoff"), "fig-outlier-hist")
    if len(data.map_points):
        figs["map"] = _fig_html(map_figure(data.map_points), "fig-map")
    curve = keep_fraction_table(data.semdedup)
    if len(curve):
        figs["semdedup"] = _fig_html(semdedup_figure(curve, (data.semdedup or {}).get("n")), "fig-semdedup")
    members = {int(s): g.to_dict("records") for s, g in data.dup_members.groupby("set_id", sort=False)}
    template = env.get_template("report.html.j2")
    return template.render(
        d=data, sections=SECTIONS, figs=figs, plotly_js=plotly.offline.get_plotlyjs(), curve=curve.to_dict("records"),
        members=members, definitions=HEALTH_DEFINITIONS, fmt=_fmt, pct=_pct, isnum=_isnum,
        confused=(data.label_summary or {}).get("top_confused_pairs", [])[:10],
        recent=_decision_rows(data.recent_decisions), runs=_run_rows(data.runs),
        image_groups={k: g.to_dict("records") for k, g in data.image_worst.groupby("issue", sort=True)},
    )


def _isnum(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def _pct(v: Any) -> str:
    return "–" if not _isnum(v) else f"{float(v):.1%}"


def _decision_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    for r in df.to_dict("records"):
        status = f"undo of {int(r['undoes'])}" if pd.notna(r.get("undoes")) else ("undone" if r.get("undone") else "live")
        rows.append({"id": int(r["id"]), "sample_id": int(r["sample_id"]), "action": r["action"],
                     "new_label": r.get("new_label") if isinstance(r.get("new_label"), str) else "",
                     "reason": r.get("reason") or "", "who": r.get("who") or "", "status": status,
                     "when": str(r.get("created_at"))[:19]})
    return rows


def _run_rows(df: pd.DataFrame) -> list[dict]:
    return [{"id": int(r["id"]), "kind": r["kind"], "status": r["status"], "started": str(r["started_at"])[:19],
             "seconds": _fmt(r["seconds"], 2)} for r in df.to_dict("records")]


def render_markdown(data: ReportData, html_name: str | None = None) -> str:
    """A short Markdown summary (health, counts, classes, noise, duplicates, SemDeDup, decisions) for a ticket."""
    lines = [f"# Curate report: {Path(data.project).name}", "",
             f"Project `{data.project}`, generated {data.generated_at:%Y-%m-%d %H:%M} UTC."
             + (f" Full report with plots and thumbnails: `{html_name}`." if html_name else ""), "",
             "## Dataset health (1 = healthy)", "", "| issue type | score | flagged | scored |", "|---|---|---|---|"]
    for h in data.health:
        lines.append(f"| {_md(h.issue)} | {_fmt(h.score) if h.score is not None else 'not run'} | {h.flagged:,} | "
                     f"{h.scored:,} |")
    lines += ["", "## Counts", "", "| | |", "|---|---|"] + [f"| {k} | {v:,} |" for k, v in data.counts.items()]
    if len(data.classes):
        lines += ["", "## Class balance", "", "| class | given | after relabels |", "|---|---|---|"]
        lines += [f"| {_md(r['label'])} | {int(r['given']):,} | {int(r['current']):,} |"
                  for r in data.classes.head(50).to_dict("records")]
        if len(data.classes) > 50:
            lines.append(f"| … {len(data.classes) - 50} more classes | | |")
    if data.label_summary:
        s = data.label_summary
        lines += ["", "## Label issues", "",
                  f"{s.get('n_issues', 0):,} of {s.get('n_labeled', 0):,} labeled samples flagged; estimated label "
                  f"noise {_pct(s.get('estimated_noise_rate'))}."]
        pairs = s.get("top_confused_pairs", [])[:5]
        if pairs:
            lines.append("Most confused (given → true): " + ", ".join(
                f"{_md(p['given'])} → {_md(p['true'])} (~{p['estimated_count']})" for p in pairs) + ".")
    if data.dup_summary:
        s = data.dup_summary
        lines += ["", "## Duplicates", "",
                  f"{s.get('sets', 0):,} duplicate sets ({s.get('exact_sets', 0):,} exact, {s.get('near_sets', 0):,} "
                  f"near) holding {s.get('samples_in_sets', 0):,} samples; keeping one per set removes "
                  f"{s.get('would_remove', 0):,}. Train/test leakage: {s.get('leakage_pairs', 0):,} cross-split pairs."]
    curve = keep_fraction_table(data.semdedup)
    if len(curve):
        lines += ["", "## SemDeDup keep-fraction curve", "", "| threshold | pruned | keep fraction |", "|---|---|---|"]
        lines += [f"| {r['threshold']:.2f} | {int(r['n_removed']):,} | {r['keep_fraction']:.1%} |"
                  for r in curve.to_dict("records")]
    lines += ["", "## Decisions so far", ""]
    if data.live_decisions:
        lines.append("Live decisions: " + ", ".join(f"{a} {n:,}" for a, n in sorted(data.live_decisions.items()))
                     + f" ({data.decision_records:,} records including undos).")
    else:
        lines.append("No review decisions yet.")
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in HEALTH_DEFINITIONS.items()]
    return "\n".join(lines) + "\n"


def _md(v: Any) -> str:
    return html.escape(str(v)).replace("|", "\\|")


def write_report(cat: Catalog, out: str | Path | None = None, top: int = DEFAULT_TOP) -> ReportFiles:
    """Write ``out`` (default ``<project>/exports/report.html``) and the Markdown summary next to it (``.md``).

    Parameters
    ----------
    cat : the project's catalog.
    out : path of the HTML file; its folder is created.
    top : thumbnails per gallery (label issues, duplicate sets, outliers; image issues get ``top // 3`` each).

    Returns
    -------
    ReportFiles : the two paths written.
    """
    out = Path(out) if out is not None else cat.project.exports_dir / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise CurateError(f"--out must name an .html file, got {out}")
    if out.exists() and out.is_dir():
        raise CurateError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    data = collect(cat, top=top)
    out.parent.mkdir(parents=True, exist_ok=True)
    md_path = out.with_suffix(".md")
    _atomic_write(out, render_html(data))
    _atomic_write(md_path, render_markdown(data, out.name))
    return ReportFiles(out.resolve(), md_path.resolve())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

"""Printed summaries: `curate status` and the demo's scored audit table."""

from __future__ import annotations

import json
import math

from rich.console import Console
from rich.table import Table

from curate.engine.catalog import Catalog

ANALYSIS_KINDS = ("embed", "label_issues", "duplicates", "outliers", "image_quality", "clusters", "query")


def print_status(cat: Catalog, console: Console | None = None) -> dict:
    console = console or Console()
    counts = cat.counts()
    console.print(f"[bold]project[/] {cat.root}  (schema v{cat.schema_version()})")
    t = Table(show_header=False)
    for k, v in counts.items():
        t.add_row(k, str(v))
    console.print(t)
    splits = cat.query("SELECT coalesce(split, '-'), count(*) FROM samples GROUP BY 1 ORDER BY 1")
    if splits:
        console.print("splits: " + ", ".join(f"{s}={n}" for s, n in splits))
    classes = cat.query(
        "SELECT label, count(*) FROM current_labels WHERE label IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 15"
    )
    if classes:
        console.print("classes: " + ", ".join(f"{c}={n}" for c, n in classes))
    encs = cat.query("SELECT encoder, dim, (SELECT count(*) FROM embedded e WHERE e.encoder = s.encoder) FROM embedding_sets s")
    for enc, dim, n in encs:
        console.print(f"embeddings: {enc} ({dim}-d): {n} vectors")
    runs = cat.query(
        """SELECT kind, max(id), arg_max(status, id), arg_max(finished_at, id), arg_max(seconds, id)
           FROM runs GROUP BY kind ORDER BY max(id)"""
    )
    rt = Table(title="last runs")
    for c in ("analysis", "run", "status", "finished", "seconds"):
        rt.add_column(c)
    for kind, rid, st, fin, sec in runs:
        rt.add_row(kind, str(rid), st, str(fin)[:19], f"{sec:.2f}" if sec is not None else "-")
    console.print(rt)
    q = cat.query("SELECT path, reason FROM quarantine ORDER BY path LIMIT 10")
    for p, r in q:
        console.print(f"  quarantined {p}: {r}")
    return counts


def print_scores(cat: Catalog, scores: dict[str, dict], timings: dict[str, dict] | None = None,
                 console: Console | None = None) -> None:
    console = console or Console()
    counts = cat.counts()
    console.print(
        f"[bold]summary[/]: {counts['samples']} samples, {counts['labeled']} labeled, {counts['classes']} classes, "
        f"{counts['quarantined']} quarantined"
    )
    t = Table(title="audit vs planted ground truth")
    for c in ("check", "flagged", "planted", "precision", "recall", "F1", "extra"):
        t.add_column(c)
    for name, s in scores.items():
        if "precision" in s:
            extra = {k: v for k, v in s.items() if k not in ("flagged", "planted", "tp", "precision", "recall", "f1")}
            t.add_row(name, str(s["flagged"]), str(s["planted"]), f"{s['precision']:.3f}", f"{s['recall']:.3f}",
                      f"{s['f1']:.3f}", _fmt_extra(extra))
        else:
            t.add_row(name, "", "", "", "", "", _fmt_extra(s))
    console.print(t)
    if timings:
        tt = Table(title="audit steps")
        for c in ("step", "status", "seconds"):
            tt.add_column(c)
        for k, v in timings.items():
            tt.add_row(k, v["status"] + (f" ({v['error']})" if v.get("error") else ""), f"{v['seconds']:.1f}")
        console.print(tt)


def _fmt_extra(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if isinstance(v, float):
            parts.append(f"{k}={'nan' if math.isnan(v) else f'{v:.3f}'}")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)

"""The full audit: embed -> kNN graph -> every analysis, each step timed and recorded in the catalog.

Each step reports its progress through ``ctx["progress"]`` (an :data:`engine.progress.Progress` callback that
:func:`run_audit` sets per step; a no-op when progress is not shown).
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from curate.engine.catalog import Catalog, CurateError
from curate.engine.progress import shown, step


def audit_steps(encoder: str = "auto", k: int = 10, cluster_k: int | None = None,
                out_of_core: bool | None = None) -> list[tuple[str, Callable[[Catalog, dict], object]]]:
    """The ordered steps of a full audit; each takes (catalog, context) and may put things into context.

    ``k`` is the kNN-graph degree; ``cluster_k`` the number of k-means clusters (None: chosen by the silhouette sweep);
    ``out_of_core`` True/False forces the shard-by-shard or the in-memory analyses, None decides after the embed
    step from the number of vectors (:func:`engine.shards.use_out_of_core`).
    """

    def embed(cat: Catalog, ctx: dict):
        from curate.engine.embed import embed_project

        from curate.engine.shards import use_out_of_core

        # on a terminal embed_project draws its own bar (images/s); the step line is for logs (CURATE_PROGRESS=1)
        with step(None if sys.stderr.isatty() else ctx.get("progress"), "embeddings"):
            ctx["encoder"] = embed_project(cat, encoder=encoder, progress=ctx.get("show_progress", True))
        ctx["ooc"] = use_out_of_core(cat, ctx["encoder"], out_of_core)

    def graph(cat: Catalog, ctx: dict):
        from curate.indexes.graph import load_or_build_graph, load_or_build_sharded_graph

        if ctx.get("ooc"):
            with step(ctx.get("progress"), "sharded kNN graph"):
                load_or_build_sharded_graph(cat, encoder=ctx.get("encoder"), k=k)
        else:
            with step(ctx.get("progress"), "load or build"):
                load_or_build_graph(cat, encoder=ctx.get("encoder"), k=k, progress=ctx.get("progress"))

    def label_issues(cat: Catalog, ctx: dict):
        from curate.engine.analyses import label_issues as m

        m.run(cat, encoder=ctx.get("encoder"), k=k, out_of_core=ctx.get("ooc"), progress=ctx.get("progress"))

    def duplicates(cat: Catalog, ctx: dict):
        from curate.engine.analyses import duplicates as m

        m.run(cat, encoder=ctx.get("encoder"), k=k, out_of_core=ctx.get("ooc"), progress=ctx.get("progress"))

    def outliers(cat: Catalog, ctx: dict):
        from curate.engine.analyses import outliers as m

        m.run(cat, encoder=ctx.get("encoder"), k=k, out_of_core=ctx.get("ooc"), progress=ctx.get("progress"))

    def image_quality(cat: Catalog, ctx: dict):
        from curate.engine.analyses import image_quality as m

        m.run(cat, progress=ctx.get("progress"))

    def clusters(cat: Catalog, ctx: dict):
        from curate.engine.analyses import clusters as m

        m.run(cat, encoder=ctx.get("encoder"), k=cluster_k, out_of_core=ctx.get("ooc"), progress=ctx.get("progress"))

    def query(cat: Catalog, ctx: dict):
        from curate.engine.analyses import active as m

        m.run(cat, encoder=ctx.get("encoder"), out_of_core=ctx.get("ooc"), progress=ctx.get("progress"))

    return [
        ("embed", embed),
        ("knn graph", graph),
        ("label issues", label_issues),
        ("duplicates", duplicates),
        ("outliers", outliers),
        ("image quality", image_quality),
        ("clusters", clusters),
        ("active-learning query", query),
    ]


def run_audit(cat: Catalog, encoder: str = "auto", k: int = 10, console=None, strict: bool = False,
              cluster_k: int | None = None, out_of_core: bool | None = None,
              progress: bool | None = None) -> dict[str, dict]:
    """Run every audit step; returns {step: {"seconds": s, "status": "ok"|"failed", "error": msg}}.

    ``progress`` shows each step's progress (None: on a terminal, see :func:`engine.progress.enabled`); with a
    ``console`` a table of the steps' times and statuses is printed at the end.

    A failing step is reported in one line and the audit goes on with the steps that do not need it
    (``strict=True`` re-raises instead).  Steps after a failed ``embed`` or ``knn graph`` are skipped.
    """
    from curate.engine.progress import enabled

    show = enabled() if progress is None else progress
    ctx: dict = {"show_progress": show}
    timings: dict[str, dict] = {}
    blocked = False
    for name, fn in audit_steps(encoder=encoder, k=k, cluster_k=cluster_k, out_of_core=out_of_core):
        if blocked and name != "image quality":
            timings[name] = {"seconds": 0.0, "status": "skipped", "error": "needs embeddings"}
            continue
        t0 = time.perf_counter()
        if console is not None:
            console.print(f"[cyan]audit[/] {name} ...")
        try:
            with shown(name, show) as ctx["progress"]:
                fn(cat, ctx)
            timings[name] = {"seconds": time.perf_counter() - t0, "status": "ok"}
        except Exception as exc:  # reported, not fatal: the other analyses still run
            if strict:
                raise
            msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            timings[name] = {"seconds": time.perf_counter() - t0, "status": "failed", "error": msg}
            if console is not None:
                console.print(f"[red]audit step {name} failed:[/] {msg}")
            if name in ("embed", "knn graph"):
                blocked = True
    if console is not None:
        print_timings(timings, console)
    return timings


def print_timings(timings: dict[str, dict], console) -> None:
    """The per-step table: step, seconds, status (and the one-line error of a failed step)."""
    from rich.table import Table

    table = Table(title="audit steps")
    for col, justify in (("step", "left"), ("seconds", "right"), ("status", "left")):
        table.add_column(col, justify=justify)
    for name, t in timings.items():
        status = t["status"] + (f": {t['error']}" if t.get("error") and t["status"] == "failed" else "")
        table.add_row(name, f"{t['seconds']:.1f}", status)
    table.add_row("total", f"{sum(t['seconds'] for t in timings.values()):.1f}", "")
    console.print(table)

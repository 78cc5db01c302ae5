"""The full audit: embed -> kNN graph -> every registered analysis, each step timed and recorded in the catalog.

The analyses come from the registry (:mod:`curate.engine.analyses.registry`), in their registered order, and run
on one shared :class:`curate.engine.inputs.Inputs` (the encoder and the memory/disk switch are decided once, after
the embed step; the embeddings and the graph are loaded once).  Each step reports its progress through a
:data:`curate.engine.progress.Progress` callback (a no-op when progress is not shown).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from curate.engine.catalog import Catalog
from curate.engine.progress import shown, step


def audit_steps(encoder: str = "auto", k: int = 10, cluster_k: int | None = None,
                out_of_core: bool | None = None, only: list[str] | None = None,
                options: dict[str, dict] | None = None,
                results: dict | None = None) -> list[tuple[str, Callable[[Catalog, dict], object]]]:
    """The ordered steps of an audit; each takes (catalog, context) and may put things into context.

    ``k`` is the kNN-graph degree; ``cluster_k`` the number of clusters (None: the clusters analysis chooses);
    ``out_of_core`` True/False forces the shard-by-shard or the in-memory analyses, None decides after the embed
    step from the number of vectors.  ``only``: the analyses to run (default: every registered one);
    ``options``: per-analysis options (``{"clusters": {"k": 20}}``); ``results``: a dict that receives each
    analysis's :class:`~curate.engine.analyses.registry.Result`.
    """
    from curate.engine.analyses import registry

    options = {registry.get(n).name: dict(v) for n, v in (options or {}).items()}
    if cluster_k is not None:
        options.setdefault("clusters", {}).setdefault("k", cluster_k)
    chosen = registry.analyses() if only is None else [registry.get(n) for n in only]

    def embed(cat: Catalog, ctx: dict):
        from curate.engine.embed import embed_project
        from curate.engine.inputs import Inputs

        # on a terminal embed_project draws its own bar (images/s); the step line is for logs (CURATE_PROGRESS=1)
        with step(None if sys.stderr.isatty() else ctx.get("progress"), "embeddings"):
            name = embed_project(cat, encoder=encoder, progress=ctx.get("show_progress", True))
        ctx["inputs"] = Inputs.open(cat, encoder=name, out_of_core=out_of_core, k=k)

    def graph(cat: Catalog, ctx: dict):
        ctx["inputs"].with_progress(ctx.get("progress")).graph(k)

    def analysis_step(a: Any) -> Callable[[Catalog, dict], object]:
        def run_step(cat: Catalog, ctx: dict):
            from curate.engine.inputs import Inputs

            inputs = ctx.get("inputs") or Inputs.open(cat, k=k)  # no embeddings: file-only analyses still run
            res = registry.run(cat, a, inputs=inputs, progress=ctx.get("progress"), **options.get(a.name, {}))
            if results is not None:
                results[a.name] = res
        return run_step

    steps: list[tuple[str, Callable[[Catalog, dict], object]]] = [("embed", embed)]
    if any(a.needs_embeddings for a in chosen):
        steps.append(("knn graph", graph))
    return steps + [(a.label, analysis_step(a)) for a in chosen]


def run_audit(cat: Catalog, encoder: str = "auto", k: int = 10, console=None, strict: bool = False,
              cluster_k: int | None = None, out_of_core: bool | None = None,
              progress: bool | None = None, only: list[str] | None = None, options: dict[str, dict] | None = None,
              results: dict | None = None) -> dict[str, dict]:
    """Run every audit step; returns {step: {"seconds": s, "status": "ok"|"failed"|"skipped", "error": msg}}.

    ``progress`` shows each step's progress (None: on a terminal, see :func:`curate.engine.progress.enabled`); with
    a ``console`` a table of the steps' times and statuses is printed at the end.  ``only``, ``options``,
    ``results``: see :func:`audit_steps`.

    A failing step is reported in one line and the audit goes on with the steps that do not need it
    (``strict=True`` re-raises instead).  After a failed ``embed`` or ``knn graph`` only the analyses that need no
    embeddings run.
    """
    from curate.engine.analyses import registry
    from curate.engine.progress import enabled

    show = enabled() if progress is None else progress
    ctx: dict = {"show_progress": show}
    timings: dict[str, dict] = {}
    blocked = False
    needs_vectors = {a.label: a.needs_embeddings for a in registry.analyses()}
    for name, fn in audit_steps(encoder=encoder, k=k, cluster_k=cluster_k, out_of_core=out_of_core, only=only,
                                options=options, results=results):
        if blocked and needs_vectors.get(name, True):
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

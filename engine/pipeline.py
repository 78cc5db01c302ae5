"""The full audit: embed -> kNN graph -> every analysis, each step timed and recorded in the catalog."""

from __future__ import annotations

import time
from typing import Callable

from engine.catalog import Catalog, CurateError


def audit_steps(encoder: str = "auto", k: int = 10, cluster_k: int | None = None,
                out_of_core: bool | None = None) -> list[tuple[str, Callable[[Catalog, dict], object]]]:
    """The ordered steps of a full audit; each takes (catalog, context) and may put things into context.

    ``k`` is the kNN-graph degree; ``cluster_k`` the number of k-means clusters (None: chosen by the silhouette sweep);
    ``out_of_core`` True/False forces the shard-by-shard or the in-memory analyses, None decides after the embed
    step from the number of vectors (:func:`engine.shards.use_out_of_core`).
    """

    def embed(cat: Catalog, ctx: dict):
        from engine.embed import embed_project

        from engine.shards import use_out_of_core

        ctx["encoder"] = embed_project(cat, encoder=encoder, progress=True)
        ctx["ooc"] = use_out_of_core(cat, ctx["encoder"], out_of_core)

    def graph(cat: Catalog, ctx: dict):
        from indexes.graph import load_or_build_graph, load_or_build_sharded_graph

        if ctx.get("ooc"):
            load_or_build_sharded_graph(cat, encoder=ctx.get("encoder"), k=k)
        else:
            load_or_build_graph(cat, encoder=ctx.get("encoder"), k=k)

    def label_issues(cat: Catalog, ctx: dict):
        from engine.analyses import label_issues as m

        m.run(cat, encoder=ctx.get("encoder"), k=k, out_of_core=ctx.get("ooc"))

    def duplicates(cat: Catalog, ctx: dict):
        from engine.analyses import duplicates as m

        m.run(cat, encoder=ctx.get("encoder"), k=k, out_of_core=ctx.get("ooc"))

    def outliers(cat: Catalog, ctx: dict):
        from engine.analyses import outliers as m

        m.run(cat, encoder=ctx.get("encoder"), k=k, out_of_core=ctx.get("ooc"))

    def image_quality(cat: Catalog, ctx: dict):
        from engine.analyses import image_quality as m

        m.run(cat)

    def clusters(cat: Catalog, ctx: dict):
        from engine.analyses import clusters as m

        m.run(cat, encoder=ctx.get("encoder"), k=cluster_k, out_of_core=ctx.get("ooc"))

    def query(cat: Catalog, ctx: dict):
        from engine.analyses import active as m

        m.run(cat, encoder=ctx.get("encoder"), out_of_core=ctx.get("ooc"))

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
              cluster_k: int | None = None, out_of_core: bool | None = None) -> dict[str, dict]:
    """Run every audit step; returns {step: {"seconds": s, "status": "ok"|"failed", "error": msg}}.

    A failing step is reported in one line and the audit goes on with the steps that do not need it
    (``strict=True`` re-raises instead).  Steps after a failed ``embed`` or ``knn graph`` are skipped.
    """
    ctx: dict = {}
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
        console.print("audit done: " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in timings.items()))
    return timings

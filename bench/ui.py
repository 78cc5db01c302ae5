"""Review-app speed on a large synthetic catalog: every page's data queries and a full AppTest render.

A synthetic project is written straight into DuckDB with bulk ``INSERT ... SELECT FROM range()`` (no image
files: pages must show placeholders for missing files, and the thumbnail lookup for them is timed too):
samples with splits, labels over 100 classes, label_issues for every sample (5 % flagged), duplicate sets
(~2 % of samples), outliers (2 % flagged), image_issues (1 %), a 2-D map with 50 clusters, an annotation
queue of 1,000 and 2,000 decisions (some undone).

Measured in the same run, per page:

* ``query_ms`` — the page's :mod:`app.data` reads, cold (cache cleared), i.e. what one rerun after a decision
  costs;
* ``render_cold_ms`` / ``render_warm_ms`` — a full ``streamlit.testing`` AppTest run of the page in a fresh
  session (cold caches) and its rerun (warm caches);
* baseline — the naive way a page could be written: load the whole table into pandas (``SELECT *`` joined
  with samples) and filter / sort / slice in Python; for the map, every point through ``plotly.express``.

Usage::

    python bench/ui.py            # 1M samples (~2-4 min to build on 2 cores, reused afterwards)
    python bench/ui.py --quick    # 100k samples

Writes bench/results/ui.json (``--quick``: ui_quick.json) and prints a table.  The catalog is kept in
``$TMPDIR/curate-bench-ui-<n>`` and reused (``--rebuild`` forces a new one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from curate.engine.catalog import Catalog, init_project, open_project  # noqa: E402

N_CLASSES = 100
N_CLUSTERS = 50
PAGES = ["overview", "label_issues", "duplicates", "outliers", "clusters", "annotate", "search", "decisions", "export"]


# ------------------------------------------------------------------------------------------- synthetic catalog
def build_catalog(root: Path, n: int) -> Catalog:
    """Write the synthetic project (all in SQL, one transaction per table group)."""
    cat = init_project(root)
    t0 = time.perf_counter()
    with cat.transaction() as con:
        con.execute(f"""
            INSERT INTO samples SELECT range AS id, md5(range::VARCHAR) AS content_hash,
                   '/nonexistent/curate-bench/img_' || range || '.png' AS path, 64, 64, 'PNG', 'RGB', 4000,
                   CASE WHEN range % 10 < 8 THEN 'train' WHEN range % 10 = 8 THEN 'val' ELSE 'test' END,
                   'bench', 1, now()::TIMESTAMP
            FROM range(1, {n} + 1)""")
        con.execute(f"""
            INSERT INTO classes SELECT 'class_' || lpad(range::VARCHAR, 3, '0'), now()::TIMESTAMP FROM range({N_CLASSES})""")
        con.execute(f"""
            INSERT INTO labels SELECT range, range, 'class_' || lpad((hash(range) % {N_CLASSES})::VARCHAR, 3, '0'),
                   'ingest', now()::TIMESTAMP
            FROM range(1, {n} + 1) WHERE range % 20 <> 0""")  # 5 % unlabeled
    with cat.transaction() as con:
        # run ids 1..7 from the sequence, in this order (the analysis rows below refer to them)
        for kind in ["ingest", "label_issues", "duplicates", "outliers", "image_quality", "clusters", "query"]:
            con.execute("INSERT INTO runs VALUES (nextval('seq_run'), ?, '{}', 'bench', 'ok', now()::TIMESTAMP, "
                        "now()::TIMESTAMP, 1.0, '{}')", [kind])
        con.execute(f"""
            INSERT INTO label_issues
            SELECT 2, l.sample_id, l.class_name,
                   CASE WHEN hash(l.sample_id, 1) % 100 < 5
                        THEN 'class_' || lpad(((hash(l.sample_id, 2) % {N_CLASSES}))::VARCHAR, 3, '0') ELSE l.class_name END,
                   0.5 + (hash(l.sample_id, 3) % 1000) / 2000.0,
                   CASE WHEN hash(l.sample_id, 1) % 100 < 5 THEN (hash(l.sample_id, 4) % 1000) / 4000.0
                        ELSE 0.3 + (hash(l.sample_id, 4) % 1000) / 1500.0 END AS q,
                   hash(l.sample_id, 1) % 100 < 5, NULL
            FROM labels l""")
        # duplicate sets of 2-4 consecutive samples, every 100th sample starts one (~2.5 % of samples)
        con.execute(f"""
            INSERT INTO duplicates
            SELECT 3, s.range AS set_id, s.range + m.range AS sample_id,
                   CASE WHEN s.range % 300 = 0 THEN 'exact' ELSE 'near' END,
                   CASE WHEN m.range = 0 THEN 1.0 ELSE 0.93 + (hash(s.range, m.range) % 70) / 1000.0 END,
                   m.range = 0, s.range % 7 = 0
            FROM range(1, {n} - 4, 100) s, range(0, 4) m WHERE m.range < 2 + s.range % 3""")
        con.execute(f"""
            INSERT INTO outliers SELECT 4, range, (hash(range, 5) % 10000) / 10000.0,
                   (hash(range, 5) % 10000) < 200, NULL FROM range(1, {n} + 1)""")
        con.execute(f"""
            INSERT INTO image_issues SELECT 5, range,
                   ['dark', 'bright', 'blurry', 'low_information', 'odd_size'][(1 + hash(range, 6) % 5)::BIGINT],
                   (hash(range, 7) % 1000) / 1000.0
            FROM range(1, {n} + 1) WHERE hash(range, 8) % 100 = 0""")
    with cat.transaction() as con:
        # a 2-D map: 50 gaussian-ish blobs (sum of uniforms) around points on a circle
        con.execute(f"""
            INSERT INTO clusters
            SELECT 6, range, (hash(range, 9) % {N_CLUSTERS})::INTEGER AS c,
                   10 * cos(c * 0.1257) + ((hash(range, 10) % 1000)::DOUBLE + (hash(range, 11) % 1000)::DOUBLE - 1000) / 400.0,
                   10 * sin(c * 0.1257) + ((hash(range, 12) % 1000)::DOUBLE + (hash(range, 13) % 1000)::DOUBLE - 1000) / 400.0,
                   (hash(range, 14) % 1000) / 1000.0
            FROM range(1, {n} + 1)""")
        con.execute(f"""
            INSERT INTO cluster_summaries SELECT 6, range, NULL, 'cluster ' || range,
                   'class_' || lpad(range::VARCHAR, 3, '0'), 0.8, [], [] FROM range({N_CLUSTERS})""")
        con.execute(f"""
            INSERT INTO queries SELECT 7, 1, range * 20, 'margin', 1.0 - range / 1000.0, range, 'low margin'
            FROM range(1, least(1001, {n} // 20))""")  # unlabeled samples (id % 20 == 0)
        con.execute(f"""
            INSERT INTO decisions SELECT nextval('seq_decision'), range * 37 % {n} + 1,
                   ['keep', 'relabel', 'remove', 'merge'][(1 + range % 4)::BIGINT],
                   CASE WHEN range % 4 = 1 THEN 'class_007' END, 'bench', 'bench', now()::TIMESTAMP, NULL
            FROM range(2000)""")
        con.execute("""
            INSERT INTO decisions SELECT nextval('seq_decision'), sample_id, action, NULL, 'undo', 'bench',
                   now()::TIMESTAMP, id FROM decisions WHERE id % 10 = 0""")
    print(f"built {n:,}-sample catalog in {time.perf_counter() - t0:.1f}s at {root}", flush=True)
    return cat


def get_catalog(n: int, rebuild: bool) -> Catalog:
    root = Path(tempfile.gettempdir()) / f"curate-bench-ui-{n}"
    marker = root / "bench-complete"
    if rebuild or not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        cat = build_catalog(root, n)
        marker.write_text(str(n))
        return cat
    return open_project(root)


# ------------------------------------------------------------------------------------------- timings
def timed(fn, repeat: int = 3) -> tuple[float, object]:
    """Best of ``repeat`` wall times in ms (the machine is shared; the minimum is the least noisy)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, (time.perf_counter() - t) * 1000)
    return best, out


def page_queries(root: str) -> dict[str, callable]:
    """The reads each page makes on its first render, as functions of nothing (caches cleared before each call)."""
    from curate.app import data

    rev = data.revision(root)
    cl = data.cluster_table(root, rev)

    from curate.app import components

    cached = [f for f in vars(data).values() if callable(f) and hasattr(f, "clear")] + [components.map_figure]

    def run(*calls):
        def f():
            for fn in cached:  # cold: nothing cached
                fn.clear()
            with data.run_scope(root):  # one connection per page run, as in the app
                for fn, args in calls:
                    fn(root, rev, *args)
        return f

    return {
        "overview": run((data.overview, ())),
        "label_issues": run((data.label_issue_classes, ()), (data.class_names, ()),
                            (data.label_issues_page, (True, (), (), "unreviewed", "", data.PAGE_SIZE, 0))),
        "label_issues (filtered, page 100)": run((data.label_issues_page, (True, ("class_001", "class_002"), (), "all",
                                                                         "img_1", data.PAGE_SIZE, 2376)),),
        "duplicates": run((data.duplicate_sets_page, ((), False, "unreviewed", 8, 0)),),
        "outliers": run((data.class_names, ()), (data.outliers_page, (True, "unreviewed", data.PAGE_SIZE, 0))),
        "image quality": run((data.image_issue_types, ()), (data.image_issues_page, ((), "unreviewed", data.PAGE_SIZE, 0))),
        "clusters": run((data.cluster_table, ()), (components.map_figure, ("label", data.MAP_POINTS))),
        "clusters (cluster picked)": run((data.cluster_page, (int(cl["cluster"].iloc[0]), data.PAGE_SIZE, 0)),),
        "clusters (box selected)": run((data.region_page, (-2.0, 2.0, 5.0, 9.0, None, data.PAGE_SIZE, 0)),),
        "annotate": run((data.queue_status, ()), (data.queue_next, ((),)), (data.class_names, ())),
        "search (path)": run((data.embedding_encoders, ()), (data.find_samples, ("img_12345", data.PAGE_SIZE, 0))),
        "decisions": run((data.live_decision_counts, ()), (data.decisions_page, ((), None, False, 25, 0))),
        "export": run((data.live_decision_counts, ()),),
        "revision token (every rerun)": lambda: data.revision(root),
        "connection open+close": lambda: data.catalog(root).connect(read_only=True).__enter__().close(),
    }


def baselines(cat: Catalog) -> dict[str, callable]:
    """Naive page reads: whole tables into pandas, then filter / sort / slice in Python."""

    def label_issues():
        df = cat.query_df("SELECT li.*, s.path, s.split FROM label_issues li JOIN samples s ON s.id = li.sample_id")
        df = df[df["is_issue"]].sort_values(["label_quality", "sample_id"])
        return len(df), df.iloc[:24]

    def map_all():  # every point, through plotly express, serialised as st.plotly_chart would
        import plotly.express as px

        df = cat.query_df("SELECT c.sample_id, c.x, c.y, c.cluster::VARCHAR AS cluster FROM clusters c")
        return px.scatter(df, x="x", y="y", color="cluster", custom_data=["sample_id"], render_mode="webgl").to_json()

    def duplicates():
        df = cat.query_df("SELECT d.*, s.path FROM duplicates d JOIN samples s ON s.id = d.sample_id")
        sizes = df.groupby("set_id").size().sort_values(ascending=False)
        return df[df["set_id"].isin(sizes.index[:8])]

    return {"label_issues": label_issues, "duplicates": duplicates, "clusters": map_all}


def render_pages(root: str) -> dict[str, dict[str, float]]:
    from streamlit.testing.v1 import AppTest

    os.environ["CURATE_PROJECT"] = root
    out = {}
    main = ROOT / "app" / "main.py"
    warm_up = AppTest.from_file(str(main), default_timeout=120)
    warm_up.switch_page("views/decisions.py").run()  # imports and the installed-component scan, once
    cat = open_project(root)
    for page in PAGES:
        # a cold start for every page: a new (finished) run changes the revision token every cached read is
        # keyed by, exactly what happens after a decision or an analysis run
        cat.finish_run(cat.start_run("bench-ui-cache-bust"))
        at = AppTest.from_file(str(main), default_timeout=120)
        at._bidi_component_manager = getattr(warm_up, "_bidi_component_manager", None)
        t = time.perf_counter()
        at.switch_page(f"views/{page}.py").run()
        cold = (time.perf_counter() - t) * 1000
        errors = [str(e.value)[:200] for e in at.exception]
        warm = min(timed(lambda: at.run(), repeat=3)[0], 10 ** 9)
        out[page] = {"render_cold_ms": round(cold, 1), "render_warm_ms": round(warm, 1), "errors": errors}
        print(f"  rendered {page:<13} cold {cold:8.1f} ms  warm {warm:8.1f} ms {'ERRORS ' + str(errors) if errors else ''}",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k samples instead of 1M")
    ap.add_argument("--n", type=int, default=None, help="number of samples (overrides --quick)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the synthetic catalog")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)

    cat = get_catalog(n, args.rebuild)
    root = str(cat.root)
    size_mb = cat.path.stat().st_size / 2 ** 20
    # thumbnails of the bench's (missing) files are never cached: each render checks the file again
    shutil.rmtree(cat.project.thumbnails_dir, ignore_errors=True)
    cat.project.thumbnails_dir.mkdir(exist_ok=True)

    import streamlit.logger

    streamlit.logger.get_logger("streamlit").setLevel("ERROR")
    print(f"catalog: {n:,} samples, {size_mb:.0f} MiB; timing queries (best of 3, cold caches)", flush=True)
    queries = {}
    for name, fn in page_queries(root).items():
        ms, _ = timed(fn)
        queries[name] = round(ms, 1)
        print(f"  {name:<36} {ms:8.1f} ms", flush=True)
    print("baseline (whole table into pandas, filter/slice in Python)", flush=True)
    base = {}
    for name, fn in baselines(cat).items():
        ms, _ = timed(fn, repeat=2)
        base[name] = round(ms, 1)
        print(f"  {name:<36} {ms:8.1f} ms", flush=True)
    print("full AppTest renders", flush=True)
    renders = render_pages(root)

    pages = {}
    for page in PAGES:
        pages[page] = {"query_ms": queries.get(page, queries.get(f"{page} (path)")), **renders[page],
                       "baseline_query_ms": base.get(page)}
    result = {
        "n_samples": n, "catalog_mib": round(size_mb, 1), "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(), "duckdb": duckdb.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2)},
        "pages": pages, "queries_ms": queries, "baseline_ms": base,
        "target_ms": 1000,
        "all_under_target": all(p["render_cold_ms"] < 1000 and not p["errors"] for p in pages.values()),
    }
    out = ROOT / "bench" / "results" / ("ui_quick.json" if args.quick and not args.n else "ui.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    print(f"\nUI pages on {n:,} samples (target < 1000 ms per page render)")
    print(f"{'page':<14}{'queries ms':>12}{'render cold':>13}{'render warm':>13}{'naive baseline':>16}")
    for page, p in pages.items():
        b = "" if p["baseline_query_ms"] is None else f"{p['baseline_query_ms']:.0f}"
        print(f"{page:<14}{p['query_ms'] or 0:>12.0f}{p['render_cold_ms']:>13.0f}{p['render_warm_ms']:>13.0f}{b:>16}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

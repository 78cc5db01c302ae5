"""Clusters: the 2-D map of the embeddings; select a region or a cluster to see (and fix) its images."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.app import hints

NS = "cl"
REASON = "cluster review"

root = data.project_root()
rev = data.revision(root)
st.title("Clusters")

clusters = data.cluster_table(root, rev[1:])
if clusters.empty:
    ui.no_data(hints.no_map(root))
    st.stop()

with st.container(horizontal=True, vertical_alignment="bottom"):
    color_by = st.segmented_control("Colour by", ["label", "cluster", "issue"], default="label", key=f"{NS}-color") or "label"
    max_points = st.select_slider("Points drawn", [5_000, 10_000, 20_000, 50_000], value=data.MAP_POINTS,
                                  key=f"{NS}-max-points", width=260,
                                  help="Beyond this the map shows a fixed random sample (selection still finds all)")


names = {}
for r in clusters.itertuples(index=False):
    name = r.name if isinstance(r.name, str) else f"cluster {r.cluster}"
    maj = f" · mostly {r.majority_label}" if isinstance(r.majority_label, str) else ""
    pur = "" if pd.isna(r.purity) else f" ({r.purity:.0%})"
    names[r.cluster] = f"{name} · {int(r.size):,}{maj}{pur}"


def cluster_name(c) -> str:
    return names.get(c, f"cluster {c}")


cluster_pick = st.selectbox("Show a cluster", clusters["cluster"].tolist(), index=None, key=f"{NS}-cluster",
                            format_func=cluster_name, placeholder="pick a cluster, or select points on the map")

total_points, n_drawn, fig = ui.map_figure(root, rev, color_by, int(max_points))
event = st.plotly_chart(fig, key=f"{NS}-map", on_select="rerun", selection_mode=("points", "box", "lasso"))
if total_points > n_drawn:
    st.caption(f"showing a fixed sample of {n_drawn:,} of {total_points:,} points; a box selection lists every "
               "sample inside it")

# ---- what is selected: a box (all samples in it), points (lasso/click), or a cluster
selection = (event or {}).get("selection", {}) if event else {}
boxes = selection.get("box") or []
points = selection.get("points") or []
if boxes:
    b = boxes[-1]
    x0, x1 = b["x"][0], b["x"][-1]
    y0, y1 = b["y"][0], b["y"][-1]
    title = "Selected region"
    filters = ("box", x0, x1, y0, y1, cluster_pick)
    fetch = lambda limit, offset: data.region_page(root, rev, x0, x1, y0, y1, cluster=cluster_pick,  # noqa: E731
                                                   limit=limit, offset=offset)
elif points:
    ids = tuple(dict.fromkeys(int(cd[0] if isinstance(cd, list) else cd)
                              for cd in (p.get("customdata") for p in points) if cd is not None))
    title = f"Selected points ({len(ids)})"
    filters = ("points", ids)

    def fetch(limit, offset):
        return len(ids), data.samples_by_id(root, rev, ids[offset:offset + limit])
elif cluster_pick is not None:
    title = cluster_name(cluster_pick)
    filters = ("cluster", cluster_pick)
    fetch = lambda limit, offset: data.cluster_page(root, rev, int(cluster_pick), limit=limit, offset=offset)  # noqa: E731
else:
    st.info("Drag a box (or lasso) on the map, click points, or pick a cluster to review its images.")
    st.stop()

st.subheader(title)
total, page = ui.paged(NS, fetch, filters)
classes = data.class_names(root, rev)
ui.bulk_actions(root, page, classes, NS, REASON)


def caption(r) -> str:
    label = ui.md(r["label"]) if isinstance(r["label"], str) else "(unlabeled)"
    cl = f" · cluster {int(r['cluster'])}" if "cluster" in r and pd.notna(r.get("cluster")) else ""
    return f"**#{int(r['sample_id'])}** · {label}{cl}"


ui.image_grid(root, page, NS, caption, actions=lambda r: ui.decision_buttons(root, r, classes, NS, REASON))

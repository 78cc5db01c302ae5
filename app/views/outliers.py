"""Outliers & image quality: atypical samples (embedding outliers) and images that are dark, blurry, odd-sized…"""

from __future__ import annotations

import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.app import hints

root = data.project_root()
rev = data.revision(root)
st.title("Outliers & image quality")
classes = data.class_names(root, rev)

view = st.segmented_control("View", ["Outliers", "Image quality"], default="Outliers", key="oq-view") or "Outliers"

if view == "Outliers":
    NS, REASON = "out", "outlier review"
    with st.expander("Score distribution", icon=":material/bar_chart:"):
        from curate.engine.html_report import histogram_figure

        hist, _ = data.score_histogram(root, rev[1:], "outlier_score")
        cutoff = data.last_run_summary(root, rev[1:], "outliers").get("score_cutoff")
        if len(hist):
            ui.plotly(histogram_figure(hist, "Outlier score", "outlier score (lower = more atypical)", cutoff,
                                       "flag cutoff"), key=f"{NS}-hist")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        only_flagged = st.toggle("Flagged only", value=True, key=f"{NS}-flagged")
        status = st.segmented_control("Status", ["unreviewed", "reviewed", "all"], default="unreviewed",
                                      key=f"{NS}-status") or "all"
        meta = ui.metadata_filter(root, rev[1:], NS)
    filters = dict(only_flagged=only_flagged, status=status, meta=meta)
    total, page = ui.paged(NS, lambda limit, offset: data.outliers_page(root, rev, **filters, limit=limit, offset=offset),
                           filters)
    if total == 0 and only_flagged and status != "reviewed":
        ui.no_data(hints.no_outliers(root))

    def caption(r) -> str:
        label = ui.md(r["label"]) if isinstance(r["label"], str) else "(unlabeled)"
        return f"**#{int(r['sample_id'])}** · {label}  \noutlier score {r['score']:.3f}"
else:
    NS, REASON = "iq", "image quality review"
    types = data.image_issue_types(root, rev[1:])
    if types.empty:
        ui.no_data(hints.no_image_issues(root))
        st.stop()
    with st.container(horizontal=True, vertical_alignment="bottom"):
        picked = st.pills("Issue", types["issue"].tolist(), selection_mode="multi", key=f"{NS}-types",
                          format_func=lambda t: f"{t} ({int(types.set_index('issue').at[t, 'samples']):,})")
        status = st.segmented_control("Status", ["unreviewed", "reviewed", "all"], default="unreviewed",
                                      key=f"{NS}-status") or "all"
    filters = dict(issues=tuple(picked or ()), status=status)
    total, page = ui.paged(NS, lambda limit, offset: data.image_issues_page(root, rev, **filters, limit=limit,
                                                                           offset=offset), filters)

    def caption(r) -> str:
        label = ui.md(r["label"]) if isinstance(r["label"], str) else "(unlabeled)"
        return f"**#{int(r['sample_id'])}** · {label}  \n{ui.md(r['issues'])} · score {r['score']:.3f}"

ui.bulk_actions(root, page, classes, NS, REASON)
ui.image_grid(root, page, NS, caption, actions=lambda r: ui.decision_buttons(root, r, classes, NS, REASON))

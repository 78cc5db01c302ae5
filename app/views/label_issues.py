"""Label issues: samples whose given label is probably wrong, most likely first, with the suggested label."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.app import hints

NS = "li"
REASON = "label issue review"

root = data.project_root()
rev = data.revision(root)
st.title("Label issues")

given_opts, sugg_opts = data.label_issue_classes(root, rev[1:])
if not given_opts and not sugg_opts:
    ui.no_data(hints.no_label_issues(root))
    st.stop()

with st.expander("Score distribution and noise matrix", icon=":material/bar_chart:"):
    from curate.engine.html_report import histogram_figure, noise_matrix_figure

    plots = st.columns(2)
    hist, boundary = data.score_histogram(root, rev[1:], "label_quality")
    with plots[0]:
        if len(hist):
            ui.plotly(histogram_figure(hist, "Label quality", "label quality (lower = more likely wrong)", boundary,
                                       "highest flagged"), key=f"{NS}-hist")
            st.caption("Confident learning flags per class (no single cut-off): the line marks the highest label "
                       "quality among flagged samples.")
    joint = data.last_run_summary(root, rev[1:], "label_issues").get("joint")
    with plots[1]:
        if joint and joint.get("matrix"):
            ui.plotly(noise_matrix_figure(joint), key=f"{NS}-noise")
        else:
            st.caption(hints.no_noise_estimate(root))

with st.container(horizontal=True, vertical_alignment="bottom"):
    only_flagged = st.toggle("Flagged only", value=True, key=f"{NS}-flagged")
    status = st.segmented_control("Status", ["unreviewed", "reviewed", "all"], default="unreviewed",
                                  key=f"{NS}-status") or "all"
    given = st.multiselect("Given label", given_opts, key=f"{NS}-given", width=220)
    suggested = st.multiselect("Suggested label", sugg_opts, key=f"{NS}-suggested", width=220)
    search = st.text_input("Path contains", key=f"{NS}-search", width=220)
    meta = ui.metadata_filter(root, rev[1:], NS)

filters = dict(only_flagged=only_flagged, given=tuple(given), suggested=tuple(suggested), status=status,
               search=search.strip(), meta=meta)
total, page = ui.paged(NS, lambda limit, offset: data.label_issues_page(root, rev, **filters, limit=limit, offset=offset),
                       filters)
classes = data.class_names(root, rev)

ui.bulk_actions(root, page, classes, NS, REASON, suggested_col="suggested_label")


def caption(r) -> str:
    conf = "" if pd.isna(r["suggested_confidence"]) else f" ({r['suggested_confidence']:.0%})"
    return (f"**#{int(r['sample_id'])}** · quality {r['label_quality']:.3f}  \n"
            f"given **{ui.md(r['given_label'])}** → suggested **{ui.md(r['suggested_label'])}**{conf}")


ui.image_grid(root, page, NS, caption,
              actions=lambda r: ui.decision_buttons(root, r, classes, NS, REASON, suggested=r["suggested_label"]))

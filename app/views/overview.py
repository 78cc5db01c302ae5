"""Overview: what the project holds, how labels are distributed, what the analyses found, the last runs."""

from __future__ import annotations

import json

import plotly.express as px
import streamlit as st

from curate.app import data
from curate.app import hints

root = data.project_root()
ov = data.overview(root, data.revision(root))
c = ov["counts"]

st.title("Overview")
cols = st.columns(5)
cols[0].metric("Samples", f"{c['samples']:,}")
cols[1].metric("Labeled", f"{c['labeled']:,}")
cols[2].metric("Classes", f"{c['classes']:,}")
cols[3].metric("Quarantined files", f"{c['quarantined']:,}")
cols[4].metric("Reviewed", f"{c['reviewed']:,}", help="Samples with a live decision (keep, relabel, remove, merge)")

if c["samples"] == 0:
    st.info(hints.empty_catalog(root))

left, right = st.columns([3, 2])
with left:
    st.subheader("Class distribution")
    classes = ov["classes"]
    if classes.empty:
        st.caption("No labels yet.")
    else:
        shown = classes.head(60).fillna({"label": "(unlabeled)"})
        fig = px.bar(shown, x="label", y="samples", height=340)
        fig.update_layout(margin=dict(l=0, r=0, t=10, b=0), xaxis_title=None, xaxis_type="category")
        st.plotly_chart(fig, key="class-dist")
        if len(classes) > 60:
            st.caption(f"the 60 largest of {len(classes):,} classes (current labels, after relabel decisions)")
with right:
    st.subheader("Issues found")
    issues = ov["issues"]
    issues = issues[issues["scored"] > 0]
    if issues.empty:
        st.caption(hints.no_results(root))
    else:
        st.dataframe(issues, hide_index=True, width="stretch",
                     column_config={"issue": "Type", "flagged": st.column_config.NumberColumn("Flagged", format="%d"),
                                    "scored": st.column_config.NumberColumn("Rows", format="%d")})
    if not ov["decisions"].empty:
        st.subheader("Live decisions")
        st.dataframe(ov["decisions"], hide_index=True, width="stretch")

st.subheader("Analyses")
st.dataframe(data.analysis_runs(root, data.revision(root)[1:]), hide_index=True, width="stretch",
             column_config={"seconds": st.column_config.NumberColumn("Seconds", format="%.2f"),
                            "rows": st.column_config.NumberColumn("Rows", format="%d")})

st.subheader("Last runs")
runs = ov["runs"]
if runs.empty:
    st.caption("No runs recorded.")
else:
    runs = runs.assign(summary=runs["summary"].map(lambda s: json.dumps(json.loads(s))[:160] if isinstance(s, str) else ""))
    st.dataframe(runs, hide_index=True, width="stretch",
                 column_config={"seconds": st.column_config.NumberColumn("Seconds", format="%.2f")})

"""Decisions: the full history (nothing is ever deleted) with undo."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.engine.catalog import DECISION_ACTIONS

NS = "dec"

root = data.project_root()
rev = data.revision(root)
st.title("Decisions")

counts = data.live_decision_counts(root, rev)
cols = st.columns(len(DECISION_ACTIONS))
for col, action in zip(cols, DECISION_ACTIONS):
    col.metric(f"{ui.ACTION_ICONS[action]} {action}", f"{counts.get(action, 0):,}", help="samples whose latest live decision")

with st.container(horizontal=True, vertical_alignment="bottom"):
    actions = st.pills("Action", list(DECISION_ACTIONS), selection_mode="multi", key=f"{NS}-actions")
    sample = st.number_input("Sample id", min_value=0, value=None, step=1, key=f"{NS}-sample", width=160)
    live_only = st.toggle("Live only", key=f"{NS}-live", help="Hide undone decisions and undo records")

filters = dict(actions=tuple(actions or ()), sample_id=None if sample is None else int(sample), live_only=live_only)
total, page = ui.paged(NS, lambda limit, offset: data.decisions_page(root, rev, **filters, limit=limit, offset=offset),
                       filters, page_size=25)
if total == 0:
    ui.no_data("No decisions yet: review issues on the Label issues, Duplicates or Outliers pages.")
    st.stop()

live_ids = [int(r.id) for r in page.itertuples() if pd.isna(r.undoes) and pd.isna(r.undone_by)]
selected = [i for i in live_ids if st.session_state.get(f"{NS}-sel-{i}")]
with st.container(horizontal=True, border=True, vertical_alignment="center"):
    st.markdown(f"**Undo** {len(selected) or len(live_ids)} live decision(s) "
                f"{'selected' if selected else 'on this page'}")
    st.button("Undo", key=f"{NS}-bulk-undo", disabled=not live_ids, on_click=ui.undo, args=(root, selected or live_ids))

# one light row per decision (a container, a line of text, an undo button): 25 rows stay fast to render
for r in page.itertuples():
    did = int(r.id)
    is_live = did in live_ids
    what = f"{ui.ACTION_ICONS.get(r.action, '')} **{r.action}**"
    if isinstance(r.new_label, str):
        what += f" → **{ui.md(r.new_label)}**"
    if pd.notna(r.undoes):
        what = f":material/undo: undo of #{int(r.undoes)} ({r.action})"
    elif pd.notna(r.undone_by):
        what = f"~~{what}~~ undone by #{int(r.undone_by)}"
    label = f" ({ui.md(r.label)})" if isinstance(r.label, str) else ""
    reason = f" · {ui.md(r.reason)}" if isinstance(r.reason, str) and r.reason else ""
    when = f"{pd.Timestamp(r.created_at):%Y-%m-%d %H:%M:%S} · {ui.md(r.who)}"
    with st.container(horizontal=True, vertical_alignment="center", key=f"{NS}-row-{did}"):
        if is_live:
            st.checkbox("select", key=f"{NS}-sel-{did}", label_visibility="collapsed")
        st.markdown(f"#{did} · sample **#{int(r.sample_id)}**{label} · {what}{reason}  \n:gray[{when}]")
        if is_live:
            st.button("Undo", key=f"{NS}-undo-{did}", on_click=ui.undo, args=(root, [did]))

"""Duplicates: exact and near-duplicate sets; keep one copy (merge), or mark a set as not duplicates."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.app import hints

NS = "dup"
REASON = "duplicate review"
SETS_PER_PAGE = 6
MAX_SHOWN = 6  # members shown per set (the rest are listed by id)

root = data.project_root()
rev = data.revision(root)
st.title("Duplicates")

with st.container(horizontal=True, vertical_alignment="bottom"):
    kinds = st.pills("Kind", ["exact", "near"], selection_mode="multi", default=["exact", "near"], key=f"{NS}-kinds")
    status = st.segmented_control("Status", ["unreviewed", "reviewed", "all"], default="unreviewed",
                                  key=f"{NS}-status") or "all"
    crosses = st.toggle("Crossing splits only", key=f"{NS}-crosses",
                        help="Sets whose copies sit in different splits (train/test leakage)")



def apply_keep_fraction(threshold: float, keep_fraction: float) -> None:
    """Record `remove` for every sample SemDeDup prunes at ``threshold`` that has no live decision (one batch)."""
    pruned = data.catalog(root).semdedup_pruned(threshold)
    reason = f"SemDeDup keep fraction {keep_fraction:.1%} (similarity >= {threshold:.2f})"
    ids = ui.record(root, [(int(s), "remove", None, reason) for s in pruned],
                    f"SemDeDup: {len(pruned):,} samples marked remove")
    st.session_state[f"{NS}-semdedup-batch"] = ids


def undo_keep_fraction() -> None:
    ui.undo(root, st.session_state.pop(f"{NS}-semdedup-batch", []))


semdedup = data.last_run_summary(root, rev[1:], "duplicates").get("semdedup")
with st.expander("SemDeDup keep-fraction curve", icon=":material/show_chart:"):
    if not semdedup or not semdedup.get("curve"):
        st.caption(hints.no_semdedup_curve(root))
    else:
        from curate.engine.html_report import keep_fraction_table, semdedup_figure

        curve = keep_fraction_table(semdedup)
        ui.plotly(semdedup_figure(curve, semdedup.get("n")), key=f"{NS}-semdedup-curve")
        points = list(curve.itertuples(index=False))
        point = st.select_slider(
            "Keep fraction", options=list(range(len(points))), value=len(points) - 1, key=f"{NS}-keep-fraction",
            format_func=lambda i: f"{points[i].keep_fraction:.1%} (similarity ≥ {points[i].threshold:.2f})")
        chosen = points[point]
        todo = data.semdedup_pruned_count(root, rev, float(chosen.threshold))
        st.caption(f"Keeping {chosen.keep_fraction:.1%} prunes {int(chosen.n_removed):,} samples; {todo:,} of them "
                   "have no decision yet and would be marked remove (decided samples are left as they are).")
        with st.container(horizontal=True):
            st.button("Apply keep fraction as remove decisions", key=f"{NS}-apply-keep-fraction", type="primary",
                      disabled=todo == 0, on_click=apply_keep_fraction,
                      args=(float(chosen.threshold), float(chosen.keep_fraction)))
            batch = st.session_state.get(f"{NS}-semdedup-batch")
            if batch:
                st.button(f"Undo the applied keep fraction ({len(batch):,} decisions)", key=f"{NS}-undo-keep-fraction",
                          icon=":material/undo:", on_click=undo_keep_fraction)

filters = dict(kinds=tuple(kinds or ()), crosses_only=crosses, status=status)
total, members = ui.paged(
    NS, lambda limit, offset: data.duplicate_sets_page(root, rev, **filters, limit=limit, offset=offset),
    filters, page_size=SETS_PER_PAGE)
if total == 0 and status == "unreviewed" and not crosses:
    ui.no_data(hints.no_duplicates(root))
    st.stop()


def merge_rows(set_members: pd.DataFrame, keeper: int) -> list[tuple]:
    return [(keeper, "merge", None, f"{REASON}: keep one copy of set {int(set_members['set_id'].iloc[0])}")]


def keep_all_rows(set_members: pd.DataFrame) -> list[tuple]:
    sid = int(set_members["set_id"].iloc[0])
    return [(int(m), "keep", None, f"{REASON}: set {sid} is not duplicates") for m in set_members["sample_id"]]


def suggested_keeper(set_members: pd.DataFrame) -> int:
    keepers = set_members[set_members["is_keeper"].fillna(False).astype(bool)]
    return int((keepers if len(keepers) else set_members)["sample_id"].iloc[0])


sets = list(members.groupby("set_id", sort=False))
if sets:
    page_merges = [r for _, m in sets for r in merge_rows(m, suggested_keeper(m))]
    with st.container(horizontal=True, border=True, vertical_alignment="center"):
        st.markdown(f"**Bulk** (all {len(sets)} sets on this page)")
        st.button("Merge all, keeping the ★ copies", key=f"{NS}-bulk-merge", type="primary",
                  on_click=ui.record, args=(root, page_merges, f"merged {len(sets)} duplicate sets"))
        st.button("Not duplicates (keep all)", key=f"{NS}-bulk-keep",
                  on_click=ui.record, args=(root, [r for _, m in sets for r in keep_all_rows(m)], "kept all copies"))

for set_id, m in sets:
    first = m.iloc[0]
    keeper = suggested_keeper(m)
    with st.container(border=True, key=f"{NS}-set-{int(set_id)}"):
        with st.container(horizontal=True, vertical_alignment="center"):
            sim = "" if pd.isna(m["similarity"]).all() else f" · similarity ≥ {m['similarity'].min():.3f}"
            cross = " · :orange[:material/warning: crosses splits]" if m["crosses_splits"].fillna(False).any() else ""
            labels = m["label"].dropna().unique()
            conflict = " · :orange[:material/warning: labels disagree]" if len(labels) > 1 else ""
            st.markdown(f"**Set {int(set_id)}** · {first['kind']} · {int(first['set_size'])} copies{sim}{cross}{conflict}")
            st.button("Merge (keep ★)", key=f"{NS}-merge-set-{int(set_id)}", type="primary",
                      on_click=ui.record, args=(root, merge_rows(m, keeper), f"merged set {int(set_id)}"))
            st.button("Not duplicates", key=f"{NS}-keepall-{int(set_id)}",
                      on_click=ui.record, args=(root, keep_all_rows(m), f"set {int(set_id)} kept"))
        shown = m.head(MAX_SHOWN)
        cols = st.columns(MAX_SHOWN, gap="small")
        for col, (_, r) in zip(cols, shown.iterrows()):
            sid = int(r["sample_id"])
            with col:
                st.image(ui.thumb(root, sid, r["path"]), width="stretch")
                star = "★ " if sid == keeper else ""
                st.markdown(f"{star}**#{sid}** · {ui.md(r['label']) if isinstance(r['label'], str) else '(unlabeled)'}"
                            f"  \n{ui.md(r['split']) if isinstance(r['split'], str) else ''}")
                status_line = ui.status_text(r)
                if status_line:
                    st.caption(status_line)
                st.button("Keeper", key=f"{NS}-merge-{sid}", help="Keep this copy, remove the other copies at export",
                          on_click=ui.record, args=(root, merge_rows(m, sid), f"kept #{sid} of set {int(set_id)}"))
                st.button("Remove", key=f"{NS}-remove-{sid}",
                          on_click=ui.record, args=(root, [(sid, "remove", None, REASON)], f"removed #{sid}"))
        if int(first["set_size"]) > MAX_SHOWN:
            more = ", ".join(f"#{int(i)}" for i in m["sample_id"].iloc[MAX_SHOWN:])
            st.caption(f"+ {int(first['set_size']) - MAX_SHOWN} more copies: {more}")

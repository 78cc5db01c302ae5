"""Annotate: label the active-learning queue one image at a time (buttons or keys 1–9, 0; S skips)."""

from __future__ import annotations

import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.app import hints

NS = "ann"
MAX_BUTTONS = 40  # beyond this many classes the label is picked from a list
KEYS = [str(i) for i in range(1, 10)] + ["0"]

root = data.project_root()
rev = data.revision(root)
st.title("Annotate")

status = data.queue_status(root, rev)
if status["total"] == 0:
    ui.no_data(hints.no_queue(root))
    st.stop()

skipped: set[int] = st.session_state.setdefault(f"{NS}-skipped", set())
next_id = data.queue_next(root, rev, tuple(sorted(skipped)))
done = status["total"] - status["remaining"]
st.progress(done / max(status["total"], 1), text=f"{done:,} of {status['total']:,} queued samples decided · "
                                                  f"{status['remaining']:,} to go")
if next_id is None:
    if skipped:
        st.info(f"You skipped the remaining {len(skipped)} sample(s) in this session.")
        st.button("Show skipped again", key=f"{NS}-unskip", on_click=skipped.clear)
    else:
        st.success(hints.queue_done(root))
    st.stop()

item = data.queue_item(root, rev, next_id)
classes = data.class_names(root, rev)
reason = f"annotation queue (batch {item.batch_id}, {item.strategy})"


def label_as(label: str) -> None:
    ui.record(root, [(item.sample_id, "relabel", label, reason)], f"#{item.sample_id} labelled {label}")


def skip() -> None:
    skipped.add(item.sample_id)


left, right = st.columns([2, 3])
with left:
    st.image(ui.full_image(root, item.path), width="stretch")
with right:
    st.markdown(f"**Sample #{item.sample_id}**")
    st.code(item.path, language=None, wrap_lines=True)
    score = "" if item.score is None else f" · score {item.score:.3f}"
    st.caption(f"batch {item.batch_id} · {item.strategy}{score} · rank {item.rank}" +
               (f"  \n{ui.md(item.reason)}" if item.reason else ""))
    if item.label:
        st.caption(f"current label: **{ui.md(item.label)}**")
    prob = dict(item.suggestions)
    top = item.suggestions[0][0] if item.suggestions else None
    if item.suggestions:
        st.caption("model suggests: " + ", ".join(f"{ui.md(c)} ({p:.0%})" for c, p in item.suggestions))
    if len(classes) <= MAX_BUTTONS:
        with st.container(horizontal=True, gap="small"):
            for i, c in enumerate(classes):
                st.button(ui.md(c), key=f"{NS}-label-{i}", on_click=label_as, args=(c,),
                          type="primary" if c == top else "secondary", shortcut=KEYS[i] if i < len(KEYS) else None,
                          help=f"model probability {prob[c]:.0%}" if c in prob else None)
    else:
        with st.container(horizontal=True, vertical_alignment="bottom"):
            choice = st.selectbox("Label", classes, index=classes.index(top) if top in classes else None,
                                  key=f"{NS}-pick-{item.sample_id}")
            st.button("Apply", key=f"{NS}-apply", type="primary", disabled=choice is None,
                      on_click=label_as, args=(choice,))
    with st.container(horizontal=True, vertical_alignment="bottom"):
        new = st.text_input("New label", key=f"{NS}-new-{item.sample_id}", placeholder="a label not in the list")
        st.button("Use new label", key=f"{NS}-new-apply", disabled=not new.strip(), on_click=label_as, args=(new.strip(),))
    with st.container(horizontal=True):
        st.button("Skip", key=f"{NS}-skip", on_click=skip, shortcut="S")
        st.button("Remove (unusable)", key=f"{NS}-remove", shortcut="X",
                  on_click=ui.record, args=(root, [(item.sample_id, "remove", None, reason)], f"removed #{item.sample_id}"))

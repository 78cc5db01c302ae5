"""Search: find samples by path/id, by similarity to a sample, to an uploaded image, or to a text prompt."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.app import hints
from curate.engine.catalog import CurateError

NS = "srch"
REASON = "search review"

root = data.project_root()
rev = data.revision(root)
st.title("Search")
encoders = data.embedding_encoders(root, rev[1:])
classes = data.class_names(root, rev)

modes = ["Path or id", "Similar to a sample", "Similar to an image", "Text"]
mode = st.segmented_control("Search by", modes, default=modes[0], key=f"{NS}-mode") or modes[0]

with st.container(horizontal=True, vertical_alignment="bottom"):
    if mode != modes[0]:
        if not encoders:
            ui.no_data(hints.no_embeddings(root))
            st.stop()
        encoder = st.selectbox("Embeddings", encoders, key=f"{NS}-encoder", width=320)
        k = st.number_input("Results", min_value=1, max_value=200, value=24, step=6, key=f"{NS}-k", width=120)

hits: pd.DataFrame | None = None
try:
    if mode == "Path or id":
        text = st.text_input("Path contains, or a sample id", key=f"{NS}-text")
        if text.strip():
            filters = ("path", text.strip())
            total, page = ui.paged(NS, lambda limit, offset: data.find_samples(root, rev, text.strip(), limit, offset),
                                   filters)
            hits = page
    elif mode == "Similar to a sample":
        sid = st.number_input("Sample id", min_value=0, value=None, step=1, key=f"{NS}-sid", width=200)
        if sid is not None:
            hits = data.similar_to_sample(root, rev[1:], int(sid), int(k), encoder)
    elif mode == "Similar to an image":
        up = st.file_uploader("Query image", type=["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"],
                              key=f"{NS}-upload")
        if up is not None:
            st.image(up.getvalue(), width=160, caption="query")
            hits = data.similar_to_image(root, rev[1:], up.getvalue(), Path(up.name).suffix.lower(), int(k), encoder)
    else:
        if not encoder.lower().startswith("clip"):
            st.info(hints.text_needs_clip(root, encoder))
            st.stop()
        prompt = st.text_input("Describe what to find", key=f"{NS}-prompt", placeholder="a blurry photo of a dog")
        if prompt.strip():
            hits = data.similar_to_text(root, rev[1:], prompt.strip(), int(k), encoder)
except CurateError as exc:
    st.warning(str(exc))
    st.stop()

if hits is None:
    st.stop()
if hits.empty:
    st.info("No matches.")
    st.stop()

if "score" in hits.columns:  # similarity hits: add live decisions and current labels
    info = data.samples_by_id(root, rev, tuple(int(i) for i in hits["sample_id"]))
    hits = hits[["rank", "sample_id", "score"]].merge(info, on="sample_id", how="left")

ui.bulk_actions(root, hits, classes, NS, REASON)


def caption(r) -> str:
    label = ui.md(r["label"]) if isinstance(r.get("label"), str) else "(unlabeled)"
    score = f" · sim {r['score']:.3f}" if "score" in r and pd.notna(r.get("score")) else ""
    return f"**#{int(r['sample_id'])}** · {label}{score}"


ui.image_grid(root, hits, NS, caption, actions=lambda r: ui.decision_buttons(root, r, classes, NS, REASON))

"""Reusable pieces of the review app: image grid, decision buttons, bulk actions, pagination, flash messages.

Decisions are written from widget callbacks through :func:`record` -> ``Catalog.add_decisions`` (one
transaction each) and :func:`undo` -> ``Catalog.undo_decisions`` (likewise): the app's only write path.  A decision is
in the catalog before the page reruns, so closing the browser never loses one.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import streamlit as st

from curate.app import data
from curate.engine import thumbnails
from curate.engine.catalog import CurateError

ACTION_ICONS = {"keep": ":material/check_circle:", "relabel": ":material/edit:", "remove": ":material/delete:",
                "merge": ":material/merge:"}
NEW_LABEL = "+ new label…"


# ------------------------------------------------------------------------------------------- text
def md(text: object) -> str:
    """Escape Markdown in user data (labels, paths) shown in captions and button labels."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", "" if text is None else str(text))


def status_text(row: pd.Series | dict) -> str:
    """'✏️ relabel → dog' for a sample with a live decision, '' otherwise."""
    action = row.get("action")
    if action is None or (isinstance(action, float) and math.isnan(action)):
        return ""
    s = f"{ACTION_ICONS.get(action, '')} {action}"
    if action == "relabel":
        s += f" → {md(row.get('new_label'))}"
    return s


# ------------------------------------------------------------------------------------------- writes
def _write(fn: Callable[[], object], wait_s: float = 10.0) -> object:
    """Run a catalog write, retrying while another session of this server holds a read connection.

    DuckDB refuses a read-write connection in a process that has a read-only one open on the same file
    ("different configuration"); app reads are short, so a brief retry is enough.  :meth:`Catalog.connect`
    already waits for both this and other processes' locks (``CURATE_LOCK_WAIT``) and then raises
    ``ProjectBusyError``, which ``record`` shows as a one-line message; this loop only covers a conflict raised
    past ``connect`` (e.g. by a DuckDB version that reports it on the first statement).
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return fn()
        except CurateError as exc:
            if "different configuration" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def record(root: str, rows: Iterable[tuple[int, str, str | None, str]], what: str) -> list[int]:
    """Append decisions (one transaction) and leave a flash message with an undo for them."""
    rows = [(int(s), a, lab, r) for s, a, lab, r in rows]
    if not rows:
        st.session_state["flash"] = ("warning", "nothing selected", [])
        return []
    try:
        ids = _write(lambda: data.catalog(root).add_decisions(rows, who="ui"))
    except CurateError as exc:
        st.session_state["flash"] = ("error", str(exc), [])
        return []
    st.session_state["flash"] = ("success", f"{what} — {len(ids)} decision(s) saved", ids)
    return ids


def undo(root: str, decision_ids: Iterable[int]) -> None:
    """Undo decisions (each an appended 'undo' record; already undone ones are reported, not repeated)."""
    cat = data.catalog(root)
    ids = [int(d) for d in decision_ids]
    try:
        done, errors = _write(lambda: cat.undo_decisions(ids, who="ui"))
    except CurateError as exc:
        done, errors = [], [str(exc)]
    if errors:
        st.session_state["flash"] = ("error", "; ".join(errors), [])
    else:
        st.session_state["flash"] = ("info", f"undid {len(done)} decision(s)", [])


def show_flash(root: str) -> None:
    """Show the message left by the last action, with an 'Undo' button for the decisions it saved."""
    flash = st.session_state.pop("flash", None)
    if not flash:
        return
    kind, text, ids = flash
    box = {"success": st.success, "error": st.error, "warning": st.warning, "info": st.info}[kind]
    with st.container(horizontal=True, vertical_alignment="center"):
        box(text)
        if ids:
            st.button("Undo", icon=":material/undo:", key=f"flash-undo-{ids[0]}", on_click=undo, args=(root, list(ids)),
                      help="Reverse the decisions just saved")


def plotly(fig, key: str) -> None:
    """A Plotly figure at the page's width (figures come from :mod:`engine.html_report`, shared with the report)."""
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


# ------------------------------------------------------------------------------------------- images
def thumb(root: str, sample_id: int, path: str | None) -> str | bytes:
    """A cached thumbnail path for the sample, or a placeholder image when its file is missing/unreadable."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return thumbnails.placeholder()
    t = thumbnails.thumbnail(Path(root) / "thumbnails", int(sample_id), thumbnails.resolve_source(root, path))
    return str(t) if t is not None else thumbnails.placeholder()


BROWSER_FORMATS = {"JPEG", "PNG", "GIF", "WEBP"}


def full_image(root: str, path: str | None, size: int = 512) -> str | bytes:
    """The original file for a large view, or a placeholder when it cannot be read.

    Files a browser shows as they are (JPEG/PNG/GIF/WebP, upright, 8-bit) are passed by path; anything else
    (an EXIF rotation, TIFF/BMP, 16-bit or CMYK pixels) is decoded upright to a JPEG of at most ``size`` pixels,
    so the reviewer sees what the model saw.
    """
    if path is not None and not (isinstance(path, float) and math.isnan(path)):
        p = thumbnails.resolve_source(root, path)
        if p.is_file():
            try:
                import io

                from PIL import Image

                from curate.engine.images import HIGH_BIT_MODES, exif_orientation, open_rgb

                with Image.open(p) as im:
                    im.verify()  # must come first: reading the EXIF of a PNG loads it, and verify refuses that
                with Image.open(p) as im:
                    as_is = (im.format in BROWSER_FORMATS and exif_orientation(im) == 1
                             and im.mode not in HIGH_BIT_MODES + ("CMYK", "YCbCr", "LAB"))
                if as_is:
                    return str(p)
                im = open_rgb(p, draft=size)
                im.thumbnail((size, size))
                buf = io.BytesIO()
                im.save(buf, "JPEG", quality=90)
                return buf.getvalue()
            except Exception:
                pass
    return thumbnails.placeholder(size, "missing or unreadable")


# ------------------------------------------------------------------------------------------- pagination
def paged(key: str, fetch: Callable[[int, int], tuple[int, pd.DataFrame]], filters: object = None,
          page_size: int = data.PAGE_SIZE) -> tuple[int, pd.DataFrame]:
    """Fetch one page with ``fetch(limit, offset) -> (total, frame)`` and show a page picker.

    The page goes back to 1 when ``filters`` change and is clamped when the total shrinks, so the picker
    never points past the end.  One query per rerun: the total comes with the page.
    """
    k, fk = f"{key}-page", f"{key}-filters"
    if st.session_state.get(fk) != repr(filters):
        st.session_state[fk] = repr(filters)
        st.session_state[k] = 1
    page_no = int(st.session_state.get(k, 1))
    total, frame = fetch(page_size, (page_no - 1) * page_size)
    n_pages = max(1, math.ceil(total / page_size))
    if page_no > n_pages:
        page_no = st.session_state[k] = n_pages
        total, frame = fetch(page_size, (page_no - 1) * page_size)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.number_input("Page", min_value=1, max_value=n_pages, step=1, key=k, width=150,
                        help=f"{n_pages:,} page(s) of {page_size}")
        first = (page_no - 1) * page_size
        st.caption(f"{first + 1 if total else 0:,}–{min(first + page_size, total):,} of {total:,}")
    return total, frame


# ------------------------------------------------------------------------------------------- decisions
def _relabel_choice(root: str, key: str, sample_id: int, reason: str) -> None:
    value = st.session_state.get(key)
    if not value or value == NEW_LABEL:
        return
    record(root, [(sample_id, "relabel", value, reason)], f"sample {sample_id} relabelled to {value}")
    st.session_state[key] = None


def decision_buttons(root: str, row: pd.Series, classes: list[str], ns: str, reason: str,
                     suggested: str | None = None, allow_merge: bool = False) -> None:
    """Keep / relabel-to-suggested (one click) / remove (/ merge) buttons and a relabel picker for one sample."""
    sid = int(row["sample_id"])
    with st.container(horizontal=True, gap="small"):
        st.button("Keep", key=f"{ns}-keep-{sid}", help="Not an issue: keep it as it is",
                  on_click=record, args=(root, [(sid, "keep", None, reason)], f"kept sample {sid}"))
        if suggested is not None and isinstance(suggested, str) and suggested != row.get("label"):
            st.button(f"→ {md(suggested)}", key=f"{ns}-accept-{sid}", type="primary",
                      help=f"Relabel to the suggested label '{suggested}'",
                      on_click=record, args=(root, [(sid, "relabel", suggested, reason + "; accepted suggestion")],
                                             f"sample {sid} relabelled to {suggested}"))
        if allow_merge:
            st.button("Keeper", key=f"{ns}-merge-{sid}", type="primary",
                      help="Merge the duplicate set: keep this sample, remove the others at export",
                      on_click=record, args=(root, [(sid, "merge", None, reason)], f"sample {sid} kept as the copy"))
        st.button("Remove", key=f"{ns}-remove-{sid}", help="Exclude this sample from the export",
                  on_click=record, args=(root, [(sid, "remove", None, reason)], f"removed sample {sid}"))
    pick = f"{ns}-relabel-{sid}"
    st.selectbox("Relabel to", classes + [NEW_LABEL], index=None, key=pick, placeholder="Relabel to…",
                 label_visibility="collapsed", on_change=_relabel_choice, args=(root, pick, sid, reason))
    if st.session_state.get(pick) == NEW_LABEL:
        st.text_input("New label", key=f"{pick}-new", placeholder="type a new label, Enter",
                      on_change=_new_label, args=(root, f"{pick}-new", pick, sid, reason))


def _new_label(root: str, key: str, pick_key: str, sample_id: int, reason: str) -> None:
    value = (st.session_state.get(key) or "").strip()
    if value:
        record(root, [(sample_id, "relabel", value, reason)], f"sample {sample_id} relabelled to {value}")
        st.session_state[key] = ""
        st.session_state[pick_key] = None


def selected_ids(ns: str, ids: Iterable[int]) -> list[int]:
    return [int(i) for i in ids if st.session_state.get(f"{ns}-sel-{int(i)}")]


def _bulk(root: str, ns: str, page: pd.DataFrame, action: str, reason: str, label_key: str | None = None,
          suggested_col: str | None = None) -> None:
    ids = selected_ids(ns, page["sample_id"]) or [int(i) for i in page["sample_id"]]
    rows_by_id = page.set_index("sample_id")
    if action == "accept":
        rows = [(i, "relabel", rows_by_id.at[i, suggested_col], reason + "; accepted suggestion") for i in ids
                if isinstance(rows_by_id.at[i, suggested_col], str)]
        what = "accepted suggested labels"
    elif action == "relabel":
        label = st.session_state.get(label_key)
        if not label:
            st.session_state["flash"] = ("warning", "pick a label for the bulk relabel first", [])
            return
        rows, what = [(i, "relabel", label, reason) for i in ids], f"relabelled to {label}"
    else:
        rows, what = [(i, action, None, reason) for i in ids], {"keep": "kept", "remove": "removed"}[action]
    record(root, rows, what)
    for i in ids:
        st.session_state[f"{ns}-sel-{i}"] = False


def bulk_actions(root: str, page: pd.DataFrame, classes: list[str], ns: str, reason: str,
                 suggested_col: str | None = None) -> None:
    """Actions on the checked samples of this page (or on the whole page when none is checked)."""
    if page.empty:
        return
    n_sel = len(selected_ids(ns, page["sample_id"]))
    target = f"{n_sel} selected" if n_sel else f"all {len(page)} on this page"
    with st.container(horizontal=True, vertical_alignment="bottom", border=True):
        st.markdown(f"**Bulk** ({target})")
        st.button("Keep", key=f"{ns}-bulk-keep", on_click=_bulk, args=(root, ns, page, "keep", reason))
        if suggested_col:
            st.button("Accept suggestions", key=f"{ns}-bulk-accept", type="primary",
                      on_click=_bulk, args=(root, ns, page, "accept", reason, None, suggested_col))
        st.button("Remove", key=f"{ns}-bulk-remove", on_click=_bulk, args=(root, ns, page, "remove", reason))
        st.selectbox("Relabel to", classes, index=None, key=f"{ns}-bulk-label", placeholder="label…", width=180)
        st.button("Relabel", key=f"{ns}-bulk-relabel",
                  on_click=_bulk, args=(root, ns, page, "relabel", reason, f"{ns}-bulk-label"))


def image_grid(root: str, page: pd.DataFrame, ns: str, caption: Callable[[pd.Series], str],
               actions: Callable[[pd.Series], None] | None = None, columns: int = 4, selectable: bool = True) -> None:
    """Thumbnails in a grid, each with a caption, its live decision, optional actions and a select box."""
    if page.empty:
        st.info("Nothing to show with these filters.")
        return
    rows = [r for _, r in page.iterrows()]
    for start in range(0, len(rows), columns):
        cols = st.columns(columns, gap="small")
        for col, row in zip(cols, rows[start:start + columns]):
            with col.container(border=True, key=f"{ns}-card-{int(row['sample_id'])}"):
                st.image(thumb(root, row["sample_id"], row.get("path")), width="stretch")
                st.markdown(caption(row))
                status = status_text(row)
                if status:
                    st.caption(status)
                if actions is not None:
                    actions(row)
                if selectable:
                    st.checkbox("select", key=f"{ns}-sel-{int(row['sample_id'])}")


def metadata_filter(root: str, runs_rev: tuple, ns: str) -> tuple:
    """A metadata key picker + value multiselect (only when the project has sample metadata); returns the
    ``meta`` filter of :func:`app.data.label_issues_page`: ``()`` or ``(key, (values...))``."""
    keys = data.metadata_keys(root, runs_rev)
    if not keys:
        return ()
    key = st.selectbox("Metadata", ["(any)"] + keys, key=f"{ns}-meta-key", width=160)
    if key == "(any)":
        return ()
    values = st.multiselect(f"{key} is", data.metadata_values(root, runs_rev, key), key=f"{ns}-meta-values",
                            width=220)
    return (key, tuple(values)) if values else ()


def no_data(message: str) -> None:
    """An empty-state box telling the user which command fills this page."""
    st.info(message, icon=":material/info:")


# ------------------------------------------------------------------------------------------- map
MAX_CATEGORIES = 20  # legend entries on the map; the rest are drawn grey as 'other'


@st.cache_resource(ttl=data.TTL_S, max_entries=8, show_spinner=False)
def map_figure(root: str, rev: tuple, color_by: str, max_points: int):
    """The 2-D map as a WebGL scatter, one trace per colour; returns (total points, points drawn, figure).

    Cached as a resource (not copied per rerun): building a Plotly figure validates every array, which costs
    more than the query.  ``customdata`` holds the sample id, so a selection maps back to samples.
    """
    import plotly.express as px
    import plotly.graph_objects as go

    total, pts = data.map_points(root, rev[1:], max_points=max_points)
    relabels = data.live_relabels(root, rev).set_index("sample_id")["new_label"]
    pts = pts.assign(label=pts["sample_id"].map(relabels).fillna(pts["label"]).fillna("(unlabeled)"))
    values = (pts["cluster"].astype("Int64").astype(str) if color_by == "cluster" else pts[color_by].astype(str))
    top = values.value_counts().index[:MAX_CATEGORIES]
    values = values.where(values.isin(top), "other")
    palette = px.colors.qualitative.Dark24
    fig = go.Figure()
    for i, value in enumerate(sorted(values.unique(), key=lambda v: (v in ("other", "none"), v))):
        g = pts[values == value]
        fig.add_trace(go.Scattergl(
            x=g["x"].to_numpy(), y=g["y"].to_numpy(), mode="markers", name=value,
            customdata=g["sample_id"].to_numpy(), text=g["label"].to_numpy(),
            hovertemplate="#%{customdata} · %{text}<extra>" + value.replace("<", "&lt;") + "</extra>",
            marker=dict(size=4 if len(pts) > 5000 else 7, opacity=0.8,
                        color="#bbbbbb" if value in ("other", "none") else palette[i % len(palette)])))
    fig.update_layout(margin=dict(l=0, r=0, t=10, b=0), legend_title_text=color_by, dragmode="select", height=520,
                      xaxis=dict(showticklabels=False, title=None), yaxis=dict(showticklabels=False, title=None))
    return total, len(pts), fig

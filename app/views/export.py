"""Export: write the cleaned manifest / ImageFolder tree with the live decisions applied, and the queue."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from curate.app import components as ui
from curate.app import data
from curate.engine import export as ex
from curate.engine.catalog import CurateError

NS = "exp"

root = data.project_root()
rev = data.revision(root)
st.title("Export")
cat = data.catalog(root)

counts = data.live_decision_counts(root, rev)
st.markdown(
    "The export applies the **latest live decision** of each sample: *remove* leaves it out, *relabel* changes its "
    "label, *merge* keeps that copy and leaves out the other copies of its duplicate set, *keep* changes nothing. "
    f"Live decisions now: {', '.join(f'{n:,} {a}' for a, n in sorted(counts.items())) or 'none'}."
)

with st.form(f"{NS}-form"):
    formats = st.pills("Manifest format", ["csv", "parquet"], selection_mode="multi", default=["csv"], key=f"{NS}-formats")
    tree = st.toggle("ImageFolder tree", key=f"{NS}-tree", help="<out>/imagefolder/[split/]class/<id>_<file>")
    link = st.segmented_control("Tree files as", ["symlink", "copy"], default="symlink", key=f"{NS}-link")
    queue = st.toggle("Annotation queue (CSV, JSON, Label Studio)", value=True, key=f"{NS}-queue")
    url_prefix = st.text_input("Label Studio image URL prefix (optional)", key=f"{NS}-url",
                               placeholder="e.g. /data/local-files/?d=  (default: absolute file paths)")
    out = st.text_input("Output folder (new or empty)", key=f"{NS}-out",
                        placeholder=f"default: {Path(root) / 'exports' / '<timestamp>'}")
    go = st.form_submit_button("Export", type="primary")

if go:
    fmts = list(formats or []) + (["imagefolder"] if tree else [])
    data.release()  # the export opens its own connections
    try:
        with st.spinner("exporting…"):
            res = ex.export_dataset(cat, out_dir=out.strip() or None, formats=fmts or ["csv"], link=link or "symlink",
                                    queue=queue, url_prefix=url_prefix.strip() or None)
    except CurateError as exc:
        st.error(str(exc))
    else:
        st.session_state[f"{NS}-last"] = res.summary()

last = st.session_state.get(f"{NS}-last")
if last:
    st.success(f"Exported {last['n_exported']:,} of {last['n_samples']:,} samples to `{last['out_dir']}`")
    cols = st.columns(4)
    cols[0].metric("Removed", f"{last['n_removed']:,}")
    cols[1].metric("Relabelled", f"{last['n_relabelled']:,}")
    cols[2].metric("Newly labelled", f"{last['n_labelled']:,}")
    cols[3].metric("Queue items", f"{last['n_queue']:,}")
    if last["n_missing_files"] or last["n_unlabelled_skipped"]:
        st.warning(f"ImageFolder tree: {last['n_missing_files']:,} missing file(s) and "
                   f"{last['n_unlabelled_skipped']:,} unlabelled sample(s) were not placed")
    st.caption("Files: " + ", ".join(f"`{f}`" for f in last["files"]))
    changes = Path(last["out_dir"]) / "changes.csv"
    if changes.is_file() and changes.stat().st_size < 20_000_000:
        st.download_button("Download changes.csv", changes.read_bytes(), file_name="changes.csv", mime="text/csv",
                           key=f"{NS}-dl-changes")
    ui.no_data("The manifest lists path, label, split and sample_id of every sample that stays; changes.csv says "
               "what was removed or relabelled, by which decision and why.")

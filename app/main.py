"""Curate review app: ``streamlit run app/main.py -- --project DIR`` (or ``curate ui``).

The project folder comes from ``CURATE_PROJECT`` or ``--project``; every page reads the catalog through
:mod:`app.data` and writes decisions through :mod:`app.components`.  The pages live in ``views/`` rather than
``pages/``: a ``pages/`` folder next to the entry point switches Streamlit (and AppTest) to the legacy
multipage mode, which runs a page without this entry point.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
# `streamlit run app/main.py` from a checkout that is not pip-installed: the checkout's curate/ package must be
# importable (installed, this file is curate/app/main.py and `curate` already is)
if (_REPO / "curate" / "__init__.py").is_file() and str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import streamlit as st  # noqa: E402

from curate.app import components as ui  # noqa: E402
from curate.app import data  # noqa: E402
from curate.engine.catalog import CurateError  # noqa: E402

st.set_page_config(page_title="Curate", page_icon=":material/cleaning_services:", layout="wide")

root = data.project_root()
try:
    data.catalog(root)
except CurateError as exc:
    st.error(str(exc))
    st.stop()

PAGES = {
    "Dataset": [
        st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page("views/clusters.py", title="Clusters", icon=":material/scatter_plot:"),
        st.Page("views/search.py", title="Search", icon=":material/search:"),
    ],
    "Review": [
        st.Page("views/label_issues.py", title="Label issues", icon=":material/label:"),
        st.Page("views/duplicates.py", title="Duplicates", icon=":material/content_copy:"),
        st.Page("views/outliers.py", title="Outliers & image quality", icon=":material/blur_on:"),
        st.Page("views/annotate.py", title="Annotate", icon=":material/edit:"),
    ],
    "Results": [
        st.Page("views/decisions.py", title="Decisions", icon=":material/history:"),
        st.Page("views/export.py", title="Export", icon=":material/download:"),
    ],
}
page = st.navigation(PAGES)

with st.sidebar:
    st.caption(f"Project: `{root}`")
    st.caption("Decisions are saved immediately; undo them on the Decisions page.")

with data.run_scope(root):
    ui.show_flash(root)  # the result of the action just taken (callbacks ran before this rerun), with its undo
    page.run()

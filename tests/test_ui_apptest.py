"""The review app under streamlit.testing (AppTest): every page renders over a real project, and every review
action lands in the DuckDB catalog (and undo reverses it)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from curate.app.components import NEW_LABEL
from tests.ui_fixtures import build_audited_project, build_ui_project, clone_project

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
PAGES = ["overview", "label_issues", "duplicates", "outliers", "clusters", "annotate", "search", "decisions", "export"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build_ui_project(tmp_path_factory.mktemp("ui-apptest"))


@pytest.fixture
def proj(template, tmp_path, monkeypatch):
    p = clone_project(template, tmp_path / "project")
    monkeypatch.setenv("CURATE_PROJECT", str(p.cat.root))
    return p


_SHARED: dict[str, object] = {}


def open_page(page: str) -> AppTest:
    """A fresh simulated session on ``page`` (page files are registered under their file names)."""
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    # Every AppTest scans all installed packages for Streamlit components (~1 s on a busy runner); the result
    # is the same for every test, so it is shared.
    if "components" in _SHARED and hasattr(at, "_bidi_component_manager"):
        at._bidi_component_manager = _SHARED["components"]
    at.switch_page(f"views/{page}.py").run()
    _SHARED.setdefault("components", getattr(at, "_bidi_component_manager", None))
    assert not at.exception, [e.value for e in at.exception]
    return at


def live(cat) -> pd.DataFrame:
    return cat.live_decisions().set_index("sample_id")


def labels(cat) -> dict[int, str]:
    cl = cat.current_labels()
    return dict(zip(cl["sample_id"], cl["label"]))


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


# ------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(proj, page):
    at = open_page(page)
    assert not at.error, [e.value for e in at.error]
    titles = [t.value for t in at.title]
    assert titles, f"{page} has no title"


def test_missing_project_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_PROJECT", str(tmp_path / "nowhere"))
    at = AppTest.from_file(str(MAIN), default_timeout=30).run()
    assert at.error and "no Curate project" in at.error[0].value
    assert not at.exception


def test_overview_counts(proj):
    at = open_page("overview")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Samples"] == "26" and metrics["Labeled"] == "22" and metrics["Classes"] == "3"
    issues = at.dataframe[0].value.set_index("issue")
    assert issues.at["label issues", "flagged"] == 4 and issues.at["duplicate sets", "flagged"] == 2
    assert issues.at["image: dark", "flagged"] == 2 and issues.at["annotation queue", "flagged"] == 4


def test_overview_class_distribution_follows_relabels(proj):
    from curate.app import data

    cat = proj.cat
    root = str(cat.root)
    dist = lambda: data.overview(root, data.revision(root))["classes"].set_index("label")["samples"].to_dict()  # noqa: E731
    assert dist() == {"cat": 8, "bird": 7, "dog": 7}
    did = cat.add_decision(proj.flagged[0], "relabel", "cat")  # a bird
    cat.add_decision(proj.pool[0], "relabel", "heron")  # an unlabelled sample gets a label
    assert dist() == {"cat": 9, "bird": 6, "dog": 7, "heron": 1}
    ov = data.overview(root, data.revision(root))
    assert ov["counts"]["labeled"] == 23 and ov["counts"]["reviewed"] == 2
    cat.undo_decision(did)
    assert dist() == {"cat": 8, "bird": 7, "dog": 7, "heron": 1}


# ------------------------------------------------------------------------------------------- label issues
def test_label_issues_shows_flagged_most_likely_first(proj):
    at = open_page("label_issues")
    text = markdown(at)
    shown = [sid for sid in proj.flagged if f"#{sid}**" in text]
    assert shown == proj.flagged
    assert text.index(f"#{proj.flagged[0]}**") < text.index(f"#{proj.flagged[-1]}**")


def test_accept_suggestion_keep_remove_and_relabel_land_in_duckdb(proj):
    cat = proj.cat
    a, b, c, d = proj.flagged
    at = open_page("label_issues")
    at.button(key=f"li-accept-{a}").click().run()
    assert live(cat).at[a, "action"] == "relabel" and labels(cat)[a] == "cat"  # bird -> suggested cat
    assert f"#{a}**" not in markdown(at)  # reviewed issues leave the 'unreviewed' view
    assert any("saved" in s.value for s in at.success)

    at.button(key=f"li-keep-{b}").click().run()
    at.button(key=f"li-remove-{c}").click().run()
    at.selectbox(key=f"li-relabel-{d}").set_value("cat").run()
    lv = live(cat)
    assert lv.at[b, "action"] == "keep" and lv.at[c, "action"] == "remove"
    assert lv.at[d, "action"] == "relabel" and lv.at[d, "new_label"] == "cat"
    assert set(cat.decisions()["who"]) == {"ui"}
    assert all(r for r in cat.decisions()["reason"])


def test_relabel_to_a_new_class(proj):
    a = proj.flagged[0]
    at = open_page("label_issues")
    at.selectbox(key=f"li-relabel-{a}").set_value(NEW_LABEL).run()
    at.text_input(key=f"li-relabel-{a}-new").input("heron").run()
    assert labels(proj.cat)[a] == "heron" and "heron" in proj.cat.class_names()


def test_bulk_actions_apply_to_selection_or_page(proj):
    cat = proj.cat
    a, b, c, d = proj.flagged
    at = open_page("label_issues")
    at.checkbox(key=f"li-sel-{a}").check()
    at.checkbox(key=f"li-sel-{c}").check().run()
    at.button(key="li-bulk-accept").click().run()
    lv = live(cat)
    assert set(lv.index) == {a, c} and set(lv["action"]) == {"relabel"}
    at.button(key="li-bulk-remove").click().run()  # nothing selected: the whole (remaining) page
    lv = live(cat)
    assert lv.at[b, "action"] == "remove" and lv.at[d, "action"] == "remove"


def test_filters_and_hostile_search_text_are_bound_parameters(proj):
    at = open_page("label_issues")
    at.multiselect(key="li-given").select("dog").run()
    text = markdown(at)
    assert f"#{proj.flagged[2]}**" in text and f"#{proj.flagged[0]}**" not in text
    at.text_input(key="li-search").input("'; DROP TABLE samples; --").run()
    assert not at.exception and proj.cat.counts()["samples"] == 26
    assert any("Nothing to show" in i.value for i in at.info)


def test_flash_undo_reverses_the_last_action(proj):
    a = proj.flagged[0]
    at = open_page("label_issues")
    at.button(key=f"li-remove-{a}").click().run()
    assert live(proj.cat).at[a, "action"] == "remove"
    undo_buttons = [b for b in at.button if b.key and b.key.startswith("flash-undo-")]
    undo_buttons[0].click().run()
    assert a not in live(proj.cat).index


# ------------------------------------------------------------------------------------------- duplicates
def test_duplicates_merge_and_not_duplicates(proj):
    cat = proj.cat
    at = open_page("duplicates")
    text = markdown(at)
    assert "**Set 1**" in text and "**Set 2**" in text and "crosses splits" in text
    keeper = proj.near_set[2]
    at.button(key=f"dup-merge-{keeper}").click().run()
    lv = live(cat)
    assert lv.at[keeper, "action"] == "merge" and len(lv) == 1
    at.button(key="dup-keepall-1").click().run()
    lv = live(cat)
    assert all(lv.at[s, "action"] == "keep" for s in proj.exact_set)
    assert "**Set 1**" not in markdown(at)  # reviewed sets leave the default view


def test_duplicates_bulk_merge_keeps_the_suggested_keepers(proj):
    at = open_page("duplicates")
    at.button(key="dup-bulk-merge").click().run()
    lv = live(proj.cat)
    assert set(lv.index) == {proj.exact_set[0], proj.near_set[0]} and set(lv["action"]) == {"merge"}


# ------------------------------------------------------------------------------------------- outliers / quality
def test_outliers_and_image_quality_actions(proj):
    at = open_page("outliers")
    text = markdown(at)
    assert all(f"#{s}**" in text for s in proj.outliers)
    at.button(key=f"out-remove-{proj.outliers[0]}").click().run()
    assert live(proj.cat).at[proj.outliers[0], "action"] == "remove"
    at.segmented_control(key="oq-view").set_value("Image quality").run()
    assert not at.exception
    text = markdown(at)
    assert all(f"#{s}**" in text for s in proj.dark)
    at.button(key=f"iq-keep-{proj.dark[0]}").click().run()
    assert live(proj.cat).at[proj.dark[0], "action"] == "keep"


# ------------------------------------------------------------------------------------------- clusters
def test_cluster_pick_shows_members_and_relabel_works(proj):
    at = open_page("clusters")
    assert len(at.get("plotly_chart")) == 1
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert sum(len(t["x"]["bdata"]) if isinstance(t["x"], dict) else len(t["x"]) for t in chart["data"]) > 0
    at.selectbox(key="cl-cluster").set_value(3).run()  # the unlabelled pool
    text = markdown(at)
    assert all(f"#{s}**" in text for s in proj.pool)
    at.selectbox(key=f"cl-relabel-{proj.pool[0]}").set_value("dog").run()
    assert labels(proj.cat)[proj.pool[0]] == "dog"


# ------------------------------------------------------------------------------------------- annotate
def test_annotate_labels_the_queue_in_order_and_skips(proj):
    cat = proj.cat
    at = open_page("annotate")
    assert any(f"Sample #{proj.pool[0]}" in m.value for m in at.markdown)
    at.button(key="ann-label-2").click().run()  # classes are bird, cat, dog
    assert labels(cat)[proj.pool[0]] == "dog"
    assert live(cat).at[proj.pool[0], "reason"].startswith("annotation queue (batch 1")
    assert any(f"Sample #{proj.pool[1]}" in m.value for m in at.markdown)
    at.button(key="ann-skip").click().run()
    assert any(f"Sample #{proj.pool[2]}" in m.value for m in at.markdown)
    assert proj.pool[1] not in live(cat).index
    at.button(key="ann-remove").click().run()
    assert live(cat).at[proj.pool[2], "action"] == "remove"


def test_annotate_skips_labelled_samples_and_says_when_done(proj):
    cat = proj.cat
    cat.add_labels([(proj.pool[0], "cat")], source="annotation")  # e.g. `curate import-labels`
    cat.add_decisions([(proj.pool[1], "remove", None, "bad"), (proj.pool[2], "relabel", "dog", "")])
    at = open_page("annotate")
    assert any(f"Sample #{proj.pool[3]}" in m.value for m in at.markdown)
    at.button(key="ann-label-0").click().run()
    assert labels(cat)[proj.pool[3]] == "bird"
    assert any("queue is done" in s.value for s in at.success)


# ------------------------------------------------------------------------------------------- decisions / undo
def test_decisions_page_lists_history_and_undo_reverses(proj):
    cat = proj.cat
    a = proj.flagged[0]
    did = cat.add_decision(a, "relabel", "dog", reason="test")
    at = open_page("decisions")
    assert any(m.value.startswith(f"#{did} · sample **#{a}**") for m in at.markdown)
    at.button(key=f"dec-undo-{did}").click().run()
    assert a not in live(cat).index and labels(cat)[a] == "bird"
    text = markdown(at)
    assert f"undo of #{did}" in text and "undone by" in text
    assert f"dec-undo-{did}" not in [b.key for b in at.button]  # an undone decision cannot be undone again


# ------------------------------------------------------------------------------------------- search / export
def test_search_by_path_and_similarity_degrades_without_embeddings(proj):
    at = open_page("search")
    at.text_input(key="srch-text").input("cat_dup").run()
    assert f"#{proj.exact_set[1]}**" in markdown(at)
    at.segmented_control(key="srch-mode").set_value("Similar to a sample").run()
    assert not at.exception
    assert any("curate embed" in i.value for i in at.info)


def test_similarity_search_by_sample_uses_the_index(proj, tmp_path):
    import numpy as np

    from curate.engine.byo import import_embeddings
    from curate.engine.export import load_inputs

    samples, labels, _, _ = load_inputs(proj.cat)
    lab = labels.set_index("sample_id")["label"]
    centre = {"bird": [1, 0, 0], "cat": [0, 1, 0], "dog": [0, 0, 1]}
    rng = np.random.default_rng(0)
    vectors = np.array([centre.get(lab.get(i), [1, 1, 1]) for i in samples["sample_id"]], dtype=np.float32)
    vectors += rng.normal(0, 0.05, vectors.shape).astype(np.float32)
    np.savez(tmp_path / "vecs.npz", vectors=vectors, ids=samples["sample_id"].to_numpy())
    import_embeddings(proj.cat, tmp_path / "vecs.npz", encoder="byo:test")

    at = open_page("search")
    at.segmented_control(key="srch-mode").set_value("Similar to a sample").run()
    at.number_input(key="srch-k").set_value(5).run()
    query = proj.ids["train/cat/cat_1.png"]
    at.number_input(key="srch-sid").set_value(query).run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    hits = [int(k.split("-")[-1]) for k in (b.key for b in at.button) if k and k.startswith("srch-keep-")]
    assert len(hits) == 5 and query not in hits
    assert all(labels_of == "cat" for labels_of in (lab.get(h) for h in hits))
    at.segmented_control(key="srch-mode").set_value("Text").run()
    assert any("needs CLIP" in i.value for i in at.info)  # a clear message, not an error


def test_export_page_writes_the_cleaned_dataset(proj):
    cat = proj.cat
    cat.add_decision(proj.flagged[1], "remove", reason="bad")
    at = open_page("export")
    at.button[0].click().run()  # the form's Export button
    assert not at.exception and any("Exported 25 of 26" in s.value for s in at.success)
    out = sorted(cat.project.exports_dir.iterdir())[-1]
    m = pd.read_csv(out / "manifest.csv")
    assert proj.flagged[1] not in set(m["sample_id"]) and len(m) == 25
    assert (out / "label_studio.json").is_file()


# ------------------------------------------------------------------------------------------- input safety
HOSTILE = ["x'); DROP TABLE samples; --", "' OR '1'='1", "\"; DELETE FROM decisions; --", "%_\\'", "Robert'); --"]


def test_sql_injection_strings_in_search_filter_and_relabel_fields_are_data(proj):
    cat = proj.cat
    n_samples, a = cat.counts()["samples"], proj.flagged[0]
    # relabel through the 'new label' text box: the hostile text becomes a label, verbatim
    at = open_page("label_issues")
    at.selectbox(key=f"li-relabel-{a}").set_value(NEW_LABEL).run()
    at.text_input(key=f"li-relabel-{a}-new").input(HOSTILE[0]).run()
    assert not at.exception
    assert labels(cat)[a] == HOSTILE[0] and HOSTILE[0] in cat.class_names()
    for text in HOSTILE:
        at.text_input(key="li-search").input(text).run()  # path search on the label issues page
        assert not at.exception and any("Nothing to show" in i.value for i in at.info), text
    at = open_page("search")
    for text in HOSTILE + ["1 OR 1=1"]:
        at.text_input(key="srch-text").input(text).run()
        assert not at.exception, text
        assert f"#{a}**" not in markdown(at)  # matched nothing: the text was a literal, not SQL
    at.text_input(key="srch-text").input("cat_dup").run()
    assert f"#{proj.exact_set[1]}**" in markdown(at)  # and the same field still finds real paths
    assert cat.counts()["samples"] == n_samples and cat.scalar("SELECT count(*) FROM decisions") == 1
    at = open_page("decisions")  # the hostile label renders as text in the history
    assert not at.exception


def test_app_read_functions_bind_hostile_filters(proj):
    from curate.app import data

    root, cat = str(proj.cat.root), proj.cat
    rev = data.revision(root)
    for text in HOSTILE:
        assert data.find_samples(root, rev, text)[0] == 0
        assert data.label_issues_page(root, rev, given=(text,), suggested=(text,), search=text)[0] == 0
        assert data.decisions_page(root, rev, actions=(text,))[0] == 0
        assert data.image_issues_page(root, rev, issues=(text,))[0] == 0
        assert data.duplicate_sets_page(root, rev, kinds=(text,))[0] == 0
    assert data.find_samples(root, rev, "%")[0] == 0  # LIKE wildcards are literal too
    assert data.find_samples(root, rev, "_")[0] == len([p for p in cat.samples()["path"] if "_" in p])
    assert cat.counts()["samples"] == 26 and len(cat.decisions()) == 0


# ------------------------------------------------------------------------------------------- score plots, SemDeDup
@pytest.fixture(scope="module")
def audited_template(tmp_path_factory):
    return build_audited_project(tmp_path_factory.mktemp("ui-audited"))


@pytest.fixture
def audited(audited_template, tmp_path, monkeypatch):
    p = clone_project(audited_template, tmp_path / "project")
    monkeypatch.setenv("CURATE_PROJECT", str(p.cat.root))
    return p


def arr(v) -> list:
    """A Plotly JSON array: a plain list, or plotly's typed array ``{"dtype", "bdata"[, "shape"]}`` (plotly >= 6)."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(n) for n in str(v["shape"]).split(",")])
        return a.tolist()
    return list(v)


def figures(at: AppTest) -> list[dict]:
    """The page's Plotly charts as figure JSON."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_label_issue_histogram_and_noise_matrix(audited):
    at = open_page("label_issues")
    figs = {json.dumps(f["layout"].get("title", {})): f for f in figures(at)}
    hist = next(f for t, f in figs.items() if "Label quality" in t)
    flagged = next(tr for tr in hist["data"] if tr["name"] == "flagged")
    assert sum(arr(flagged["y"])) == len(audited.cat.query("SELECT 1 FROM label_issues WHERE is_issue"))
    boundary = audited.cat.scalar("SELECT max(label_quality) FROM label_issues WHERE is_issue")
    assert any(abs(sh["x0"] - boundary) < 1e-9 for sh in hist["layout"]["shapes"])  # the flag line
    noise = next(f for t, f in figs.items() if "noise matrix" in t)
    heat = noise["data"][0]
    assert heat["type"] == "heatmap" and arr(heat["x"]) == ["bird", "cat", "dog"]
    z = arr(heat["z"])
    assert all(abs(sum(row[j] for row in z) - 1) < 1e-6 for j in range(3))  # P(given | true): columns sum to 1


def test_outlier_histogram_has_the_cutoff_line(audited):
    at = open_page("outliers")
    fig = figures(at)[0]
    cutoff = audited.cat.last_run("outliers")["summary"]["score_cutoff"]
    assert any(abs(sh["x0"] - cutoff) < 1e-9 for sh in fig["layout"]["shapes"])
    assert sum(sum(arr(tr["y"])) for tr in fig["data"]) == audited.cat.scalar("SELECT count(*) FROM outliers")


def test_apply_semdedup_keep_fraction_as_removes_then_undo(audited):
    cat = audited.cat
    curve = cat.last_run("duplicates")["summary"]["semdedup"]["curve"]
    i = max(k for k, p in enumerate(curve) if p["n_removed"] >= 4)  # a point that prunes a few samples
    threshold = curve[i]["threshold"]
    pruned = set(cat.semdedup_pruned(threshold).tolist())
    assert len(pruned) == curve[i]["n_removed"]
    decided = sorted(pruned)[0]
    cat.add_decision(decided, "keep", reason="reviewed by hand")  # a reviewer's decision is never overridden

    at = open_page("duplicates")
    assert any(arr(f["data"][0]["x"]) == [p["threshold"] for p in curve] for f in figures(at))
    at.select_slider(key="dup-keep-fraction").set_value(i).run()
    assert f"{len(pruned) - 1:,} of them have no decision yet" in "\n".join(c.value for c in at.caption)
    at.button(key="dup-apply-keep-fraction").click().run()
    assert not at.exception
    lv = live(cat)
    removed = set(lv.index[lv["action"] == "remove"])
    assert removed == pruned - {decided} and lv.at[decided, "action"] == "keep"
    assert all("SemDeDup keep fraction" in r for r in lv.loc[sorted(removed), "reason"])

    at.button(key="dup-undo-keep-fraction").click().run()  # one action undoes the whole batch
    assert not at.exception
    lv = live(cat)
    assert set(lv.index) == {decided}
    history = cat.decisions(limit=100)
    assert int(history["undoes"].notna().sum()) == len(removed)
    assert not [b for b in at.button if b.key == "dup-undo-keep-fraction"]

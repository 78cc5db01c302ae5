"""Label Studio round trip for review: tasks with pre-annotations out, the annotators' choices back as decisions.

Out (:func:`review_tasks`, ``curate export --format labelstudio --for label-issues|duplicates``): one task per
unreviewed candidate, in Label Studio's import JSON::

    {"data": {"image": "/abs/path.png", "sample_id": 7, "current_label": "cat", "suggested_label": "dog", ...},
     "predictions": [{"model_version": "curate-suggestion", "score": 0.91,
                      "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                  "value": {"choices": ["dog"]}}]},
                     {"model_version": "current-label", "score": 0.08, "result": [... ["cat"] ...]}]}

so the annotator starts from Curate's suggestion (or the current label) and corrects it rather than labelling from
scratch.  Label-issue tasks ask for the label (``<Choices name="label">``, score = the suggestion's confidence and
the current label's label quality); duplicate tasks show the copy next to its set's keeper and ask ``keep`` or
``remove`` (``<Choices name="decision">``, pre-annotated ``remove`` with the similarity as score).
``label_studio_config.xml`` holds the matching labeling interface.

Back (:func:`import_review`, ``curate import-labelstudio FILE``): a Label Studio JSON export (tasks with
``annotations[].result`` and ``completed_by``).  Per task the latest annotation that was not cancelled decides: a
label equal to the sample's current label records ``keep``, a different one ``relabel``; a duplicate task's
``keep`` / ``remove`` records that action.  ``who`` is the annotator (``completed_by``: e-mail, else user id).
Everything is recorded in one transaction through :meth:`engine.catalog.Catalog.add_decisions` (the UI's path);
a task whose decision is already the sample's live one is not recorded twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

import pandas as pd

from curate.engine.catalog import Catalog, CurateError
from curate.engine.formats.base import MULTI_SEP, read_json

LABEL_FIELD = "label"
DECISION_FIELD = "decision"
_COUNTERS = {"keep": "kept", "relabel": "relabelled", "remove": "removed"}


def _choices(from_name: str, values: list[str]) -> list[dict]:
    return [{"from_name": from_name, "to_name": "image", "type": "choices", "value": {"choices": values}}]


def _num(v) -> float | None:
    return None if v is None or pd.isna(v) else float(v)


def task_image(path: object, url_prefix: str | None = None) -> str:
    """``data.image`` of a Label Studio task: the absolute file path, or ``url_prefix`` + the URL-quoted path."""
    return str(path) if url_prefix is None else url_prefix + quote(str(path).lstrip("/"))


def review_tasks(cat: Catalog, target: str = "label-issues", url_prefix: str | None = None) -> list[dict]:
    """Label Studio tasks with pre-annotations for the unreviewed ``label-issues`` or ``duplicates``."""
    tasks = []
    if target == "label-issues":
        for r in cat.label_issue_candidates().itertuples(index=False):
            preds = []
            if r.suggested_label is not None and not pd.isna(r.suggested_label):
                preds.append({"model_version": "curate-suggestion", "score": _num(r.suggested_confidence),
                              "result": _choices(LABEL_FIELD, str(r.suggested_label).split(MULTI_SEP))})
            if r.current_label is not None and not pd.isna(r.current_label):
                preds.append({"model_version": "current-label", "score": _num(r.label_quality),
                              "result": _choices(LABEL_FIELD, str(r.current_label).split(MULTI_SEP))})
            tasks.append({
                "data": {"image": task_image(r.path, url_prefix), "sample_id": int(r.sample_id), "kind": "label-issue",
                         "current_label": r.current_label, "suggested_label": r.suggested_label,
                         "suggested_confidence": _num(r.suggested_confidence), "label_quality": _num(r.label_quality)},
                "predictions": preds,
            })
    elif target == "duplicates":
        for r in cat.duplicate_candidates().itertuples(index=False):
            keeper = None if r.keeper_id is None or pd.isna(r.keeper_id) else int(r.keeper_id)
            tasks.append({
                "data": {"image": task_image(r.path, url_prefix), "sample_id": int(r.sample_id), "kind": "duplicate",
                         "set_id": int(r.set_id), "duplicate_kind": r.kind, "similarity": _num(r.similarity),
                         "current_label": r.current_label, "keeper_id": keeper,
                         "keeper_image": None if keeper is None else task_image(r.keeper_path, url_prefix)},
                "predictions": [{"model_version": "curate-duplicates", "score": _num(r.similarity),
                                 "result": _choices(DECISION_FIELD, ["remove"])}],
            })
    else:
        raise CurateError(f"unknown review target {target!r}; use label-issues or duplicates")
    return tasks


def label_config(target: str, classes: list[str]) -> str:
    """The Label Studio labeling interface (XML) matching :func:`review_tasks`."""
    if target == "duplicates":
        return ('<View>\n  <Header value="Duplicate of sample $keeper_id (similarity $similarity): keep this copy?"/>\n'
                '  <Image name="image" value="$image"/>\n  <Image name="keeper" value="$keeper_image"/>\n'
                f'  <Choices name="{DECISION_FIELD}" toName="image" choice="single" showInline="true">\n'
                '    <Choice value="remove"/>\n    <Choice value="keep"/>\n  </Choices>\n</View>\n')
    choices = "".join(f"    <Choice value={quoteattr(c)}/>\n" for c in classes)
    return ('<View>\n  <Header value="Current label: $current_label; Curate suggests: $suggested_label"/>\n'
            '  <Image name="image" value="$image"/>\n'
            f'  <Choices name="{LABEL_FIELD}" toName="image" choice="single" showInline="true">\n{choices}'
            '  </Choices>\n</View>\n')


def write_review(cat: Catalog, out: Path, target: str, url_prefix: str | None = None) -> list[Path]:
    """Write ``label_studio_review.json`` and ``label_studio_config.xml`` into the folder ``out``."""
    tasks = review_tasks(cat, target, url_prefix)
    files = [out / "label_studio_review.json", out / "label_studio_config.xml"]
    files[0].write_text(json.dumps(tasks, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    classes = sorted({*cat.class_names()})
    files[1].write_text(label_config(target, classes), encoding="utf-8")
    return files


# ------------------------------------------------------------------------------------------- back
@dataclass
class ReviewImport:
    """What :func:`import_review` recorded."""

    tasks: int = 0
    relabelled: int = 0
    kept: int = 0
    removed: int = 0
    already_recorded: int = 0
    not_annotated: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def annotator(completed_by) -> str | None:
    """``who`` from Label Studio's ``completed_by``: a user dict (e-mail preferred) or a user id."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id") or "") or None
    return None if completed_by in (None, "") else str(completed_by)


def _image_path(image: str | None) -> str | None:
    if not image:
        return None
    q = parse_qs(urlparse(image).query).get("d")
    return "/" + unquote(q[0]).lstrip("/") if q else unquote(image) if image.startswith("/") else image


def import_review(cat: Catalog, file: str | Path) -> ReviewImport:
    """Record the decisions of a Label Studio JSON export of review tasks (see the module docstring)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise CurateError(f"Label Studio export {path} not found")
    tasks = read_json(path, "Label Studio export")
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise CurateError(f"{path}: expected Label Studio's JSON export (a list of tasks); export it again as JSON")
    samples = cat.samples("id, path")
    by_path = dict(zip(samples["path"], samples["id"]))
    known = set(samples["id"].tolist())
    current = cat.current_labels().set_index("sample_id")["label"]
    live = cat.live_decisions().set_index("sample_id")
    rep = ReviewImport(tasks=len(tasks))
    rows: list[tuple] = []
    for n, t in enumerate(tasks, start=1):
        where = f"{path.name} task {n}" + (f" (id {t.get('id')})" if isinstance(t, dict) and t.get("id") else "")
        if not isinstance(t, dict):
            raise CurateError(f"{where}: not a task object; export the project again as JSON")
        data = {**(t.get("meta") or {}), **(t.get("data") or {})}
        sid = data.get("sample_id")
        if sid is None:
            sid = by_path.get(_image_path(data.get("image")))
        if sid is None:
            raise CurateError(f"{where}: has no data.sample_id and its image matches no sample; import tasks made "
                              "by `curate export --format labelstudio`")
        sid = int(sid)
        if sid not in known:
            raise CurateError(f"{where}: sample {sid} does not exist in this project")
        ann = next((a for a in reversed(t.get("annotations") or [])
                    if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")), None)
        if ann is None:
            rep.not_annotated += 1
            continue
        res = [r for r in ann["result"] if isinstance(r, dict) and r.get("type") == "choices"
               and (r.get("value") or {}).get("choices")]
        if not res:
            rep.not_annotated += 1
            continue
        r = next((x for x in res if x.get("from_name") == DECISION_FIELD), res[0])
        choices = [str(c) for c in r["value"]["choices"]]
        who = annotator(ann.get("completed_by"))
        task_ref = f"Label Studio task {t.get('id', n)}"
        if r.get("from_name") == DECISION_FIELD:
            action = choices[0].lower()
            if action not in ("keep", "remove"):
                raise CurateError(f"{where}: decision {choices[0]!r} is not keep or remove; fix the labeling config")
            new_label, reason = None, f"{task_ref}: {action} (duplicate review)"
        else:
            chosen = MULTI_SEP.join(sorted(choices)) if len(choices) > 1 else choices[0]
            cur = current.get(sid)
            same = cur is not None and not pd.isna(cur) and str(cur) == chosen
            action, new_label = ("keep", None) if same else ("relabel", chosen)
            reason = f"{task_ref}: annotator chose {chosen!r}"
        # this task's answer is already the sample's live decision (the file was imported before; after its
        # relabel the same answer would now read as a 'keep')
        if sid in live.index and live.at[sid, "reason"] == reason and (live.at[sid, "who"] == (who or "labelstudio")):
            rep.already_recorded += 1
            continue
        rows.append((sid, action, new_label, reason, who))
        counter = _COUNTERS[action]
        setattr(rep, counter, getattr(rep, counter) + 1)
    if rows:
        cat.add_decisions(rows, who="labelstudio")
    return rep

"""The analysis registry, the one runner, the Embeddings interface and the size switch.

A toy analysis added with one ``register`` call must show up everywhere the built-in ones do: ``curate audit
--help`` and ``curate audit list``, ``curate audit NAME`` (with ``--set`` options), the full audit's steps, the UI
overview's analysis table; its table is created on its first write and its run is recorded.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from curate.engine.analyses import registry
from curate.engine.analyses.registry import Config, Result
from curate.engine.catalog import CurateError, init_project, open_project
from curate.engine.ingest import ingest
from curate.engine.inputs import Inputs, use_out_of_core

from conftest import write_image


@dataclass(frozen=True)
class ToyConfig(Config):
    scale: float = 1.0
    top: int = 3

    def validate(self) -> None:
        if self.scale <= 0:
            raise CurateError(f"toy scale must be > 0, got {self.scale}; try --set scale=1")


def toy_compute(inputs, config: ToyConfig) -> Result:
    """The first coordinate of every vector times ``scale``, read block by block through the interface."""
    emb = inputs.embeddings
    ids, vals = [], []
    for _, block_ids, X in emb.iter_blocks(7):
        ids.append(block_ids)
        vals.append(X[:, 0] * config.scale)
    df = pd.DataFrame({"sample_id": np.concatenate(ids), "value": np.concatenate(vals).astype(float)})
    top = df.nlargest(config.top, "value")
    return Result({"n": len(df), "max": float(df.value.max())}, tables={"toy_values": df},
                  lines=[f"toy: {len(df)} samples, largest value {df.value.max():.3f}"], detail=top)


@pytest.fixture
def toy():
    analysis = registry.register("toy", toy_compute, config=ToyConfig, title="a toy analysis for the tests",
                                 tables=("toy_values",), order=99)
    yield analysis
    registry.unregister("toy")


@pytest.fixture
def embedded(tmp_path: Path):
    """A 20-image project with imported 8-d vectors (no model needed)."""
    for i in range(20):
        write_image(tmp_path / "data" / ("a" if i % 2 else "b") / f"{i}.png", seed=i)
    cat = init_project(tmp_path / "p")
    ingest(cat, tmp_path / "data", kind="imagefolder")
    ids = cat.samples("id")["id"].to_numpy()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vec.npz", ids=ids, embeddings=rng.normal(size=(len(ids), 8)).astype(np.float32))
    from curate.engine.byo import import_embeddings

    import_embeddings(cat, tmp_path / "vec.npz", encoder="byo:toy", shard_size=6)
    return cat


def _cli(*args):
    from curate.engine.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_one_register_call_reaches_the_cli_the_audit_and_the_ui(toy, embedded):
    cat = embedded
    assert "toy" in registry.names() and registry.get("toy") is toy
    help_text = _cli("audit", "--help").output
    assert "toy" in help_text
    listing = _cli("audit", "list").output
    assert "toy" in listing and "a toy analysis" in listing

    res = _cli("audit", "toy", "-p", cat.root, "--set", "scale=2", "--set", "top=2")
    assert res.exit_code == 0, res.output
    assert "toy: 20 samples" in res.output and "toy_values: 20 rows written" in res.output
    stored = cat.query_df("SELECT * FROM toy_values ORDER BY sample_id")
    assert len(stored) == 20 and stored["run_id"].nunique() == 1
    run = cat.last_run("toy")
    assert run["params"]["scale"] == 2 and run["params"]["encoder"] == "byo:toy"
    assert run["summary"]["n"] == 20 and run["summary"]["out_of_core"] is False

    # the same values as the vectors' first coordinate x 2
    from curate.engine.embed import load_embeddings

    es = load_embeddings(cat, "byo:toy")
    expect = pd.Series(es.vectors[:, 0] * 2, index=es.sample_ids)
    np.testing.assert_allclose(stored.set_index("sample_id")["value"], expect.loc[stored.sample_id], rtol=1e-6)

    # a bad option is one line naming it
    with pytest.raises(CurateError, match="toy scale must be > 0"):
        _cli("audit", "toy", "-p", cat.root, "--set", "scale=-1")
    with pytest.raises(CurateError, match="unknown option.*colour"):
        _cli("audit", "toy", "-p", cat.root, "--set", "colour=red")
    with pytest.raises(CurateError, match="--set takes KEY=VALUE"):
        _cli("audit", "toy", "-p", cat.root, "--set", "scale")

    # the audit's steps and the UI overview iterate the registry
    from curate.engine.pipeline import audit_steps

    assert "toy" in [name for name, _ in audit_steps()]
    from curate.app import data

    table = data.analysis_runs.__wrapped__(str(cat.root), (0,))
    row = table.set_index("analysis").loc["toy"]
    assert row["status"] == "ok" and row["rows"] == 20


def test_rerun_replaces_rows_and_a_failing_analysis_leaves_them(toy, embedded):
    cat = embedded
    registry.run(cat, "toy", top=1)
    first = cat.query_df("SELECT * FROM toy_values")
    registry.run(cat, "toy", scale=3.0)
    again = cat.query_df("SELECT * FROM toy_values")
    assert len(again) == len(first) == 20 and again["run_id"].iloc[0] != first["run_id"].iloc[0]

    def broken(inputs, config):
        raise RuntimeError("boom in compute")

    registry.register("toy", broken, config=ToyConfig, tables=("toy_values",), replace=True)
    with pytest.raises(RuntimeError):
        registry.run(cat, "toy")
    assert cat.last_run("toy", status="failed")["summary"]["error"] == "boom in compute"
    assert len(cat.query_df("SELECT * FROM toy_values")) == 20  # the earlier rows are intact


def test_an_analysis_cannot_overwrite_a_core_table(embedded):
    def evil(inputs, config):
        return Result({}, tables={"samples": pd.DataFrame({"id": [1]})})

    registry.register("evil", evil, needs=frozenset({"labels"}))
    try:
        with pytest.raises(ValueError, match="not an analysis table"):
            registry.run(embedded, "evil")
    finally:
        registry.unregister("evil")
    assert embedded.counts()["samples"] == 20


def test_config_is_frozen_and_validated():
    cfg = ToyConfig.from_options(scale=2, top=None)
    assert cfg.scale == 2 and cfg.top == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.scale = 3  # type: ignore[misc]
    with pytest.raises(CurateError, match="scale must be > 0"):
        ToyConfig(scale=0)
    with pytest.raises(CurateError, match="unknown option.*colour.*valid options: scale, top"):
        ToyConfig.from_options(colour="red")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("outliers", toy_compute)
    with pytest.raises(CurateError, match="unknown analysis"):
        registry.get("no-such-analysis")


def test_builtin_analyses_are_registered_in_audit_order():
    names = registry.names()
    for name in ("label_issues", "duplicates", "outliers", "image_quality", "clusters", "query"):
        assert name in names
    assert names.index("label_issues") < names.index("clusters") < names.index("query")
    for a in registry.analyses():
        assert a.title and a.tables, a.name
        assert registry.get(a.name.replace("_", "-")) is a


def test_memory_and_disk_embeddings_give_the_same_rows(embedded):
    """EmbeddingSet is the one-block case of the interface the shards implement."""
    from curate.engine.embed import load_embeddings
    from curate.engine.shards import ShardedEmbeddings

    mem, disk = load_embeddings(embedded, "byo:toy"), ShardedEmbeddings.open(embedded, "byo:toy")
    assert mem.in_memory and not disk.in_memory and len(mem) == len(disk) == 20 and mem.dim == disk.dim == 8

    def by_id(emb, block):
        out = {}
        for start, ids, X in emb.iter_blocks(block):
            assert np.array_equal(emb.ids()[start:start + len(ids)], ids)
            out.update(zip(ids.tolist(), X))
        return out

    a, b = by_id(mem, 6), by_id(disk, 4)
    assert a.keys() == b.keys()
    for i in a:
        np.testing.assert_allclose(a[i], b[i], atol=1e-6)
    rows = np.array([3, 0, 17])
    np.testing.assert_allclose(mem.take(rows), np.stack([a[i] for i in mem.ids()[rows]]), atol=1e-6)
    np.testing.assert_allclose(disk.take(rows), np.stack([b[i] for i in disk.ids()[rows]]), atol=1e-6)
    pos, X = mem.sample(5, seed=1)
    assert len(pos) == 5 and np.all(np.diff(pos) > 0) and np.allclose(X, mem.vectors[pos])
    pos, X = mem.sample(100)
    assert len(pos) == 20


def test_the_size_switch_is_decided_once_by_inputs(embedded, monkeypatch):
    monkeypatch.delenv("CURATE_OUT_OF_CORE", raising=False)
    monkeypatch.delenv("CURATE_OUT_OF_CORE_MIN_N", raising=False)
    assert not use_out_of_core(20, 8) and use_out_of_core(20, 8, True) and not use_out_of_core(10**9, 8, False)
    monkeypatch.setenv("CURATE_OUT_OF_CORE_MIN_N", "19")
    assert use_out_of_core(20, 8)
    inputs = Inputs.open(embedded)
    assert inputs.out_of_core and inputs.encoder == "byo:toy" and inputs.n == 20 and inputs.dim == 8
    assert not inputs.embeddings.in_memory
    monkeypatch.setenv("CURATE_OUT_OF_CORE", "0")
    assert not Inputs.open(embedded).out_of_core
    monkeypatch.setenv("CURATE_OUT_OF_CORE_MIN_N", "lots")
    monkeypatch.delenv("CURATE_OUT_OF_CORE")
    with pytest.raises(CurateError, match="CURATE_OUT_OF_CORE_MIN_N must be an integer"):
        Inputs.open(embedded)


def test_inputs_without_embeddings_open_and_say_what_to_run(tmp_path):
    cat = init_project(tmp_path / "p")
    inputs = Inputs.open(cat)
    assert inputs.encoder is None and not inputs.out_of_core
    with pytest.raises(CurateError, match="curate embed"):
        inputs.embeddings  # noqa: B018


def _module_imports(root: Path) -> dict[str, set[str]]:
    """curate.* module -> the curate.* modules it imports (top-level and function-level imports alike)."""
    import ast

    mods = {}
    for pkg in ("engine", "indexes", "app"):
        for p in (root / pkg).rglob("*.py"):
            parts = ("curate",) + p.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    edges = {}
    for name, p in mods.items():
        out = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                cands = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            for c in cands:
                while c and c not in mods:
                    c = c.rpartition(".")[0]
                if c and c != name:
                    out.add(c)
        edges[name] = out
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_one_design_in_the_source():
    """The size switch is called from one place, scale.py's second copies are gone, and no curate module imports
    itself back through others (function-level imports included)."""
    root = Path(__file__).resolve().parents[1]
    calls = []
    for pkg in ("engine", "indexes", "app"):
        for p in (root / pkg).rglob("*.py"):
            for n, line in enumerate(p.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if "use_out_of_core(" in code and not code.lstrip().startswith("def ") and "`" not in code:
                    calls.append(str(p.relative_to(root)))
    assert calls == ["engine/inputs.py"], calls
    assert not (root / "engine" / "analyses" / "scale.py").exists()
    assert _cycles(_module_imports(root)) == []


def test_inputs_serve_a_smaller_graph_from_a_wider_one(embedded):
    inputs = Inputs.open(embedded)
    wide = inputs.graph(8)
    narrow = inputs.graph(5)
    assert narrow.k == 5 and inputs.graph(5) is narrow
    np.testing.assert_array_equal(np.asarray(narrow.indices), np.asarray(wide.indices)[:, :5])
    np.testing.assert_allclose(np.asarray(narrow.similarities), np.asarray(wide.similarities)[:, :5])
    fresh = Inputs.open(embedded).graph(5)  # built on its own: the same neighbours (exact search at this size)
    np.testing.assert_array_equal(np.asarray(fresh.indices), np.asarray(narrow.indices))


def test_inputs_read_the_labels_once_with_relabels_applied(embedded, monkeypatch):
    ids = embedded.samples("id")["id"].to_numpy()
    embedded.add_decision(int(ids[0]), "relabel", new_label="c")
    inputs = Inputs.open(embedded)
    names, codes = inputs.label_codes()
    order = inputs.sample_ids()
    cur = embedded.current_labels().set_index("sample_id")["label"]
    assert names == ["a", "b", "c"]
    assert [names[c] for c in codes] == [cur[i] for i in order]
    calls = []
    monkeypatch.setattr(type(embedded), "label_codes", lambda self, s: calls.append(1))
    assert inputs.label_codes()[1] is codes and calls == []  # served from the inputs, not the catalog again
    clusters = registry.run(embedded, "clusters", inputs=inputs, k=2, name_clusters=False, map_method="pca")
    assert calls == [] and clusters.summary["k"] == 2


def test_an_analysis_check_refuses_before_a_run_is_recorded(embedded):
    def check(inputs, config):
        if config.top > inputs.n:
            raise CurateError(f"--set top={config.top} is more than the {inputs.n} embedded samples")

    registry.register("toy", toy_compute, config=ToyConfig, tables=("toy_values",), check=check)
    try:
        runs = embedded.scalar("SELECT count(*) FROM runs")
        with pytest.raises(CurateError, match="more than the 20 embedded"):
            registry.run(embedded, "toy", top=50)
        assert embedded.scalar("SELECT count(*) FROM runs") == runs  # refused before any run row
        assert registry.run(embedded, "toy", top=5).summary["n"] == 20
        # the built-in clusters check reads the catalog's counts: --k above them fails the same way
        with pytest.raises(CurateError, match="--k 21 is out of range"):
            registry.run(embedded, "clusters", k=21)
        assert embedded.scalar("SELECT count(*) FROM runs WHERE kind = 'clusters'") == 0
    finally:
        registry.unregister("toy")

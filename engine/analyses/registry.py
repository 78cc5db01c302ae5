"""The analysis registry: every analysis is one registered entry, and one runner runs any of them.

In the manner of cleanlab Datalab's issue managers, an analysis is

* a **name** (the ``curate audit`` sub-command, ``runs.kind``, ``project.audit([...])``),
* a frozen, validated **config** (a :class:`Config` dataclass: its fields are the analysis's options, checked once
  in ``validate`` with an error that names the option and a valid value),
* a pure **compute** ``(inputs, config) -> Result`` over :class:`curate.engine.inputs.Inputs` (embeddings through the
  one memory/disk interface, the kNN graph, the catalog for labels and files),
* a :class:`Result` that carries its table rows, its summary and its printable lines.

:func:`run` is the one runner: it resolves the encoder and the size switch once (:meth:`Inputs.open`), records
the run in the catalog, calls ``compute``, writes the result's tables and the summary in one transaction, and marks
the run failed (with its first error line) when anything raises.  Each ``curate audit`` command, ``curate audit all``,
:func:`curate.engine.pipeline.run_audit`, the UI's overview and :meth:`curate.Project.audit` all iterate
:func:`analyses`.  Adding an analysis is one module with one :func:`register` call::

    from curate.engine.analyses.registry import Config, Result, register

    @dataclass(frozen=True)
    class BrightnessConfig(Config):
        top: int = 10

    def brightness(inputs, config):
        df = ...                                    # per-sample rows
        return Result({"flagged": int(df.flag.sum())}, tables={"brightness": df})

    register("brightness", brightness, config=BrightnessConfig, title="very bright images")

A table a registered analysis writes is created from its first result's columns when the catalog lacks it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pandas as pd

from curate.engine.catalog import Catalog, CurateError


@dataclass(frozen=True)
class Config:
    """Base of every analysis's options: a frozen dataclass, validated when it is built.

    Subclasses add fields with defaults and override :meth:`validate`.  Build one from keyword options with
    :meth:`from_options` (None means "the default", unknown names are an error).
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`CurateError` naming the bad option and a valid value."""

    @classmethod
    def from_options(cls, **options: Any) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            valid = ", ".join(sorted(names)) or "none"
            raise CurateError(f"unknown option(s) {', '.join(unknown)} for this analysis; valid options: {valid}")
        return cls(**{k: v for k, v in options.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Result:
    """What an analysis computed.

    Attributes
    ----------
    summary : JSON-able numbers and short lists; stored with the run (``runs.summary``) and read by the UI.
    tables : catalog table -> the rows that replace that table's contents (written in one transaction).
    lines : printable one-line findings for the command line (default: built from ``summary``).
    detail : the analysis's own typed result (e.g. :class:`~curate.engine.analyses.clusters.ClusterRun`), for
        Python callers who want more than the tables.
    where : optional ``(sql, params)`` limiting which rows of the first table are replaced (the rest are kept).
    """

    summary: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    detail: Any = None
    where: tuple[str, list] | None = None

    def printable(self) -> list[str]:
        """``lines``, or one ``key: value`` line per scalar of the summary."""
        if self.lines:
            return list(self.lines)
        return [f"{k}: {_fmt(v)}" for k, v in self.summary.items() if isinstance(v, (int, float, str, bool))]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


NEEDS = frozenset({"embeddings", "graph", "labels", "files"})


@dataclass(frozen=True)
class Analysis:
    """One registered analysis (see the module docstring).

    Attributes
    ----------
    name : the registry key and ``curate audit`` name (lower case, ``_`` or ``-`` between words).
    compute : ``(inputs, config) -> Result``.
    config : the :class:`Config` subclass of its options.
    title : one line for the help of ``curate audit`` and the UI overview.
    tables : the catalog tables its results replace (for the overview; a table missing from the catalog is
        created from the result's columns).
    needs : what it reads, out of ``embeddings``, ``graph``, ``labels``, ``files``; an analysis that needs no
        embeddings runs even when the embed step failed.
    in_memory_only : the parts that need every vector in memory; an out-of-core run lists them as left out.
    kind : ``runs.kind`` of its runs (default ``name``).
    label : its step name in the audit's timing table (default: ``name`` with spaces).
    graph_option : the config field that holds the kNN-graph degree it reads (e.g. ``k``); when the caller does not
        set it, the runner fills it with the shared inputs' degree, so ``curate audit all --k 15`` reaches it.
    order : position in ``curate audit all`` (ascending; ties by name).
    write : optional ``(cat, result, run_id, summary) -> None`` replacing the default table write (it must finish
        the run, as :meth:`Catalog.replace_analysis` does).
    check : optional ``(inputs, config) -> None`` run before the run is recorded, raising a one-line
        :class:`CurateError` for inputs the analysis cannot use (e.g. ``--k`` above the number of vectors).  It
        replaces the default check, "the embeddings exist" for an analysis that needs them, so an analysis that
        can also run without vectors (label issues on imported predictions) says so here.
    """

    name: str
    compute: Callable[[Any, Config], Result]
    config: type[Config] = Config
    title: str = ""
    tables: tuple[str, ...] = ()
    needs: frozenset = frozenset({"embeddings"})
    in_memory_only: tuple[str, ...] = ()
    kind: str = ""
    label: str = ""
    graph_option: str = ""
    order: int = 100
    write: Callable[..., None] | None = None
    check: Callable[[Any, Config], None] | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", self.name):
            raise ValueError(f"analysis name must be lower-case words joined by '_' or '-', got {self.name!r}")
        if not (isinstance(self.config, type) and issubclass(self.config, Config)):
            raise TypeError(f"analysis {self.name!r}: config must be a Config subclass")
        bad = set(self.needs) - NEEDS
        if bad:
            raise ValueError(f"analysis {self.name!r}: unknown needs {sorted(bad)}; choose from {sorted(NEEDS)}")
        if not self.kind:
            object.__setattr__(self, "kind", self.name)
        if not self.label:
            object.__setattr__(self, "label", self.name.replace("_", " ").replace("-", " "))

    @property
    def needs_embeddings(self) -> bool:
        return bool({"embeddings", "graph"} & set(self.needs))

    def configure(self, config: Config | None = None, **options: Any) -> Config:
        """The validated config: ``config`` as given, or built from keyword ``options`` over the defaults."""
        if config is not None:
            if options:
                config = dataclasses.replace(config, **{k: v for k, v in options.items() if v is not None})
            if not isinstance(config, self.config):
                raise TypeError(f"analysis {self.name!r} takes a {self.config.__name__}, got {type(config).__name__}")
            return config
        return self.config.from_options(**options)


_REGISTRY: dict[str, Analysis] = {}
_BUILTINS_LOADED = False
# the built-in analyses, one module each; importing a module registers its analysis
BUILTIN_MODULES = ("label_issues", "duplicates", "outliers", "image_quality", "clusters", "active")


def register(name: str | Analysis, compute: Callable[[Any, Config], Result] | None = None, *,
             replace: bool = False, **attributes: Any) -> Analysis:
    """Register an analysis (see :class:`Analysis` for the attributes); returns it.

    ``register(Analysis(...))`` or ``register("name", compute, config=..., title=...)``.  A second registration
    of a name is an error unless ``replace=True``.
    """
    analysis = name if isinstance(name, Analysis) else Analysis(name=name, compute=compute, **attributes)
    if analysis.name in _REGISTRY and not replace:
        raise ValueError(f"an analysis named {analysis.name!r} is already registered")
    _REGISTRY[analysis.name] = analysis
    return analysis


def unregister(name: str) -> None:
    """Remove a registered analysis (tests, plugins being reloaded)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        import importlib

        for mod in BUILTIN_MODULES:
            importlib.import_module(f"curate.engine.analyses.{mod}")


def analyses() -> list[Analysis]:
    """Every registered analysis, in audit order."""
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda a: (a.order, a.name))


def names() -> list[str]:
    return [a.name for a in analyses()]


def get(name: str) -> Analysis:
    """The analysis registered as ``name`` (``-`` and ``_`` are interchangeable)."""
    _load_builtins()
    key = name.strip().lower()
    for cand in (key, key.replace("-", "_"), key.replace("_", "-")):
        if cand in _REGISTRY:
            return _REGISTRY[cand]
    raise CurateError(f"unknown analysis {name!r}; choose from {', '.join(names())}")


def tables() -> tuple[str, ...]:
    """Every catalog table a registered analysis writes."""
    return tuple(dict.fromkeys(t for a in analyses() for t in a.tables))


def run(cat: Catalog, name: str | Analysis, config: Config | None = None, *, inputs: Any = None,
        encoder: str | None = None, out_of_core: bool | None = None, graph_k: int = 10, progress: Any = None,
        **options: Any) -> Result:
    """Run one analysis end to end and write its results; returns its :class:`Result`.

    Parameters
    ----------
    cat : the project.
    name : a registered name (or an :class:`Analysis`).
    config, options : a ready config, or options to build one (None = default).
    inputs : shared :class:`~curate.engine.inputs.Inputs` (the audit passes one to every step); else opened here
        from ``encoder`` / ``out_of_core`` / ``graph_k`` (the default kNN-graph degree).
    progress : an :data:`curate.engine.progress.Progress` callback.
    """
    from curate.engine.inputs import Inputs

    analysis = name if isinstance(name, Analysis) else get(name)
    if inputs is None:
        inputs = Inputs.open(cat, encoder=encoder, out_of_core=out_of_core, k=graph_k, progress=progress)
    elif progress is not None:
        inputs = inputs.with_progress(progress)
    if config is None and analysis.graph_option and options.get(analysis.graph_option) is None:
        options[analysis.graph_option] = inputs.k
    cfg = analysis.configure(config, **options)
    # fail before a run is recorded: the analysis's own check, else "the embeddings exist" when it needs them
    if analysis.check is not None:
        analysis.check(inputs, cfg)
    elif analysis.needs_embeddings:
        inputs.embeddings  # noqa: B018
    params = {**cfg.as_dict(), "encoder": inputs.encoder if analysis.needs_embeddings else None,
              "out_of_core": bool(inputs.out_of_core and analysis.needs_embeddings)}
    run_id = cat.start_run(analysis.kind, params)
    with cat.failing_run(run_id):
        result = analysis.compute(inputs, cfg)
        if not isinstance(result, Result):
            raise TypeError(f"analysis {analysis.name!r} returned {type(result).__name__}, not a Result")
        summary = dict(result.summary)
        if analysis.needs_embeddings:
            summary.setdefault("encoder", inputs.encoder)
            summary.setdefault("out_of_core", bool(inputs.out_of_core))
            if inputs.out_of_core and analysis.in_memory_only:
                summary.setdefault("left_out", list(analysis.in_memory_only))
        result.summary = summary
        if analysis.write is not None:
            analysis.write(cat, result, run_id, summary)
        else:
            write_tables(cat, result, run_id, summary)
    return result


def write_tables(cat: Catalog, result: Result, run_id: int, summary: dict) -> None:
    """Replace each of the result's tables with its rows and finish the run, in one transaction."""
    frames = dict(result.tables)
    if not frames:
        cat.finish_run(run_id, summary)
        return
    first, *rest = frames
    where, params = result.where if result.where else (None, None)
    cat.replace_analysis(first, frames[first], run_id, summary, where=where, where_params=params,
                         also={t: frames[t] for t in rest})


def run_many(cat: Catalog, selected: Iterable[str] | None = None, **kwargs: Any) -> dict[str, Result]:
    """Run several analyses (default: all, in audit order) on one shared :class:`Inputs`."""
    from curate.engine.inputs import Inputs

    chosen = [get(n) for n in selected] if selected is not None else analyses()
    inputs = kwargs.pop("inputs", None) or Inputs.open(cat, encoder=kwargs.pop("encoder", None),
                                                       out_of_core=kwargs.pop("out_of_core", None),
                                                       k=kwargs.pop("graph_k", 10))
    return {a.name: run(cat, a, inputs=inputs, **kwargs) for a in chosen}

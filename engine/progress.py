"""Progress of long steps: one callback type that the analyses accept, drawn by the CLI.

An analysis takes ``progress: Progress | None = None`` and calls ``progress(what, done, total)`` as it goes
(``total`` None when unknown); it stays a pure function of its inputs, the callback only observes.  The CLI makes
the callback with :func:`shown`:

* on a terminal (stderr is a TTY): rich progress bars, one per ``what``, removed when the step ends;
* not a terminal (logs, pipes, CI): nothing, unless ``CURATE_PROGRESS=1`` forces plain lines
  ``progress <step>: <what> <done>/<total>`` (the first, the last and at most one every few seconds);
* ``--quiet`` or ``CURATE_PROGRESS=0``: nothing.

:func:`track` wraps a loop; it also keeps the older ``progress=True`` (a tqdm bar) of a few functions working.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, TypeVar

Progress = Callable[[str, int, Optional[int]], None]
T = TypeVar("T")

LINE_INTERVAL_S = 5.0
_ON = {"1", "true", "yes", "on", "always"}
_OFF = {"0", "false", "no", "off", "never"}


def noop(what: str, done: int, total: int | None = None) -> None:
    """A progress callback that shows nothing."""


def enabled(quiet: bool = False) -> bool:
    """Whether to show progress: not with ``quiet``; ``CURATE_PROGRESS`` forces it on/off; else when stderr is a TTY."""
    env = os.environ.get("CURATE_PROGRESS", "").strip().lower()
    if quiet or env in _OFF:
        return False
    if env in _ON:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def track(items: Iterable[T], what: str, total: int | None = None,
          progress: Progress | bool | None = None) -> Iterator[T]:
    """Iterate ``items``, reporting ``(what, done, total)`` to ``progress`` before the first and after each item.

    ``progress`` True shows a tqdm bar (the older ``progress: bool`` parameters); False/None shows nothing.
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if progress is True:
        from tqdm import tqdm

        yield from tqdm(items, desc=what, total=total, dynamic_ncols=True)
        return
    if not callable(progress):
        yield from items
        return
    progress(what, 0, total)
    done = 0
    for item in items:
        yield item
        done += 1
        progress(what, done, total)


def step(progress: Progress | None, what: str) -> "_Step":
    """``with step(progress, "UMAP 2-D map"): ...`` reports 0/1 before and 1/1 after a block without a loop."""
    return _Step(progress, what)


class _Step:
    def __init__(self, progress: Progress | None, what: str):
        self.progress, self.what = progress, what

    def __enter__(self) -> None:
        if callable(self.progress):
            self.progress(self.what, 0, 1)

    def __exit__(self, exc_type, *_) -> None:
        if callable(self.progress) and exc_type is None:
            self.progress(self.what, 1, 1)


@contextmanager
def shown(step_name: str, show: bool | None = None) -> Iterator[Progress]:
    """A progress callback for one step, drawn while the ``with`` block runs (see the module docstring).

    ``show`` None decides with :func:`enabled`.
    """
    if show is None:
        show = enabled()
    if not show:
        yield noop
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)

        bars = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        tasks: dict[str, int] = {}

        def draw(what: str, done: int, total: int | None = None) -> None:
            if what not in tasks:
                tasks[what] = bars.add_task(f"{step_name}: {what}", total=total)
            bars.update(tasks[what], completed=done, total=total)

        with bars:
            yield draw
        return

    last: dict[str, float] = {}

    def line(what: str, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if what in last and not final and now - last[what] < LINE_INTERVAL_S:
            return
        last[what] = now
        print(f"progress {step_name}: {what} {done}/{total if total is not None else '?'}", file=sys.stderr,
              flush=True)

    yield line

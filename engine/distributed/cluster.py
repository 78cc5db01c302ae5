"""Connecting to Ray: a cluster address, the cluster this machine belongs to, or a fresh local instance."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from curate.engine.catalog import CurateError

log = logging.getLogger("curate.ray")


def import_ray() -> Any:
    """``import ray`` with a one-line hint when the optional dependency is missing."""
    try:
        import ray
    except ImportError as exc:
        raise CurateError("Ray is not installed; run `pip install 'curate[scale]'` (ray[data]) to use --ray") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, **init_kwargs: Any) -> Iterator[Any]:
    """Use Ray for the duration of a block.

    Parameters
    ----------
    address : None or ``""``
        Ray's own default: the cluster named by ``RAY_ADDRESS`` or started on this machine with ``ray start``,
        else a new local instance.  ``"local"``: always a new local instance.  Anything else (``"auto"``,
        ``"ray://head:10001"``, ``"10.0.0.1:6379"``) is passed to ``ray.init(address=...)``.
    num_cpus : CPUs of a new local instance (ignored when connecting to a cluster).
    init_kwargs : further ``ray.init`` arguments.

    Yields
    ------
    The ``ray`` module.  A session that was already initialised (a test fixture, a notebook) is reused and left
    running; one started here is shut down at the end.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False, **init_kwargs}
    if address == "local":
        ray.init(num_cpus=num_cpus, **kwargs)
    elif address:
        kwargs.pop("include_dashboard", None)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as exc:
            raise CurateError(f"cannot connect to the Ray cluster at {address!r} ({str(exc).splitlines()[0][:160]}); "
                              "check the address, or pass --ray without a value for a local instance") from exc
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_slots(ray: Any) -> tuple[int, int]:
    """(GPUs, CPUs) the connected cluster offers."""
    res = ray.cluster_resources()
    return int(res.get("GPU", 0)), int(res.get("CPU", 0))


def actor_pool(ray: Any, size: int) -> Any:
    """A Ray Data ``compute=`` for ``size`` actors, across Ray versions (ActorPoolStrategy since 2.3)."""
    from ray.data import ActorPoolStrategy

    try:
        return ActorPoolStrategy(size=int(size))
    except TypeError:  # very old signature
        return ActorPoolStrategy(int(size), int(size))

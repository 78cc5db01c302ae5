"""``curate embed --ray``: embedding on a Ray cluster, stored exactly like the local pipeline stores it.

How it runs
-----------
The driver (where ``curate`` runs, next to the catalog) does what :func:`engine.embed.embed_project` does before
and after the model: it takes the encoder's lock, removes orphan shards, lists the samples without a vector, and
commits shards.  The model runs on the cluster: a Ray Data dataset of ``(sample_id, path)`` rows, one block per
would-be shard, goes through ``map_batches`` with an **actor pool of encoders** — one actor per GPU (``num_gpus=1``
each) or per CPU slot — each actor loading the model once and decoding its images itself (local paths, or any
fsspec URL: ``s3://``, ``gs://``, ``https://`` …).  Output rows stream back to the driver **in input order**
(``preserve_order``) and are cut into shards of ``shard_size`` successful vectors by :class:`ShardWriter`, which
commits each with :func:`engine.embed.write_shard`: checksummed ``.npy`` file moved into place, then the
``embedding_shards`` / ``embedded`` rows and any quarantine rows in one transaction.

So a Ray run gives the same shard boundaries, files, checksums and catalog rows as a local run with the same
batch size (batches never straddle input blocks because ``shard_size`` is a multiple of the batch size), and it
is resumable by shard the same way: a killed run loses at most the shard being assembled; the rerun embeds only
samples without an ``embedded`` row.  On GPUs the actors decode on the CPU (PIL) rather than with nvjpeg, so
vectors can differ from a local GPU run in the last bits.

The driver only holds the shard being assembled (``shard_size x dim`` floats) and the to-do list of ids and
paths (about 100 bytes per image: 10 GB at 10^8 images — split such a run with ``limit`` per call).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from curate.engine.catalog import Catalog, CurateError
from curate.engine.embed import (
    FLUSH_SECONDS,
    EmbedReport,
    embed_run,
    _reason,
    _todo,
    drop_embeddings,
    encoder_lock,
    load_rgb,
    remove_orphan_shards,
    write_shard,
    SHARD_SIZE,
)

log = logging.getLogger("curate.ray")

DEFAULT_BATCH_SIZE = 32


# ================================================================================================ shard writer
class ShardWriter:
    """Collects ``(sample_id, vector)`` results in arrival order and commits full shards with ``write_shard``.

    Same rules as the local pipeline: a shard holds ``shard_size`` successfully embedded samples (the remainder
    is written at the end, or earlier when ``flush_seconds`` passed since the last commit); quarantine rows for
    images that failed to decode are committed with the next shard, and a file that embeds now loses its earlier
    embed-stage quarantine row in the same transaction.
    """

    def __init__(self, cat: Catalog, encoder: str, description: dict, shard_size: int, run_id: int | None,
                 report: EmbedReport, hash_of: dict[str, str] | None = None, flush_seconds: float = FLUSH_SECONDS):
        self.cat, self.encoder, self.description = cat, encoder, description
        self.shard_size, self.run_id, self.report = int(shard_size), run_id, report
        self.hash_of = hash_of or {}
        self.flush_seconds = flush_seconds
        self._ids: list[np.ndarray] = []
        self._paths: list[np.ndarray] = []
        self._vecs: list[np.ndarray] = []
        self._bad: list[tuple[str, str, str, str | None]] = []
        self._buffered = 0
        self._last = time.monotonic()

    def add(self, ids: np.ndarray, vectors: np.ndarray, paths: np.ndarray | None = None) -> None:
        """Append successful results; commits every full shard (and a partial one when the timer fired)."""
        if len(ids):
            self._ids.append(np.asarray(ids, np.int64))
            self._vecs.append(np.asarray(vectors, np.float32))
            self._paths.append(np.asarray(paths if paths is not None else [None] * len(ids), dtype=object))
            self._buffered += len(ids)
        timer = time.monotonic() - self._last >= self.flush_seconds
        if self._buffered >= self.shard_size or (self._buffered and timer):
            self.flush(final=timer)

    def quarantine(self, path: str, reason: str) -> None:
        self._bad.append((path, reason, "embed", self.hash_of.get(path)))
        self.report.quarantined.append((path, reason))

    def flush(self, final: bool) -> None:
        ids = np.concatenate(self._ids) if self._ids else np.empty(0, np.int64)
        vecs = np.concatenate(self._vecs) if self._vecs else None
        paths = np.concatenate(self._paths) if self._paths else np.empty(0, object)
        self._ids, self._vecs, self._paths = [], [], []
        start = 0
        while len(ids) - start >= self.shard_size or (final and start < len(ids)):
            stop = min(start + self.shard_size, len(ids))
            new_bad, self._bad = self._bad, []
            done_paths = [p for p in paths[start:stop].tolist() if p is not None]

            def extra(con, done_paths=done_paths, new_bad=new_bad):
                if done_paths:  # a file that embeds now is no longer an embed-time problem
                    con.execute("DELETE FROM quarantine WHERE stage = 'embed' AND path IN (SELECT unnest(?))",
                                [done_paths])
                self.cat.add_quarantine(new_bad, run_id=self.run_id, con=con)

            write_shard(self.cat, self.encoder, ids[start:stop], vecs[start:stop], self.description,
                        run_id=self.run_id, extra=extra)
            self.report.shards += 1
            self.report.embedded += stop - start
            start = stop
            self._last = time.monotonic()
        if start < len(ids):
            self._ids, self._vecs, self._paths = [ids[start:]], [vecs[start:]], [paths[start:]]
        self._buffered = len(ids) - start
        if final and self._bad:
            self.cat.add_quarantine(self._bad, run_id=self.run_id)
            self._bad = []


# ================================================================================================ workers
def open_image(path: str):
    """RGB image from a local path or any fsspec URL (``s3://``, ``gs://``, ``https://``, ``file://`` …)."""
    if "://" not in path:
        return load_rgb(path)
    import fsspec

    with fsspec.open(path, "rb") as fh:
        return load_rgb(io.BytesIO(fh.read()))


class EncodeImages:
    """Ray Data callable class: one instance (one model) per actor.

    ``__call__`` takes a numpy batch ``{"sample_id", "path"}`` and returns ``{"sample_id", "path", "vector",
    "error"}``: images are decoded and transformed one by one (a failure becomes an ``error`` string, never a
    crash), the decodable ones go through the model as one batch — the same batch the local pipeline would form.
    """

    def __init__(self, encoder: str, device: str = "auto", threads: int | None = None):
        import torch

        from curate.engine.encoders import get_encoder, resolve_device

        if threads:
            torch.set_num_threads(int(threads))
        self.enc = get_encoder(encoder, device=resolve_device(device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ids = np.asarray(batch["sample_id"], np.int64)
        paths = [str(p) for p in batch["path"]]
        tensors, ok, errors = [], np.zeros(len(ids), bool), np.full(len(ids), "", dtype=object)
        for i, path in enumerate(paths):
            try:
                tensors.append(self.enc.transform(open_image(path)))
                ok[i] = True
            except Exception as exc:  # any decode problem becomes a quarantine row
                errors[i] = _reason(exc)
        vectors = np.zeros((len(ids), self.enc.dim), np.float32)
        if tensors:
            vectors[ok] = self.enc.encode_images(torch.stack(tensors)).cpu().numpy()
        # the embedding set's description travels with the results (first row only), so the driver never has
        # to load the model itself
        description = np.full(len(ids), "", dtype=object)
        if len(ids):
            description[0] = json.dumps(self.enc.describe(), default=str)
        return {"sample_id": ids, "path": np.asarray(paths, dtype=object), "vector": vectors, "error": errors,
                "description": description}


class SyntheticVectors:
    """Ray Data callable class producing :mod:`engine.distributed.synthetic` vectors (no images, no model)."""

    def __init__(self, config: Any):
        self.config = config

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from curate.engine.distributed.synthetic import synthetic_vectors

        ids = np.asarray(batch["sample_id"], np.int64)
        return {"sample_id": ids, "vector": synthetic_vectors(ids, self.config)}


# ================================================================================================ driver
def _ray_batches(ray: Any, frame: pd.DataFrame, udf: type, udf_args: tuple, block_rows: int, batch_size: int,
                 workers: int, num_gpus: float, num_cpus: float) -> Iterator[dict[str, np.ndarray]]:
    """Stream ``udf`` over the rows of ``frame`` on an actor pool, yielding output batches in input order."""
    import ray.data

    from curate.engine.distributed.cluster import actor_pool

    ctx = ray.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # shards must come out in the same order as a local run
    try:
        blocks = [frame.iloc[s:s + block_rows].reset_index(drop=True) for s in range(0, len(frame), block_rows)]
        ds = ray.data.from_pandas(blocks)
        ds = ds.map_batches(udf, fn_constructor_args=udf_args, batch_size=batch_size, batch_format="numpy",
                            compute=actor_pool(ray, workers), num_gpus=num_gpus or None, num_cpus=num_cpus)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    finally:
        ctx.execution_options.preserve_order = before


def _plan_workers(ray: Any, device: str, workers: int | None) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) for this cluster."""
    from curate.engine.distributed.cluster import cluster_slots

    gpus, cpus = cluster_slots(ray)
    if device != "cpu" and gpus > 0:
        return int(workers or gpus), 1.0, 1.0
    if device.startswith("cuda"):
        raise CurateError(f"device {device} requested but the Ray cluster has no GPUs; use --device cpu")
    return int(workers or max(1, cpus)), 0.0, 1.0


def _prepare(cat: Catalog, name: str, rebuild: bool, report: EmbedReport) -> list[tuple[int, str, str]]:
    if cat.scalar("SELECT count(*) FROM samples") == 0:
        raise CurateError(f"project {cat.root} has no samples; run `curate ingest <folder>` first")
    if rebuild:
        drop_embeddings(cat, name, held_lock=True)
    remove_orphan_shards(cat, name, held_lock=True)
    items, report.already_embedded, report.skipped_quarantined = _todo(cat, name)
    return items


def embed_project_ray(cat: Catalog, encoder: str = "auto", address: str | None = None, *,
                      workers: int | None = None, batch_size: int | None = None, device: str = "auto",
                      rebuild: bool = False, shard_size: int | None = None, report: EmbedReport | None = None,
                      progress: bool = False, threads_per_worker: int | None = None) -> str:
    """Embed every catalog sample without a vector for ``encoder``, with the model running on Ray.

    Parameters
    ----------
    cat : project catalog (on the driver; workers only read the image files).
    encoder : encoder name (``auto``, ``effnet-lite0``, ``clip:...``); loaded once per actor.
    address : Ray address (see :func:`engine.distributed.cluster.ray_session`): None = Ray's default (the
        cluster in ``RAY_ADDRESS`` or on this machine, else a local instance), ``"local"``, ``"auto"``,
        ``"ray://head:10001"``.  An already initialised Ray session is used as is.
    workers : encoder actors (default: one per GPU, or one per CPU when the cluster has no GPU or ``device`` is
        ``cpu``).
    batch_size : images per model call (default 32; must divide ``shard_size``).
    device : ``auto`` (GPU actors when the cluster has GPUs), ``cpu`` or ``cuda``.
    rebuild : drop this encoder's stored vectors first.
    shard_size : vectors per shard (default 8192).
    report : optional :class:`engine.embed.EmbedReport`, filled in place (``device`` reads ``ray:<n> actors``).
    progress : print a line per committed shard.
    threads_per_worker : torch threads inside each actor (default: what Ray allots, 1 per CPU slot).

    Returns
    -------
    The encoder name the vectors are stored under.
    """
    from curate.engine.distributed.cluster import ray_session
    from curate.engine.encoders import canonical_name, explain_auto

    name = explain_auto()[0] if (encoder or "auto") == "auto" else canonical_name(encoder)
    report = report if report is not None else EmbedReport(encoder=name)
    report.encoder = name
    shard_size = int(shard_size or SHARD_SIZE)
    bs = int(batch_size or DEFAULT_BATCH_SIZE)
    if shard_size % bs:
        raise CurateError(f"shard size {shard_size} is not a multiple of the batch size {bs}; pick a batch size "
                          f"that divides it (e.g. {DEFAULT_BATCH_SIZE})")
    with encoder_lock(cat, name):
        items = _prepare(cat, name, rebuild, report)
        if not items:
            if progress:
                print(f"embeddings for {name} are up to date ({report.already_embedded} vectors)", file=sys.stderr)
            return name
        with ray_session(address) as ray:
            n_actors, gpus, cpus = _plan_workers(ray, device, workers)
            report.device, report.batch_size = f"ray:{n_actors} {'GPU' if gpus else 'CPU'} actors", bs
            params = {"encoder": name, "batch_size": bs, "device": report.device, "workers": n_actors,
                      "rebuild": rebuild, "todo": len(items), "ray": address or "default"}
            frame = pd.DataFrame({"sample_id": np.array([i for i, _, _ in items], np.int64),
                                  "path": [p for _, p, _ in items]})
            hash_of = {p: h for _, p, h in items}

            def body(run_id: int) -> None:
                writer = ShardWriter(cat, name, {}, shard_size, run_id, report, hash_of)
                dev = "cuda" if gpus else "cpu"
                batches = _ray_batches(ray, frame, EncodeImages, (name, dev, threads_per_worker), shard_size, bs,
                                       n_actors, gpus, cpus)
                for out in batches:
                    if not writer.description:
                        found = [d for d in out["description"] if d]
                        writer.description = json.loads(found[0]) if found else {}
                    err = np.asarray(out["error"], dtype=object)
                    bad = err != ""
                    for path, reason in zip(np.asarray(out["path"])[bad], err[bad]):
                        writer.quarantine(str(path), str(reason))
                    before = report.shards
                    writer.add(out["sample_id"][~bad], out["vector"][~bad], np.asarray(out["path"])[~bad])
                    if progress and report.shards > before:
                        print(f"embed {name}: {report.embedded}/{len(items)} committed", file=sys.stderr)
                writer.flush(final=True)

            embed_run(cat, params, report, body)
    return name


def embed_synthetic(cat: Catalog, config: Any, *, ray_address: str | None = None, use_ray: bool = False,
                    workers: int | None = None, batch_size: int = 8192, shard_size: int = 65_536,
                    rebuild: bool = False, report: EmbedReport | None = None, encoder: str | None = None) -> str:
    """Store :mod:`engine.distributed.synthetic` vectors for every sample, locally or on Ray (benchmarks, tests).

    The local path computes batches in this process; the Ray path runs :class:`SyntheticVectors` on an actor pool
    through the same :func:`_ray_batches` as :func:`embed_project_ray`.  Both commit through :class:`ShardWriter`,
    so they store identical shards and catalog rows.  ``encoder`` overrides the stored name (default
    ``synthetic:<dim>``).
    """
    name = encoder or config.encoder_name
    report = report if report is not None else EmbedReport(encoder=name)
    report.encoder = name
    if shard_size % batch_size:
        raise CurateError(f"shard size {shard_size} is not a multiple of the batch size {batch_size}")
    with encoder_lock(cat, name):
        items = _prepare(cat, name, rebuild, report)
        if not items:
            return name
        ids = np.array([i for i, _, _ in items], np.int64)
        del items
        report.batch_size = batch_size

        def consume(batches: Iterable[dict[str, np.ndarray]], run_id: int) -> None:
            writer = ShardWriter(cat, name, config.describe(), shard_size, run_id, report, flush_seconds=float("inf"))
            for out in batches:
                writer.add(out["sample_id"], out["vector"])
            writer.flush(final=True)

        if not use_ray:
            report.device = "local"
            udf = SyntheticVectors(config)
            batches = (udf({"sample_id": ids[s:s + batch_size]}) for s in range(0, len(ids), batch_size))
            embed_run(cat, {"encoder": name, "todo": len(ids), "ray": None}, report,
                 lambda run_id: consume(batches, run_id))
            return name
        from curate.engine.distributed.cluster import ray_session

        with ray_session(ray_address) as ray:
            n_actors, _, cpus = _plan_workers(ray, "cpu", workers)
            report.device = f"ray:{n_actors} CPU actors"
            frame = pd.DataFrame({"sample_id": ids})
            batches = _ray_batches(ray, frame, SyntheticVectors, (config,), shard_size, batch_size, n_actors, 0, cpus)
            embed_run(cat, {"encoder": name, "todo": len(ids), "ray": ray_address or "default",
                             "workers": n_actors}, report, lambda run_id: consume(batches, run_id))
    return name


def add_synthetic_samples(cat: Catalog, n: int, config: Any | None = None, prefix: str = "synthetic://") -> int:
    """Insert ``n`` placeholder samples (paths ``synthetic://<i>``) for benchmarks of the encoder-free mode.

    Returns the number inserted.  Labels are not written (10^7 label rows belong in Parquet, see
    :func:`engine.analyses.label_issues.label_issues_out_of_core`).
    """
    from curate.engine.catalog import utcnow

    start = int(cat.scalar("SELECT count(*) FROM samples"))
    now = utcnow()
    chunk = 1_000_000
    with cat.transaction() as con:
        for s in range(start, start + n, chunk):
            e = min(start + n, s + chunk)
            df = pd.DataFrame({"path": [f"{prefix}{i}" for i in range(s, e)]})
            con.register("_synthetic", df)
            con.execute("""INSERT INTO samples (id, content_hash, path, source, ingested_at)
                           SELECT nextval('seq_sample'), md5(path), path, 'synthetic', ? FROM _synthetic""", [now])
            con.unregister("_synthetic")
    return n

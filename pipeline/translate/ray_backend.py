"""The ``ray`` backend of ``translate@<lang>``: a pool of CTranslate2 actors on a Ray cluster.

Ray Data carries shard indices, not text: the driver (the stage process) works out which
shards of ``<lang>.parts/`` are missing, exactly as the local backend does (same
:class:`~pipeline.translate.shards.ShardStore`, same fingerprint, same shard boundaries),
and hands their numbers to ``map_batches`` over a fixed pool of :class:`ShardTranslator`
actors (``ActorPoolStrategy``: one actor per GPU with ``num_gpus=1``, or one per
``ray_actor_threads`` CPUs). Each actor loads the model once, reads its shard's rows from
the source file itself (:func:`~pipeline.translate.shards.read_row_chunk`) and translates
them with the same function as the local backend
(:func:`~pipeline.translate.engine.iter_translations`), so every shard, and the merged file,
is byte for byte the local backend's. Translations flow back to the driver, which alone
writes shards (as they arrive, in any order) and merges them: a run killed at any point
resumes from the shards on disk, with either backend.

The cluster is the one ``RAY_ADDRESS`` names (``ray start --head`` on one node, ``ray start
--address=<head>:6379`` on the others), else a local instance that the stage starts and
stops, else a session the caller already opened (``ray.init`` before ``run``). Every node
must see ``translate.source`` and ``translate.model_dir`` at the same absolute path (a
shared filesystem) and have this package installed; only the driver writes output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.runtime import resolve_device
from pipeline.translate.engine import (
    CT2Translator,
    DecodingOptions,
    iter_translations,
    load_translator,
    resolve_compute_type,
)
from pipeline.translate.shards import (
    ShardStore,
    fingerprint,
    iter_row_chunks,
    read_row_chunk,
    work_done,
)

logger = logging.getLogger(__name__)

RAY_REQUIREMENT = "ray[data]==2.60.0"
# Errors an actor reports as a one-line user mistake (raised again, as is, by the driver).
_USER_ERRORS: dict[str, type[Exception]] = {
    "ValueError": ValueError, "FileNotFoundError": FileNotFoundError,
}


def import_ray() -> Any:
    """The ``ray`` module, or a one-line ``ValueError`` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the backend needs Ray Data, not only Ray Core)
    except ImportError:
        raise ValueError(
            "translate.backend is 'ray' but Ray is not installed; install it with "
            f"pip install -e '.[scale]' ({RAY_REQUIREMENT}), or set translate.backend: local"
        ) from None
    return ray


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """What every actor needs to translate any shard (sent once, to each actor).

    Attributes:
        source: Absolute path of the source table.
        source_column: Its text column (``langs.source``).
        lang: Target FLORES code.
        shard_size: Rows per shard.
        model_dir: Absolute path of the CTranslate2 model.
        family: Tokenisation family (``translate.family``).
        device: Resolved device (``cpu`` / ``cuda``; an actor sees its one GPU as 0).
        compute_type: Resolved compute type.
        beam_size: Beam size.
        max_batch_tokens: Token budget of a batch.
        max_decoding_length: Cap on output length (``translate.max_decoding_length``).
        no_repeat_ngram_size: Repetition guard.
        inter_threads: Batches in flight per actor (GPU); 1 on CPU.
        intra_threads: CPU threads of an actor (``translate.ray_actor_threads``).
    """

    source: str
    source_column: str
    lang: str
    shard_size: int
    model_dir: str
    family: str
    device: str
    compute_type: str
    beam_size: int
    max_batch_tokens: int
    max_decoding_length: int
    no_repeat_ngram_size: int
    inter_threads: int
    intra_threads: int


def _result(index: int, ids: pa.Array, texts: list[str], tokens: int = 0,
            seconds: float = 0.0, cpu_seconds: float = 0.0, error: str | None = None,
            trace: str | None = None) -> pa.Table:
    """One output row of :class:`ShardTranslator`: a whole shard (or its error)."""
    return pa.table({
        "shard": pa.array([index], pa.int64()),
        "ids": pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), ids),
        "texts": pa.array([texts], pa.list_(pa.string())),
        "tokens": pa.array([tokens], pa.int64()),
        "seconds": pa.array([seconds], pa.float64()),
        "cpu_seconds": pa.array([cpu_seconds], pa.float64()),
        "error": pa.array([error], pa.string()),
        "trace": pa.array([trace], pa.string()),
    })


class ShardTranslator:
    """Ray Data actor: one CTranslate2 model, translating whole shards of the source.

    Called by ``map_batches`` with a batch of shard indices (``shard`` column); returns
    one row per shard: its ``ids`` and ``texts`` (translations, in source order), target
    ``tokens``, translation ``seconds`` / ``cpu_seconds``, and ``error`` / ``trace``
    instead when it failed. Errors travel as data, so the driver can raise a user mistake
    (a model a worker cannot read, say) as the same one-line error as the local backend.

    Args:
        job: The translation settings.
    """

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.translator: CT2Translator | None = None
        self.id_type: pa.DataType | None = None

    def _load(self) -> CT2Translator:
        job = self.job
        if self.translator is None:
            self.id_type = pq.read_schema(job.source).field("id").type
            self.translator = load_translator(
                job.model_dir, device=job.device, compute_type=job.compute_type,
                inter_threads=job.inter_threads, intra_threads=job.intra_threads,
                family=job.family, source_lang=job.source_column, beam_size=job.beam_size,
                max_batch_tokens=job.max_batch_tokens,
                max_decoding_length=job.max_decoding_length,
                no_repeat_ngram_size=job.no_repeat_ngram_size,
            )
        return self.translator

    def _shard(self, index: int) -> pa.Table:
        job = self.job
        try:
            translator = self._load()
            start, cpu = time.perf_counter(), time.process_time()
            chunk = read_row_chunk(job.source, ["id", job.source_column], job.shard_size, index)
            texts = chunk[job.source_column].to_pylist()
            out, tokens = [""] * len(texts), 0
            for i, text, produced in iter_translations(translator, texts, job.lang):
                out[i] = text
                tokens += produced
            return _result(index, chunk["id"].combine_chunks(), out, tokens,
                           time.perf_counter() - start, time.process_time() - cpu)
        except Exception as exc:  # reported to the driver, which raises it
            empty = pa.array([], self.id_type or pa.string())
            return _result(index, empty, [], error=f"{type(exc).__name__}: {exc}",
                           trace=traceback.format_exc())

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Translate the shards whose indices are in ``batch["shard"]``."""
        return pa.concat_tables([self._shard(i) for i in batch.column("shard").to_pylist()])


@contextlib.contextmanager
def ray_session(cpus: int | None) -> Iterator[Any]:
    """A connected Ray: the caller's session, ``RAY_ADDRESS``'s cluster, or a local one.

    Args:
        cpus: CPUs of a local instance (``None``: all of this machine's).

    Yields:
        The ``ray`` module, initialised; a connection or instance opened here is closed
        (a local instance stopped) on exit.

    Raises:
        ValueError: Ray is not installed, or ``RAY_ADDRESS`` names no reachable cluster.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            logger.info("connecting to the Ray cluster at %s (RAY_ADDRESS)", address)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            logger.info("starting a local Ray instance (%s CPUs); set RAY_ADDRESS to use a "
                        "cluster", cpus or "all")
            # "local": a new instance, even where `ray start` left one (it would refuse
            # num_cpus); the instance stops with the session.
            ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                     logging_level=logging.WARNING)
    except ConnectionError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot connect to the Ray cluster at RAY_ADDRESS={address} "
                         f"({first}); start it with `ray start --head`") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _cuda_compute_type(compute_type: str) -> str:
    """``resolve_compute_type`` on a GPU worker (the driver may have no GPU)."""
    return resolve_compute_type("cuda", compute_type)


def resolve_on_cluster(ray: Any, device: str, compute_type: str) -> tuple[str, str, int]:
    """Device and compute type the actors will use, and the cluster's GPU count.

    ``auto`` is ``cuda`` when the cluster has a GPU (on any node), else ``cpu``.

    Raises:
        ValueError: ``cuda`` on a cluster without GPU, or a compute type the device lacks.
    """
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "cuda" and not gpus:
        raise ValueError("translate.device is 'cuda' but the Ray cluster has no GPU; add a "
                         "GPU node or set translate.device: cpu")
    device = resolve_device(device, gpu_count=lambda: gpus)
    if device == "cpu":
        return device, resolve_compute_type("cpu", compute_type), gpus
    probe = ray.remote(num_gpus=1, num_cpus=0)(_cuda_compute_type)
    try:
        return device, ray.get(probe.remote(compute_type)), gpus
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ValueError):
            raise ValueError(str(exc.cause)) from None
        raise


def _raise_actor_error(index: int, error: str, trace: str | None) -> None:
    name, _, message = error.partition(": ")
    if name in _USER_ERRORS:
        raise _USER_ERRORS[name](message)
    raise RuntimeError(f"a translator actor failed on shard {index}: {error}\n{trace or ''}")


@dataclasses.dataclass
class _Work:
    """What the actors did in this run (summed over shards)."""

    sentences: int = 0
    tokens: int = 0
    actor_seconds: float = 0.0
    cpu_seconds: float = 0.0


def _translate_shards(ray: Any, job: ShardJob, pending: dict[int, int], store: ShardStore,
                      schema: pa.Schema, bar: tqdm, actors: int, cpus: int,
                      gpus: int) -> _Work:
    """Translate the ``pending`` shards (index → rows), writing each as it comes back.

    ``actors`` actors, each reserving ``cpus`` CPUs and ``gpus`` GPUs.
    """
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    ctx.enable_progress_bars = ctx.print_on_execution_start = False  # the stage has its bar
    work, start = _Work(), time.perf_counter()
    try:
        shards = ray.data.from_items([{"shard": i} for i in pending],
                                     override_num_blocks=len(pending))
        results = shards.map_batches(
            ShardTranslator, fn_constructor_args=(job,), batch_size=1, batch_format="pyarrow",
            # One shard at a time per actor: no shard queues behind a busy actor.
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus, num_gpus=gpus or None,
        )
        for batch in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                index = row["shard"]
                if row["error"]:
                    _raise_actor_error(index, row["error"], row["trace"])
                if len(row["ids"]) != pending[index]:
                    raise RuntimeError(f"shard {index}: {len(row['ids'])} rows came back, "
                                       f"{pending[index]} expected")
                store.write(index, pa.table([pa.array(row["ids"], schema.field(0).type),
                                             pa.array(row["texts"], pa.string())],
                                            schema=schema))
                work.sentences += len(row["ids"])
                work.tokens += row["tokens"]
                work.actor_seconds += row["seconds"]
                work.cpu_seconds += row["cpu_seconds"]
                bar.update(len(row["ids"]))
                rate = work.tokens / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
    return work


def translate_file(source_column: str, lang: str, output: Path, max_decoding_length: int, *,
                   source: str, model_dir: str, family: str, device: str, compute_type: str,
                   options: DecodingOptions, inter_threads: int, shard_size: int,
                   ray_actors: int, ray_actor_threads: int) -> dict[str, float]:
    """Translate ``source`` into ``output`` with a pool of Ray actors (see module doc).

    The keyword arguments are the ``translate`` settings of the same names, already checked
    (model included).

    Args:
        source_column: Source text column (``langs.source``).
        lang: Target FLORES code (also the output column name).
        output: Final Parquet file.
        max_decoding_length: The model's effective cap on output length (fingerprint).
        source: Source table.
        model_dir: CTranslate2 model directory.
        family: Tokenisation family.
        device: ``auto``, ``cpu`` or ``cuda`` (resolved on the cluster).
        compute_type: Compute type (resolved on the cluster).
        options: Search settings (``beam_size``, ``max_batch_tokens``,
            ``max_decoding_length``, ``no_repeat_ngram_size``).
        inter_threads: Batches in flight per actor on a GPU.
        shard_size: Rows per shard.
        ray_actors: Actors in the pool (0: one per GPU, else per ``ray_actor_threads`` CPUs).
        ray_actor_threads: CPU threads (Ray CPUs) of each actor.

    Returns:
        The local backend's metrics (in ``runtime``, ``translate_seconds`` is the wall time
        from the pool's start to the last shard, actor start-up included, and
        ``translate_cpu_seconds`` the actors' CPU time), plus ``ray_actors`` and
        ``actor_seconds`` (translation time summed over actors) in ``runtime``.
    """
    path = Path(source).resolve()
    local_cpus = ray_actors * ray_actor_threads or None
    with ray_session(local_cpus) as ray:
        device, compute_type, gpus = resolve_on_cluster(ray, device, compute_type)
        id_type = pq.read_schema(path).field("id").type
        schema = pa.schema([("id", id_type), (lang, pa.string())])
        store = ShardStore(output.parent / f"{lang}.parts", fingerprint(
            source=source, model_dir=model_dir, source_column=source_column, lang=lang,
            device=device, compute_type=compute_type, options=options,
            max_decoding_length=max_decoding_length, shard_size=shard_size))
        store.open()
        total = pq.ParquetFile(path).metadata.num_rows
        pending: dict[int, int] = {}
        shards = 0
        with tqdm(total=total, unit="sent", desc=f"translate {lang} (ray)",
                  dynamic_ncols=True) as bar:
            for index, chunk in enumerate(iter_row_chunks(path, ["id"], shard_size)):
                shards += 1
                if store.verify(index, chunk["id"].combine_chunks(), schema):
                    bar.update(len(chunk))
                else:
                    pending[index] = len(chunk)
            cuda = device == "cuda"
            actors = ray_actors or (
                gpus if cuda else int(ray.cluster_resources().get("CPU", 1))
                // ray_actor_threads)
            actors = max(1, min(actors, len(pending)))
            job = ShardJob(
                source=str(path), source_column=source_column, lang=lang,
                shard_size=shard_size, model_dir=str(Path(model_dir).resolve()),
                family=family, device=device, compute_type=compute_type,
                beam_size=options.beam_size, max_batch_tokens=options.max_batch_tokens,
                max_decoding_length=options.max_decoding_length,
                no_repeat_ngram_size=options.no_repeat_ngram_size,
                inter_threads=inter_threads if cuda else 1,
                intra_threads=ray_actor_threads,
            )
            start = time.perf_counter()
            work = _Work()
            if pending:
                logger.info("%d shard(s) to translate on %d %s actor(s)", len(pending), actors,
                            device)
                work = _translate_shards(ray, job, pending, store, schema, bar, actors,
                                         ray_actor_threads, 1 if cuda else 0)
            seconds = time.perf_counter() - start if pending else 0.0
    store.merge(shards, output, schema)
    runtime = work_done(shards - len(pending), work.sentences, work.tokens, seconds,
                        work.cpu_seconds)
    runtime.update(ray_actors=actors if pending else 0,
                   actor_seconds=round(work.actor_seconds, 3))
    return {"sentences": total, "shards": shards, "runtime": runtime}

"""Sharded, resumable Parquet output.

A long job writes its output as numbered shards in a directory (``<out>.parts/``), each
written atomically (temp file + rename) with Parquet page checksums. The directory holds the
fingerprint of the job (inputs, model, settings; :func:`pipeline.runtime.claim_work_dir`): a
restarted job with the same fingerprint keeps every shard that still verifies (readable,
checksums intact, the expected ids in the expected order) and redoes the rest; a job with
another fingerprint discards the shards and starts over. When all
shards are there they are streamed, one at a time, into the final file (atomically), and
the shard directory is removed. Memory therefore stays at one shard, whatever the size of
the input, and a job killed at any moment ends, once restarted, with the same output.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io import atomic_path
from pipeline.runtime import claim_work_dir, file_hash
from pipeline.translate.cuda import import_ctranslate2
from pipeline.translate.engine import DecodingOptions

logger = logging.getLogger(__name__)


def iter_row_chunks(path: str | Path, columns: list[str], size: int) -> Iterator[pa.Table]:
    """Stream a Parquet file as tables of exactly ``size`` rows (the last may be shorter).

    Parquet row groups do not align with shards, so batches are re-cut here: shard ``k``
    always holds rows ``k*size … (k+1)*size-1``, however the file was written.
    """
    parquet = pq.ParquetFile(path)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in parquet.iter_batches(batch_size=size, columns=columns):
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def read_row_chunk(path: str | Path, columns: list[str], size: int, index: int) -> pa.Table:
    """Chunk ``index`` of :func:`iter_row_chunks` (rows ``index*size`` onwards), read alone.

    Only the row groups that overlap the chunk are decoded, batch by batch, so a worker
    that is handed one shard neither reads the file from its start nor holds more than the
    chunk and one batch.
    """
    parquet = pq.ParquetFile(path)
    start = index * size
    stop = min(start + size, parquet.metadata.num_rows)
    groups, offset, first = [], 0, 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if offset < stop and offset + rows > start:
            first = first if groups else offset
            groups.append(group)
        offset += rows
    schema = parquet.schema_arrow
    empty = pa.schema([schema.field(c) for c in columns]).empty_table()
    if not groups:
        return empty
    kept: list[pa.RecordBatch] = []
    position = first  # row number of the next batch's first row
    for batch in parquet.iter_batches(batch_size=size, row_groups=groups, columns=columns):
        begin, end = max(start - position, 0), min(stop - position, batch.num_rows)
        if end > begin:
            kept.append(batch.slice(begin, end - begin))
        position += batch.num_rows
        if position >= stop:
            break
    return pa.Table.from_batches(kept, schema=empty.schema) if kept else empty


class ShardStore:
    """Numbered Parquet shards of one output file, tied to a job fingerprint.

    Args:
        directory: Shard directory (created by :meth:`open`, removed by :meth:`merge`).
        fingerprint: JSON-able description of everything that determines the output.
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    def open(self) -> int:
        """Prepare the directory: keep it if it belongs to this job, else start afresh.

        Returns:
            The number of shard files found from an earlier run of the same job.
        """
        claim_work_dir(self.directory, "shards", **self.fingerprint)
        for stale in self.directory.glob(".*.tmp"):  # temp files of a killed write
            stale.unlink()
        found = len(list(self.directory.glob("shard-*.parquet")))
        if found:
            logger.info("resuming: %d shard(s) of an interrupted run in %s", found, self.directory)
        return found

    def path(self, index: int) -> Path:
        """File of shard ``index``."""
        return self.directory / f"shard-{index:06d}.parquet"

    def verify(self, index: int, ids: pa.Array, schema: pa.Schema) -> bool:
        """True if shard ``index`` exists, is intact and holds exactly ``ids`` in order."""
        path = self.path(index)
        if not path.is_file():
            return False
        try:
            table = pq.read_table(path, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            logger.warning("shard %s is unreadable (%s); translating it again", path.name, exc)
            return False
        if not table.schema.equals(schema) or not table["id"].combine_chunks().equals(ids):
            logger.warning("shard %s does not match its source rows; translating it again",
                           path.name)
            return False
        return True

    def write(self, index: int, table: pa.Table) -> None:
        """Write shard ``index`` atomically, with page checksums."""
        with atomic_path(self.path(index)) as tmp:
            pq.write_table(table, tmp, write_page_checksum=True)

    def merge(self, count: int, out: str | Path, schema: pa.Schema) -> None:
        """Concatenate shards ``0 … count-1`` into ``out`` (atomically), then drop the shards."""
        out = Path(out)
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # from a merge that was killed
            stale.unlink()
        with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for index in range(count):
                writer.write_table(pq.read_table(self.path(index)))
        shutil.rmtree(self.directory)


#: Bumped when a shard's content changes for the same inputs (old shards are then redone).
OUTPUT_VERSION = 1


def work_done(reused: int, sentences: int, tokens: int, seconds: float, cpu_seconds: float
              ) -> dict[str, float]:
    """The runtime part of translate's metrics: what this run translated, how fast.

    It depends on where an interrupted run stopped and on the machine, so it stays out of
    the tracked metrics (see :class:`pipeline.registry.Stage`).
    """
    return {
        "shards_reused": reused, "translated_sentences": sentences, "target_tokens": tokens,
        "translate_seconds": round(seconds, 3), "translate_cpu_seconds": round(cpu_seconds, 3),
        "sentences_per_s": round(sentences / seconds, 2) if seconds else 0.0,
        "target_tokens_per_s": round(tokens / seconds, 2) if seconds else 0.0,
    }


def fingerprint(*, source: str, model_dir: str, source_column: str, lang: str, device: str,
                compute_type: str, options: DecodingOptions, max_decoding_length: int,
                shard_size: int) -> dict[str, object]:
    """Everything that determines the output of ``translate@<lang>`` (see :class:`ShardStore`).

    The backend, thread counts and GPU ids are left out: they do not change a shard, so
    shards written by one backend are kept by the other.

    Args:
        source: Source table (``translate.source``; its content is hashed).
        model_dir: CTranslate2 model directory (``translate.model_dir``; hashed).
        source_column: Source text column (``langs.source``).
        lang: Target FLORES code.
        device: Resolved device.
        compute_type: Resolved compute type.
        options: The search settings (``translate.beam_size``, ``max_batch_tokens``,
            ``no_repeat_ngram_size``; its ``max_decoding_length`` is not recorded).
        max_decoding_length: The model's effective cap on output length (recorded instead).
        shard_size: Rows per shard (``translate.shard_size``).
    """
    return {
        "version": OUTPUT_VERSION, "ctranslate2": import_ctranslate2().__version__,
        "source": file_hash(source), "source_column": source_column,
        "model": file_hash(model_dir), "lang": lang, "device": device,
        "compute_type": compute_type, "beam_size": options.beam_size,
        "max_batch_tokens": options.max_batch_tokens,
        "max_decoding_length": max_decoding_length, "shard_size": shard_size,
        "no_repeat_ngram_size": options.no_repeat_ngram_size,
    }

"""Bounded-memory Parquet plumbing for ``build_corpus``.

Reading in aligned pieces, id checks by hash, an external reorder of a table into another
table's id order, and writing row group by row group.

Memory stays bounded by the batch and row-group sizes below plus at most a few 8-byte
integers per row (id hashes, positions), whatever the number of rows.
"""

from __future__ import annotations

import heapq
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

BATCH_ROWS = 4096
"""Rows read, filtered and joined at a time."""

ROW_GROUP_ROWS = 16384
"""Rows per output row group. An output of at most this many rows is one row group, the
same bytes as :func:`pipeline.io.write_table` on the whole table; the default corpus is."""

BUCKET_ROWS = 16384
"""Output positions per bucket of the external reorder (rows held in memory at once, per
reordered file: a join may read one bucket of every language at a time)."""

MAX_BUCKETS = 256
"""Bucket files open at once at most; past ``MAX_BUCKETS * BUCKET_ROWS`` rows the buckets
grow instead, so a reorder never runs into the open-file limit."""

_POS = "__pos"


def as_str(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Strings as ``large_string`` (pandas' ``str``); other types as ``astype(str)`` makes them."""
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return array.cast(pa.large_string())
    # Rare (integer ids...): pandas' spelling of the values, as the in-memory build had it.
    return pa.array(array.to_pandas().astype(str).tolist(), pa.large_string())


def iter_tables(parquet: pq.ParquetFile, columns: list[str],
                batch_rows: int | None = None) -> Iterator[pa.Table]:
    """Stream ``columns`` of a Parquet file; string columns (and ``id``) as ``large_string``."""
    for batch in parquet.iter_batches(batch_size=batch_rows or BATCH_ROWS, columns=columns):
        yield pa.table({c: as_str(batch.column(c)) if c == "id" else batch.column(c)
                        for c in columns})


class Rows:
    """A stream of tables re-cut into pieces of whatever size the reader asks for.

    Args:
        tables: The tables, in order.
    """

    def __init__(self, tables: Iterable[pa.Table]) -> None:
        self._tables = iter(tables)
        self._pending: list[pa.Table] = []
        self._rows = 0

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (fewer at the end of the stream), as one-chunk columns."""
        while self._rows < n:
            table = next(self._tables, None)
            if table is None:
                break
            self._pending.append(table)
            self._rows += table.num_rows
        if not self._pending:
            raise EOFError("no rows left in the stream")
        table = pa.concat_tables(self._pending).combine_chunks()
        head, rest = table.slice(0, n), table.slice(n)
        self._pending, self._rows = ([rest] if rest.num_rows else []), rest.num_rows
        return head


def id_hashes(parquet: pq.ParquetFile) -> np.ndarray:
    """64-bit hashes of a file's ``id`` column, in file order (8 bytes a row).

    Python's string hash is per-process salted, which is fine: hashes never leave the run.
    Equal ids have equal hashes; unequal ids almost never do, and where it matters the ids
    themselves are compared afterwards.
    """
    parts = [np.fromiter(map(hash, t["id"].to_pylist()), dtype=np.int64, count=t.num_rows)
             for t in iter_tables(parquet, ["id"])]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def duplicates(parquet: pq.ParquetFile, hashes: np.ndarray) -> Counter[str]:
    """Ids occurring more than once, with their counts (exact: candidates by hash, then text).

    Args:
        parquet: The file (its ``id`` column is read again only when hashes repeat).
        hashes: :func:`id_hashes` of the file.

    Returns:
        Duplicated id → number of occurrences; empty when ids are unique.
    """
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(repeated):
        return Counter()
    counts: Counter[str] = Counter()
    offset = 0
    for table in iter_tables(parquet, ["id"]):
        rows = np.flatnonzero(np.isin(hashes[offset: offset + table.num_rows], repeated))
        counts.update(table["id"].take(pa.array(rows)).to_pylist())
        offset += table.num_rows
    return Counter({i: c for i, c in counts.items() if c > 1})


def smallest_ids(parquet: pq.ParquetFile, mask: np.ndarray, k: int = 3) -> list[str]:
    """The ``k`` smallest ids of the rows selected by ``mask`` (a bool per row), streamed."""
    best: list[str] = []
    offset = 0
    for table in iter_tables(parquet, ["id"]):
        rows = np.flatnonzero(mask[offset: offset + table.num_rows])
        best = heapq.nsmallest(k, [*best, *table["id"].take(pa.array(rows)).to_pylist()])
        offset += table.num_rows
    return best


class HashIndex:
    """Position of each id hash in a table, for lookups by the hashes of another table.

    Args:
        hashes: :func:`id_hashes` of the table (unique).
    """

    def __init__(self, hashes: np.ndarray) -> None:
        self.size = len(hashes)
        self._order = np.argsort(hashes, kind="stable")
        self._sorted = hashes[self._order]

    def positions(self, hashes: np.ndarray) -> np.ndarray:
        """Position of each hash in the indexed table, -1 where it is not there."""
        if not self.size:
            return np.full(len(hashes), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._sorted, hashes), self.size - 1)
        return np.where(self._sorted[at] == hashes, self._order[at], -1)


def reordered(parquet: pq.ParquetFile, columns: list[str], target: np.ndarray, size: int,
              tmp_dir: str | Path) -> Iterator[pa.Table]:
    """Rows of a file moved to other positions, by an external bucket sort through ``tmp_dir``.

    One pass writes each row to the Arrow IPC file of its bucket of :data:`BUCKET_ROWS`
    output positions (more past :data:`MAX_BUCKETS` buckets); then each bucket is read, put
    in order and yielded, so memory holds one batch or one bucket, never the table.

    Args:
        parquet: The file.
        columns: Columns to carry.
        target: Output position of each row of the file (-1: leave the row out); no
            position may occur twice.
        size: Number of output positions.
        tmp_dir: Directory for the bucket files (each removed once read).

    Yields:
        Tables of ``columns`` covering positions ``0 .. size - 1`` in order; a position no
        row moved to is a row of nulls.
    """
    # A directory of its own: several reorders may be under way at once, read in turns.
    tmp_dir = Path(tempfile.mkdtemp(prefix="reorder-", dir=tmp_dir))
    bucket_rows = max(BUCKET_ROWS, -(-size // MAX_BUCKETS))
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    schema = None
    offset = 0
    try:
        for table in iter_tables(parquet, columns):
            pos = target[offset: offset + table.num_rows]
            offset += table.num_rows
            keep = np.flatnonzero(pos >= 0)
            table = table.take(pa.array(keep)).append_column(_POS, pa.array(pos[keep]))
            schema = table.schema
            bucket = pos[keep] // bucket_rows
            order = np.argsort(bucket, kind="stable")
            table, bucket = table.take(pa.array(order)), bucket[order]
            starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(bucket) else []
            for start, stop in zip(starts, [*starts[1:], len(bucket)], strict=True):
                b = int(bucket[start])
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(tmp_dir / f"bucket-{b:06d}.arrow"), schema)
                writers[b].write_table(table.slice(start, stop - start))
    finally:
        for writer in writers.values():
            writer.close()
    empty = pa.table({c: pa.array([], pa.large_string()) for c in columns})
    for b in range(-(-size // bucket_rows)):
        first, rows = b * bucket_rows, min(bucket_rows, size - b * bucket_rows)
        path = tmp_dir / f"bucket-{b:06d}.arrow"
        if b in writers:
            with pa.ipc.open_stream(str(path)) as reader:
                bucket_table = reader.read_all()
            path.unlink()
        else:
            bucket_table = empty.append_column(_POS, pa.array([], pa.int64())) \
                if schema is None else schema.empty_table()
        index = np.full(rows, -1, dtype=np.int64)
        index[bucket_table[_POS].to_numpy() - first] = np.arange(bucket_table.num_rows)
        yield bucket_table.drop_columns([_POS]).take(pa.array(index, mask=index < 0))
    tmp_dir.rmdir()


def pandas_schema(table: pa.Table) -> pa.Schema:
    """The schema :func:`pipeline.io.write_table` gives a DataFrame of ``table``'s columns.

    The in-memory build wrote pandas DataFrames, whose conversion adds pandas metadata and
    picks the string type; a sample row through the same conversion gives the same schema.
    """
    sample = table.slice(0, 1).to_pandas()
    return pa.Table.from_pandas(sample, preserve_index=False).schema


class TableWriter:
    """A Parquet file written row group by row group (:data:`ROW_GROUP_ROWS` rows each).

    With the schema and writer defaults of :func:`pipeline.io.write_table`, so that an
    output of up to one row group is byte for byte the file the in-memory build wrote.

    Args:
        path: The file (in practice a temporary path of :func:`pipeline.io.atomic_path`).
        columns: Column names, in order.
    """

    def __init__(self, path: str | Path, columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = columns
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        """Append rows (columns named as ``columns``, strings of any string type)."""
        if not table.num_rows:
            return
        table = table.select(self.columns)
        if self._schema is None:
            self._schema = pandas_schema(table)
        self._pending.append(table.cast(self._schema))
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        while self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self._pending).combine_chunks()
        head, rest = table.slice(0, n), table.slice(n)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, head.schema)
        # One-chunk columns, as from_pandas makes them: the pages come out the same.
        self._writer.write_table(head.combine_chunks())
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        """Write what is left and the footer (an empty table when no row came)."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self._writer is None:
            empty = pd.DataFrame({c: pd.Series([], dtype=str) for c in self.columns})
            pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), self.path)
            return
        self._writer.close()

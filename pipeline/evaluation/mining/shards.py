"""Embeddings as ``.npy`` shards on disk, and unit-length rows of arrays or shards.

:func:`~pipeline.evaluation.mining.mine.mine` writes each side's embeddings as shards
(:class:`ShardWriter`); the search reads them back memory-mapped, one block of rows at a time
(:class:`EmbeddingShards`), so neither side has to fit in memory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SHARD_META = "meta.json"


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as contiguous float32 (what faiss inner product needs)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def row_norms(rows: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row (at least 1e-12), by einsum: 3× faster than np.linalg.norm."""
    return np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)


class ShardWriter:
    """Write embeddings as ``.npy`` shards plus a ``meta.json``, one block at a time.

    Args:
        directory: Output directory: created, or emptied if it holds earlier shards (a
            non-empty directory without ``meta.json`` is refused, never deleted).
        dtype: ``float16`` (rows scaled to unit length first, so nothing overflows) or
            ``float32`` (the encoder's values, bit for bit).
    """

    def __init__(self, directory: str | Path, dtype: str = "float16") -> None:
        if dtype not in ("float16", "float32"):
            raise ValueError(f"embedding dtype must be float16 or float32, got '{dtype}'")
        self.directory = Path(directory)
        if self.directory.exists() and any(self.directory.iterdir()):
            if not (self.directory / SHARD_META).is_file():
                raise ValueError(f"{self.directory} is not empty and holds no embedding "
                                 f"shards ({SHARD_META}); refusing to overwrite it")
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.shards: list[dict[str, Any]] = []
        self.dim: int | None = None

    def append(self, block: np.ndarray) -> None:
        """Write one ``(rows, dim)`` block as the next shard."""
        block = np.asarray(block)
        if block.ndim != 2:
            raise ValueError(f"embeddings must be a 2-d array, got shape {block.shape}")
        if self.dim is None:
            self.dim = block.shape[1]
        elif block.shape[1] != self.dim:
            raise ValueError(f"embedding size changed from {self.dim} to {block.shape[1]}")
        if not len(block):
            return
        if self.dtype == "float16":
            block = normalize(block)
        name = f"{len(self.shards):05d}.npy"
        np.save(self.directory / name, block.astype(self.dtype, copy=False))
        self.shards.append({"file": name, "rows": len(block)})

    def close(self) -> EmbeddingShards:
        """Write ``meta.json`` and open the result for reading."""
        meta = {"dim": self.dim or 0, "dtype": self.dtype, "shards": self.shards,
                "rows": sum(s["rows"] for s in self.shards)}
        (self.directory / SHARD_META).write_text(json.dumps(meta, indent=1) + "\n")
        return EmbeddingShards(self.directory)


class EmbeddingShards:
    """Embeddings written by :class:`ShardWriter`, read back through memory maps.

    Each read maps the shards it needs and drops the map afterwards, so resident memory holds
    the block being read, not the whole matrix.

    Args:
        directory: A directory with ``meta.json`` and its shards.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / SHARD_META
        if not meta_path.is_file():
            raise FileNotFoundError(f"no embedding shards in {self.directory} (no {SHARD_META})")
        meta = json.loads(meta_path.read_text())
        self.dim: int = int(meta["dim"])
        self.dtype: str = meta["dtype"]
        self.files = [self.directory / s["file"] for s in meta["shards"]]
        # offsets[i] is the first row of shard i; offsets[-1] the number of rows.
        self.offsets = np.concatenate([[0], np.cumsum([s["rows"] for s in meta["shards"]])]
                                      ).astype(np.int64)
        self.shape = (int(self.offsets[-1]), self.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self, i: int) -> np.ndarray:
        return np.load(self.files[i], mmap_mode="r")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a float32 array (a copy; no map stays open)."""
        stop = min(stop, len(self))
        out = np.empty((max(stop - start, 0), self.dim), dtype=np.float32)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        for i in range(max(first, 0), len(self.files)):
            lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
            if lo >= stop:
                break
            if lo < hi:
                shard = self._map(i)
                out[lo - start:hi - start] = shard[lo - self.offsets[i]:hi - self.offsets[i]]
                del shard  # unmaps: the pages leave this process's resident set
        return out

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows at arbitrary indices (any shape of ``ids``; rows stacked in ``ids.ravel()``)."""
        out = np.empty((np.size(ids), self.dim), dtype=np.float32)
        for where, rows in self.iter_take(ids):
            out[where] = rows
        return out

    def iter_take(self, ids: np.ndarray, max_rows: int = 16384
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Rows at ``ids.ravel()`` in groups: ``(positions in ids.ravel(), float32 rows)``.

        Each shard is mapped once per call, and a group holds at most ``max_rows`` rows.
        """
        flat = np.asarray(ids, dtype=np.int64).ravel()
        shard_of = np.searchsorted(self.offsets, flat, side="right") - 1
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(len(self.files) + 1))
        for i in range(len(self.files)):
            if bounds[i] == bounds[i + 1]:
                continue
            shard = self._map(i)
            for lo in range(bounds[i], bounds[i + 1], max_rows):
                where = order[lo:min(lo + max_rows, bounds[i + 1])]
                yield where, shard[flat[where] - self.offsets[i]].astype(np.float32)
            del shard  # unmaps: the pages leave this process's resident set


Vectors = np.ndarray | EmbeddingShards


def unit_rows(v: Vectors, start: int, stop: int) -> np.ndarray:
    """Unit-length float32 rows ``start:stop`` of an array or of shards."""
    return normalize(v.read(start, stop) if isinstance(v, EmbeddingShards) else v[start:stop])


def unit_rows_at(v: Vectors, ids: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows at ``ids.ravel()``."""
    if isinstance(v, EmbeddingShards):
        rows = v.take(ids)
        rows /= row_norms(rows)[:, None]  # in place: a training sample may be 250 MB
        return rows
    return normalize(np.asarray(v)[np.asarray(ids).ravel()])

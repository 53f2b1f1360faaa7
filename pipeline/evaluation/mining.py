"""Bitext mining with faiss k-NN and ratio-margin scoring (LASER / BUCC style).

mteb's bitext mining ranks by plain cosine over the full similarity matrix, which is fine
for a test set of a few thousand sentences. Mining a parallel corpus from two large
monolingual collections needs more: k-NN search that never materialises the ``n × m``
matrix (faiss, queried in blocks), and the ratio margin of Artetxe & Schwenk (2019), which
discounts "hub" sentences that are close to everything::

    margin(x, y) = cos(x, y) / (mean_k cos(x, NN_k(x)) / 2 + mean_k cos(y, NN_k(y)) / 2)

Candidates of a source sentence are its ``k`` nearest targets (and vice versa); ``forward``
keeps each source's best candidate, ``backward`` each target's, ``intersection`` the pairs
both directions agree on. A threshold on the margin (about 1.06 in LASER's BUCC runs) then
trades recall for precision.

Past a few hundred thousand sentences a side, two things change (see
``docs/benchmarks.md``):

* The k-NN index: ``flat`` (exact ``IndexFlatIP``, the default) costs ``n × m`` dot
  products; ``ivf``, ``ivfpq`` and ``hnsw`` are approximate faiss indexes built with
  ``index_factory`` (:func:`index_factory_string`), searched with ``nprobe`` /
  ``efSearch``. ``ivfpq`` keeps half a byte per 6 dimensions instead of 4 bytes per
  dimension (faiss's SIMD "fast scan" codes) and re-scores its candidates exactly from the
  embeddings on disk.
* Memory: :func:`mine` streams each text file, encodes it in chunks and writes the
  embeddings as fp16 ``.npy`` shards (:class:`ShardWriter`), which the search reads back
  memory-mapped, one block of rows at a time (:class:`EmbeddingShards`); only one faiss
  index lives at a time, and the texts of the mined pairs are read back from the files at
  the end.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import MineConfig
from pipeline.io import write_table
from pipeline.sources.text import collapse_whitespace

logger = logging.getLogger(__name__)

Mode = Literal["forward", "backward", "intersection"]
MODES: tuple[str, ...] = ("forward", "backward", "intersection")
IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw"]
INDEXES: tuple[str, ...] = ("flat", "ivf", "ivfpq", "hnsw")
SHARD_META = "meta.json"


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as contiguous float32 (what faiss inner product needs)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- embedding shards


class ShardWriter:
    """Write embeddings as ``.npy`` shards plus a ``meta.json``, one block at a time.

    Args:
        directory: Output directory: created, or emptied if it holds earlier shards (a
            non-empty directory without ``meta.json`` is refused, never deleted).
        dtype: ``float16`` (half the disk and page cache; rows are scaled to unit length
            first, so no value can overflow) or ``float32`` (the encoder's values, bit for bit).
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

    Each read maps the shards it needs (``np.load(mmap_mode="r")``) and drops the map
    afterwards, so resident memory holds the block being read, not the whole matrix: the
    operating system's page cache keeps recently read shards without charging them to
    the process.

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

        Each shard is mapped once per call, however many of its rows are asked for (a
        fresh map costs a page fault per page touched), and a group holds at most
        ``max_rows`` rows, which bounds the memory of a large request.
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


def _rows(v: Vectors, start: int, stop: int) -> np.ndarray:
    """Unit-length float32 rows ``start:stop`` of an array or of shards."""
    return normalize(v.read(start, stop) if isinstance(v, EmbeddingShards) else v[start:stop])


def _take(v: Vectors, ids: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows at ``ids.ravel()``."""
    if isinstance(v, EmbeddingShards):
        rows = v.take(ids)
        # In place (a training sample of a million-row side is 250 MB as float32), and by
        # einsum, 3× faster than np.linalg.norm on the re-scoring's millions of rows.
        norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]
        rows /= np.maximum(norms, 1e-12)
        return rows
    return normalize(np.asarray(v)[np.asarray(ids).ravel()])


# ------------------------------------------------------------------------------ faiss indexes


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """Which faiss index the k-NN search uses, and how hard it searches.

    Attributes:
        kind: ``flat`` (exact), ``ivf`` (inverted lists of full vectors), ``ivfpq``
            (inverted lists of product-quantised codes, re-scored exactly) or ``hnsw``.
        nlist: Inverted lists of ``ivf``/``ivfpq``; 0 picks a power of two near ``√m``.
        nprobe: Lists visited per query (``ivf``/``ivfpq``): recall against speed.
        pq_m: 4-bit sub-quantisers of ``ivfpq`` (half a byte each); 0 picks ``dim / 6``
            rounded to an even divisor of ``dim``.
        ef_search: Candidate list size of ``hnsw`` queries: recall against speed.
        rerank: ``ivfpq`` fetches ``k × rerank`` candidates by their approximate scores
            and keeps the ``k`` best by exact cosine.
        seed: Seed of the training sample (``ivf``/``ivfpq``).
    """

    kind: IndexKind = "flat"
    nlist: int = 0
    nprobe: int = 64
    pq_m: int = 0
    ef_search: int = 64
    rerank: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEXES:
            raise ValueError(f"index must be one of {', '.join(INDEXES)}, got '{self.kind}'")
        for name in ("nprobe", "ef_search", "rerank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.nlist < 0 or self.pq_m < 0:
            raise ValueError(f"nlist and pq_m must be 0 (automatic) or positive, got "
                             f"{self.nlist} and {self.pq_m}")


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest ``√n``.

    faiss suggests 4–16 √n, which pays off when many lists are skipped; with the fast-scan
    codes of ``ivfpq`` scanning is cheap and what limits recall is how many lists a query
    visits: on the benchmark's 100k × 100k, 256 lists with ``nprobe`` 64 found 99.4 % of
    the planted pairs' targets in 68 µs a query, 1,024 lists 97.1 % in 70 µs, and
    k-means on 4× the lists costs 15× the time. Capped so that k-means gets 39 training
    points per list (faiss warns below that).
    """
    nlist = 2 ** round(math.log2(max(math.sqrt(n), 1)))
    return max(1, min(nlist, n // 39))


def _auto_pq_m(dim: int) -> int:
    # 6 dimensions per 4-bit code (64 codes, 32 bytes at 384); the exact re-scoring makes
    # up for the coarse codes. Fast-scan packs codes in pairs, so an even count.
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    return min(divisors, key=lambda m: (m % 2, abs(m - dim / 6), -m))


def index_factory_string(params: IndexParams, n: int, dim: int) -> str:
    """The faiss ``index_factory`` description of ``params`` for ``n`` database vectors.

    Examples: ``Flat``, ``IVF256,Flat``, ``IVF1024,PQ64x4fs``, ``HNSW32``.
    """
    if params.kind == "flat":
        return "Flat"
    if params.kind == "hnsw":
        return "HNSW32"
    nlist = min(params.nlist or auto_nlist(n), max(n, 1))
    if params.kind == "ivf":
        return f"IVF{nlist},Flat"
    m = params.pq_m or _auto_pq_m(dim)
    if dim % m:
        raise ValueError(f"pq_m must divide the embedding size {dim}, got {m}")
    if n >= 256:
        # 4-bit codes scanned with SIMD lookups ("fast scan"): 5× faster to add and ~2×
        # to search than 8-bit PQ at the same bytes per vector and recall (benchmarks).
        return f"IVF{nlist},PQ{m}x4fs"
    # Too few vectors to train 16 centroids per code well: plain PQ with fewer bits.
    return f"IVF{nlist},PQ{m}x{min(4, max(1, int(math.log2(max(n, 2))) - 2))}"


def _training_size(factory: str, n: int) -> int:
    nlist = int(factory.split(",")[0][3:]) if factory.startswith("IVF") else 1
    # k-means is the dominant cost of building; faiss warns below 39 points per list,
    # and more than ~40 barely moves the centroids on embeddings.
    return min(n, max(40 * nlist, 10_000))


def build_index(database: Vectors, params: IndexParams, block_size: int = 8192,
                trained: Any = None) -> Any:
    """A faiss inner-product index over the unit-length rows of ``database``.

    Args:
        database: ``(m, d)`` array or shards; added in blocks of ``block_size`` rows.
        params: The index kind and its parameters.
        block_size: Rows per ``add`` call (bounds the float32 copy in memory).
        trained: An empty index already trained (``ivf``/``ivfpq``: its centroids and
            codebooks are reused, which skips k-means).

    Returns:
        The faiss index with ``nprobe`` / ``efSearch`` set from ``params``.
    """
    import faiss

    n, dim = database.shape
    if trained is not None:
        index = trained
    else:
        factory = index_factory_string(params, n, dim)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if params.kind == "ivfpq":
            ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
            if isinstance(ivfpq, faiss.IndexIVFPQ):
                # index_factory turns on polysemous training (Hamming pre-filtering, which
                # this search does not use); it took 4× as long as the rest of the training.
                ivfpq.do_polysemous_training = False
            # The candidates are re-scored exactly, so rough codebooks do: 10 k-means
            # iterations on 64 points per code instead of 25 on 256.
            ivfpq.pq.cp.niter, ivfpq.pq.cp.max_points_per_centroid = 10, 64
        if not index.is_trained:
            rng = np.random.default_rng(params.seed)
            sample = np.sort(rng.choice(n, size=_training_size(factory, n), replace=False))
            logger.info("training %s on %d of %d vectors", factory, len(sample), n)
            index.train(_take(database, sample))
    for start in range(0, n, block_size):
        index.add(_rows(database, start, start + block_size))
    if params.kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(params.nprobe, ivf.nlist)
    elif params.kind == "hnsw":
        index.hnsw.efSearch = params.ef_search
    return index


def search(index: Any, queries: Vectors, database: Vectors, k: int, params: IndexParams,
           block_size: int = 8192, desc: str = "k-NN") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database rows of every query, in blocks of queries.

    Args:
        index: From :func:`build_index` over ``database``.
        queries: ``(n, d)`` array or shards.
        database: What ``index`` holds (``ivfpq`` re-scores its candidates from it).
        k: Neighbours per query (at most the database size).
        params: The index parameters (``rerank``, ``ef_search``).
        block_size: Queries per faiss call (bounds the working memory, drives the progress bar).
        desc: Progress bar label.

    Returns:
        Cosine similarities ``(n, k)`` sorted in decreasing order and neighbour indices
        ``(n, k)``; an approximate index that finds fewer than ``k`` neighbours leaves
        index ``-1`` and similarity ``nan`` in the missing places.
    """
    n = len(queries)
    fetch = min(k * params.rerank, len(database)) if params.kind == "ivfpq" else k
    if params.kind == "hnsw":
        index.hnsw.efSearch = max(params.ef_search, fetch)
    sims = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in tqdm(range(0, n, block_size), desc=desc, unit="block",
                      disable=n <= block_size):
        q = _rows(queries, start, start + block_size)
        s, i = index.search(q, fetch)
        if params.kind == "ivfpq":
            s, i = _rerank(q, i, database, k)
        s = s.astype(np.float32, copy=False)
        if (i < 0).any():
            s = np.where(i < 0, np.float32(np.nan), s)
        sims[start:start + len(q)], ids[start:start + len(q)] = s, i
    return sims, ids


def _rerank(q: np.ndarray, ids: np.ndarray, database: Vectors, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosines of the candidates ``ids`` of queries ``q``; the best ``k`` of each row.

    PQ scores are approximate and the margin needs true cosines, so the candidates are
    re-scored from the stored vectors, a shard at a time (at most 16,384 rows, 25 MB, in
    memory at once).
    """
    flat = np.maximum(ids, 0).ravel()
    owner = np.repeat(np.arange(len(q)), ids.shape[1])  # the query of each candidate
    groups = (database.iter_take(flat) if isinstance(database, EmbeddingShards) else
              ((np.arange(len(flat)), np.asarray(database, dtype=np.float32)[flat]),))
    sims = np.empty(len(flat), dtype=np.float32)
    for where, rows in groups:
        norms = np.maximum(np.sqrt(np.einsum("ij,ij->i", rows, rows)), 1e-12)
        sims[where] = np.einsum("ij,ij->i", rows, q[owner[where]]) / norms
    sims = sims.reshape(ids.shape)
    sims[ids < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def knn(queries: np.ndarray, database: np.ndarray, k: int, block_size: int = 8192,
        desc: str = "k-NN") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by inner product, with faiss, in blocks of queries.

    Args:
        queries: ``(n, d)`` float32 unit vectors (or shards).
        database: ``(m, d)`` float32 unit vectors (or shards).
        k: Neighbours per query (at most ``m``).
        block_size: Queries per faiss call (bounds the working memory, drives the progress bar).
        desc: Progress bar label.

    Returns:
        Similarities ``(n, k)`` sorted in decreasing order, and neighbour indices ``(n, k)``.
    """
    params = IndexParams()
    index = build_index(database, params, block_size)
    return search(index, queries, database, k, params, block_size, desc)


# ---------------------------------------------------------------------------- margin mining


def _row_means(sims: np.ndarray) -> np.ndarray:
    # Only approximate indexes leave holes (nan); the exact path keeps numpy's plain mean.
    if np.isnan(sims).any():
        with np.errstate(invalid="ignore"):
            return np.nanmean(sims, axis=1)
    return sims.mean(axis=1)


def margin_candidates(x: Vectors, y: Vectors, k: int = 4, block_size: int = 8192,
                      index: IndexParams | None = None) -> dict[str, np.ndarray]:
    """k-NN in both directions and the ratio-margin score of every candidate pair.

    The target-side index is built and searched first, then emptied and refilled with the
    sources (an ``ivf``/``ivfpq`` index keeps its training: both sides share one embedding
    space), so only one index is in memory at a time.

    Args:
        x: Source embeddings ``(n, d)``, an array or :class:`EmbeddingShards` (normalised here).
        y: Target embeddings ``(m, d)``.
        k: Neighbourhood size of the margin (and number of candidates per sentence).
        block_size: Queries per faiss call.
        index: The faiss index to search with; ``None`` is exact (``flat``).

    Returns:
        ``fwd_ids``/``fwd_scores`` ``(n, k)``: each source's target candidates and their
        margins; ``bwd_ids``/``bwd_scores`` ``(m, k)``: the same from the target side;
        ``fwd_sims``/``bwd_sims``: their cosines. Missing candidates of an approximate
        index have id ``-1`` and score ``nan``.
    """
    params = index or IndexParams()
    faiss_index = build_index(y, params, block_size)
    sim_xy, ids_xy = search(faiss_index, x, y, k, params, block_size,
                            desc="k-NN source→target")  # (n, k)
    if params.kind in ("ivf", "ivfpq"):
        faiss_index.reset()  # keeps the trained centroids and codebooks
        faiss_index = build_index(x, params, block_size, trained=faiss_index)
    else:
        del faiss_index  # free the target index before the source one exists
        faiss_index = build_index(x, params, block_size)
    sim_yx, ids_yx = search(faiss_index, y, x, k, params, block_size,
                            desc="k-NN target→source")  # (m, k)
    del faiss_index
    mean_x, mean_y = _row_means(sim_xy), _row_means(sim_yx)  # (n,), (m,)
    return {
        "fwd_ids": ids_xy, "fwd_sims": sim_xy,
        "fwd_scores": sim_xy / ((mean_x[:, None] + mean_y[ids_xy]) / 2),
        "bwd_ids": ids_yx, "bwd_sims": sim_yx,
        "bwd_scores": sim_yx / ((mean_y[:, None] + mean_x[ids_yx]) / 2),
    }


def select_pairs(c: dict[str, np.ndarray], mode: Mode = "intersection",
                 threshold: float | None = None) -> pd.DataFrame:
    """Pairs of one mining mode from :func:`margin_candidates`'s output.

    Args:
        c: Candidates and margins of both directions.
        mode: ``forward``, ``backward`` or ``intersection``.
        threshold: Keep pairs whose margin is at least this; ``None`` keeps all.

    Returns:
        Columns ``src``, ``tgt`` (row indices) and ``score`` (the margin), best first.
    """
    def best(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.arange(len(ids))
        if np.isnan(scores).any():
            # Holes of an approximate search never win; a row without any candidate is dropped.
            filled = np.where(np.isnan(scores), -np.inf, scores)
            col = filled.argmax(axis=1)
            rows = rows[np.isfinite(filled[rows, col])]
            col = col[rows]
        else:
            col = scores.argmax(axis=1)
        return rows, ids[rows, col], scores[rows, col]

    src, tgt, score = best(c["fwd_ids"], c["fwd_scores"])
    fwd = pd.DataFrame({"src": src, "tgt": tgt, "score": score})
    tgt, src, score = best(c["bwd_ids"], c["bwd_scores"])
    bwd = pd.DataFrame({"src": src, "tgt": tgt, "score": score})
    if mode == "forward":
        pairs = fwd
    elif mode == "backward":
        pairs = bwd
    else:
        # A pair both sides choose has the same margin either way (the formula is symmetric).
        pairs = fwd.merge(bwd[["src", "tgt"]], on=["src", "tgt"])
    if threshold is not None:
        pairs = pairs[pairs.score >= threshold]
    return pairs.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def mine_pairs(x: Vectors, y: Vectors, k: int = 4, mode: Mode = "intersection",
               threshold: float | None = None, block_size: int = 8192,
               threads: int | None = None, index: IndexParams | str | None = None
               ) -> pd.DataFrame:
    """Mine parallel pairs between two embedding sets by ratio margin.

    Args:
        x: Source embeddings ``(n, d)``: an array or :class:`EmbeddingShards`.
        y: Target embeddings ``(m, d)``.
        k: Neighbourhood size (clipped to the smaller set).
        mode: ``forward`` (best target per source), ``backward`` (best source per target) or
            ``intersection`` (pairs both directions choose).
        threshold: Keep pairs whose margin is at least this; ``None`` keeps all.
        block_size: Queries per faiss call.
        threads: faiss (OpenMP) threads; ``None`` leaves faiss's setting alone.
        index: faiss index: :class:`IndexParams`, a kind name with default parameters, or
            ``None`` for the exact ``flat``.

    Returns:
        Columns ``src``, ``tgt`` (row indices) and ``score`` (the margin), best first.

    Raises:
        ValueError: Bad ``mode``, ``k`` or index, empty input, or mismatched dimensions.
    """
    if mode not in MODES:
        raise ValueError(f"mining mode must be one of {', '.join(MODES)}, got '{mode}'")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    params = IndexParams(kind=index) if isinstance(index, str) else index  # type: ignore[arg-type]
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"nothing to mine: {len(x)} source and {len(y)} target sentences")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding sizes differ: source {x.shape[1]}, target {y.shape[1]}")
    if threads is not None:
        import faiss

        # faiss reads OMP_NUM_THREADS once, at import; later changes need its own setter.
        faiss.omp_set_num_threads(threads)
    k = min(k, len(x), len(y))
    c = margin_candidates(x, y, k, block_size, params)
    return select_pairs(c, mode, threshold)


def knn_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact neighbours (``(n, k)`` ids) that an approximate search found."""
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx_ids, exact_ids))
    return hits / exact_ids.size if exact_ids.size else 1.0


# ----------------------------------------------------------------------------- text files


def iter_sentences(path: str | Path) -> Iterator[tuple[int, str]]:
    """Stream ``(line number, sentence)`` of a text file, whitespace collapsed.

    Blank lines and repeats are skipped; repeats are recognised by a 128-bit digest, so
    memory grows by a few dozen bytes per distinct line instead of the whole text.
    Line numbers start at 1.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not valid UTF-8 (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence file not found: {path}")
    seen: set[bytes] = set()
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                text = collapse_whitespace(line)
                if not text:
                    continue
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                yield lineno, text
    except UnicodeDecodeError as exc:
        # The text decoder fails on a whole read buffer; find the line by decoding each.
        raise ValueError(_bad_utf8(path, exc)) from None


def _bad_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"{path}:{lineno}: not valid UTF-8 ({err.reason}: byte "
                        f"0x{raw[err.start]:02x} at column {err.start + 1})")
    return f"{path}: not valid UTF-8 ({exc.reason})"


def read_sentences(path: str | Path) -> list[str]:
    """One sentence per line, whitespace collapsed; blank lines and repeats dropped.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not valid UTF-8.
    """
    return [text for _, text in iter_sentences(path)]


def read_lines(path: str | Path, wanted: np.ndarray) -> dict[int, str]:
    """The collapsed text of the given line numbers (1-based), streaming the file once."""
    want = set(np.asarray(wanted).tolist())
    out: dict[int, str] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno in want:
                out[lineno] = collapse_whitespace(line)
                if len(out) == len(want):
                    break
    return out


def scan_text_file(path: str | Path) -> int:
    """Count the lines of a text file and check that it is valid UTF-8, in one binary pass.

    :func:`mine` scans both files before loading the encoder, so a bad byte at the end of
    the target file fails at once rather than after the source has been encoded.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not valid UTF-8 (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence file not found: {path}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    n, last = 0, b"\n"
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise ValueError(_bad_utf8(path, exc)) from None
            if not chunk:
                break
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def encode_file(encoder: Any, path: str | Path, directory: str | Path, batch_size: int = 64,
                shard_size: int = 65536, dtype: str = "float16") -> tuple[EmbeddingShards,
                                                                            np.ndarray]:
    """Encode a text file in chunks into embedding shards, with a progress bar over lines.

    Args:
        encoder: A sentence-transformers model (anything with ``encode``).
        path: One sentence a line (read with :func:`iter_sentences`).
        directory: Where the shards go.
        batch_size: Encoding batch size.
        shard_size: Sentences per chunk (= per shard): the texts held in memory at once.
        dtype: ``float16`` or ``float32`` shards.

    Returns:
        The shards, and the line number (1-based) of each embedded sentence.
    """
    path = Path(path)
    writer = ShardWriter(directory, dtype)
    line_numbers: list[int] = []
    chunk: list[str] = []
    with tqdm(total=scan_text_file(path), desc=f"encode {path.name}", unit="line") as bar:
        def flush(upto: int) -> None:
            if chunk:
                writer.append(encoder.encode(chunk, batch_size=batch_size,
                                             show_progress_bar=False, convert_to_numpy=True))
                chunk.clear()
            bar.update(upto - bar.n)

        lineno = 0
        for lineno, text in iter_sentences(path):
            chunk.append(text)
            line_numbers.append(lineno)
            if len(chunk) >= shard_size:
                flush(lineno)
        flush(max(lineno, bar.total))
    return writer.close(), np.asarray(line_numbers, dtype=np.int64)


def mine(src_file: str | Path, tgt_file: str | Path, model: str, out: str | Path, k: int = 4,
         threshold: float | None = 1.06, mode: Mode = "intersection", batch_size: int = 64,
         catalogue: str = "configs/encoders.yaml", device: str = "auto",
         threads: int | None = None, index: IndexParams | None = None,
         shard_size: int = 65536, dtype: str = "float16",
         work_dir: str | Path | None = None) -> dict[str, Any]:
    """Mine a parallel corpus from two monolingual text files (one sentence per line).

    Args:
        src_file: Source-language sentences.
        tgt_file: Target-language sentences.
        model: Encoder catalogue key or sentence-transformers directory.
        out: Output Parquet: ``src``, ``tgt`` (texts), ``score`` (margin), ``src_index``,
            ``tgt_index`` (line numbers after dropping blanks and repeats), best first.
        k: Neighbourhood size of the margin.
        threshold: Minimum margin; ``None`` keeps every pair of ``mode``.
        mode: ``forward``, ``backward`` or ``intersection``.
        batch_size: Encoding batch size.
        catalogue: Encoder catalogue (for keys).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch and faiss; ``None`` keeps their defaults.
        index: faiss index and search parameters; ``None`` is exact (``flat``).
        shard_size: Sentences encoded per chunk and stored per shard.
        dtype: ``float16`` or ``float32`` embedding shards.
        work_dir: Where the shards go (``source_embeddings/``, ``target_embeddings/``;
            kept, replaced by the next run); ``None`` uses a temporary directory next to
            ``out``, removed at the end.

    Returns:
        Counts, the mean margin of the kept pairs (``None`` without pairs), and timings
        under ``runtime``.
    """
    from pipeline.encoders.catalog import load_encoder
    from pipeline.runtime import limit_threads, resolve_device

    if mode not in MODES:
        raise ValueError(f"mining mode must be one of {', '.join(MODES)}, got '{mode}'")
    params = index or IndexParams()
    src_file, tgt_file, out = Path(src_file), Path(tgt_file), Path(out)
    for path in (src_file, tgt_file):
        scan_text_file(path)
    encoder = load_encoder(model, catalogue, device=resolve_device(device))
    if threads is not None:
        limit_threads(threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = None if work_dir else tempfile.mkdtemp(prefix=".mine-", dir=out.parent)
    work = Path(work_dir or tmp)  # type: ignore[arg-type]
    try:
        start = time.perf_counter()
        x, src_lines = encode_file(encoder, src_file, work / "source_embeddings", batch_size,
                                   shard_size, dtype)
        y, tgt_lines = encode_file(encoder, tgt_file, work / "target_embeddings", batch_size,
                                   shard_size, dtype)
        encoded = time.perf_counter()
        pairs = mine_pairs(x, y, k=k, mode=mode, threshold=threshold, threads=threads,
                           index=params)
        mined = time.perf_counter()
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    src_text = read_lines(src_file, src_lines[pairs.src.to_numpy()])
    tgt_text = read_lines(tgt_file, tgt_lines[pairs.tgt.to_numpy()])
    table = pd.DataFrame({
        "src": [src_text[i] for i in src_lines[pairs.src.to_numpy()]],
        "tgt": [tgt_text[j] for j in tgt_lines[pairs.tgt.to_numpy()]],
        "score": pairs.score.astype(float), "src_index": pairs.src, "tgt_index": pairs.tgt,
    })
    write_table(table, out)
    logger.info("mined %d pairs from %d × %d sentences into %s (%s index)",
                len(table), len(x), len(y), out, params.kind)
    return {
        "src_sentences": len(x), "tgt_sentences": len(y), "pairs": len(table),
        # JSON has no NaN: no pair, no mean.
        "mean_margin": float(table.score.mean()) if len(table) else None,
        "index": params.kind,
        "runtime": {"encode_seconds": encoded - start, "mine_seconds": mined - encoded},
    }


def run(cfg: MineConfig) -> dict[str, Any]:
    """``multiway mine``: :func:`mine` with the fields of a :class:`MineConfig`."""
    if not cfg.source or not cfg.target:
        raise ValueError("mine needs --source and --target text files (one sentence a line)")
    index = IndexParams(kind=cfg.index, nlist=cfg.nlist, nprobe=cfg.nprobe, pq_m=cfg.pq_m,
                        ef_search=cfg.ef_search, rerank=cfg.rerank, seed=cfg.seed)
    return mine(cfg.source, cfg.target, cfg.model, cfg.output, k=cfg.k, threshold=cfg.threshold,
                mode=cfg.mode, batch_size=cfg.batch_size, catalogue=cfg.catalogue,
                device=cfg.device, threads=cfg.threads, index=index,
                shard_size=cfg.shard_size, dtype=cfg.dtype, work_dir=cfg.work_dir or None)

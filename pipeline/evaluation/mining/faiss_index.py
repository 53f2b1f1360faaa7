"""The faiss k-NN index of the miner: which one (``index_factory`` specs), building, searching.

``flat`` (exact ``IndexFlatIP``, the default) costs ``n × m`` dot products; ``ivf``, ``ivfpq``
and ``hnsw`` are approximate, searched with ``nprobe`` / ``efSearch``. ``ivfpq`` keeps half a
byte per 6 dimensions (faiss's SIMD "fast scan" codes) and re-scores its candidates exactly
from the stored embeddings. Speed and recall: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from pipeline.evaluation.mining.shards import (
    EmbeddingShards,
    Vectors,
    row_norms,
    unit_rows,
    unit_rows_at,
)

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "ivfpq", "hnsw"]
INDEXES: tuple[str, ...] = ("flat", "ivf", "ivfpq", "hnsw")


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """Which faiss index the k-NN search uses, and how hard it searches."""

    # ``flat`` (exact), ``ivf`` (inverted lists of full vectors), ``ivfpq`` (inverted lists of
    # product-quantised codes, re-scored exactly) or ``hnsw``.
    index: IndexKind = "flat"
    nlist: int = 0  # Inverted lists of ``ivf``/``ivfpq``; 0 picks a power of two near ``√m``.
    nprobe: int = 64  # Lists visited per query (``ivf``/``ivfpq``): recall against speed.
    # 4-bit sub-quantisers of ``ivfpq`` (half a byte each); 0 picks ``dim / 6`` rounded to an even
    # divisor of ``dim``.
    pq_m: int = 0
    ef_search: int = 64  # Candidate list size of ``hnsw`` queries: recall against speed.
    # ``ivfpq`` fetches ``k × rerank`` candidates by their approximate scores and keeps the ``k``
    # best by exact cosine.
    rerank: int = 4
    seed: int = 0  # Seed of the training sample (``ivf``/``ivfpq``).

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise ValueError(f"index must be one of {', '.join(INDEXES)}, got '{self.index}'")
        for name in ("nprobe", "ef_search", "rerank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.nlist < 0 or self.pq_m < 0:
            raise ValueError(f"nlist and pq_m must be 0 (automatic) or positive, got "
                             f"{self.nlist} and {self.pq_m}")


def auto_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest ``√n``, at most ``n / 39``.

    Fewer lists than faiss's usual 4–16 √n: with fast-scan codes what limits recall is how
    many lists a query visits (on the benchmark's 100k × 100k, 256 lists with ``nprobe`` 64
    found 99.4 % of the planted pairs' targets, 1,024 lists 97.1 %, in the same time), and
    k-means wants 39 training points per list.
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
    if params.index == "flat":
        return "Flat"
    if params.index == "hnsw":
        return "HNSW32"
    nlist = min(params.nlist or auto_nlist(n), max(n, 1))
    if params.index == "ivf":
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
        if params.index == "ivfpq":
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
            index.train(unit_rows_at(database, sample))
    for start in range(0, n, block_size):
        index.add(unit_rows(database, start, start + block_size))
    if params.index in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(params.nprobe, ivf.nlist)
    elif params.index == "hnsw":
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
    fetch = min(k * params.rerank, len(database)) if params.index == "ivfpq" else k
    if params.index == "hnsw":
        index.hnsw.efSearch = max(params.ef_search, fetch)
    sims = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in tqdm(range(0, n, block_size), desc=desc, unit="block",
                      disable=n <= block_size):
        q = unit_rows(queries, start, start + block_size)
        s, i = index.search(q, fetch)
        if params.index == "ivfpq":
            s, i = _rerank(q, i, database, k)
        s = s.astype(np.float32, copy=False)
        if (i < 0).any():
            s = np.where(i < 0, np.float32(np.nan), s)
        sims[start:start + len(q)], ids[start:start + len(q)] = s, i
    return sims, ids


def _rerank(q: np.ndarray, ids: np.ndarray, database: Vectors, k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosines of the candidates ``ids`` of queries ``q``; the best ``k`` of each row.

    Read from the stored vectors a shard at a time (at most 16,384 rows in memory at once).
    """
    flat = np.maximum(ids, 0).ravel()
    owner = np.repeat(np.arange(len(q)), ids.shape[1])  # the query of each candidate
    groups = (database.iter_take(flat) if isinstance(database, EmbeddingShards) else
              ((np.arange(len(flat)), np.asarray(database, dtype=np.float32)[flat]),))
    sims = np.empty(len(flat), dtype=np.float32)
    for where, rows in groups:
        sims[where] = np.einsum("ij,ij->i", rows, q[owner[where]]) / row_norms(rows)
    sims = sims.reshape(ids.shape)
    sims[ids < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)


def knn_recall(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact neighbours (``(n, k)`` ids) that an approximate search found."""
    hits = sum(len(np.intersect1d(a[a >= 0], e)) for a, e in zip(approx_ids, exact_ids))
    return hits / exact_ids.size if exact_ids.size else 1.0

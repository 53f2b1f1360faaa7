"""Ratio-margin scoring of k-NN candidates in both directions, and the pairs it mines.

Candidates of a source sentence are its ``k`` nearest targets (and vice versa); ``forward``
keeps each source's best candidate, ``backward`` each target's, ``intersection`` the pairs both
directions agree on. A threshold on the margin (about 1.06 in LASER's BUCC runs) then trades
recall for precision.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from pipeline.evaluation.mining.faiss_index import IndexParams, build_index, search
from pipeline.evaluation.mining.shards import Vectors

Mode = Literal["forward", "backward", "intersection"]
MODES: tuple[str, ...] = ("forward", "backward", "intersection")


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`MODES`."""
    if mode not in MODES:
        raise ValueError(f"mining mode must be one of {', '.join(MODES)}, got '{mode}'")


def _row_means(sims: np.ndarray) -> np.ndarray:
    # Only approximate indexes leave holes (nan); the exact path keeps numpy's plain mean.
    if np.isnan(sims).any():
        with np.errstate(invalid="ignore"):
            return np.nanmean(sims, axis=1)
    return sims.mean(axis=1)


def margin_candidates(x: Vectors, y: Vectors, k: int = 4, block_size: int = 8192,
                      index: IndexParams | None = None) -> dict[str, np.ndarray]:
    """k-NN in both directions and the ratio-margin score of every candidate pair.

    Only one faiss index is in memory at a time: the target-side one is searched, then
    emptied and refilled with the sources (``ivf``/``ivfpq`` keep their training).

    Args:
        x: Source embeddings ``(n, d)``, an array or
            :class:`~pipeline.evaluation.mining.shards.EmbeddingShards` (normalised here).
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
    if params.index in ("ivf", "ivfpq"):
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


def _best(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's best-scored candidate: ``(rows, their candidates, scores)``."""
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
    src, tgt, score = _best(c["fwd_ids"], c["fwd_scores"])
    fwd = pd.DataFrame({"src": src, "tgt": tgt, "score": score})
    tgt, src, score = _best(c["bwd_ids"], c["bwd_scores"])
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
        x: Source embeddings ``(n, d)``: an array or
            :class:`~pipeline.evaluation.mining.shards.EmbeddingShards`.
        y: Target embeddings ``(m, d)``.
        k: Neighbourhood size (clipped to the smaller set).
        mode: ``forward`` (best target per source), ``backward`` (best source per target) or
            ``intersection`` (pairs both directions choose).
        threshold: Keep pairs whose margin is at least this; ``None`` keeps all.
        block_size: Queries per faiss call.
        threads: faiss (OpenMP) threads; ``None`` leaves faiss's setting alone.
        index: faiss index: :class:`~pipeline.evaluation.mining.faiss_index.IndexParams`, a
            kind name with default parameters, or ``None`` for the exact ``flat``.

    Returns:
        Columns ``src``, ``tgt`` (row indices) and ``score`` (the margin), best first.

    Raises:
        ValueError: Bad ``mode``, ``k`` or index, empty input, or mismatched dimensions.
    """
    check_mode(mode)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    params = IndexParams(index=index) if isinstance(index, str) else index  # type: ignore[arg-type]
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

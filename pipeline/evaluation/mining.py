"""Bitext mining with faiss k-NN and ratio-margin scoring (LASER / BUCC style).

mteb's bitext mining ranks by plain cosine over the full similarity matrix, which is fine
for a test set of a few thousand sentences. Mining a parallel corpus from two large
monolingual collections needs two more things: exact k-NN search that never materialises
the ``n × m`` matrix (faiss ``IndexFlatIP`` over unit vectors, queried in blocks), and the
ratio margin of Artetxe & Schwenk (2019), which discounts "hub" sentences that are close to
everything::

    margin(x, y) = cos(x, y) / (mean_k cos(x, NN_k(x)) / 2 + mean_k cos(y, NN_k(y)) / 2)

Candidates of a source sentence are its ``k`` nearest targets (and vice versa); ``forward``
keeps each source's best candidate, ``backward`` each target's, ``intersection`` the pairs
both directions agree on. A threshold on the margin (about 1.06 in LASER's BUCC runs) then
trades recall for precision.
"""

from __future__ import annotations

import logging
import time
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


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as contiguous float32 (what faiss inner product needs)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def knn(queries: np.ndarray, database: np.ndarray, k: int, block_size: int = 8192,
        desc: str = "k-NN") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by inner product, with faiss, in blocks of queries.

    Args:
        queries: ``(n, d)`` float32 unit vectors.
        database: ``(m, d)`` float32 unit vectors.
        k: Neighbours per query (at most ``m``).
        block_size: Queries per faiss call (bounds the working memory, drives the progress bar).
        desc: Progress bar label.

    Returns:
        Similarities ``(n, k)`` sorted in decreasing order, and neighbour indices ``(n, k)``.
    """
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    sims = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in tqdm(range(0, len(queries), block_size), desc=desc, unit="block",
                      disable=len(queries) <= block_size):
        stop = start + block_size
        sims[start:stop], ids[start:stop] = index.search(queries[start:stop], k)
    return sims, ids


def margin_candidates(x: np.ndarray, y: np.ndarray, k: int = 4, block_size: int = 8192
                      ) -> dict[str, np.ndarray]:
    """k-NN in both directions and the ratio-margin score of every candidate pair.

    Args:
        x: Source embeddings ``(n, d)`` (normalised here).
        y: Target embeddings ``(m, d)``.
        k: Neighbourhood size of the margin (and number of candidates per sentence).
        block_size: Queries per faiss call.

    Returns:
        ``fwd_ids``/``fwd_scores`` ``(n, k)``: each source's target candidates and their
        margins; ``bwd_ids``/``bwd_scores`` ``(m, k)``: the same from the target side.
    """
    x, y = normalize(x), normalize(y)
    sim_xy, ids_xy = knn(x, y, k, block_size, desc="k-NN source→target")  # (n, k)
    sim_yx, ids_yx = knn(y, x, k, block_size, desc="k-NN target→source")  # (m, k)
    mean_x, mean_y = sim_xy.mean(axis=1), sim_yx.mean(axis=1)  # (n,), (m,)
    return {
        "fwd_ids": ids_xy,
        "fwd_scores": sim_xy / ((mean_x[:, None] + mean_y[ids_xy]) / 2),
        "bwd_ids": ids_yx,
        "bwd_scores": sim_yx / ((mean_y[:, None] + mean_x[ids_yx]) / 2),
    }


def mine_pairs(x: np.ndarray, y: np.ndarray, k: int = 4, mode: Mode = "intersection",
               threshold: float | None = None, block_size: int = 8192,
               threads: int | None = None) -> pd.DataFrame:
    """Mine parallel pairs between two embedding sets by ratio margin.

    Args:
        x: Source embeddings ``(n, d)``.
        y: Target embeddings ``(m, d)``.
        k: Neighbourhood size (clipped to the smaller set).
        mode: ``forward`` (best target per source), ``backward`` (best source per target) or
            ``intersection`` (pairs both directions choose).
        threshold: Keep pairs whose margin is at least this; ``None`` keeps all.
        block_size: Queries per faiss call.
        threads: faiss (OpenMP) threads; ``None`` leaves faiss's setting alone.

    Returns:
        Columns ``src``, ``tgt`` (row indices) and ``score`` (the margin), best first.

    Raises:
        ValueError: Bad ``mode`` or ``k``, empty input, or mismatched dimensions.
    """
    if mode not in MODES:
        raise ValueError(f"mining mode must be one of {', '.join(MODES)}, got '{mode}'")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"nothing to mine: {len(x)} source and {len(y)} target sentences")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding sizes differ: source {x.shape[1]}, target {y.shape[1]}")
    if threads is not None:
        import faiss

        # faiss reads OMP_NUM_THREADS once, at import; later changes need its own setter.
        faiss.omp_set_num_threads(threads)
    k = min(k, len(x), len(y))
    c = margin_candidates(x, y, k, block_size)
    best_f = c["fwd_scores"].argmax(axis=1)
    rows = np.arange(len(x))
    fwd = pd.DataFrame({"src": rows, "tgt": c["fwd_ids"][rows, best_f],
                        "score": c["fwd_scores"][rows, best_f]})
    best_b = c["bwd_scores"].argmax(axis=1)
    cols = np.arange(len(y))
    bwd = pd.DataFrame({"src": c["bwd_ids"][cols, best_b], "tgt": cols,
                        "score": c["bwd_scores"][cols, best_b]})
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


def read_sentences(path: str | Path) -> list[str]:
    """One sentence per line, whitespace collapsed; blank lines and repeats dropped.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        lines = (collapse_whitespace(line) for line in fh)
        return list(dict.fromkeys(line for line in lines if line))


def mine(src_file: str | Path, tgt_file: str | Path, model: str, out: str | Path, k: int = 4,
         threshold: float | None = 1.06, mode: Mode = "intersection", batch_size: int = 64,
         catalogue: str = "configs/encoders.yaml", device: str = "auto",
         threads: int | None = None) -> dict[str, Any]:
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

    Returns:
        Counts, the mean margin of the kept pairs and timings.
    """
    from pipeline.encoders.catalog import load_encoder
    from pipeline.runtime import limit_threads, resolve_device

    if mode not in MODES:
        raise ValueError(f"mining mode must be one of {', '.join(MODES)}, got '{mode}'")
    src, tgt = read_sentences(src_file), read_sentences(tgt_file)
    encoder = load_encoder(model, catalogue, device=resolve_device(device))
    if threads is not None:
        limit_threads(threads)
    start = time.perf_counter()
    x = encoder.encode(src, batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True)
    y = encoder.encode(tgt, batch_size=batch_size, show_progress_bar=True, convert_to_numpy=True)
    encoded = time.perf_counter()
    pairs = mine_pairs(x, y, k=k, mode=mode, threshold=threshold, threads=threads)
    mined = time.perf_counter()
    table = pd.DataFrame({
        "src": [src[i] for i in pairs.src], "tgt": [tgt[j] for j in pairs.tgt],
        "score": pairs.score.astype(float), "src_index": pairs.src, "tgt_index": pairs.tgt,
    })
    write_table(table, out)
    logger.info("mined %d pairs from %d × %d sentences into %s",
                len(table), len(src), len(tgt), out)
    return {
        "src_sentences": len(src), "tgt_sentences": len(tgt), "pairs": len(table),
        "mean_margin": float(table.score.mean()) if len(table) else float("nan"),
        "encode_seconds": encoded - start, "mine_seconds": mined - encoded,
    }


def run(cfg: MineConfig) -> dict[str, Any]:
    """``multiway mine``: :func:`mine` with the fields of a :class:`MineConfig`."""
    if not cfg.source or not cfg.target:
        raise ValueError("mine needs --source and --target text files (one sentence a line)")
    return mine(cfg.source, cfg.target, cfg.model, cfg.output, k=cfg.k, threshold=cfg.threshold,
                mode=cfg.mode, batch_size=cfg.batch_size, catalogue=cfg.catalogue,
                device=cfg.device, threads=cfg.threads)

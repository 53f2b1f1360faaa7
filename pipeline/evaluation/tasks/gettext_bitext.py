"""Bitext mining on gettext software messages: human translations from another domain.

Software messages (``coreutils`` and the other catalogs ``prepare_seed`` reads) are short,
technical and translated by localisation teams, far from Bible prose. Coverage differs by
language, so each pair is its own subset (``sentence1``/``sentence2``), built from the
messages both sides have: every language with English, and the non-English pairs of the
Bible task (:data:`~pipeline.evaluation.tasks.base.NON_ENGLISH_PAIRS`; the two pool–pool
pairs among them are what only multi-way training supervises directly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

from pipeline import langs as langmod
from pipeline.evaluation.tasks.base import (
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

PAIRS = both_directions([(code, SOURCE) for code in langmod.LANGUAGES if code != SOURCE]
                        + list(NON_ENGLISH_PAIRS))


class GettextBitextMining(AbsTaskBitextMining):
    """Message-level bitext mining on gettext catalogs: X↔English and non-English pairs.

    Args:
        data: Data paths (reads ``data.gettext``).
        languages: FLORES codes to evaluate; ``None`` means every language in the file.
        n_pairs: Messages sampled (seeded) per language pair.
        seed: Seed of the samples (and mteb's own).
    """

    metadata = TaskMetadata(
        name="GettextBitextMining",
        description=(
            "Software messages from Debian's gettext catalogs (/usr/share/locale, e.g. "
            "coreutils), translated by localisation teams; format specifiers and accelerators "
            "stripped. Find each message's translation among the sampled messages of the other "
            "language (English with every language and ten non-English pairs, both "
            "directions). Out of domain for a "
            "Bible-trained encoder."
        ),
        reference="https://www.gnu.org/software/gettext/",
        dataset={"path": "data/seed/gettext.parquet", "revision": "prepare_seed"},
        type="BitextMining",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=pair_subsets(PAIRS),
        main_score="accuracy",
        domains=["Programming", "Written"],
        task_subtypes=[],
        # Each catalog keeps its package's licence (GPL-3 for coreutils, LGPL for glib, ...).
        license="multiple",
        annotations_creators="derived",
        dialect=[],
        sample_creation="human-translated and localized",
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
        self.hf_subsets = keep_subsets(
            self.metadata.name, self.metadata.hf_subsets,
            parquet_languages(self.data.gettext), languages,
        )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Sample the messages of every pair (mteb calls this)."""
        if self.data_loaded:
            return
        langs = sorted({c for s in self.hf_subsets for c in subset_languages(s)})
        table = read_table(self.data.gettext, columns=["id", *langs])
        self.dataset = {}
        for subset in list(self.hf_subsets):
            a, b = subset_languages(subset)
            # The sample is drawn per pair, so both directions mine the same messages.
            pairs = table[non_empty(table, [a, b])]
            pairs = pairs[unique_texts(pairs, [a, b])]
            if len(pairs) < 2:
                # A catalog with (almost) nothing translated: nothing to mine.
                logger.warning("%s: dropping %s (%d usable messages)",
                               self.metadata.name, subset, len(pairs))
                self.hf_subsets.remove(subset)
                continue
            pairs = pairs.sample(n=min(self.n_pairs, len(pairs)), random_state=self.seed)
            pairs = pairs.sort_values("id")
            self.dataset[subset] = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": pairs[a].tolist(), "sentence2": pairs[b].tolist()}
            )})
        self.data_loaded = True

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
from collections.abc import Iterable
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

from pipeline import langs as langmod
from pipeline.evaluation.tasks.base import ProjectTask, bitext_metadata, mineable_rows
from pipeline.io import read_table
from pipeline.sources.bible import parquet_languages, subset_languages

logger = logging.getLogger(__name__)


class GettextBitextMining(ProjectTask, AbsTaskBitextMining):
    """Message-level bitext mining on gettext catalogs: X↔English and non-English pairs.

    Reads ``data.gettext``. Option ``n_pairs``: messages sampled (seeded) per language pair.
    """

    OPTIONS = {"n_pairs": (300, 2)}

    metadata = bitext_metadata(
        langmod.LANGUAGES,
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
        domains=["Programming", "Written"],
        sample_creation="human-translated and localized",
    )

    def data_languages(self) -> Iterable[str]:
        """The language columns of ``data.gettext``."""
        return parquet_languages(self.data.gettext)

    def build_dataset(self) -> dict[str, Any]:
        """Sample the messages of every pair; drop the pairs with almost nothing translated."""
        langs = sorted({c for s in self.hf_subsets for c in subset_languages(s)})
        table = read_table(self.data.gettext, columns=["id", *langs])
        dataset = {}
        for subset in list(self.hf_subsets):
            a, b = subset_languages(subset)
            # The sample is drawn per pair, so both directions mine the same messages.
            pairs = mineable_rows(table, [a, b])
            if len(pairs) < 2:
                logger.warning("%s: dropping %s (%d usable messages)",
                               self.metadata.name, subset, len(pairs))
                self.hf_subsets.remove(subset)
                continue
            pairs = pairs.sample(n=min(self.n_pairs, len(pairs)), random_state=self.seed)
            pairs = pairs.sort_values("id")
            dataset[subset] = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": pairs[a].tolist(), "sentence2": pairs[b].tolist()}
            )})
        return dataset

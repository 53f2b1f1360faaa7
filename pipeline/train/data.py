"""Training data: one ``build_corpus`` table → ``datasets.Dataset`` splits for the trainer.

The sentence-transformers collator hands a loss one feature dict per dataset column, in column
order, so the column order *is* the language order the losses see (and name their terms by).
It is fixed here, never taken from the file:

- the multi-way tables (``multiway``, ``human``): ``langs.source`` (English), then
  ``langs.pool`` in its order;
- ``enx``: ``langs.source`` and ``x`` (the row's translation, whose language varies by row);
- ``english``: ``langs.source`` and ``<source>_second``, the same verse in a second English
  edition (a human paraphrase), the monolingual control.

Only text columns are kept: any other column (``id``, ``lang``) would be tokenised as text.

``train_rows`` keeps a fixed sample of the training rows, the same for every regime and seed
(the rows whose ids hash lowest): regimes then see the same English sentences, and seeds differ
in batch order and dropout only.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.config import LangsConfig
from pipeline.io import read_table

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

#: Training regime → the ``build_corpus`` table it reads (``<table>.parquet``); its loss is its
#: ``train_encoder.loss`` entry. The controls change one thing each against ``multiway`` or
#: ``enx``: ``human`` the translations (human, not MT), ``enx_mwloss`` the loss form of ``enx``
#: (the multi-way loss on En-X pairs), ``enx_matched`` the positives of ``multiway`` (the same
#: rows and embeddings, English-centric pairs only: ``pivot_infonce``), ``english`` the
#: languages (English only: two editions), ``xlco`` and ``xlco_multiway`` the objective
#: (InfoXLM's momentum contrast on the En-X pairs and on the multi-way rows).
REGIMES = {"multiway": "multiway", "enx": "enx", "human": "human", "enx_mwloss": "enx",
           "enx_matched": "multiway", "english": "english", "xlco": "enx",
           "xlco_multiway": "multiway"}

#: What builds a table that only some runs of ``build_corpus`` make (named when it is absent).
OPTIONAL_TABLES = {
    "human": "build_corpus.references names human translations of every pool language",
    "english": "build_corpus.second_editions holds a second edition of the source language",
}


@dataclasses.dataclass(frozen=True)
class RegimeData:
    """The splits of one regime's corpus, ready for the trainer.

    Attributes:
        train: Training rows, one text column per entry of ``columns``.
        dev: Dev rows (same columns).
        columns: Column (= language) order, as the losses receive it.
        stats: Row counts per split and, for ``enx``, rows per X language.
    """

    train: Dataset
    dev: Dataset
    columns: tuple[str, ...]
    stats: dict[str, Any]


def corpus_path(corpus_dir: str | Path, regime: str) -> Path:
    """``<corpus_dir>/<table>.parquet``, the regime's table (:data:`REGIMES`).

    Raises:
        ValueError: ``regime`` is not one of :data:`REGIMES`.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime '{regime}' (allowed: {', '.join(REGIMES)})")
    return Path(corpus_dir) / f"{REGIMES[regime]}.parquet"


def regime_columns(regime: str, langs: LangsConfig) -> tuple[str, ...]:
    """The text columns of a regime, in training order (module docstring)."""
    if REGIMES[regime] == "enx":
        return (langs.source, "x")
    if REGIMES[regime] == "english":
        return (langs.source, f"{langs.source}_second")
    return (langs.source, *langs.pool)


def load_regime(corpus_dir: str | Path, regime: str, langs: LangsConfig,
                train_rows: int = 0) -> RegimeData:
    """Read a regime's corpus table and split it into train and dev datasets.

    Args:
        corpus_dir: ``build_corpus`` output directory.
        regime: A key of :data:`REGIMES`.
        langs: The shared language settings (column order).
        train_rows: Keep this fixed sample of the training rows (module docstring); 0: all.

    Returns:
        The train and dev datasets, the column order and row counts.

    Raises:
        FileNotFoundError: The table does not exist (:data:`OPTIONAL_TABLES`).
        ValueError: Unknown regime, a missing column, an empty text, or no training rows.
    """
    from datasets import Dataset

    path = corpus_path(corpus_dir, regime)
    table = REGIMES[regime]
    if table in OPTIONAL_TABLES and not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: build_corpus writes it only when {OPTIONAL_TABLES[table]}; "
            f"set that or drop the {regime} regime"
        )
    columns = regime_columns(regime, langs)
    extra = ["lang"] if table == "enx" else []
    df = read_table(path, ["id", "split", *columns, *extra])
    if train_rows:
        # The lowest id hashes among the training rows: the same rows in every table.
        order = pd.util.hash_pandas_object(df["id"].astype(str), index=False).to_numpy()
        train = np.flatnonzero(df["split"].to_numpy() == "train")
        keep = df["split"].to_numpy() != "train"
        keep[train[np.argsort(order[train], kind="stable")[:train_rows]]] = True
        df = df[keep]
    texts = df[list(columns)]
    empty = texts.isna() | (texts.astype(str).apply(lambda c: c.str.strip()) == "")
    if empty.to_numpy().any():
        counts = {c: int(n) for c, n in empty.sum().items() if n}
        raise ValueError(
            f"{path} has empty texts {counts}; rebuild it with build_corpus (it drops such rows)"
        )
    stats: dict[str, Any] = {
        f"{split}_rows": int((df["split"] == split).sum()) for split in ("train", "dev")
    }
    if REGIMES[regime] == "enx":
        train_langs = df.loc[df["split"] == "train", "lang"].value_counts()
        stats["train_x_langs"] = {str(k): int(v) for k, v in sorted(train_langs.items())}
    if stats["train_rows"] == 0:
        raise ValueError(f"{path} has no 'train' rows; check build_corpus.dev_fraction")
    splits = {
        split: Dataset.from_pandas(
            df.loc[df["split"] == split, list(columns)].astype(str), preserve_index=False
        )
        for split in ("train", "dev")
    }
    logger.info("%s: %d train / %d dev rows, columns %s", path, stats["train_rows"],
                stats["dev_rows"], list(columns))
    return RegimeData(splits["train"], splits["dev"], columns, stats)

"""Training data: one ``build_corpus`` table → ``datasets.Dataset`` splits for the trainer.

The sentence-transformers collator hands a loss one feature dict per dataset column, in column
order, so the column order *is* the language order the losses see (and name their terms by).
It is fixed here, never taken from the file:

- ``multiway`` and ``human``: ``langs.source`` (English), then ``langs.pool`` in its order;
- ``enx`` and ``enx_mwloss``: ``langs.source`` and ``x`` (the row's translation, whose
  language varies by row);
- ``english``: ``langs.source`` twice (``<source>`` and ``<source>_view``): the two views of
  a sentence differ only by dropout (SimCSE), the monolingual control.

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

#: Training regime → the ``build_corpus`` table it reads (``<table>.parquet``). The controls
#: change one thing each: ``human`` the translations (human, not MT), ``enx_mwloss`` the
#: loss form of ``enx`` (its ``train_encoder.loss`` entry), ``english`` the languages (none).
REGIMES = {"multiway": "multiway", "enx": "enx", "human": "human", "enx_mwloss": "enx",
           "english": "multiway"}


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
    if regime == "english":
        return (langs.source, f"{langs.source}_view")
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
        FileNotFoundError: The table does not exist (``human`` needs
            ``build_corpus.references``).
        ValueError: Unknown regime, a missing column, an empty text, or no training rows.
    """
    from datasets import Dataset

    path = corpus_path(corpus_dir, regime)
    if regime == "human" and not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: the human corpus is built only when build_corpus.references "
            "names human translations of every pool language; set it or drop the human regime"
        )
    columns = regime_columns(regime, langs)
    extra = ["lang"] if REGIMES[regime] == "enx" else []
    stored = columns[:1] if regime == "english" else columns
    df = read_table(path, ["id", "split", *stored, *extra])
    if regime == "english":
        df[columns[1]] = df[langs.source]
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

"""Verse mining with headroom: every pair of evaluated languages, one outcome per verse.

mteb's ``BibleTestBitextMining`` (300 verses, each language with English and ten other
pairs, cosine retrieval) sits near its ceiling for the aligned models, and mteb keeps only
the accuracy of a subset, not which verses were found. This evaluation mines
``mining_sentences`` test verses between **every** pair of evaluated languages, in both
directions, with plain cosine and with the ratio margin of the project's own miner
(:func:`pipeline.evaluation.mining.margin.margin_candidates`), and keeps each verse's outcome, so
two models evaluated on the same verses can be compared verse by verse with a paired
interval (:mod:`pipeline.stats`).

Pairs fall into groups by what training saw (``seen`` = the training pool, English
included): ``x_eng_seen`` / ``x_eng_unseen`` (a language with English), ``seen_seen`` (two
non-English pool languages: the pairs only multi-way training supervises directly),
``seen_unseen`` and ``unseen_unseen``.

The same mining runs on any many-way table of human translations (:class:`MinedSet`): the
Bible test verses (:data:`VERSES`) and the Debian sentences (:data:`DEBIAN`,
``extract_debian``'s out-of-domain set), each with its own outcome file and metric prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipeline.evaluation.mining.margin import margin_candidates
from pipeline.evaluation.mining.shards import normalize
from pipeline.io import read_table
from pipeline.sources.bible import non_empty, parquet_languages, unique_texts

logger = logging.getLogger(__name__)

SCORINGS = ("cosine", "margin")


@dataclasses.dataclass(frozen=True)
class MinedSet:
    """A many-way test table mined this way, and the names its results go by."""

    name: str  # metric prefix (``<name>/<scoring>/<group>``)
    file: str  # outcome table in a model's result folder (evaluate.result_dir)
    title: str  # what the report calls the evaluation
    items: str  # what the report calls its rows
    measure: str  # the headline's column suffix (``<group> <measure>``)


VERSES = MinedSet("VerseMining", "verse_mining.parquet", "Verse mining", "test verses",
                  "mining")
DEBIAN = MinedSet("DebianMining", "debian_mining.parquet",
                  "Out-of-domain sentence mining (Debian)", "Debian sentences",
                  "mining, Debian")
GROUPS = {  # name → what the report calls it
    "x_eng_seen": "X↔English, seen X",
    "x_eng_unseen": "X↔English, unseen X",
    "seen_seen": "pool–pool (two non-English seen languages)",
    "seen_unseen": "seen–unseen",
    "unseen_unseen": "unseen–unseen",
}


def pair_group(a: str, b: str, seen: Collection[str], source: str) -> str:
    """The group of a language pair (see the module docstring)."""
    if source in (a, b):
        other = b if a == source else a
        return "x_eng_seen" if other in seen else "x_eng_unseen"
    if a in seen and b in seen:
        return "seen_seen"
    return "seen_unseen" if a in seen or b in seen else "unseen_unseen"


def sample_verses(path: str, langs: Sequence[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` rows (all if fewer) with a non-empty, non-repeated text in every language.

    Raises:
        ValueError: Fewer than two usable rows.
    """
    table = read_table(path, columns=["id", *langs])
    table = table[non_empty(table, langs) & unique_texts(table, langs)]
    if len(table) < 2:
        raise ValueError(f"{path}: {len(table)} rows have a unique text in every one of "
                         f"{', '.join(langs)}; mining needs at least 2")
    if n < len(table):
        table = table.sample(n=n, random_state=seed)
    return table.sort_values("id").reset_index(drop=True)


def outcomes(embeddings: dict[str, np.ndarray], k: int = 4) -> pd.DataFrame:
    """Whether each verse's translation is retrieved, for every ordered pair and scoring.

    Args:
        embeddings: Language → ``(n, d)`` embeddings of the same ``n`` verses, row-aligned.
        k: Neighbourhood size of the ratio margin (and candidates per verse).

    Returns:
        Columns ``src``, ``tgt``, ``scoring`` (categorical), ``verse`` (row index) and
        ``correct`` (bool): one row per verse, ordered pair and scoring.
    """
    langs = list(embeddings)
    n = len(embeddings[langs[0]])
    gold = np.arange(n)
    unit = {lang: normalize(x) for lang, x in embeddings.items()}
    parts: list[pd.DataFrame] = []

    def add(src: str, tgt: str, ids: np.ndarray, scores: np.ndarray) -> None:
        # ids/scores: (n, k) candidates sorted by cosine; margin re-ranks them.
        found = {"cosine": ids[:, 0], "margin": ids[gold, np.argmax(scores, axis=1)]}
        for scoring in SCORINGS:
            parts.append(pd.DataFrame({"src": src, "tgt": tgt, "scoring": scoring,
                                       "verse": gold, "correct": found[scoring] == gold}))

    pairs = list(itertools.combinations(langs, 2))
    for a, b in tqdm(pairs, desc="verse mining", unit="pair"):
        c = margin_candidates(unit[a], unit[b], k=min(k, n))
        add(a, b, c["fwd_ids"], c["fwd_scores"])
        add(b, a, c["bwd_ids"], c["bwd_scores"])
    table = pd.concat(parts, ignore_index=True)
    for col in ("src", "tgt", "scoring"):
        table[col] = table[col].astype("category")
    return table


def summarize(table: pd.DataFrame, seen: Collection[str], source: str,
              name: str = VERSES.name) -> dict[str, float]:
    """Flat metrics ``<name>/<scoring>/<group>``: accuracy (0–1, like mteb's).

    A group's accuracy is the mean over its ordered pairs; per-pair accuracies stay in the
    outcome table.
    """
    acc = table.groupby(["scoring", "src", "tgt"], observed=True)["correct"].mean()
    by_group: dict[tuple[str, str], list[float]] = {}
    for (scoring, src, tgt), value in acc.items():
        by_group.setdefault((scoring, pair_group(src, tgt, seen, source)), []).append(value)
    return {f"{name}/{scoring}/{group}": float(np.mean(values))
            for (scoring, group), values in sorted(by_group.items())}


def per_verse(table: pd.DataFrame, seen: Collection[str], source: str) -> pd.DataFrame:
    """Each verse's accuracy over the ordered pairs of each group.

    Returns:
        Index ``id`` (verse), columns ``(scoring, group)``: the sampling unit of a paired
        interval.
    """
    pairs = table[["src", "tgt"]].drop_duplicates()
    group = {(a, b): pair_group(a, b, seen, source) for a, b in pairs.itertuples(index=False)}
    keyed = table.assign(group=[group[p] for p in zip(table["src"], table["tgt"])])
    scores = keyed.groupby(["scoring", "group", "id"], observed=True)["correct"].mean()
    return scores.unstack(["scoring", "group"]).sort_index()


def run(encoder: Any, path: str, seen: Sequence[str], unseen: Sequence[str], source: str,
        n_sentences: int, k: int, seed: int, batch_size: int,
        mined: MinedSet = VERSES) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Encode the sampled rows in every language once and mine every pair.

    Returns:
        The outcome table (:func:`outcomes`, plus the rows' ``id``) and flat metrics
        (:func:`summarize`, plus ``<name>/verses`` (rows mined) and ``<name>/pairs``).
    """
    available = parquet_languages(path)
    langs = [lang for lang in dict.fromkeys([*seen, *unseen]) if lang in available]
    if missing := sorted({*seen, *unseen} - available):
        logger.info("%s: %s not in %s, left out", mined.title, ", ".join(missing), path)
    if len(langs) < 2:
        raise ValueError(f"{path}: {mined.title} needs two evaluated languages among its "
                         f"columns, found {langs}")
    verses = sample_verses(path, langs, n_sentences, seed)
    logger.info("%s: %d rows x %d languages", mined.title, len(verses), len(langs))
    embeddings = {
        lang: encoder.encode(verses[lang].tolist(), batch_size=batch_size,
                             convert_to_numpy=True, show_progress_bar=False)
        for lang in tqdm(langs, desc=f"{mined.title}: encode", unit="lang")
    }
    table = outcomes(embeddings, k)
    table.insert(3, "id", verses["id"].to_numpy()[table["verse"].to_numpy()])
    metrics = summarize(table, set(seen), source, mined.name)
    metrics[f"{mined.name}/verses"] = len(verses)
    metrics[f"{mined.name}/pairs"] = int(table.groupby(["src", "tgt"], observed=True).ngroups)
    return table, metrics

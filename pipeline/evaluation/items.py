"""Per-item outcomes of the mteb tasks, for paired intervals (bitext mining, classification).

mteb's result files keep one score per task subset. ``evaluate`` also asks mteb for its
predictions (``prediction_folder``) and turns them into one row per test item here: for bitext
mining, whether the item's nearest neighbour is its translation; for classification, the share
of mteb's classifier fits (``n_experiments``) that predict the item's label. The mean of a
subset's ``correct`` is mteb's main score (accuracy) of that subset; the report pairs models
item by item (:mod:`pipeline.stats`). Other task types (STS, pair classification) have no
per-item accuracy and are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evaluation import verse_mining
from pipeline.evaluation.suites import from_mteb

logger = logging.getLogger(__name__)

OUTCOMES = "item_outcomes.parquet"
TYPES = ("BitextMining", "Classification")
#: Groups of a one-language subset (a pair's group is :func:`verse_mining.pair_group`'s).
GROUPS = {"seen": "seen languages", "unseen": "unseen languages",
          "source": "the source language"}


def item_group(langs: str, seen: Collection[str], source: str) -> str:
    """The group of a subset's languages (``langs`` as :func:`from_predictions` writes it)."""
    codes = langs.split(",")
    if len(codes) == 2:
        return verse_mining.pair_group(*codes, seen, source)
    (code,) = codes
    return "source" if code == source else "seen" if code in seen else "unseen"


def _languages(task: Any, subset: str) -> str:
    """The FLORES codes of a subset (or of a parallel task's pair), comma-joined."""
    langs = task.metadata.eval_langs
    tags = langs.get(subset, []) if isinstance(langs, dict) else langs
    return ",".join(dict.fromkeys(from_mteb(tag) for tag in tags))


def from_predictions(tasks: Sequence[Any], folder: str | Path) -> pd.DataFrame:
    """One row per (task, subset, item) from mteb's ``<Task>_predictions.json`` files.

    Args:
        tasks: The evaluated mteb tasks (their data is reloaded when mteb has unloaded it:
            the gold labels, and whether a bitext task pairs item ``i`` with item ``i``; one
            with a ``gold`` column, as BUCC, gets no per-item outcomes).
        folder: The ``prediction_folder`` given to ``mteb.evaluate``.

    Returns:
        Columns ``task``, ``subset`` (a parallel bitext task: the language pair), ``split``,
        ``langs`` (FLORES codes, comma-joined), ``item`` (index in the split) and ``correct``
        (0–1).
    """
    rows: list[pd.DataFrame] = []
    for task in tasks:
        kind = task.metadata.type
        path = Path(folder) / task.prediction_file_name
        if kind not in TYPES or not path.is_file():
            continue
        predictions = json.loads(path.read_text(encoding="utf-8"))
        if not task.data_loaded:  # mteb unloads what it loaded
            task.load_data()
        for subset, splits in predictions.items():
            if subset == "mteb_model_meta":
                continue
            for split, found in splits.items():
                data = task.dataset[subset][split] if subset in task.dataset else None
                if kind == "BitextMining" and data is not None and "gold" in data.column_names:
                    logger.info("%s %s: gold pairs (BUCC-style), no per-item outcomes",
                                task.metadata.name, subset)
                    continue
                if kind == "BitextMining":  # {pair: [{"corpus_id", "score"}, ...]}, gold: i ↔ i
                    outcomes = {pair if len(found) > 1 else subset: np.array(
                        [n["corpus_id"] == i for i, n in enumerate(neighbours)], dtype=float)
                        for pair, neighbours in found.items()}
                else:  # one list of predicted labels per classifier fit
                    gold = np.asarray(data[task.label_column_name])
                    outcomes = {subset: np.mean([np.asarray(fit) == gold for fit in found],
                                                axis=0)}
                rows += [pd.DataFrame({
                    "task": task.metadata.name, "subset": name, "split": split,
                    "langs": _languages(task, name), "item": np.arange(len(correct)),
                    "correct": correct}) for name, correct in outcomes.items()]
    columns = ["task", "subset", "split", "langs", "item", "correct"]
    return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)

"""The project's own mteb tasks over local human-made data (one task class per module).

Each is a declarative mteb task on :class:`~pipeline.evaluation.tasks.base.ProjectTask`:
class-level ``TaskMetadata`` plus a dataset built from the local Parquet (or SQLite) data, so
``mteb.evaluate`` runs them like any hub task.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pipeline.evaluation.tasks.base import LocalData
from pipeline.evaluation.tasks.bible_bitext import BibleBitextMining
from pipeline.evaluation.tasks.bible_genre import BibleGenreClassification
from pipeline.evaluation.tasks.bible_paraphrase import BibleParaphraseClassification
from pipeline.evaluation.tasks.gettext_bitext import GettextBitextMining

# Task name (as in mteb results and configs/mteb.yaml) → class.
PROJECT_TASKS: dict[str, type] = {
    cls.metadata.name: cls
    for cls in (
        BibleBitextMining,
        GettextBitextMining,
        BibleGenreClassification,
        BibleParaphraseClassification,
    )
}


def get_project_task(
    name: str,
    data: LocalData | None = None,
    languages: Sequence[str] | None = None,
    seed: int = 42,
    **options: Any,
) -> Any:
    """Instantiate a project task by name.

    Args:
        name: A key of :data:`PROJECT_TASKS`.
        data: Data paths; defaults to the ``prepare_seed`` outputs under ``data/seed``.
        languages: FLORES codes to evaluate; ``None`` means all the data has.
        seed: Sampling seed.
        **options: The task's :attr:`~pipeline.evaluation.tasks.base.ProjectTask.OPTIONS`.

    Returns:
        The task (an mteb ``AbsTask``).

    Raises:
        ValueError: Unknown name (the message lists the project tasks), or a bad option.
    """
    if name not in PROJECT_TASKS:
        close = difflib.get_close_matches(name, list(PROJECT_TASKS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown project task '{name}'{hint} (known: {', '.join(PROJECT_TASKS)})")
    return PROJECT_TASKS[name](data=data, languages=languages, seed=seed, **options)


__all__ = [
    "PROJECT_TASKS",
    "BibleBitextMining",
    "BibleGenreClassification",
    "BibleParaphraseClassification",
    "GettextBitextMining",
    "LocalData",
    "get_project_task",
]

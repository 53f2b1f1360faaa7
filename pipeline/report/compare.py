"""Evaluation scores compared per language, averaged per language group, and put in words.

Languages fall in three groups: the ``source`` (English, part of nearly every bitext pair and
the training language of the classifiers), ``seen`` (the training pool) and ``unseen``
(everything else). Group averages are macro-averages over the languages of the group, using
only the languages every evaluated model has a score for, so the models are compared on the
same ground. Relative change follows the multi-way alignment paper:
``(focus − other) / other × 100 %``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.config import LangsConfig

#: mteb main scores are fractions; the report shows points (× 100).
SCALE = 100.0
#: Differences smaller than this (in points) print as 0.0 at one decimal: counted as ties.
TIE_POINTS = 0.05
GROUPS = ("seen", "unseen")


def language_group(code: str, langs: LangsConfig) -> str:
    """``source``, ``seen`` (in ``langs.pool``) or ``unseen``."""
    if code == langs.source:
        return "source"
    return "seen" if code in langs.pool else "unseen"


def order_languages(codes: Sequence[str], langs: LangsConfig) -> list[str]:
    """Source first, then the pool in its order, then the unseen languages sorted."""
    codes = set(codes)
    head = [c for c in (langs.source, *langs.pool) if c in codes]
    return head + sorted(codes - set(head))


def score_matrix(scores: pd.DataFrame, task: str, models: Sequence[str],
                 langs: LangsConfig) -> pd.DataFrame:
    """One task's scores in points: rows languages (see :func:`order_languages`), columns models.

    Args:
        scores: Tidy scores (``model``, ``task``, ``lang``, ``score``).
        task: The task.
        models: Model labels, in column order (a model without scores is a NaN column).
        langs: Language groups.

    Returns:
        The matrix (NaN where a model has no score for a language).
    """
    part = scores[scores.task == task]
    matrix = part.pivot_table(index="lang", columns="model", values="score", aggfunc="first")
    matrix = matrix.reindex(index=order_languages(list(matrix.index), langs),
                            columns=list(models))
    return matrix * SCALE


def relative_change(new: float, old: float) -> float:
    """``(new − old) / old × 100``; NaN when ``old`` is 0 or either value is missing."""
    if old == 0 or math.isnan(new) or math.isnan(old):
        return math.nan
    return (new - old) / old * 100.0


def comparable(matrix: pd.DataFrame) -> pd.DataFrame:
    """The rows every evaluated model (a column with any score) has a score for."""
    present = [c for c in matrix.columns if matrix[c].notna().any()]
    return matrix.dropna(subset=present) if present else matrix.iloc[0:0]


def comparable_groups(matrix: pd.DataFrame, langs: LangsConfig
                      ) -> Iterator[tuple[str, pd.DataFrame]]:
    """``seen``, then ``unseen``, each with its :func:`comparable` rows (if it has any)."""
    common = comparable(matrix)
    for group in GROUPS:
        part = common[[language_group(c, langs) == group for c in common.index]]
        if len(part):
            yield group, part


def group_means(matrices: Mapping[str, pd.DataFrame], langs: LangsConfig) -> pd.DataFrame:
    """Per task and language group, the macro-average of each model over comparable languages.

    Args:
        matrices: Task → score matrix (:func:`score_matrix`).
        langs: Language groups.

    Returns:
        Columns ``task``, ``group``, ``n_langs`` and one per model (points); a group
        without comparable languages has no row.
    """
    rows = []
    for task, matrix in matrices.items():
        for group, part in comparable_groups(matrix, langs):
            rows.append({"task": task, "group": group, "n_langs": len(part),
                         **part.mean(axis=0).to_dict()})
    models = next(iter(matrices.values())).columns.tolist() if matrices else []
    return pd.DataFrame(rows, columns=["task", "group", "n_langs", *models])


def family_means(task_means: pd.DataFrame, family_of: Mapping[str, str]) -> pd.DataFrame:
    """Per family and group, the mean over its tasks of the task group means.

    Args:
        task_means: Output of :func:`group_means`.
        family_of: Task → family.

    Returns:
        Columns ``family``, ``group``, ``n_tasks`` and one per model, then an ``All tasks``
        family per group (the mean over every task).
    """
    models = [c for c in task_means.columns if c not in ("task", "group", "n_langs")]
    df = task_means.assign(family=task_means.task.map(family_of))
    rows = []
    for family in [*dict.fromkeys(df.family), "All tasks"]:
        part = df if family == "All tasks" else df[df.family == family]
        for group in GROUPS:
            sub = part[part.group == group]
            if len(sub):
                rows.append({"family": family, "group": group, "n_tasks": len(sub),
                             **sub[models].mean(axis=0).to_dict()})
    return pd.DataFrame(rows, columns=["family", "group", "n_tasks", *models])


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The focus model against another on one task and one language group.

    Attributes:
        task: Task name.
        group: ``seen`` or ``unseen``.
        focus: Label of the focus model.
        other: Label of the model compared with.
        wins: Languages where the focus model is better by at least :data:`TIE_POINTS`.
        ties: Languages within :data:`TIE_POINTS`.
        losses: Languages where it is worse by at least :data:`TIE_POINTS`.
        focus_mean: Its mean over those languages (points).
        other_mean: The other model's mean (points).
    """

    task: str
    group: str
    focus: str
    other: str
    wins: int
    ties: int
    losses: int
    focus_mean: float
    other_mean: float

    @property
    def n(self) -> int:
        """Languages compared."""
        return self.wins + self.ties + self.losses

    @property
    def diff(self) -> float:
        """Mean difference in points (equal to the mean of the per-language differences)."""
        return self.focus_mean - self.other_mean

    @property
    def relative(self) -> float:
        """Relative change of the means, in %."""
        return relative_change(self.focus_mean, self.other_mean)


def compare(matrix: pd.DataFrame, task: str, group: str, focus: str, other: str,
            langs: LangsConfig) -> Comparison | None:
    """Count per-language wins, ties and losses of ``focus`` over ``other`` in a group.

    Only languages both models have a score for count. Returns ``None`` when there is none.
    """
    codes = [c for c in matrix.index if language_group(c, langs) == group]
    pair = matrix.loc[codes, [focus, other]].dropna()
    if pair.empty:
        return None
    diff = (pair[focus] - pair[other]).to_numpy()
    return Comparison(
        task=task, group=group, focus=focus, other=other,
        wins=int((diff >= TIE_POINTS).sum()), losses=int((diff <= -TIE_POINTS).sum()),
        ties=int((np.abs(diff) < TIE_POINTS).sum()),
        focus_mean=float(pair[focus].mean()), other_mean=float(pair[other].mean()),
    )


def fmt_score(value: float) -> str:
    """A score in points with one decimal; ``–`` when missing."""
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def fmt_change(value: float) -> str:
    """A relative change with its sign, e.g. ``+1.5 %``; ``n/a`` when undefined."""
    return "n/a" if value is None or math.isnan(value) else f"{value:+.1f} %"


def sentence(c: Comparison) -> str:
    """State a comparison in one sentence, whichever way it goes."""
    noun = "language" if c.n == 1 else "languages"
    if c.n > 1 and c.wins == c.n:
        count = f"on all {c.n} {c.group} {noun}"
    elif c.n > 1 and c.wins == 0:
        count = f"on none of the {c.n} {c.group} {noun}"
    else:
        count = f"on {c.wins} of {c.n} {c.group} {noun}"
    return (
        f"{c.task}: {c.focus} beats {c.other} {count} ({c.ties} tied, {c.losses} worse); "
        f"mean {c.focus_mean:.1f} vs {c.other_mean:.1f} points, {c.diff:+.1f} points "
        f"({fmt_change(c.relative)} relative)."
    )

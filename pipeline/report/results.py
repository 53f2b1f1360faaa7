"""The evaluation results: per task family and group, per task and language, encoders.

Each table shows the models' scores and the focus regime's relative change over the others;
:func:`encoders_section` is the paper's table (every encoder before and after alignment).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from pipeline.config import LangsConfig
from pipeline.report import collect, figures
from pipeline.report.common import file_name, join_names, model_labels, ordered_tasks
from pipeline.report.compare import (
    SCALE,
    TIE_POINTS,
    comparable_groups,
    compare,
    family_means,
    fmt_change,
    fmt_score,
    group_means,
    language_group,
    relative_change,
    score_matrix,
    sentence,
)
from pipeline.report.render import Block, Bullets, Figure, Heading, Paragraph, Table


def _scored_tasks(scores: pd.DataFrame, labels: list[str], families: Mapping[str, str],
                  langs: LangsConfig
                  ) -> tuple[list[str], dict[str, str], dict[str, pd.DataFrame], pd.DataFrame]:
    """Tasks in report order, task → family, task → score matrix, family × group means."""
    tasks, family_of = ordered_tasks(list(dict.fromkeys(scores.task)), families)
    matrices = {t: score_matrix(scores, t, labels, langs) for t in tasks}
    return tasks, family_of, matrices, family_means(group_means(matrices, langs), family_of)


def _score_cells(row: Mapping[str, float], labels: Sequence[str], focus: str
                 ) -> tuple[str, ...]:
    """Each model's score, then the relative change of ``focus`` over every other model."""
    return (*[fmt_score(row[m]) for m in labels],
            *[fmt_change(relative_change(row[focus], row[o])) for o in labels if o != focus])


def _suite_note(eval_dir: str, models: Mapping[str, Sequence[str]]) -> str:
    suites = {}
    for label, names in models.items():
        meta = collect.eval_meta(eval_dir, names[0])
        if meta is not None:
            suites[label] = f"{meta.get('suite', '?')} ({len(meta.get('tasks', []))} tasks)"
    if not suites:
        return ""
    return " Suites: " + ", ".join(f"{k}: {v}" for k, v in suites.items()) + "."


def _family_blocks(fam: pd.DataFrame, labels: list[str], focus: str,
                   fig_dir: Path) -> list[Block]:
    """The family × group table, one sentence per row, and its bar chart."""
    others = [m for m in labels if m != focus]
    blocks: list[Block] = [Heading("Per task family and language group", 3)]
    if fam.empty:
        return [*blocks, Paragraph("No language is scored by every evaluated model.")]
    rows = fam.to_dict("records")
    blocks.append(Table(
        ("family", "group", "tasks", *labels, *[f"{focus} vs {o}" for o in others]),
        tuple((r["family"], r["group"], str(r["n_tasks"]), *_score_cells(r, labels, focus))
              for r in rows),
        "Mean score per task family and language group; last columns: relative change.",
    ))
    bullets = []
    for r in rows:
        parts = [f"vs {o} {fmt_score(r[o])} ({fmt_change(relative_change(r[focus], r[o]))})"
                 for o in others if not math.isnan(r[o])]
        if parts and not math.isnan(r[focus]):
            bullets.append(f"{r['family']}, {r['group']} languages: {focus} "
                           f"{fmt_score(r[focus])}; " + "; ".join(parts) + ".")
    if bullets:
        blocks.append(Bullets(tuple(bullets)))
    path = figures.family_bars(fam, labels, fig_dir / "families.png")
    blocks.append(Figure(path, "Mean score per task family and language group, per model."))
    return blocks


def _task_blocks(task: str, family: str, matrix: pd.DataFrame, focus: str,
                 langs: LangsConfig, fig_dir: Path) -> list[Block]:
    """One task: comparison sentences, per-language table with group means, bar chart."""
    labels = list(matrix.columns)
    others = [m for m in labels if m != focus]
    said = [sentence(c) for group in ("seen", "unseen") for other in others
            if (c := compare(matrix, task, group, focus, other, langs)) is not None]
    groups = [language_group(c, langs) for c in matrix.index]
    body = [(code, group, *_score_cells(matrix.loc[code], labels, focus))
            for code, group in zip(matrix.index, groups)]
    body += [(f"{group} mean ({len(part)})", group, *_score_cells(part.mean(axis=0), labels,
                                                                  focus))
             for group, part in comparable_groups(matrix, langs)]
    path = figures.grouped_bars(matrix, groups, f"{task}: score per language", "score (points)",
                                fig_dir / f"results_{file_name(task)}.png")
    return [
        Heading(f"{task} ({family})", 3),
        Bullets(tuple(said)) if said else Paragraph(
            f"No comparison: {focus} or the models it is compared with have no scores here."),
        Table(("language", "group", *labels, *[f"{focus} vs {o}" for o in others]), tuple(body)),
        Figure(path, f"{task}: {' vs '.join(labels)} per language."),
    ]


def results_section(langs: LangsConfig, fig_dir: Path, *, metrics_dir: str, eval_dir: str,
                    base: str, aligned: Mapping[str, tuple[str, ...]], focus: str,
                    families: Mapping[str, str]) -> tuple[list[Block], pd.DataFrame]:
    """Family × group table, then per task: sentences, per-language table, bar chart.

    Args:
        langs: Source language and training pool (seen languages).
        fig_dir: Where the figures go.
        metrics_dir: ``report.metrics_dir``, the flat stage metrics.
        eval_dir: ``report.eval_dir``, ``evaluate``'s output.
        base: ``report.base``, the base encoder.
        aligned: ``report.aligned``, regime → its models.
        focus: ``report.focus``, the compared regime.
        families: ``report.families``, task → family.

    Returns:
        The blocks and the tidy score table written to ``scores.csv`` (``task``, ``family``,
        ``lang``, ``group``, ``model`` label, model ``name``, ``score`` in points).
    """
    models = model_labels(base, aligned)
    blocks: list[Block] = [Heading("Evaluation results")]
    scores = collect.evaluation_scores(metrics_dir, models)
    if scores.empty:
        blocks.append(Paragraph(
            "Not run: no evaluate@<model> metrics in "
            f"{metrics_dir} for {', '.join(n for v in models.values() for n in v)} "
            "(run `dvc repro evaluate`)."
        ))
        return blocks, pd.DataFrame()
    labels = list(models)
    tasks, family_of, matrices, fam = _scored_tasks(scores, labels, families, langs)
    blocks.append(Paragraph(
        f"Scores are mteb main scores × {SCALE:g} (points). Seen languages are the alignment "
        f"pool, langs.pool ({', '.join(langs.pool)}); unseen are all others; {langs.source} "
        "is the source "
        "language and is shown but not averaged. Group averages are macro-averages over the "
        "languages of the group that every evaluated model has a score for (evaluate's own "
        "seen/unseen metrics average task subsets instead, so they may differ slightly). A "
        "regime's score is the mean over its training seeds (report.aligned). "
        f"Relative change = ({focus} − other) / other × 100 %. Differences under "
        f"{TIE_POINTS} points count as ties." + _suite_note(eval_dir, models)
    ))
    missing = [name for names in models.values() for name in names
               if not collect.metrics_file(metrics_dir, "evaluate", name).is_file()]
    if missing:
        blocks.append(Paragraph("Not run: evaluate@" + ", evaluate@".join(missing)
                                + " (their columns are empty)."))
    blocks += _family_blocks(fam, labels, focus, fig_dir)
    for task in tasks:
        blocks += _task_blocks(task, family_of[task], matrices[task], focus, langs, fig_dir)
    tidy = scores.assign(
        family=scores.task.map(family_of),
        group=scores.lang.map(lambda c: language_group(c, langs)),
        name=scores.model.map(lambda label: join_names(models[label])),
        score=scores.score * SCALE,
    )[["task", "family", "lang", "group", "model", "name", "score"]]
    return blocks, tidy


def encoders_section(langs: LangsConfig, *, encoders: Sequence[str], metrics_dir: str,
                     base: str, aligned: Mapping[str, tuple[str, ...]], focus: str,
                     families: Mapping[str, str]) -> list[Block]:
    """The paper's table: each encoder of ``encoders`` before and after each regime.

    An encoder's regime models are the base's with its name in place of ``base``
    (seeds averaged); empty ``encoders`` leaves the section out.

    Args:
        langs: Source language and training pool (seen languages).
        encoders: ``report.encoders``, the encoders of the table.
        metrics_dir: ``report.metrics_dir``, the flat stage metrics.
        base: ``report.base``, the base encoder.
        aligned: ``report.aligned``, regime → its models.
        focus: ``report.focus``, the compared regime.
        families: ``report.families``, task → family.
    """
    if not encoders:
        return []
    means: dict[str, pd.DataFrame] = {}
    names: dict[str, dict[str, tuple[str, ...]]] = {}
    for encoder in encoders:
        names[encoder] = {"base": (encoder,), **{
            r: tuple(encoder + n.removeprefix(base) for n in models)
            for r, models in aligned.items()}}
        scores = collect.evaluation_scores(metrics_dir, names[encoder])
        if not scores.empty:
            *_, means[encoder] = _scored_tasks(scores, list(names[encoder]), families, langs)
    blocks: list[Block] = [Heading("Encoders side by side")]
    if not means:
        return [*blocks, Paragraph("Not run: no evaluate@<model> metrics for "
                                   f"{', '.join(encoders)}.")]
    columns = list(dict.fromkeys((r["family"], r["group"]) for fam in means.values()
                                 for r in fam.to_dict("records")))
    rows = []
    for encoder, models in names.items():
        cells = {(r["family"], r["group"]): r for r in means.get(
            encoder, pd.DataFrame()).to_dict("records")}
        for label, name in models.items():
            values = []
            for key in columns:
                r = cells.get(key)
                if r is None or math.isnan(r[label]):
                    values.append("–")
                elif label == focus or math.isnan(r[focus]):
                    values.append(fmt_score(r[label]))
                else:
                    change = fmt_change(relative_change(r[focus], r[label]))
                    values.append(f"{fmt_score(r[label])} ({change})")
            rows.append((encoder, f"{label}: {join_names(name)}", *values))
    blocks.append(Paragraph(
        "Mean score per task family over seen and unseen languages, for every encoder before "
        f"alignment and after each regime; in brackets, the relative change of {focus} "
        f"over that model: ({focus} − model) / model × 100 %. A dash: not evaluated."))
    blocks.append(Table(("encoder", "model", *[f"{f}, {g}" for f, g in columns]), tuple(rows),
                        "Encoders × regimes (the paper's table)."))
    return blocks

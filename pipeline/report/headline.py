"""The headline: regime differences with paired intervals and verdicts.

Mining per pair group (``evaluate``'s ``verse_mining.parquet`` of the Bible test verses and
``debian_mining.parquet`` of the out-of-domain Debian sentences) and the mteb tasks' items per
language group (``item_outcomes.parquet``); :func:`headline_section` puts every difference on
every measure in one table above the detailed sections.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import LangsConfig
from pipeline.evaluation import items, verse_mining
from pipeline.evaluation.tasks import PROJECT_TASKS
from pipeline.report import collect
from pipeline.report.common import model_labels, ordered_tasks
from pipeline.report.compare import SCALE
from pipeline.report.render import Block, Bullets, Heading, Paragraph, Table
from pipeline.stats import Interval, holm, paired_interval

#: The primary endpoint: the compared regime against the first other one on this measure.
PRIMARY_MEASURE = f"{verse_mining.GROUPS['seen_seen']} mining"
#: Both models at or above this accuracy: the measure is at its ceiling (marked).
CEILING = 0.97
Cells = dict[tuple[str, str], tuple[Interval, str]]  # ("a − b", column) → interval, verdict

#: What a difference with a control regime (pipeline/train/data.py) measures, said when the
#: regime is in the report. Each control changes one thing of ``multiway`` or ``enx``.
CONTROLS = {
    "enx_mwloss": "enx_mwloss trains the En-X pairs with the multi-way loss: multiway − "
                  "enx_mwloss is the effect of multi-way rows with the loss form held fixed",
    "enx_matched": "enx_matched trains the multi-way rows with English-centric positives only "
                   "(English with each translation; same rows, embeddings and negatives per "
                   "step): multiway − enx_matched is the effect of the pairs between non-English "
                   "languages at matched data and compute",
    "human": "human is the multi-way regime on human translations, from editions other than "
             "the test's where a language has one (German, French, Spanish; the others' only "
             "edition is the test's): multiway − human is the cost of the machine "
             "translations' errors",
    "english": "english sees English only (each verse with the same verse in a second English "
               "edition, a human paraphrase): english − base is adaptation to the Bible domain "
               "without a second language, multiway − english what alignment adds beyond it",
    "xlco": "xlco trains the En-X pairs with InfoXLM's XLCo (a momentum encoder's keys in a "
            "queue as negatives): multiway − xlco sets the multi-way regime against it",
    "xlco_multiway": "xlco_multiway trains the multi-way rows with XLCo, every language a query: "
                     "multiway − xlco_multiway is the objective's effect on the same rows, and "
                     "xlco_multiway − base against xlco − base the rows' effect under XLCo",
}


def _interval_cell(iv: Interval) -> str:
    return (f"{iv.diff * SCALE:+.2f} [{iv.low * SCALE:+.2f}, {iv.high * SCALE:+.2f}]")


def _comparisons(focus: str, aligned: Mapping[str, tuple[str, ...]], have: Collection[str]
                 ) -> list[tuple[str, str]]:
    """``focus`` − every other regime, then every regime − ``base``, among labels in ``have``."""
    pairs = [(focus, other) for other in aligned if other != focus]
    pairs += [(regime, "base") for regime in aligned]
    return [(a, b) for a, b in pairs if a in have and b in have]


def _paired(a_runs: Sequence[pd.Series], b_runs: Sequence[pd.Series],
            clusters: np.ndarray | None = None) -> tuple[Interval, str, str]:
    """Interval of ``a − b`` over seeds and items, each seed's difference, and the verdict.

    Seed ``i`` of ``a`` is paired with seed ``i`` of ``b`` (the same batches) or with the one
    base model; regimes with different seed counts compare their seed means (no seed term).
    The verdict adds "(seeds disagree)" when the seeds' differences have both signs and "(at
    ceiling)" when both models score at least :data:`CEILING`.
    """
    a, b = sum(a_runs) / len(a_runs), sum(b_runs) / len(b_runs)
    paired = len(b_runs) in (1, len(a_runs))
    rows = (a_runs, b_runs) if paired else ([a], [b])
    interval = paired_interval(*(np.stack([r.to_numpy() for r in runs]) for runs in rows),
                               clusters=clusters)
    # Each seed of a against its own seed of b, the one model b, or (unpaired) b's mean.
    against = (b_runs if len(b_runs) == len(a_runs) else
               list(b_runs) * len(a_runs) if paired else [b] * len(a_runs))
    seeds = [float((x - y).mean()) * SCALE for x, y in zip(a_runs, against, strict=True)]
    said = interval.verdict
    if min(seeds) < 0 < max(seeds):
        said += " (seeds disagree)"
    if min(a.mean(), b.mean()) >= CEILING:
        said += " (at ceiling)"
    return interval, " / ".join(f"{d:+.2f}" for d in seeds), said


def _outcome_runs(eval_dir: str, models: Mapping[str, Sequence[str]], file: str
                  ) -> dict[str, list[pd.DataFrame]]:
    """Label → the outcome tables ``file`` of its models that exist; labels with none left out."""
    runs = {label: [t for name in names
                    if (t := collect.outcomes(eval_dir, name, file)) is not None]
            for label, names in models.items()}
    return {label: tables for label, tables in runs.items() if tables}


def _seen(eval_dir: str, models: Mapping[str, Sequence[str]], langs: LangsConfig,
          label: str) -> set[str]:
    """The seen languages ``evaluate`` recorded for ``label``'s first model (else the pool)."""
    meta = collect.eval_meta(eval_dir, models[label][0]) or {}
    return set(meta.get("seen") or (langs.source, *langs.pool))


def _check_same_index(per_seed: Mapping[str, Sequence[pd.Series | pd.DataFrame]],
                      message: str) -> None:
    """Raise ``ValueError(message)`` unless every run is on the same items as the first."""
    first = next(iter(per_seed.values()))[0]
    if any(not s.index.equals(first.index) for runs in per_seed.values() for s in runs):
        raise ValueError(message)


def _verdict_line(head: str, by_verdict: Mapping[str, list[str]]) -> str:
    return f"{head}: " + "; ".join(
        f"{verdict} on {', '.join(where)}" for verdict, where in by_verdict.items()) + "."


def verse_mining_section(langs: LangsConfig,
                         mined: verse_mining.MinedSet = verse_mining.VERSES, *, eval_dir: str,
                         base: str, aligned: Mapping[str, tuple[str, ...]], focus: str
                         ) -> tuple[list[Block], Cells]:
    """Mining accuracy per pair group, and paired intervals of the regime differences.

    Args:
        langs: Source language and training pool (seen languages).
        mined: The mined table (the Bible test verses, or the Debian sentences).
        eval_dir: ``report.eval_dir``, ``evaluate``'s output.
        base: ``report.base``, the base encoder.
        aligned: ``report.aligned``, regime → its models.
        focus: ``report.focus``, the compared regime.

    Returns:
        The blocks, and the margin-scoring cells per (difference, "<group> <measure>").

    Raises:
        ValueError: The models were mined on different rows.
    """
    blocks: list[Block] = [Heading(f"{mined.title} with paired intervals", 3)]
    cells: Cells = {}
    models = model_labels(base, aligned)
    tables = _outcome_runs(eval_dir, models, mined.file)
    if not tables:
        return blocks + [Paragraph(
            f"Not run: no {mined.file} in {eval_dir} (run `dvc repro evaluate` with "
            "evaluate.mining_sentences or evaluate.debian_sentences > 0).")], cells
    seen = _seen(eval_dir, models, langs, next(iter(tables)))
    per_seed = {label: [verse_mining.per_verse(t, seen, langs.source) for t in runs]
                for label, runs in tables.items()}
    _check_same_index(per_seed, f"{eval_dir}: the models' {mined.file} outcomes are on "
                                "different rows (evaluate's sample sizes or seed changed "
                                "for some); rerun `dvc repro evaluate`")
    first = next(iter(per_seed.values()))[0]
    scores = {label: sum(runs) / len(runs) for label, runs in per_seed.items()}
    labels = list(scores)
    groups = [g for g in verse_mining.GROUPS if g in first.columns.get_level_values("group")]
    pairs = tables[labels[0]][0].groupby(["src", "tgt"], observed=True).ngroups
    blocks.append(Paragraph(
        f"{len(first)} {mined.items} mined between every pair of evaluated languages in both "
        f"directions ({pairs} ordered pairs), each one's translation searched among all "
        f"{len(first)} of the other language: plain cosine and the ratio margin "
        "(k nearest neighbours, as in LASER). Accuracy × 100; an item's score in a group is "
        "its accuracy over the group's pairs. Seen = the training pool and "
        f"{langs.source}. Seeds per model: "
        + ", ".join(f"{m} {len(per_seed[m])}" for m in labels) + " (a regime's accuracy is "
        "the mean over its seeds)."))
    rows = []
    for g in groups:
        n_pairs = sum(verse_mining.pair_group(a, b, seen, langs.source) == g for a, b in
                      tables[labels[0]][0][["src", "tgt"]].drop_duplicates()
                      .itertuples(index=False))
        rows.append((verse_mining.GROUPS[g], str(n_pairs), *(
            f"{scores[m][(scoring, g)].mean() * SCALE:.2f}"
            for m in labels for scoring in verse_mining.SCORINGS)))
    blocks.append(Table(
        ("pair group", "pairs", *(f"{m} {scoring}" for m in labels
                                  for scoring in verse_mining.SCORINGS)), tuple(rows),
        caption=f"{mined.title}: accuracy"))
    comparisons = _comparisons(focus, aligned, scores)
    if not comparisons:
        return blocks, cells
    rows, verdicts = [], []
    for a, b in comparisons:
        by_verdict: dict[str, list[str]] = {}
        for g in groups:
            cosine, _, _ = _paired([r[("cosine", g)] for r in per_seed[a]],
                                   [r[("cosine", g)] for r in per_seed[b]])
            margin, seeds, said = _paired([r[("margin", g)] for r in per_seed[a]],
                                          [r[("margin", g)] for r in per_seed[b]])
            rows.append((f"{a} − {b}", verse_mining.GROUPS[g], _interval_cell(cosine),
                         _interval_cell(margin), seeds,
                         f"±{margin.detectable * SCALE:.2f}", said))
            cells[f"{a} − {b}", f"{verse_mining.GROUPS[g]} {mined.measure}"] = (margin, said)
            by_verdict.setdefault(said, []).append(
                f"{verse_mining.GROUPS[g]} ({_interval_cell(margin)})")
        verdicts.append(_verdict_line(f"{a} − {b} (margin scoring)", by_verdict))
    blocks.append(Table(
        ("difference", "pair group", "cosine Δ [95% CI]", "margin Δ [95% CI]",
         "margin Δ per seed", "detectable (margin)", "verdict (margin)"), tuple(rows),
        caption=("Paired t interval of the per-item scores over the training seeds and the "
                 "items (pipeline/stats.py: the seed-level and item-level variances, each "
                 "from its own level, Welch–Satterthwaite degrees of freedom, so three seeds "
                 "count as three): difference in accuracy points with its 95% interval; "
                 "'detectable' is the smallest difference this design detects with 80% power. "
                 "Seed i of one regime is paired with seed i of the other (the same "
                 "batches).")))
    blocks.append(Bullets(tuple(verdicts)))
    return blocks, cells


def task_items_section(langs: LangsConfig, *, eval_dir: str, base: str,
                       aligned: Mapping[str, tuple[str, ...]], focus: str,
                       families: Mapping[str, str]) -> tuple[list[Block], Cells]:
    """Paired intervals on the mteb tasks' items (bitext mining, classification) per group.

    ``langs``, ``eval_dir``, ``base``, ``aligned`` and ``focus`` as for
    :func:`verse_mining_section`; ``families`` (``report.families``) orders the tasks.

    Returns:
        The blocks, and the cells per (difference, "<task>, <group>").

    Raises:
        ValueError: The models were scored on different items.
    """
    blocks: list[Block] = [Heading("mteb tasks with paired intervals", 3)]
    cells: Cells = {}
    models = model_labels(base, aligned)
    per_seed = {label: [t.set_index(["task", "subset", "split", "langs", "item"])["correct"]
                        .sort_index() for t in runs]
                for label, runs in _outcome_runs(eval_dir, models, items.OUTCOMES).items()}
    if not per_seed:
        return [*blocks, Paragraph(f"Not run: no per-item outcomes in {eval_dir} (run "
                                   "`dvc repro evaluate`).")], cells
    _check_same_index(per_seed, f"{eval_dir}: the models' mteb items differ (the suite "
                                "or its sampling changed for some); rerun `dvc repro evaluate`")
    first = next(iter(per_seed.values()))[0]
    seen = _seen(eval_dir, models, langs, next(iter(per_seed)))
    index = first.index.to_frame(index=False)
    group = index["langs"].map(lambda c: items.item_group(c, seen, langs.source)).to_numpy()
    names = {**verse_mining.GROUPS, **items.GROUPS}
    ordered, _ = ordered_tasks(list(dict.fromkeys(index["task"])), families)
    measures = [(task, g) for task in ordered
                for g in names if ((index["task"] == task).to_numpy() & (group == g)).any()]
    # Item i of a task whose subsets share one sample is one verse in every subset.
    shared = index["task"].map(lambda t: getattr(PROJECT_TASKS.get(t), "SHARED_ITEMS", False))
    clusters = np.where(shared, index["task"] + "#" + index["item"].astype(str),
                        index["task"] + "#" + index["subset"] + "#" + index["item"].astype(str))
    blocks.append(Paragraph(
        "The bitext-mining and classification tasks of the suite, item by item: whether a "
        "sentence's nearest neighbour is its translation, or the share of mteb's classifier "
        "fits that label an item right. Accuracy × 100 over the items of a task's subsets in "
        "a language group (the source language's own subsets apart); a regime's item score "
        "is the mean over its seeds."))
    rows, verdicts = [], []
    for a, b in _comparisons(focus, aligned, per_seed):
        by_verdict: dict[str, list[str]] = {}
        for task, g in measures:
            keep = (index["task"] == task).to_numpy() & (group == g)
            iv, seeds, said = _paired([r[keep] for r in per_seed[a]],
                                      [r[keep] for r in per_seed[b]], clusters[keep])
            rows.append((f"{a} − {b}", task, names[g], str(int(keep.sum())),
                         _interval_cell(iv), seeds, f"±{iv.detectable * SCALE:.2f}", said))
            by_verdict.setdefault(said, []).append(f"{task} {names[g]} ({_interval_cell(iv)})")
            cells[f"{a} − {b}", f"{task}, {names[g]}"] = (iv, said)
        verdicts.append(_verdict_line(f"{a} − {b}", by_verdict))
    blocks.append(Table(
        ("difference", "task", "group", "items", "Δ [95% CI]", "Δ per seed", "detectable",
         "verdict"), tuple(rows),
        caption=("Paired t intervals over the training seeds and the items, as for verse "
                 "mining; a Bible task's item is one verse in every language of the group, one "
                 "sampling unit (its languages are not independent draws); gettext messages "
                 "are drawn per language pair, so each (pair, message) is one unit.")))
    if verdicts:
        blocks.append(Bullets(tuple(verdicts)))
    return blocks, cells


def headline_section(langs: LangsConfig, *, eval_dir: str, base: str,
                     aligned: Mapping[str, tuple[str, ...]], focus: str,
                     families: Mapping[str, str]) -> tuple[list[Block], Cells]:
    """The primary endpoint, then every regime difference on every measure, then the details.

    The primary endpoint (:func:`primary_key`) keeps its own verdict; the other differences
    of the headline table are one family, their verdicts from Holm-adjusted p values.
    ``langs`` and the ``report`` settings go to :func:`verse_mining_section` and
    :func:`task_items_section`.

    Returns:
        The blocks, and every (difference, measure) interval with its headline verdict.
    """
    mining: list[Block] = []
    mining_cells: Cells = {}
    for mined in (verse_mining.VERSES, verse_mining.DEBIAN):
        blocks, found = verse_mining_section(langs, mined, eval_dir=eval_dir, base=base,
                                             aligned=aligned, focus=focus)
        mining += blocks
        mining_cells.update(found)
    tasks, task_cells = task_items_section(langs, eval_dir=eval_dir, base=base,
                                           aligned=aligned, focus=focus, families=families)
    cells: Cells = {**mining_cells, **task_cells}
    primary = primary_key(cells, focus=focus, aligned=aligned)
    cells = _holm_verdicts(cells, primary)
    blocks: list[Block] = [Heading("Headline: regime differences with paired intervals")]
    if cells:
        if primary is not None:
            iv, said = cells[primary]
            blocks.append(Paragraph(
                f"Primary endpoint (declared before the run): {primary[0]} on {primary[1]}, "
                f"margin scoring: {_interval_cell(iv)} points, {said}. The other "
                f"{len(cells) - 1} differences below are corrected for multiplicity together "
                "(Holm, family-wise error 5%): their verdicts use the adjusted p values, "
                "their intervals are the unadjusted 95% ones; the detail tables further down "
                "give unadjusted verdicts."))
        columns = list(dict.fromkeys(column for _, column in cells))
        differences = list(dict.fromkeys(pair for pair, _ in cells))
        seeds = ", ".join(f"{label} {len(names)}"
                          for label, names in model_labels(base, aligned).items())
        blocks.append(Table(
            ("difference", *columns),
            tuple((pair, *(_cell(cells.get((pair, column))) for column in columns))
                  for pair in differences),
            caption=(f"Difference in accuracy points [95% interval over the training seeds "
                     "and the test items] and "
                     "verdict (seeds disagree: the training seeds' own differences have both "
                     f"signs; at ceiling: both models ≥ {CEILING * SCALE:g}); models per label "
                     f"(training seeds): {seeds}. Details below.")))
        controls = [text for regime, text in CONTROLS.items() if regime in aligned]
        if controls:
            blocks.append(Paragraph("Controls: " + "; ".join(controls) + "."))
    return blocks + mining + tasks, cells


def _holm_verdicts(cells: Cells, primary: tuple[str, str] | None) -> Cells:
    """``cells`` with every verdict but the primary endpoint's from Holm-adjusted p values."""
    family = [key for key in cells if key != primary]
    adjusted = dict(zip(family, holm([cells[key][0].p for key in family]), strict=True))
    out: Cells = {}
    for key, (iv, said) in cells.items():
        if key in adjusted:
            base = ("no difference at this power" if adjusted[key] >= 0.05
                    else "win" if iv.diff > 0 else "loss")
            said = f"{base} (Holm){said[len(iv.verdict):]}"
        out[key] = (iv, said)
    return out


def primary_key(cells: Mapping[tuple[str, str], Any], *, focus: str,
                aligned: Mapping[str, tuple[str, ...]]) -> tuple[str, str] | None:
    """The primary endpoint's (difference, measure), ``None`` without one.

    It is ``focus`` − the first other regime on :data:`PRIMARY_MEASURE`, or on the first
    measure reported when that one is not run.

    Args:
        cells: The headline's (difference, measure) keys.
        focus: ``report.focus``, the compared regime.
        aligned: ``report.aligned``, regime → its models.
    """
    first = next((f"{a} − {b}" for a, b in _comparisons(focus, aligned, aligned)
                  if a == focus), None)
    measures = [measure for pair, measure in cells if pair == first]
    if not measures:
        return None
    return first, PRIMARY_MEASURE if PRIMARY_MEASURE in measures else measures[0]


def _cell(entry: tuple[Interval, str] | None) -> str:
    return "–" if entry is None else f"{_interval_cell(entry[0])} {entry[1]}"


def headline_metrics(cells: Cells, *, focus: str,
                     aligned: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    """The headline as DVC metrics: ``primary`` and every difference, in accuracy points.

    Each entry holds ``delta``, ``low`` and ``high`` (its 95% interval) and ``p`` (two-sided,
    unadjusted); ``primary`` is the :func:`primary_key` entry.

    Args:
        cells: :func:`headline_section`'s intervals.
        focus: ``report.focus``, the compared regime.
        aligned: ``report.aligned``, regime → its models.
    """
    def entry(iv: Interval) -> dict[str, float]:
        return {"delta": round(iv.diff * SCALE, 4), "low": round(iv.low * SCALE, 4),
                "high": round(iv.high * SCALE, 4), "p": float(f"{iv.p:.4g}")}

    differences: dict[str, dict[str, dict[str, float]]] = {}
    for (pair, measure), (iv, _) in cells.items():
        differences.setdefault(pair, {})[measure] = entry(iv)
    metrics: dict[str, Any] = {"differences": differences}
    primary = primary_key(cells, focus=focus, aligned=aligned)
    if primary is not None:
        metrics["primary"] = differences[primary[0]][primary[1]]
    return metrics

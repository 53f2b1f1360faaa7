"""The ``report`` stage: assemble ``report.md``, ``report.html``, ``scores.csv`` and figures.

Sections: the corpus (source text, filters, MT quality per language), training curves (NMT
and encoder alignment), evaluation results (per task family and language group, then per
task and language, with the relative change of the focus regime against the base encoder
and every other regime), a 2-D projection of embeddings, and downstream transfer. Every
statement of a result is generated from the numbers; a stage whose output is absent gives a
"not run" line instead of its section. Nothing in it varies between reruns (no times,
rates, dates or git revision; those are in ``data/runtime/``), so a rerun on the same
inputs writes the same bytes.

The stage returns no metrics: ``data/metrics/report.json`` would lie inside the report's
own dependency (``metrics_dir``), which DVC rejects; the numbers are in ``scores.csv``.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import langs as langmod
from pipeline.config import LangsConfig, ReportConfig
from pipeline.corpus.filters import REASONS
from pipeline.io import atomic_path
from pipeline.report import collect, figures
from pipeline.report.compare import (
    SCALE,
    TIE_POINTS,
    comparable,
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
from pipeline.report.projection import (
    Encoder,
    alignment_stats,
    model_encoder,
    pca_2d,
    sample_verses,
)
from pipeline.report.render import (
    Block,
    Bullets,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from pipeline.runtime import limit_threads

logger = logging.getLogger(__name__)

TITLE = "multiway-align: corpus, alignment and evaluation report"
# The report is a DVC output, identical on every rerun: no times, dates or git revisions.
RUNTIME_NOTE = ("Times, speed and memory of each stage run are in data/runtime/ "
                "(untracked; they vary with the machine).")


def _not_run(what: str, path: str | Path, stage: str) -> Paragraph:
    return Paragraph(f"Not run: {what} ({path} does not exist; run `dvc repro {stage}`).")


def _is_number(value: Any) -> bool:
    # numbers.Real covers numpy scalars too; a bool is a flag, not a count.
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and not math.isnan(value))


def _int(value: Any) -> str:
    return f"{int(value):,}" if _is_number(value) else "–"


def _num(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "–"


def _arrow(metrics: Mapping[str, Any], first: str, last: str) -> str:
    return f"{_num(metrics.get(first), 3)} → {_num(metrics.get(last), 3)}"


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)


def model_labels(cfg: ReportConfig) -> dict[str, str]:
    """Display label → model name: ``base`` first, then the regimes of ``aligned``."""
    return {"base": cfg.base, **cfg.aligned}


def check_config(cfg: ReportConfig, langs: LangsConfig) -> None:
    """Reject settings the report cannot honour, naming the key and the fix.

    Raises:
        ValueError: ``focus`` is not a regime of ``aligned``, a regime is called ``base``,
            a model name is empty, a language code is unknown, or ``projection_sentences``
            is negative.
    """
    if "base" in cfg.aligned:
        raise ValueError("report.aligned has a regime called 'base', the base encoder's "
                         "label; rename the regime")
    if cfg.focus not in cfg.aligned:
        raise ValueError(
            f"report.focus '{cfg.focus}' is not a regime of report.aligned "
            f"({', '.join(cfg.aligned) or 'empty'}); set it to one of them"
        )
    empty = [k for k, v in model_labels(cfg).items() if not v.strip()]
    if empty:
        raise ValueError(f"report: empty model name for {empty}; give the evaluated name")
    langmod.validate((langs.source, *langs.pool))
    langmod.validate(cfg.projection_unseen)
    if cfg.projection_sentences < 0:
        raise ValueError(
            f"report.projection_sentences must be >= 0 (0 skips it), got {cfg.projection_sentences}"
        )


def task_family(task: str, families: Mapping[str, str]) -> str:
    """The family of a task: ``families[task]``, else its mteb task type, else ``Other``."""
    if task in families:
        return families[task]
    # Only for tasks the params do not list: importing mteb takes seconds.
    from pipeline.evaluation.tasks import PROJECT_TASKS

    if task in PROJECT_TASKS:
        return str(PROJECT_TASKS[task].metadata.type)
    import mteb

    try:
        return str(mteb.get_task(task).metadata.type)
    except KeyError:
        logger.warning("task %s is neither in report.families nor known to mteb", task)
        return "Other"


# ------------------------------------------------------------------------------ corpus


def _source_blocks(cfg: ReportConfig) -> list[Block]:
    path = collect.metrics_file(cfg.metrics_dir, "prepare_source")
    source = collect.read_metrics(path)
    if source is None:
        return [_not_run("source text", path, "prepare_source")]
    drops = {k[len("dropped_"):]: v for k, v in source.items()
             if k.startswith("dropped_") and k != "dropped_total" and _is_number(v) and v}
    drops = dict(sorted(drops.items(), key=lambda kv: -kv[1]))
    return [Paragraph(
        f"{_int(source.get('lines_read'))} English lines read, "
        f"{_int(source.get('lines_kept'))} kept (mean {_num(source.get('chars_mean'), 1)} "
        f"characters); {_int(source.get('dropped_total'))} dropped"
        + (": " + ", ".join(f"{k} {_int(v)}" for k, v in drops.items()) if drops else "")
        + "."
    )]


def _filter_blocks(stats: dict[str, Any], langs: LangsConfig
                   ) -> tuple[list[Block], pd.DataFrame]:
    rows = stats["rows"]
    n_in, n_out = rows.get("in", 0), rows.get("out", 0)
    reasons = {k: v for k, v in stats["dropped_by_reason"].items() if v}
    by_lang = stats["dropped_by_lang"]
    text = (f"{_int(n_in)} source sentences, {_int(n_out)} kept in every language "
            f"({(n_out / n_in * 100 if n_in else 0):.1f} %): {_int(rows.get('train'))} train, "
            f"{_int(rows.get('dev'))} dev; the En-X baseline has {_int(rows.get('enx'))} "
            f"rows and the human corpus {_int(rows.get('human'))}.")
    if reasons:
        top = max(reasons, key=reasons.get)
        text += (f" The filter dropping most rows is '{top}' ({_int(reasons[top])} rows, "
                 "counted under the first failing filter)")
        if by_lang:
            worst = max(by_lang, key=by_lang.get)
            text += f"; {worst} fails most often ({_int(by_lang[worst])} rows)"
        text += "."
    else:
        text += " No row was dropped."
    failures = pd.DataFrame(stats["failures"]).T.fillna(0).astype(int)
    # Checking order, as the drop counts are attributed (first failing filter).
    failures = failures[[r for r in REASONS if r in failures.columns]
                        + [r for r in failures.columns if r not in REASONS]]
    head = (langs.source, *langs.pool)
    codes = [c for c in head if c in stats["mean_chars"]]
    codes += [c for c in stats["mean_chars"] if c not in head]
    table_rows = []
    for code in codes:
        fails = failures.loc[code] if code in failures.index else None
        table_rows.append((
            code,
            _int(by_lang.get(code)) if code != langs.source else "–",
            *[_int(fails[f]) if fails is not None else "–" for f in failures.columns],
            _num(stats["mean_chars"].get(code), 1),
            _int(stats.get("enx_langs", {}).get(code)) if code != langs.source else "–",
        ))
    table = Table(
        ("language", "rows failing", *[f"fail: {f}" for f in failures.columns], "mean chars",
         "En-X rows"),
        tuple(table_rows),
        "Per language: rows where the translation fails any filter, failures per filter "
        "(one translation may fail several), mean length of the kept texts, En-X draws.",
    )
    return [Paragraph(text), table], failures


def _mt_blocks(cfg: ReportConfig, langs: LangsConfig
               ) -> tuple[list[Block], pd.DataFrame | None]:
    nmt = collect.read_metrics(collect.metrics_file(cfg.metrics_dir, "train_nmt"))
    translated = collect.per_language_metrics(cfg.metrics_dir, "translate", langs.pool)
    if nmt is None and not translated:
        return [Paragraph(f"Not run: neither train_nmt nor translate@<lang> metrics exist in "
                          f"{cfg.metrics_dir}.")], None
    dev = nmt or {}
    table_rows, series = [], {}
    for code in langs.pool:
        t = translated.get(code, {})
        table_rows.append((
            code, _num(dev.get(f"chrf_{code}"), 1), _num(dev.get(f"bleu_{code}"), 1),
            _num(t.get("chrf"), 1), _num(t.get("bleu"), 1),
        ))
    if nmt is not None:
        series["NMT dev"] = {c: nmt.get(f"chrf_{c}") for c in langs.pool}
    if any("chrf" in t for t in translated.values()):
        series["source translations"] = {c: translated.get(c, {}).get("chrf")
                                         for c in langs.pool}
    blocks: list[Block] = [Table(
        ("language", "NMT dev chrF", "NMT dev BLEU", "corpus chrF", "corpus BLEU"),
        tuple(table_rows),
        "NMT dev: the trained model on held-out Bible chapters; corpus: the translated "
        f"source against its human translations (translate@<lang>). {RUNTIME_NOTE}",
    )]
    if not series:
        return blocks, None
    chrf = pd.DataFrame(series).astype(float)
    last = chrf.iloc[:, -1].dropna()  # the corpus translations when scored, else NMT dev
    if len(last) == 1:
        blocks.append(Paragraph(f"chrF ({chrf.columns[-1]}) exists for {last.index[0]} only: "
                                f"{last.iloc[0]:.1f}."))
    elif len(last) > 1:
        blocks.append(Paragraph(
            f"chrF ({chrf.columns[-1]}) ranges from {last.min():.1f} ({last.idxmin()}) "
            f"to {last.max():.1f} ({last.idxmax()}); mean {last.mean():.1f}."
        ))
    return blocks, chrf


def corpus_section(cfg: ReportConfig, langs: LangsConfig, fig_dir: Path) -> list[Block]:
    """Source text, corpus filters and MT quality per language."""
    blocks: list[Block] = [Heading("Corpus"), Heading("Source text", 3), *_source_blocks(cfg),
                           Heading("Multi-way corpus", 3)]
    stats = collect.corpus_stats(cfg.corpus_stats)
    failures = None
    if stats is None:
        blocks.append(_not_run("multi-way corpus", cfg.corpus_stats, "build_corpus"))
    else:
        filter_blocks, failures = _filter_blocks(stats, langs)
        blocks += filter_blocks
    blocks.append(Heading("Machine translation quality", 3))
    mt_blocks, chrf = _mt_blocks(cfg, langs)
    blocks += mt_blocks
    if failures is not None or chrf is not None:
        path = figures.corpus_figure(failures, chrf, fig_dir / "corpus.png")
        blocks.append(Figure(path, "Corpus filter failures and MT chrF per language."))
    return blocks


# ---------------------------------------------------------------------------- training


def training_section(cfg: ReportConfig, fig_dir: Path) -> list[Block]:
    """NMT training summary and curve; one row and one curve per encoder alignment run."""
    blocks: list[Block] = [Heading("Training")]
    nmt = collect.read_metrics(collect.metrics_file(cfg.metrics_dir, "train_nmt"))
    history = collect.nmt_history(cfg.nmt_history)
    if nmt is None:
        blocks.append(_not_run("NMT training", collect.metrics_file(cfg.metrics_dir, "train_nmt"),
                               "train_nmt"))
    else:
        blocks.append(Paragraph(
            f"NMT: {_int(nmt.get('steps'))} steps, final "
            f"train loss {_num(nmt.get('train_loss'), 3)}, "
            f"dev loss {_num(nmt.get('dev_loss'), 3)}, "
            f"mean dev chrF {_num(nmt.get('chrf_mean'), 1)}."
            + ("" if history is not None else f" (No curve: {cfg.nmt_history} not found.)")
        ))
    rows, curves, moves = [], {}, []
    for regime, name in cfg.aligned.items():
        metrics = collect.read_metrics(collect.metrics_file(cfg.metrics_dir, "train_encoder", name))
        curve = collect.loss_curve(Path(cfg.plots_dir) / f"{name}.csv")
        if curve is not None:
            curves[regime] = curve
        if metrics is None:
            rows.append((regime, name, *["not run"] * 4))
            continue
        rows.append((
            regime, name, _int(metrics.get("steps")),
            _arrow(metrics, "train_loss_first", "train_loss_last"),
            _arrow(metrics, "dev_loss_start", "dev_loss_end"),
            _int(metrics.get("rows_trained")),
        ))
        start, end = metrics.get("dev_loss_start"), metrics.get("dev_loss_end")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            verb = "fell" if end < start else "rose" if end > start else "stayed"
            moves.append(f"{regime}: dev loss {verb} from {start:.3f} to {end:.3f}")
    blocks.append(Table(
        ("regime", "model", "steps", "train loss first → last", "dev loss start → end",
         "rows trained"),
        tuple(rows), f"Encoder alignment runs (train_encoder). {RUNTIME_NOTE}",
    ))
    if moves:
        blocks.append(Paragraph("; ".join(moves) + "."))
    if history is not None or curves:
        path = figures.curves_figure(curves, history, fig_dir / "training.png")
        blocks.append(Figure(path, "Training curves: NMT train/dev loss, encoder loss per step."))
    return blocks


# ----------------------------------------------------------------------------- results


def _suite_note(cfg: ReportConfig, models: Mapping[str, str]) -> str:
    suites = {}
    for label, name in models.items():
        meta = collect.eval_meta(cfg.eval_dir, name)
        if meta is not None:
            suites[label] = f"{meta.get('suite', '?')} ({len(meta.get('tasks', []))} tasks)"
    if not suites:
        return ""
    return " Suites: " + ", ".join(f"{k}: {v}" for k, v in suites.items()) + "."


def _ordered_tasks(tasks: list[str], cfg: ReportConfig) -> tuple[list[str], dict[str, str]]:
    """Tasks grouped by family, in the order ``report.families`` lists them; task → family."""
    family_of = {t: task_family(t, cfg.families) for t in tasks}
    listed = list(cfg.families)
    order = list(dict.fromkeys([*cfg.families.values(), *sorted(family_of.values())]))
    ordered = sorted(family_of, key=lambda t: (order.index(family_of[t]),
                                               listed.index(t) if t in listed else len(listed), t))
    return ordered, family_of


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
        tuple((r["family"], r["group"], str(r["n_tasks"]), *[fmt_score(r[m]) for m in labels],
               *[fmt_change(relative_change(r[focus], r[o])) for o in others]) for r in rows),
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
    body = []
    for code, group in zip(matrix.index, groups):
        row = matrix.loc[code]
        body.append((code, group, *[fmt_score(row[m]) for m in labels],
                     *[fmt_change(relative_change(row[focus], row[o])) for o in others]))
    common = comparable(matrix)
    for group in ("seen", "unseen"):
        part = common[[language_group(c, langs) == group for c in common.index]]
        if len(part):
            mean = part.mean(axis=0)
            body.append((f"{group} mean ({len(part)})", group,
                         *[fmt_score(mean[m]) for m in labels],
                         *[fmt_change(relative_change(mean[focus], mean[o])) for o in others]))
    path = figures.grouped_bars(matrix, groups, f"{task}: score per language", "score (points)",
                                fig_dir / f"results_{_file_name(task)}.png")
    return [
        Heading(f"{task} ({family})", 3),
        Bullets(tuple(said)) if said else Paragraph(
            f"No comparison: {focus} or the models it is compared with have no scores here."),
        Table(("language", "group", *labels, *[f"{focus} vs {o}" for o in others]), tuple(body)),
        Figure(path, f"{task}: {' vs '.join(labels)} per language."),
    ]


def results_section(cfg: ReportConfig, langs: LangsConfig, fig_dir: Path
                    ) -> tuple[list[Block], pd.DataFrame]:
    """Family × group table, then per task: sentences, per-language table, bar chart.

    Returns:
        The blocks and the tidy score table written to ``scores.csv`` (``task``, ``family``,
        ``lang``, ``group``, ``model`` label, model ``name``, ``score`` in points).
    """
    models = model_labels(cfg)
    blocks: list[Block] = [Heading("Evaluation results")]
    scores = collect.evaluation_scores(cfg.metrics_dir, models)
    if scores.empty:
        blocks.append(Paragraph(
            "Not run: no evaluate@<model> metrics in "
            f"{cfg.metrics_dir} for {', '.join(models.values())} (run `dvc repro evaluate`)."
        ))
        return blocks, pd.DataFrame()
    labels = list(models)
    tasks, family_of = _ordered_tasks(list(dict.fromkeys(scores.task)), cfg)
    matrices = {t: score_matrix(scores, t, labels, langs) for t in tasks}
    blocks.append(Paragraph(
        f"Scores are mteb main scores × {SCALE:g} (points). Seen languages are the alignment "
        f"pool, langs.pool ({', '.join(langs.pool)}); unseen are all others; {langs.source} "
        "is the source "
        "language and is shown but not averaged. Group averages are macro-averages over the "
        "languages of the group that every evaluated model has a score for (evaluate's own "
        "seen/unseen metrics average task subsets instead, so they may differ slightly). "
        f"Relative change = ({cfg.focus} − other) / other × 100 %. Differences under "
        f"{TIE_POINTS} points count as ties." + _suite_note(cfg, models)
    ))
    missing = [name for label, name in models.items() if label not in set(scores.model)]
    if missing:
        blocks.append(Paragraph("Not run: evaluate@" + ", evaluate@".join(missing)
                                + " (their columns are empty)."))
    fam = family_means(group_means(matrices, langs), family_of)
    blocks += _family_blocks(fam, labels, cfg.focus, fig_dir)
    for task in tasks:
        blocks += _task_blocks(task, family_of[task], matrices[task], cfg.focus, langs, fig_dir)
    tidy = scores.assign(
        family=scores.task.map(family_of),
        group=scores.lang.map(lambda c: language_group(c, langs)),
        name=scores.model.map(models),
        score=scores.score * SCALE,
    )[["task", "family", "lang", "group", "model", "name", "score"]]
    return blocks, tidy


def encoders_section(cfg: ReportConfig, langs: LangsConfig) -> list[Block]:
    """The paper's table: each encoder of ``cfg.encoders`` before and after alignment.

    Rows are ``<encoder>`` and ``<encoder>-<regime>`` for the regimes of ``cfg.aligned``;
    columns the task families' mean scores over seen and unseen languages, with the relative
    change of ``cfg.focus`` over each other model. Empty ``cfg.encoders`` skips the section.
    """
    if not cfg.encoders:
        return []
    families: dict[str, pd.DataFrame] = {}
    names: dict[str, dict[str, str]] = {}
    for encoder in cfg.encoders:
        names[encoder] = {"base": encoder, **{r: f"{encoder}-{r}" for r in cfg.aligned}}
        scores = collect.evaluation_scores(cfg.metrics_dir, names[encoder])
        if not scores.empty:
            tasks, family_of = _ordered_tasks(list(dict.fromkeys(scores.task)), cfg)
            labels = list(names[encoder])
            matrices = {t: score_matrix(scores, t, labels, langs) for t in tasks}
            families[encoder] = family_means(group_means(matrices, langs), family_of)
    blocks: list[Block] = [Heading("Encoders side by side")]
    if not families:
        return [*blocks, Paragraph("Not run: no evaluate@<model> metrics for "
                                   f"{', '.join(cfg.encoders)}.")]
    columns = list(dict.fromkeys((r["family"], r["group"]) for fam in families.values()
                                 for r in fam.to_dict("records")))
    rows = []
    for encoder, models in names.items():
        cells = {(r["family"], r["group"]): r for r in families.get(
            encoder, pd.DataFrame()).to_dict("records")}
        for label, name in models.items():
            values = []
            for key in columns:
                r = cells.get(key)
                if r is None or math.isnan(r[label]):
                    values.append("–")
                elif label == cfg.focus or math.isnan(r[cfg.focus]):
                    values.append(fmt_score(r[label]))
                else:
                    change = fmt_change(relative_change(r[cfg.focus], r[label]))
                    values.append(f"{fmt_score(r[label])} ({change})")
            rows.append((encoder, f"{label}: {name}", *values))
    blocks.append(Paragraph(
        "Mean score per task family over seen and unseen languages, for every encoder before "
        f"alignment and after each regime; in brackets, the relative change of {cfg.focus} "
        f"over that model: ({cfg.focus} − model) / model × 100 %. A dash: not evaluated."))
    blocks.append(Table(("encoder", "model", *[f"{f}, {g}" for f, g in columns]), tuple(rows),
                        "Encoders × regimes (the paper's table)."))
    return blocks


# -------------------------------------------------------------------------- projection


def projection_section(cfg: ReportConfig, langs: LangsConfig, fig_dir: Path,
                       encode: Encoder) -> list[Block]:
    """Embed a multi-way verse sample with every model; PCA panels and alignment numbers."""
    blocks: list[Block] = [Heading("Embedding projection")]
    if cfg.projection_sentences == 0:
        return [*blocks, Paragraph("Skipped (report.projection_sentences is 0).")]
    if not Path(cfg.projection_data).is_file():
        return [*blocks, _not_run("projection data", cfg.projection_data, "prepare_seed")]
    wanted = list(dict.fromkeys((langs.source, *langs.pool, *cfg.projection_unseen)))
    sample, absent = sample_verses(cfg.projection_data, wanted, cfg.projection_sentences,
                                   cfg.seed)
    if sample.empty:
        return [*blocks, Paragraph(f"No verse of {cfg.projection_data} has text in every one "
                                   f"of {', '.join(wanted)}; nothing to project.")]
    codes = [c for c in wanted if c in sample.columns]
    sentences = [text for code in codes for text in sample[code]]  # language-major
    groups = {c: language_group(c, langs) for c in codes}
    panels, stats_rows, unavailable = [], [], []
    models = model_labels(cfg)
    for label, name in tqdm(models.items(), desc="projection", unit="model"):
        try:
            vectors = encode(name, sentences)
        except FileNotFoundError as exc:
            unavailable.append(f"{label} ({exc})")
            continue
        emb = vectors.reshape(len(codes), len(sample), -1).transpose(1, 0, 2)  # (verse, lang, dim)
        xy, explained = pca_2d(vectors)
        panels.append((f"{label}: {name}", xy, np.repeat(codes, len(sample)), explained))
        stats = alignment_stats(emb, codes).assign(group=lambda d: d.lang.map(groups))
        for group, part in stats.groupby("group", sort=False):
            stats_rows.append({"model": label, "group": group, "langs": len(part),
                               **part[["top1", "cos_parallel", "cos_other"]].mean().to_dict()})
    blocks.append(Paragraph(
        f"{len(sample)} Bible test verses in {len(codes)} languages ({', '.join(codes)}), "
        "embedded by each model; PCA to 2-D fitted per model. Circles: source and seen "
        "languages; crosses: unseen. A language-neutral space mixes the colours; a "
        "language-separated one shows one cloud per language."
        + (f" Not in {cfg.projection_data}: {', '.join(absent)}." if absent else "")
    ))
    if unavailable:
        blocks.append(Paragraph("Model not available: " + "; ".join(unavailable) + "."))
    if not panels:
        return blocks
    path = figures.projection_figure(panels, codes, groups, fig_dir / "projection.png")
    blocks.append(Figure(path, "Verse sample per model (PCA), coloured by language."))
    table = pd.DataFrame(stats_rows)
    blocks.append(Table(
        ("model", "group", "languages", "top-1 to English", "cos parallel", "cos other", "gap"),
        tuple((r.model, r.group, str(r.langs), f"{r.top1 * 100:.1f} %", f"{r.cos_parallel:.3f}",
               f"{r.cos_other:.3f}", f"{r.cos_parallel - r.cos_other:.3f}")
              for r in table.itertuples()),
        "In the full embedding space, on the same sample: share of verses whose nearest "
        "English verse is their own translation, mean cosine to it and to the other English "
        "verses.",
    ))
    said = []
    for group in ("seen", "unseen"):
        part = table[table.group == group].set_index("model")
        if len(part) > 1:
            said.append(f"{group} languages: top-1 " + ", ".join(
                f"{m} {v * 100:.1f} %" for m, v in part.top1.items()
            ) + "; parallel − other cosine gap " + ", ".join(
                f"{m} {g:.3f}" for m, g in (part.cos_parallel - part.cos_other).items()) + ".")
    if said:
        blocks.append(Bullets(tuple(said)))
    return blocks


# -------------------------------------------------------------------------- downstream


_GROUPS = {"zero_shot": "zero-shot", "seen": "seen", "unseen": "unseen"}


def _mean_std(metrics: Mapping[str, Any], key: str) -> str:
    value, std = metrics.get(key), metrics.get(f"{key}/std")
    if not _is_number(value):
        return "–"
    return f"{value:.1f}" + (f" ± {std:.1f}" if _is_number(std) else "")


def _downstream_keys(metrics: Mapping[str, Any], source: str
                     ) -> tuple[list[tuple[str, str]], list[str]]:
    """(variant, metric) pairs with a zero-shot average, and the non-source subset names."""
    pairs: dict[tuple[str, str], None] = {}
    subsets: dict[str, None] = {}
    for key in metrics:
        parts = key.split("/")
        if len(parts) != 3:
            continue
        if parts[2] == "zero_shot":
            pairs[(parts[0], parts[1])] = None
        elif parts[2] not in _GROUPS and parts[2] != source:
            subsets[parts[2]] = None
    # The baseline first, then each method followed by its ablations (``drmim-no_mi``).
    order = sorted(pairs, key=lambda p: (p[0] != "finetune", p[0].split("-")[0], "-" in p[0],
                                         p[0], p[1]))
    return order, list(subsets)


def _versus_finetune(label: str, metrics: Mapping[str, Any], variants: list[str],
                     metric: str) -> str:
    """One line: each variant's zero-shot difference from ``finetune``, judged by the spread."""
    base = f"finetune/{metric}/zero_shot"
    if not _is_number(metrics.get(base)):
        return ""
    parts = []
    for v in variants:
        key = f"{v}/{metric}/zero_shot"
        if v == "finetune" or not _is_number(metrics.get(key)):
            continue
        diff = metrics[key] - metrics[base]
        spread = float(metrics.get(f"{key}/std") or 0) + float(metrics.get(f"{base}/std") or 0)
        verdict = "within the seed spread" if abs(diff) <= spread else (
            "better" if diff > 0 else "worse")
        parts.append(f"{v} {diff:+.1f} ({verdict})")
    return f"{label}: " + "; ".join(parts) + "." if parts else ""


def downstream_section(cfg: ReportConfig, langs: LangsConfig, fig_dir: Path) -> list[Block]:
    """Every downstream task found under ``downstream_dir``, its encoders side by side.

    Per task and metric: variants × encoders (English, zero-shot, seen, unseen), a bar chart,
    each variant's difference from plain fine-tuning, per-subset tables; then the DR-MIM
    feature figures.
    """
    blocks: list[Block] = [Heading("Downstream zero-shot transfer (DR-MIM / EPAR)")]
    results = collect.downstream_results(cfg.downstream_dir)
    if not results:
        return [*blocks, Paragraph(
            f"Not run: no downstream results (<task>/<encoder>/metrics.json) in "
            f"{cfg.downstream_dir}; run `dvc repro evaluate_downstream`.")]
    blocks.append(Paragraph(
        "Each task head is fine-tuned on English labels only (train_drmim) and scored in "
        "every other language (evaluate_downstream). Mean ± standard deviation over seeds; "
        "zero-shot = every non-English test subset, seen = subsets whose languages are all in "
        "the alignment pool or English, unseen = the others. The method design is in "
        "docs/downstream.md."))
    labels = {name: label for label, name in model_labels(cfg).items()}
    scopes = {langs.source: "English", **_GROUPS}
    tasks: dict[str, list[collect.DownstreamResult]] = {}
    for res in results:
        tasks.setdefault(res.task, []).append(res)
    for task, group in tasks.items():
        blocks.append(Heading(task, 3))
        named = [(labels.get(r.encoder, r.encoder), r) for r in group]
        pairs, _ = _downstream_keys(group[0].metrics, langs.source)
        for metric in dict.fromkeys(m for _, m in pairs):
            variants = [v for v, m in pairs if m == metric]
            blocks.append(Table(
                ("variant", *[f"{label} {name}" for label, _ in named
                              for name in scopes.values()]),
                tuple((v, *[_mean_std(r.metrics, f"{v}/{metric}/{scope}")
                            for _, r in named for scope in scopes]) for v in variants),
                f"{task}: {metric} (%) per variant and encoder.",
            ))
            means = {label: [r.metrics.get(f"{v}/{metric}/zero_shot") for v in variants]
                     for label, r in named}
            stds = {label: [r.metrics.get(f"{v}/{metric}/zero_shot/std") for v in variants]
                    for label, r in named}
            target = fig_dir / f"downstream_{_file_name(task)}_{_file_name(metric)}.png"
            blocks.append(Figure(
                figures.variant_bars(pd.DataFrame(means, index=variants),
                                     pd.DataFrame(stds, index=variants),
                                     f"{task}: zero-shot {metric}", f"{metric} (%)", target),
                f"{task}: zero-shot {metric} per variant and encoder (error bars: standard "
                f"deviation over seeds)."))
            lines = [_versus_finetune(label, r.metrics, variants, metric) for label, r in named]
            if any(lines):
                blocks.append(Paragraph("Zero-shot difference from plain fine-tuning (better/"
                                        "worse only when larger than the two seed spreads "
                                        "added):"))
                blocks.append(Bullets(tuple(line for line in lines if line)))
            for label, r in named:
                _, subsets = _downstream_keys(r.metrics, langs.source)
                blocks.append(Table(
                    ("subset", *variants),
                    tuple((s, *[_mean_std(r.metrics, f"{v}/{metric}/{s}") for v in variants])
                          for s in [langs.source, *subsets]),
                    f"{task} on {label} ({r.encoder}): {metric} (%) per test subset.",
                ))
        for label, r in named:
            if r.figure is not None:
                target = fig_dir / f"downstream_{_file_name(task)}_{_file_name(r.encoder)}.png"
                with atomic_path(target) as tmp:
                    shutil.copyfile(r.figure, tmp)
                blocks.append(Figure(target, f"{task} on {label} ({r.encoder}): universal and "
                                             f"language-specific DR-MIM features by language."))
    return blocks


# -------------------------------------------------------------------------------- run


def run(cfg: ReportConfig, langs: LangsConfig, encode: Encoder | None = None) -> None:
    """Stage ``report``: write ``report.md``, ``report.html``, ``scores.csv`` and figures.

    Args:
        cfg: The stage config.
        langs: Source language and training pool (seen languages).
        encode: Embeds sentences for the projection (``(model name, sentences) -> (n, dim)``);
            defaults to loading each model as ``evaluate`` does.

    Returns:
        ``None``: no metrics file (see the module docstring).

    Raises:
        ValueError: A bad setting, or an input that exists but is malformed (named).
        FileNotFoundError: The projection data lacks what it needs.
    """
    check_config(cfg, langs)
    limit_threads(cfg.threads)
    out = Path(cfg.output_dir)
    fig_dir = out / "figures"
    if fig_dir.is_dir():
        shutil.rmtree(fig_dir)  # figures of sections that no longer exist must not linger
    fig_dir.mkdir(parents=True)
    models = ", ".join(f"{k} = {v}" for k, v in cfg.aligned.items())
    blocks: list[Block] = [
        Heading(TITLE, 1),
        Paragraph(
            f"Base encoder {cfg.base}; aligned encoders {models}; compared regime: {cfg.focus}. "
            f"Source {langs.source}, training pool {', '.join(langs.pool)}."
        ),
    ]
    blocks += corpus_section(cfg, langs, fig_dir)
    blocks += training_section(cfg, fig_dir)
    results, scores = results_section(cfg, langs, fig_dir)
    blocks += results
    blocks += encoders_section(cfg, langs)
    blocks += projection_section(cfg, langs, fig_dir, encode or model_encoder(cfg))
    blocks += downstream_section(cfg, langs, fig_dir)

    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(to_markdown(blocks, out), encoding="utf-8")
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(to_html(blocks, TITLE), encoding="utf-8")
    with atomic_path(out / "scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    logger.info("report written to %s (%d figures)", out, len(list(fig_dir.glob("*.png"))))

"""The corpus section: source text, the multi-way corpus's filters, MT quality per language."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import LangsConfig
from pipeline.corpus.filters import REASONS
from pipeline.report import collect, figures
from pipeline.report.common import RUNTIME_NOTE, fmt_int, fmt_num, is_number, not_run
from pipeline.report.render import Block, Figure, Heading, Paragraph, Table


def _source_blocks(metrics_dir: str) -> list[Block]:
    path = collect.metrics_file(metrics_dir, "prepare_source")
    source = collect.read_metrics(path)
    if source is None:
        return [not_run("source text", path, "prepare_source")]
    drops = {k[len("dropped_"):]: v for k, v in source.items()
             if k.startswith("dropped_") and k != "dropped_total" and is_number(v) and v}
    drops = dict(sorted(drops.items(), key=lambda kv: -kv[1]))
    return [Paragraph(
        f"{fmt_int(source.get('lines_read'))} English lines read, "
        f"{fmt_int(source.get('lines_kept'))} kept (mean {fmt_num(source.get('chars_mean'), 1)} "
        f"characters); {fmt_int(source.get('dropped_total'))} dropped"
        + (": " + ", ".join(f"{k} {fmt_int(v)}" for k, v in drops.items()) if drops else "")
        + "."
    )]


def _filter_blocks(stats: dict[str, Any], langs: LangsConfig
                   ) -> tuple[list[Block], pd.DataFrame]:
    rows = stats["rows"]
    n_in, n_out = rows.get("in", 0), rows.get("out", 0)
    reasons = {k: v for k, v in stats["dropped_by_reason"].items() if v}
    by_lang = stats["dropped_by_lang"]
    text = (f"{fmt_int(n_in)} source sentences, {fmt_int(n_out)} kept in every language "
            f"({(n_out / n_in * 100 if n_in else 0):.1f} %): {fmt_int(rows.get('train'))} "
            f"train, {fmt_int(rows.get('dev'))} dev; the En-X baseline has "
            f"{fmt_int(rows.get('enx'))} rows and the human corpus {fmt_int(rows.get('human'))}.")
    if reasons:
        top = max(reasons, key=reasons.get)
        text += (f" The filter dropping most rows is '{top}' ({fmt_int(reasons[top])} rows, "
                 "counted under the first failing filter)")
        if by_lang:
            worst = max(by_lang, key=by_lang.get)
            text += f"; {worst} fails most often ({fmt_int(by_lang[worst])} rows)"
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
            fmt_int(by_lang.get(code)) if code != langs.source else "–",
            *[fmt_int(fails[f]) if fails is not None else "–" for f in failures.columns],
            fmt_num(stats["mean_chars"].get(code), 1),
            fmt_int(stats.get("enx_langs", {}).get(code)) if code != langs.source else "–",
        ))
    table = Table(
        ("language", "rows failing", *[f"fail: {f}" for f in failures.columns], "mean chars",
         "En-X rows"),
        tuple(table_rows),
        "Per language: rows where the translation fails any filter, failures per filter "
        "(one translation may fail several), mean length of the kept texts, En-X draws.",
    )
    return [Paragraph(text), table], failures


def _mt_blocks(metrics_dir: str, langs: LangsConfig
               ) -> tuple[list[Block], pd.DataFrame | None]:
    nmt = collect.read_metrics(collect.metrics_file(metrics_dir, "train_nmt"))
    translated = collect.per_language_metrics(metrics_dir, "translate", langs.pool)
    if nmt is None and not translated:
        return [Paragraph(f"Not run: neither train_nmt nor translate@<lang> metrics exist in "
                          f"{metrics_dir}.")], None
    dev = nmt or {}
    table_rows, series = [], {}
    for code in langs.pool:
        t = translated.get(code, {})
        table_rows.append((
            code, fmt_num(dev.get(f"chrf_{code}"), 1), fmt_num(dev.get(f"bleu_{code}"), 1),
            fmt_num(t.get("chrf"), 1), fmt_num(t.get("bleu"), 1),
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


def corpus_section(langs: LangsConfig, fig_dir: Path, *, metrics_dir: str,
                   corpus_stats: str) -> list[Block]:
    """Source text, corpus filters and MT quality per language.

    Args:
        langs: Source language and training pool.
        fig_dir: Where the figure goes.
        metrics_dir: ``report.metrics_dir``, the flat stage metrics.
        corpus_stats: ``report.corpus_stats``, ``build_corpus``'s ``stats.json``.
    """
    blocks: list[Block] = [Heading("Corpus"), Heading("Source text", 3),
                           *_source_blocks(metrics_dir), Heading("Multi-way corpus", 3)]
    stats = collect.corpus_stats(corpus_stats)
    failures = None
    if stats is None:
        blocks.append(not_run("multi-way corpus", corpus_stats, "build_corpus"))
    else:
        filter_blocks, failures = _filter_blocks(stats, langs)
        blocks += filter_blocks
    blocks.append(Heading("Machine translation quality", 3))
    mt_blocks, chrf = _mt_blocks(metrics_dir, langs)
    blocks += mt_blocks
    if failures is not None or chrf is not None:
        path = figures.corpus_figure(failures, chrf, fig_dir / "corpus.png")
        blocks.append(Figure(path, "Corpus filter failures and MT chrF per language."))
    return blocks

"""The downstream section: zero-shot transfer (DR-MIM / EPAR) per task, encoders side by side."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import LangsConfig
from pipeline.downstream.data import DEV
from pipeline.io import atomic_path
from pipeline.report import collect, figures
from pipeline.report.common import file_name, is_number, model_labels
from pipeline.report.render import Block, Bullets, Figure, Heading, Paragraph, Table
from pipeline.stats import verdict

_GROUPS = {"zero_shot": "zero-shot", "seen": "seen", "unseen": "unseen"}


def _mean_std(metrics: Mapping[str, Any], key: str) -> str:
    value, std = metrics.get(key), metrics.get(f"{key}/std")
    if not is_number(value):
        return "–"
    return f"{value:.1f}" + (f" ± {std:.1f}" if is_number(std) else "")


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
        elif parts[2] not in _GROUPS and parts[2] not in (source, DEV):
            subsets[parts[2]] = None
    # The baseline first, then each method followed by its ablations (``drmim-no_mi``).
    order = sorted(pairs, key=lambda p: (p[0] != "finetune", p[0].split("-")[0], "-" in p[0],
                                         p[0], p[1]))
    return order, list(subsets)


def _versus_finetune(label: str, metrics: Mapping[str, Any], variants: list[str],
                     metric: str) -> str:
    """One line: each variant's zero-shot difference from ``finetune``, with its interval."""
    parts = []
    for v in variants:
        key = f"{v}/{metric}/zero_shot/vs_finetune"
        if v == "finetune" or not is_number(metrics.get(key)):
            continue
        low, high = metrics[f"{key}/low"], metrics[f"{key}/high"]
        parts.append(f"{v} {metrics[key]:+.1f} [{low:+.1f}, {high:+.1f}] "
                     f"({verdict(low, high)})")
    return f"{label}: " + "; ".join(parts) + "." if parts else ""


def downstream_section(langs: LangsConfig, fig_dir: Path, *, downstream_dir: str, base: str,
                       aligned: Mapping[str, tuple[str, ...]]) -> list[Block]:
    """Every task under ``downstream_dir``, its encoders side by side.

    Per metric: variants × encoders, a bar chart, each variant against plain fine-tuning,
    per-subset tables; then the DR-MIM feature figures.

    Args:
        langs: Source language and training pool.
        fig_dir: Where the figures go.
        downstream_dir: ``report.downstream_dir``, ``evaluate_downstream``'s output.
        base: ``report.base``, the base encoder.
        aligned: ``report.aligned``, regime → its models.
    """
    blocks: list[Block] = [Heading("Downstream zero-shot transfer (DR-MIM / EPAR)")]
    results = collect.downstream_results(downstream_dir)
    if not results:
        return [*blocks, Paragraph(
            f"Not run: no downstream results (<task>/<encoder>/metrics.json) in "
            f"{downstream_dir}; run `dvc repro evaluate_downstream`.")]
    blocks.append(Paragraph(
        "Each task head is fine-tuned on English labels only (train_drmim) and scored in "
        "every other language (evaluate_downstream). Mean ± standard deviation over seeds; "
        "English dev = English examples from other chapters of the training source (the "
        "hyperparameters were chosen on it, never on a test subset); "
        "zero-shot = every non-English test subset, seen = subsets whose languages are all in "
        "the alignment pool or English, unseen = the others. The method design is in "
        "docs/downstream.md."))
    labels = {name: label for label, names in model_labels(base, aligned).items()
              for name in names}
    scopes = {DEV: "English dev", langs.source: "English", **_GROUPS}
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
            target = fig_dir / f"downstream_{file_name(task)}_{file_name(metric)}.png"
            blocks.append(Figure(
                figures.variant_bars(pd.DataFrame(means, index=variants),
                                     pd.DataFrame(stds, index=variants),
                                     f"{task}: zero-shot {metric}", f"{metric} (%)", target),
                f"{task}: zero-shot {metric} per variant and encoder (error bars: standard "
                f"deviation over seeds)."))
            lines = [_versus_finetune(label, r.metrics, variants, metric) for label, r in named]
            if any(lines):
                blocks.append(Paragraph(
                    "Zero-shot difference from plain fine-tuning in points, with its paired "
                    "95% t interval over the training seeds and the test examples "
                    "(every variant of a seed trains on the same batches; the mean is over "
                    "the seeds and the examples):"))
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
                target = fig_dir / f"downstream_{file_name(task)}_{file_name(r.encoder)}.png"
                with atomic_path(target) as tmp:
                    shutil.copyfile(r.figure, tmp)
                blocks.append(Figure(target, f"{task} on {label} ({r.encoder}): universal and "
                                             f"language-specific DR-MIM features by language."))
    return blocks

"""Stage ``evaluate_downstream@<task>-<encoder>``: score ``train_drmim``'s predictions.

Reads ``<runs_dir>/<task>/<encoder name>/`` (``predictions.parquet``, ``meta.json``,
``features.parquet``) and writes, under ``<output_dir>/<task>/<encoder name>/``:

- ``scores.parquet`` — long table: variant, seed, subset, metric, value (in %);
- ``metrics.json`` — the flat metrics returned (means and spreads over seeds);
- ``table.md`` — per-subset mean ± std per variant (rows) and subset (columns);
- ``features.png`` — universal vs specific features of the first full DR-MIM run, 2-D,
  coloured by language (when ``train_drmim`` kept features).

Metrics per subset: ``accuracy`` (classification, pairs), ``f1`` and ``exact_match`` (QA,
SQuAD normalisation, best over the gold answers). Metric names:
``<variant>/<metric>/<subset>`` (mean over seeds) with ``.../std`` (sample standard
deviation over seeds); ``<variant>/<metric>/dev`` is the English dev split (for choosing
hyperparameters); ``<variant>/<metric>/zero_shot`` averages every test subset except the
English one, ``/seen`` and ``/unseen`` split those by whether all their languages are in
``langs`` (the aligned encoder's training languages); the spread of an average is over the
seeds' averages. ``<variant>/<metric>/<group>/vs_finetune`` (with ``/low``, ``/high``) is a
variant's difference from plain fine-tuning with its paired 95 % interval.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.config import LangsConfig
from pipeline.downstream.data import DEV, subset_languages
from pipeline.io import read_json, read_table, write_json, write_table
from pipeline.stats import paired_interval


@dataclasses.dataclass(frozen=True)
class EvaluateDownstreamConfig:
    """``evaluate_downstream@<task>-<encoder>``: score ``train_drmim``'s predictions.

    Per-subset accuracy (F1 and exact match for QA), means and spreads over seeds, zero-shot /
    seen / unseen averages, a per-language table and the universal-vs-specific feature figure.
    The matrix is ``train_drmim``'s (``train_drmim.tasks`` × ``train_drmim.encoders``).
    """

    # ``train_drmim``'s output (``<task>/<encoder name>/predictions.parquet``).
    runs_dir: str = "data/downstream/runs"
    # Projection of the feature figure (``pca``, ``tsne``) or ``none``.
    figure: Literal["pca", "tsne", "none"] = "pca"
    # Scores, ``metrics.json``, ``table.md`` and ``features.png`` go to
    # ``<output_dir>/<task>/<encoder name>/``.
    output_dir: str = "data/downstream/scores"

logger = logging.getLogger(__name__)

#: Subset groups a zero-shot average covers: not English (``source``), not the dev split.
TRANSFER = ("seen", "unseen")

_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style answer normalisation.

    Lower case, no punctuation (of any script), no English articles, single spaces.
    """
    text = "".join(ch for ch in text.lower()
                   if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """Token F1 and exact match of a prediction against its best-matching gold answer."""
    pred = normalize_answer(prediction).split()
    best_f1, best_em = 0.0, 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        best_em = max(best_em, float(pred == ref))
        common = Counter(pred) & Counter(ref)
        overlap = sum(common.values())
        if overlap:
            p, r = overlap / len(pred), overlap / len(ref)
            best_f1 = max(best_f1, 2 * p * r / (p + r))
        elif not pred and not ref:
            best_f1 = max(best_f1, 1.0)
    return best_f1, best_em


def score_predictions(predictions: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per (variant, seed, subset) scores in % from the long prediction table.

    Args:
        predictions: ``train_drmim``'s table (variant, seed, subset, example, prediction,
            gold).
        kind: The task kind: ``classification``, ``pair`` or ``qa``.

    Returns:
        Columns variant, seed, subset, metric, value: the mean of :func:`item_scores`.
    """
    items = item_scores(predictions, kind)
    return (items.groupby(["variant", "seed", "subset", "metric"], sort=False)["value"].mean()
            .reset_index())


def item_scores(predictions: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per-example scores in % (correct: 100 or 0; QA: F1 and exact match).

    Returns:
        Columns variant, seed, subset, example, metric, value.
    """
    keys = predictions[["variant", "seed", "subset", "example"]].reset_index(drop=True)
    if kind == "qa":
        pairs = [qa_scores(p, list(g)) for p, g in zip(predictions.prediction, predictions.gold)]
        parts = [keys.assign(metric="f1", value=[100 * f for f, _ in pairs]),
                 keys.assign(metric="exact_match", value=[100 * e for _, e in pairs])]
    else:
        correct = predictions.prediction.to_numpy() == predictions.gold.to_numpy()
        parts = [keys.assign(metric="accuracy", value=100.0 * correct)]
    return pd.concat(parts, ignore_index=True)


def versus_finetune(items: pd.DataFrame, langs: LangsConfig) -> dict[str, float]:
    """Each variant's difference from ``finetune`` with a paired 95 % interval.

    Every variant of a seed trains on the same batches and predicts the same test examples,
    so the difference is paired per seed and example. The sampling units are the example
    index (the same verse across the language subsets; its value the mean over the group's
    subsets) and the seed (:func:`pipeline.stats.paired_interval`). Keys
    ``<variant>/<metric>/<group>/vs_finetune`` (points) with ``/low`` and ``/high``, for the
    groups ``zero_shot``, ``seen``, ``unseen``; none without ``finetune``.
    """
    items = items.assign(group=items.subset.map(lambda s: subset_group(s, langs)))
    base = items[items.variant == "finetune"]
    out: dict[str, float] = {}
    if base.empty:
        return out
    keys = ["seed", "subset", "example", "metric"]
    for variant in items.variant.unique():
        if variant == "finetune":
            continue
        paired = items[items.variant == variant].merge(base[[*keys, "value"]], on=keys,
                                                        suffixes=("", "_ft"))
        for (metric, group), part in [
            *(((m, "zero_shot"), p) for m, p in
              paired[paired.group.isin(TRANSFER)].groupby("metric")),
            *paired[paired.group.isin(TRANSFER)].groupby(["metric", "group"]),
        ]:
            per_example = part.groupby(["seed", "example"])[["value", "value_ft"]].mean()
            iv = paired_interval(per_example.value.unstack("example").to_numpy(),
                                 per_example.value_ft.unstack("example").to_numpy())
            key = f"{variant}/{metric}/{group}/vs_finetune"
            out[key] = round(iv.diff, 4)
            out[f"{key}/low"] = round(iv.low, 4)
            out[f"{key}/high"] = round(iv.high, 4)
    return out


def subset_group(subset: str, langs: LangsConfig) -> str:
    """The group of a subset: ``dev``, ``source``, ``seen`` or ``unseen``.

    ``dev`` is the English dev split, ``source`` an English test subset, ``seen`` one whose
    languages are all in the pool or English, ``unseen`` the others.
    """
    if subset == DEV:
        return DEV
    members = set(subset_languages(subset))
    if members == {langs.source}:
        return "source"
    return "seen" if members <= {langs.source, *langs.pool} else "unseen"


def summarize(scores: pd.DataFrame, langs: LangsConfig) -> dict[str, float]:
    """Flat metrics from the long score table (see the module docstring for the names).

    Args:
        scores: Columns ``variant``, ``seed``, ``subset``, ``metric``, ``value``.
        langs: Source and pool languages (seen/unseen grouping).

    Returns:
        Means and sample standard deviations over seeds.
    """
    out: dict[str, float] = {}

    def put(key: str, values: pd.Series) -> None:
        out[key] = round(float(values.mean()), 4)
        out[f"{key}/std"] = round(float(values.std(ddof=1)) if len(values) > 1 else 0.0, 4)

    scores = scores.assign(group=scores.subset.map(lambda s: subset_group(s, langs)))
    for (variant, metric, subset), part in scores.groupby(["variant", "metric", "subset"]):
        put(f"{variant}/{metric}/{subset}", part.value)
    for (variant, metric), part in scores.groupby(["variant", "metric"]):
        transfer = part[part.group.isin(TRANSFER)]
        if not transfer.empty:
            put(f"{variant}/{metric}/zero_shot", transfer.groupby("seed").value.mean())
        for group in ("seen", "unseen"):
            sub = part[part.group == group]
            if not sub.empty:
                put(f"{variant}/{metric}/{group}", sub.groupby("seed").value.mean())
    return out


def markdown_table(scores: pd.DataFrame, langs: LangsConfig) -> str:
    """Mean ± std over seeds: one row per variant, one column per subset, then the averages."""
    lines = []
    for metric, part in scores.groupby("metric"):
        agg = part.groupby(["variant", "subset"]).value.agg(["mean", "std"]).fillna(0.0)
        subsets = sorted(part.subset.unique(),
                         key=lambda s: (subset_group(s, langs) not in (DEV, "source"), s))
        per_seed = part.assign(group=part.subset.map(lambda s: subset_group(s, langs)))
        per_seed = per_seed[per_seed.group.isin(TRANSFER)].groupby(["variant", "seed"]).value.mean()
        lines += [f"**{metric}**", "",
                  "| variant | " + " | ".join(subsets) + " | zero-shot avg |",
                  "|---" * (len(subsets) + 2) + "|"]
        for variant in dict.fromkeys(part.variant):
            cells = [f"{agg.loc[(variant, s), 'mean']:.1f} ± {agg.loc[(variant, s), 'std']:.1f}"
                     for s in subsets]
            avg = ""
            if variant in per_seed.index.get_level_values(0):
                zs = per_seed.loc[variant]
                avg = f"{zs.mean():.1f} ± {zs.std(ddof=1) if len(zs) > 1 else 0.0:.1f}"
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {avg} |")
        lines.append("")
    return "\n".join(lines)



def plot_features(features: pd.DataFrame, projection: str, title: str, path: Path) -> None:
    """Scatter universal and specific features side by side, coloured by language.

    Args:
        features: ``train_drmim``'s ``features.parquet`` (subset, universal, specific).
        projection: ``pca`` or ``tsne`` (fitted separately for the two feature kinds).
        title: Figure title.
        path: The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    subsets = list(dict.fromkeys(features.subset))
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    # 40 distinct colours: the 22 Bible languages must not share one.
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    for ax, column, name in ((axes[0], "universal", "universal"),
                             (axes[1], "specific", "language-specific")):
        feats = np.stack(features[column].to_numpy())
        if projection == "tsne":
            xy = TSNE(2, init="pca", random_state=0, perplexity=min(30, len(feats) - 1)
                      ).fit_transform(feats)
        else:
            xy = PCA(2, random_state=0).fit_transform(feats)
        for k, subset in enumerate(subsets):
            pick = (features.subset == subset).to_numpy()
            ax.scatter(xy[pick, 0], xy[pick, 1], s=6, color=colours[k % len(colours)],
                       label=subset)
        ax.set_title(f"{name} features ({projection.upper()})")
    axes[1].legend(markerscale=3, fontsize=7, ncol=2, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: EvaluateDownstreamConfig, langs: LangsConfig, task: str,
        encoder: str) -> dict[str, float]:
    """Score one ``train_drmim`` item; write scores, table, metrics and the feature figure.

    Args:
        cfg: The stage config.
        langs: Source and pool languages (seen/unseen grouping).
        task: The task (directory under ``runs_dir``).
        encoder: The encoder name or path (its directory name is the subdirectory).

    Returns:
        The flat metrics (see the module docstring).

    Raises:
        FileNotFoundError: ``train_drmim`` has not written this item's predictions.
    """
    name = Path(encoder).name
    runs = Path(cfg.runs_dir) / task / name
    if not (runs / "predictions.parquet").is_file():
        raise FileNotFoundError(f"no predictions in {runs}; run train_drmim@{task}-{name} first "
                                f"(dvc repro train_drmim)")
    meta = read_json(runs / "meta.json")
    predictions = read_table(runs / "predictions.parquet")
    scores = score_predictions(predictions, meta["task_kind"])
    metrics = summarize(scores, langs)
    metrics.update(versus_finetune(item_scores(predictions, meta["task_kind"]), langs))
    out = Path(cfg.output_dir) / task / name
    write_table(scores, out / "scores.parquet")
    write_json(metrics, out / "metrics.json")
    (out / "table.md").write_text(markdown_table(scores, langs), encoding="utf-8")
    if cfg.figure != "none" and (runs / "features.parquet").is_file():
        plot_features(read_table(runs / "features.parquet"), cfg.figure,
                      f"DR-MIM on {task} ({name}): test examples coloured by language",
                      out / "features.png")
    logger.info("evaluate_downstream %s on %s: %d scores; results in %s", task, name,
                len(scores), out)
    return metrics

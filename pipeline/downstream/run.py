"""``run_downstream``: every variant × seed on one encoder, scored in every language.

Order of work: load the task (and the multi-way corpus when a variant needs it), load the
encoder, tokenise everything, compute the frozen-bottom features of every distinct sequence
once, then train and score each variant with each seed on those features. Outputs, under
``<output_dir>/<task>/<encoder name>/``:

- ``scores.parquet`` — long table: variant, seed, subset, metric, value;
- ``runs.json`` — per run: steps, seconds, tokens/s, first/last loss, mean loss terms;
- ``metrics.json`` — the flat metrics returned (means and spreads over seeds);
- ``table.md`` — per-subset mean ± std per variant (rows) and subset (columns);
- ``features.png`` — universal vs specific features of the first DR-MIM run by language;
- ``meta.json`` — resolved config, encoder, versions, git revision, timings.

Metric names: ``<variant>/<metric>/<subset>`` (mean over seeds) with ``.../std`` (sample
standard deviation over seeds); ``<variant>/<metric>/zero_shot`` averages every subset
except the English one, ``/seen`` and ``/unseen`` split those by whether all their
languages are in ``langs`` (the aligned encoder's training languages).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.config import LangsConfig, to_dict
from pipeline.downstream.config import DownstreamConfig
from pipeline.downstream.data import (
    Encoded,
    TaskData,
    encode_split,
    encode_texts,
    load_corpus,
    load_task,
    subset_languages,
)
from pipeline.downstream.encoder import FeatureStore, load_encoder
from pipeline.downstream.methods import DrMim, parse_variant
from pipeline.downstream.train import score_split, train_variant
from pipeline.io import write_json, write_table
from pipeline.runtime import limit_threads, resolve_device, seed_everything, write_meta

logger = logging.getLogger(__name__)


def subset_group(subset: str, langs: LangsConfig) -> str:
    """``source`` (English only), ``seen`` (all languages in the pool or English) or ``unseen``."""
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
        transfer = part[part.group != "source"]
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
                         key=lambda s: (subset_group(s, langs) != "source", s))
        per_seed = part.assign(group=part.subset.map(lambda s: subset_group(s, langs)))
        per_seed = per_seed[per_seed.group != "source"].groupby(["variant", "seed"]).value.mean()
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


@torch.no_grad()
def plot_features(method: DrMim, store: FeatureStore, task: TaskData,
                  encoded: dict[str, Encoded], cfg: DownstreamConfig, path: Path) -> None:
    """Scatter the universal and the specific features of test examples, coloured by language.

    Single-language subsets only; ``cfg.figure_examples`` examples each; 2-D by PCA or t-SNE
    (``cfg.figure``), fitted separately for the two feature kinds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    subsets = [s for s in task.test if len(subset_languages(s)) == 1]
    us, ss, names = [], [], []
    for subset in subsets:
        seqs = encoded[subset].seqs[: cfg.figure_examples]
        for start in range(0, len(seqs), cfg.eval_batch_size):
            h, mask = store.get(seqs[start:start + cfg.eval_batch_size])
            u, s = method.split(h, mask)
            us.append(u.float().cpu().numpy())
            ss.append(s.float().cpu().numpy())
            names += [subset] * len(u)
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    # 40 distinct colours: the 22 Bible languages must not share one.
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    for ax, feats, title in ((axes[0], np.concatenate(us), "universal"),
                             (axes[1], np.concatenate(ss), "language-specific")):
        if cfg.figure == "tsne":
            xy = TSNE(2, init="pca", random_state=0, perplexity=min(30, len(feats) - 1)
                      ).fit_transform(feats)
        else:
            xy = PCA(2, random_state=0).fit_transform(feats)
        for k, subset in enumerate(subsets):
            pick = np.array(names) == subset
            ax.scatter(xy[pick, 0], xy[pick, 1], s=6, color=colours[k % len(colours)],
                       label=subset)
        ax.set_title(f"{title} features ({cfg.figure.upper()})")
    axes[1].legend(markerscale=3, fontsize=7, ncol=2, loc="best")
    fig.suptitle(f"DR-MIM on {task.name}: test examples coloured by language")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_downstream(cfg: DownstreamConfig, encoder_path: str | Path,
                   langs: LangsConfig | None = None) -> dict[str, Any]:
    """Train every variant of ``cfg.methods`` with every seed on one encoder; score them.

    Args:
        cfg: The downstream config.
        encoder_path: A sentence-transformers encoder directory (base or aligned).
        langs: Source and pool languages (corpus columns; seen/unseen grouping);
            defaults to :class:`~pipeline.config.LangsConfig` defaults.

    Returns:
        Flat metrics (see the module docstring), plus ``runs``, ``seconds/features``,
        ``seconds/total`` (wall), ``cpu_seconds/features``, ``cpu_seconds/total`` (process CPU
        time) and ``features/sequences``.

    Raises:
        ValueError: A method name or part is unknown, or a setting does not fit the encoder.
        FileNotFoundError: The encoder, the task data or the corpus is missing.
    """
    langs = langs or LangsConfig()
    variants = [parse_variant(name) for name in cfg.methods]
    if len({v.name for v in variants}) < len(variants):
        raise ValueError(f"downstream.methods lists a variant twice: {list(cfg.methods)}")
    limit_threads(cfg.threads)
    seed_everything(cfg.data_seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    out_dir = Path(cfg.output_dir) / cfg.task / Path(encoder_path).name
    task = load_task(cfg)
    corpus = None
    if any(v.uses_corpus for v in variants):
        corpus = load_corpus(cfg.corpus, langs, cfg.max_corpus_rows, cfg.data_seed)
    encoder = load_encoder(encoder_path, cfg.prefix, cfg.pooling, resolve_device(cfg.device))
    store = FeatureStore(encoder, cfg.trainable_layers, cfg.eval_batch_size, cfg.cache_features)
    train = encode_split(task.train, task.kind, encoder, cfg, train=True)
    if not train.seqs:
        raise ValueError(f"task {task.name}: no training example fits max_length "
                         f"{cfg.max_length} (no QA window holds its answer); raise it")
    tests = {name: encode_split(split, task.kind, encoder, cfg, train=False)
             for name, split in task.test.items()}
    corpus_seqs = None
    if corpus is not None:
        corpus_seqs = [encode_texts([(t,) for t in corpus[c]], encoder, cfg.max_length)
                       for c in corpus.columns]
    feat_start, feat_cpu = time.perf_counter(), time.process_time()
    every = train.seqs + [s for enc in tests.values() for s in enc.seqs]
    every += [s for col in corpus_seqs or [] for s in col]
    computed = store.add(every)
    feature_seconds = time.perf_counter() - feat_start
    feature_cpu = time.process_time() - feat_cpu
    logger.info("frozen features of %d sequences in %.1f s", computed, feature_seconds)

    records: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    figure = out_dir / "features.png"
    drew = cfg.figure == "none"
    for seed in cfg.seeds:
        for variant in variants:
            method, log = train_variant(variant, encoder, store, task, train, cfg, seed,
                                        corpus_seqs)
            eval_start, eval_cpu = time.perf_counter(), time.process_time()
            for subset, split in task.test.items():
                for metric, value in score_split(method, store, tests[subset], split, cfg).items():
                    records.append({"variant": variant.name, "seed": seed, "subset": subset,
                                    "metric": metric, "value": value})
            run = dataclasses.asdict(log)
            run["eval_seconds"] = round(time.perf_counter() - eval_start, 2)
            run["eval_cpu_seconds"] = round(time.process_time() - eval_cpu, 2)
            run["train_cpu_seconds"] = round(log.train_cpu_seconds, 2)
            run["train_tokens_per_second"] = round(log.train_tokens / max(log.train_seconds, 1e-9))
            run["train_seconds"] = round(log.train_seconds, 2)
            runs.append(run)
            logger.info("%s seed %d: %d steps in %.1f s, eval %.1f s, loss %.3f → %.3f",
                        variant.name, seed, log.steps, log.train_seconds, run["eval_seconds"],
                        log.first_loss, log.last_loss)
            if not drew and isinstance(method, DrMim) and method.on("disentangle"):
                plot_features(method, store, task, tests, cfg, figure)
                drew = True
    scores = pd.DataFrame.from_records(records)
    metrics: dict[str, Any] = summarize(scores, langs)
    total = time.perf_counter() - started
    cpu_total = time.process_time() - cpu_started
    metrics.update({"runs": len(runs), "seconds/features": round(feature_seconds, 1),
                    "seconds/total": round(total, 1), "cpu_seconds/features": round(feature_cpu, 1),
                    "cpu_seconds/total": round(cpu_total, 1), "features/sequences": computed})
    write_table(scores, out_dir / "scores.parquet")
    write_json(runs, out_dir / "runs.json")
    write_json(metrics, out_dir / "metrics.json")
    (out_dir / "table.md").write_text(markdown_table(scores, langs), encoding="utf-8")
    write_meta(out_dir / "meta.json", to_dict(cfg), encoder=str(encoder_path),
               langs=to_dict(langs), task_sizes={"train": len(task.train),
                                                 **{k: len(v) for k, v in task.test.items()}},
               seconds={"features": round(feature_seconds, 1), "total": round(total, 1),
                        "cpu_features": round(feature_cpu, 1), "cpu_total": round(cpu_total, 1)})
    logger.info("downstream %s on %s: %d runs in %.0f s; results in %s", task.name,
                encoder_path, len(runs), total, out_dir)
    return metrics


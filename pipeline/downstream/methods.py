"""The registered methods (``finetune``, ``drmim``, ``epar``), their heads and switchable parts.

A method is an ``nn.Module`` around the trainable :class:`~pipeline.downstream.encoder.TopBlock`
that predicts task outputs and, for a training step, returns its loss as a dict of named,
already weighted terms (the total is their sum; the runner logs each). Every part a method
declares can be switched off by name: ``drmim-no_mi`` is DR-MIM without its MI term. A part
switched off removes exactly its terms (checked in the tests):

- ``finetune``: ``task`` (cross-entropy on English).
- ``drmim``: ``task`` on the universal features, plus ``disentangle`` → ``lang``,
  ``adversary``, ``decorrelation``; ``mi`` → ``mi``; ``tie`` → ``tie``.
- ``epar``: ``task`` on the clean pass and ``virtual`` on the pushed pass, plus ``pull`` →
  ``pull``. ``push`` and ``robust`` change how ``virtual`` is computed (off: a random
  perturbation of the same size; hard labels instead of robust targets), so they have no
  term of their own.

The design of each method, as we read the papers, is in ``docs/downstream.md``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.devices import to_device
from pipeline.downstream import losses as L
from pipeline.downstream.encoder import TopBlock

if TYPE_CHECKING:  # annotations only
    from pipeline.downstream.knobs import DrmimConfig, EparConfig


@dataclasses.dataclass
class TaskBatch:
    """English task examples: bottom features and targets.

    Attributes:
        h: ``(b, s, d)`` bottom features.
        mask: ``(b, s)`` 1 for real tokens.
        labels: ``(b,)`` classes (classification and pair tasks).
        starts: ``(b,)`` answer start tokens (QA).
        ends: ``(b,)`` answer end tokens (QA).
    """

    h: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor | None = None
    starts: torch.Tensor | None = None
    ends: torch.Tensor | None = None


@dataclasses.dataclass
class CorpusBatch:
    """Multi-way corpus sentences: a few rows, a few languages each (no task labels).

    Attributes:
        h: ``(n, s, d)`` bottom features.
        mask: ``(n, s)`` 1 for real tokens.
        langs: ``(n,)`` language index of each sentence.
        rows: ``(n,)`` corpus row of each sentence (translations share a row), on the host:
            only :func:`~pipeline.downstream.losses.parallel_tie`'s grouping check reads it,
            which on a GPU tensor would wait for the GPU every step.
    """

    h: torch.Tensor
    mask: torch.Tensor
    langs: torch.Tensor
    rows: torch.Tensor


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token logits ``(b, s)`` with padding set to the dtype's minimum.

    Not ``-inf``: a target of 0 times it must stay 0 in a soft cross-entropy.
    """
    return logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(b, d)`` mean of ``(b, s, d)`` over real tokens."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class Method(nn.Module):
    """Common part of the methods: the top block, the task head, the task loss.

    Args:
        top: The trainable top block.
        kind: ``classification``, ``pair`` or ``qa``.
        n_labels: Number of classes (ignored for QA: 2 outputs per token, start and end).
        dropout: Dropout before the task head (``train_drmim.dropout``).
        off: Parts switched off.
        n_langs: Number of corpus languages (language classifiers).
        head_dim: Width of the features the task head reads; ``None``: the top block's
            hidden size (the representation itself).
    """

    parts: ClassVar[tuple[str, ...]] = ()
    #: Parts that read multi-way corpus batches.
    corpus_parts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, top: TopBlock, kind: str, n_labels: int, dropout: float,
                 off: frozenset[str] = frozenset(), n_langs: int = 0,
                 head_dim: int | None = None) -> None:
        super().__init__()
        self.top = top
        self.kind = kind
        self.off = off
        self.n_out = 2 if kind == "qa" else n_labels
        self.hidden = top.hidden_size
        #: Width of the features the task head reads.
        self.head_dim = self.hidden if head_dim is None else head_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.head_dim, self.n_out))

    def on(self, part: str) -> bool:
        """Whether a part is switched on."""
        return part not in self.off

    @property
    def uses_corpus(self) -> bool:
        """Whether training steps need multi-way corpus batches."""
        return any(self.on(p) for p in self.corpus_parts)

    def represent(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The representation the head's features come from: pooled, or tokens for QA."""
        return states if self.kind == "qa" else self.top.pool(states, mask)

    def head_input(self, rep: torch.Tensor) -> torch.Tensor:
        """Features the task head reads (the representation itself, for the baseline)."""
        return rep

    def outputs(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Task logits: ``(b, n_labels)``, or ``(b, s, 2)`` start/end for QA (padding masked)."""
        logits = self.head(feats)
        if self.kind == "qa":
            logits = masked_logits(logits.transpose(1, 2), mask[:, None, :]).transpose(1, 2)
        return logits

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Task logits for bottom features (prediction)."""
        states, _ = self.top(h, mask)
        return self.outputs(self.head_input(self.represent(states, mask)), mask)

    def task_loss(self, logits: torch.Tensor, batch: TaskBatch,
                  soft: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Cross-entropy against the gold labels, or against target distributions.

        ``soft`` holds one distribution for classification, start and end ones for QA.
        """
        if self.kind == "qa":
            pairs = ((logits[..., 0], batch.starts), (logits[..., 1], batch.ends))
        else:
            pairs = ((logits, batch.labels),)
        if soft is None:
            return sum(F.cross_entropy(lg, y) for lg, y in pairs) / len(pairs)
        return sum(L.soft_cross_entropy(lg, t) for (lg, _), t in zip(pairs, soft)) / len(pairs)

    def losses(self, batch: TaskBatch, corpus: CorpusBatch | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one training step."""
        raise NotImplementedError


class Finetune(Method):
    """``finetune``: the plain baseline, the task head on the pooled encoder output."""

    def losses(self, batch: TaskBatch, corpus: CorpusBatch | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``task``: cross-entropy on the English batch."""
        return {"task": self.task_loss(self(batch.h, batch.mask), batch)}


class DrMim(Method):
    """``drmim``: universal/specific feature split with mutual-information maximisation.

    The head reads the universal features (width ``drmim.universal_dim``).

    Args:
        top, kind, n_labels, dropout, off, n_langs: As for :class:`Method`.
        drmim: The DR-MIM knobs (``train_drmim.drmim``).
    """

    parts = ("disentangle", "mi", "tie")
    corpus_parts = ("disentangle", "mi", "tie")

    def __init__(self, top: TopBlock, kind: str, n_labels: int, dropout: float,
                 off: frozenset[str] = frozenset(), n_langs: int = 0, *,
                 drmim: DrmimConfig) -> None:
        super().__init__(top, kind, n_labels, dropout, off, n_langs,
                         head_dim=drmim.universal_dim)
        self.drmim = drmim
        d, c = self.hidden, drmim
        # Linear projections: with every part switched off, the head on the universal part
        # is a (low-rank) linear head, i.e. the baseline's, so differences come from the parts.
        self.universal = nn.Linear(d, c.universal_dim)
        self.specific = nn.Linear(d, c.specific_dim)
        self.lang_specific = nn.Linear(c.specific_dim, max(n_langs, 1))
        self.lang_adversary = nn.Linear(c.universal_dim, max(n_langs, 1))
        self.critic = L.SeparableCritic(c.universal_dim, self.n_out, c.critic_dim)

    def head_input(self, rep: torch.Tensor) -> torch.Tensor:
        """Universal projection of the representation."""
        return self.universal(rep)

    def split(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled ``(b, du)`` universal and ``(b, ds)`` specific features (for the figure)."""
        states, _ = self.top(h, mask)
        rep = self.represent(states, mask)
        u, s = self.universal(rep), self.specific(rep)
        if self.kind == "qa":
            u, s = masked_mean(u, mask), masked_mean(s, mask)
        return u, s

    def _items(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Rows the item-level terms compare: sentences, or real tokens for QA."""
        return x[mask.bool()] if self.kind == "qa" else x

    def _subsample(self, n: int, generator: torch.Generator | None,
                   device: torch.device) -> torch.Tensor | None:
        cap = self.drmim.mi_max_items
        if n <= cap:
            return None
        # Drawn on the host generator (the CPU stream of draws stays as it was), then queued
        # to the GPU: an index on the host would be copied with a wait for the GPU.
        return to_device(torch.randperm(n, generator=generator)[:cap], device)

    def losses(self, batch: TaskBatch, corpus: CorpusBatch | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Weighted terms: ``task`` and those of the switched-on parts.

        ``task`` reads the universal features of the English batch; the parts work on the
        corpus batch (MI and decorrelation on the English batch too).
        """
        c = self.drmim
        states, _ = self.top(batch.h, batch.mask)
        rep_task = self.represent(states, batch.mask)
        u_task = self.universal(rep_task)
        logits = self.outputs(u_task, batch.mask)
        terms = {"task": self.task_loss(logits, batch)}
        if not self.uses_corpus:
            return terms
        if corpus is None:
            raise ValueError(f"drmim with parts {sorted(set(self.parts) - self.off)} needs "
                             "corpus batches")
        c_states, _ = self.top(corpus.h, corpus.mask)
        rep = self.represent(c_states, corpus.mask)
        u, s = self.universal(rep), self.specific(rep)
        u_sent = masked_mean(u, corpus.mask) if self.kind == "qa" else u
        s_sent = masked_mean(s, corpus.mask) if self.kind == "qa" else s
        if self.on("disentangle"):
            terms["lang"] = c.w_lang * F.cross_entropy(self.lang_specific(s_sent), corpus.langs)
            adv = self.lang_adversary(L.grad_reverse(u_sent, c.grl_lambda))
            terms["adversary"] = c.w_adv * F.cross_entropy(adv, corpus.langs)
            # English task items join the corpus items: more rows, a steadier correlation.
            s_task = self.specific(rep_task)
            terms["decorrelation"] = c.w_decorr * L.decorrelation(
                torch.cat([self._items(u_task, batch.mask), self._items(u, corpus.mask)]),
                torch.cat([self._items(s_task, batch.mask), self._items(s, corpus.mask)]),
            )
        if self.on("mi"):
            c_logits = self.outputs(u, corpus.mask)
            u_items = torch.cat([self._items(u_task, batch.mask), self._items(u, corpus.mask)])
            o_items = torch.cat([self._items(self._mi_output(logits), batch.mask),
                                 self._items(self._mi_output(c_logits), corpus.mask)])
            pick = self._subsample(len(u_items), generator, u_items.device)
            if pick is not None:
                u_items, o_items = u_items[pick], o_items[pick]
            bound = L.MI_BOUNDS[c.mi_estimator](self.critic(u_items, o_items))
            terms["mi"] = -c.w_mi * bound
        if self.on("tie"):
            terms["tie"] = c.w_tie * L.parallel_tie(u_sent, corpus.rows, c.tie_temperature)
        return terms

    def _mi_output(self, logits: torch.Tensor) -> torch.Tensor:
        # Class probabilities for sentence tasks; per-token start/end logits for QA (a
        # distribution over positions is not a per-token output).
        if self.kind == "qa":
            return logits.clamp(min=-1e4)  # padding logits are masked to the dtype minimum
        return logits.softmax(-1)


class Epar(Method):
    """``epar``: Embedding-Push, Attention-Pull and Robust targets on English data only.

    Args:
        top, kind, n_labels, dropout, off, n_langs: As for :class:`Method`.
        epar: The EPAR knobs (``train_drmim.epar``).
    """

    parts = ("push", "pull", "robust")

    def __init__(self, top: TopBlock, kind: str, n_labels: int, dropout: float,
                 off: frozenset[str] = frozenset(), n_langs: int = 0, *,
                 epar: EparConfig) -> None:
        super().__init__(top, kind, n_labels, dropout, off, n_langs)
        self.epar = epar
        self.register_buffer("centroid", torch.zeros(self.hidden))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def _update_centroid(self, pooled: torch.Tensor) -> None:
        # Running mean of the English sentence vectors: the "English cluster" to push from.
        # The first batch sets it. Chosen on the device (torch.where), not by reading `seen`
        # on the host, which would wait for the GPU every step; each value is computed as
        # before (centroid * m + (1 - m) * mean), so CPU results are unchanged.
        mean = pooled.detach().mean(0)
        m = self.epar.centroid_momentum
        self.centroid.copy_(torch.where(self.seen, self.centroid * m + (1.0 - m) * mean, mean))
        self.seen.fill_(True)

    def losses(self, batch: TaskBatch, corpus: CorpusBatch | None = None,
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``task`` (clean pass), ``virtual`` (pushed pass) and ``pull`` (attention)."""
        e = self.epar
        pull = self.on("pull")
        states, clean_maps = self.top(batch.h, batch.mask, attentions=pull)
        logits = self.outputs(self.represent(states, batch.mask), batch.mask)
        terms = {"task": self.task_loss(logits, batch)}
        self._update_centroid(self.top.pool(states, batch.mask))
        delta = L.embedding_push(
            lambda x: self.top.pool(self.top(x, batch.mask)[0], batch.mask),
            batch.h, batch.mask, self.centroid, e.epsilon, generator,
            follow_gradient=self.on("push"),
        )
        p_states, p_maps = self.top(batch.h, batch.mask, delta=delta, attentions=pull)
        p_logits = self.outputs(self.represent(p_states, batch.mask), batch.mask)
        soft = None
        if self.on("robust"):
            if self.kind == "qa":
                soft = (L.robust_targets(batch.starts, logits[..., 0], e.robust_mix),
                        L.robust_targets(batch.ends, logits[..., 1], e.robust_mix))
            else:
                soft = (L.robust_targets(batch.labels, logits, e.robust_mix),)
        terms["virtual"] = e.w_virtual * self.task_loss(p_logits, batch, soft)
        if pull:
            terms["pull"] = e.w_pull * L.attention_pull(clean_maps, p_maps, batch.mask)
        return terms


METHODS: dict[str, type[Method]] = {"finetune": Finetune, "drmim": DrMim, "epar": Epar}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A method with some of its parts switched off (``drmim-no_mi-no_tie``).

    Attributes:
        method: Registered method name.
        off: Parts switched off.
    """

    method: str
    off: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        """Canonical name: the method, then ``-no_<part>`` in the method's part order."""
        cls = METHODS[self.method]
        return "-".join([self.method, *(f"no_{p}" for p in cls.parts if p in self.off)])

    @property
    def uses_corpus(self) -> bool:
        """Whether the variant trains on multi-way corpus batches."""
        return any(p not in self.off for p in METHODS[self.method].corpus_parts)

    def build(self, top: TopBlock, kind: str, n_labels: int, *, dropout: float,
              drmim: DrmimConfig, epar: EparConfig, n_langs: int) -> Method:
        """Instantiate the method module.

        Args:
            top: The trainable top block.
            kind: ``classification``, ``pair`` or ``qa``.
            n_labels: Number of classes.
            dropout: Dropout before the task head (``train_drmim.dropout``).
            drmim: The DR-MIM knobs (``train_drmim.drmim``; read by ``drmim`` only).
            epar: The EPAR knobs (``train_drmim.epar``; read by ``epar`` only).
            n_langs: Number of corpus languages (language classifiers).
        """
        knobs = {"drmim": {"drmim": drmim}, "epar": {"epar": epar}}.get(self.method, {})
        return METHODS[self.method](top, kind, n_labels, dropout, self.off, n_langs, **knobs)


def parse_variant(name: str) -> Variant:
    """Parse ``<method>[-no_<part>...]``.

    Raises:
        ValueError: Unknown method or part (the message lists what exists).
    """
    method, *switches = name.split("-")
    if method not in METHODS:
        raise ValueError(f"unknown downstream method '{method}' in '{name}' "
                         f"(known: {', '.join(METHODS)})")
    parts = METHODS[method].parts
    off: set[str] = set()
    for switch in switches:
        part = switch.removeprefix("no_")
        if not switch.startswith("no_") or part not in parts:
            allowed = ", ".join(f"no_{p}" for p in parts) or "none"
            raise ValueError(f"'{name}': cannot switch '{switch}' for {method} "
                             f"(its switches: {allowed})")
        off.add(part)
    return Variant(method, frozenset(off))

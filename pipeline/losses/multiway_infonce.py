r"""Multi-way InfoNCE: every language of a multi-way parallel row is an anchor for the others.

Inputs: a batch of ``B`` rows of a multi-way corpus with ``N >= 2`` language columns, i.e. the
sentence-transformers collator hands the loss ``N`` feature dicts of ``B`` sentences each. All
``N·B`` embeddings are compared with all others.

Formula (``z_{r,l}`` = embedding of row ``r`` in language ``l``, L2-normalised for
``similarity="cosine"``; ``s(a, b) = z_a · z_b``; temperature ``τ``). For an anchor
``a = (r, l)``:

- positives ``P(a) = {(r, m) : m ≠ l}``: the other ``N − 1`` translations of its row;
- negatives ``Neg(a) = {(r', m) : rows r' and r share no text}``, every language ``m``
  included (same-language negatives too). The anchor itself, its positives and every
  embedding of a row that repeats one of row ``r``'s texts (same ``input_ids`` in some
  language) are excluded, so duplicated sentences never act as false negatives.

.. math::

    \ell(a, p) = -\log \frac{e^{s(a,p)/τ}}{e^{s(a,p)/τ} + \sum_{n \in Neg(a)} e^{s(a,n)/τ}}
               = \operatorname{softplus}\Big(\operatorname{LSE}_{n \in Neg(a)} \frac{s(a,n)}{τ}
                 - \frac{s(a,p)}{τ}\Big)

    L = \frac{1}{B N (N-1)} \sum_{a} \sum_{p \in P(a)} \ell(a, p)

The loss is returned as ``N`` terms ``anchor_<lang>`` (the part of the sum whose anchors are
in that language); they add up to ``L``, which is what the trainer optimises and logs.

**Pivot positives** (:class:`PivotInfoNCELoss`, ``pivot_infonce``): the same rows, embeddings
and negatives, but only the pairs that hold the first column (the source, English) count as
positives: an English anchor has its ``N − 1`` translations, a translation anchor only the
English sentence, ``2B(N − 1)`` pairs in all. It is the English-centric objective at the
multi-way regime's data and compute, so the difference between the two is the translation
pairs between non-English languages and nothing else.

Why this per-pair form rather than SupCon's multi-positive ``L_out`` (Khosla et al., 2020,
where the softmax of each positive also contains the other ``N − 2`` positives): in SupCon the
translations of one sentence compete with each other in the denominator, so the loss cannot
drop below ``log(N − 1)`` and its scale and the meaning of ``τ`` change with ``N``. In the
per-pair form each (anchor, positive) pair is an ordinary InfoNCE problem against the same
true negatives: its minimum is 0 for every ``N``, ``τ`` means what it means in the bilingual
baseline, values are comparable across corpora with different numbers of languages, and with
``N = 2`` it is in-batch InfoNCE with both directions and same-language negatives.

References:
    - van den Oord et al., 2018, "Representation Learning with Contrastive Predictive Coding"
      (InfoNCE), https://arxiv.org/abs/1807.03748
    - Khosla et al., 2020, "Supervised Contrastive Learning" (the multi-positive alternative),
      https://arxiv.org/abs/2004.11362
    - Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
      Setup" (GradCache, used by :class:`CachedMultiwayInfoNCELoss`),
      https://arxiv.org/abs/2101.06983
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import tqdm
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from pipeline.losses import (
    duplicate_rows,
    gather_with_grad,
    prepare,
    text_keys,
)
from pipeline.losses.base import CachedLoss, InBatchLoss


def positive_langs(n_langs: int, device: torch.device | None = None) -> Tensor:
    """``(N, N − 1)``: row ``l`` lists the positives' languages of an anchor in language ``l``."""
    lang_ids = torch.arange(n_langs, device=device)
    return torch.stack([lang_ids[lang_ids != lang] for lang in range(n_langs)])


def multiway_pair_losses(
    candidates: Tensor,
    rows: Tensor,
    langs: Tensor,
    temperature: float,
    duplicates: Tensor | None = None,
) -> Tensor:
    """Per-pair losses ``ℓ(a, p)`` (module docstring) for a set of anchors.

    Args:
        candidates: ``(rows_total, N, dim)`` embeddings of every row and language, already
            in dot-product space (see :func:`pipeline.losses.prepare`).
        rows: ``(A,)`` row index of each anchor in ``candidates``.
        langs: ``(A,)`` language index of each anchor.
        temperature: Softmax temperature ``τ``.
        duplicates: ``(rows_total, rows_total)`` bool, True where two rows share a text; the
            rows of an anchor's duplicates are not negatives. ``None``: only the anchor's own
            row is excluded.

    Returns:
        ``(A, N - 1)`` losses, one per (anchor, positive) pair, positives in language order.
    """
    n_rows, n_langs, dim = candidates.shape
    flat = candidates.reshape(n_rows * n_langs, dim)  # row-major: column c = row * N + lang
    scores = candidates[rows, langs] @ flat.T / temperature  # (A, rows_total * N)
    column_rows = torch.arange(n_rows, device=flat.device).repeat_interleave(n_langs)
    if duplicates is None:
        blocked = rows[:, None] == column_rows[None, :]
    else:
        blocked = duplicates[rows][:, column_rows]
    # A finite fill (not -inf) keeps the gradient finite when every candidate is blocked
    # (batch of one row, or all rows duplicates): the pair loss is then exactly 0.
    negatives = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
    log_z_neg = torch.logsumexp(negatives, dim=1)  # (A,)
    positive_columns = rows[:, None] * n_langs + positive_langs(n_langs, flat.device)[langs]
    positives = scores.gather(1, positive_columns)
    return F.softplus(log_z_neg[:, None] - positives)


def pivot_positives(langs: Tensor, n_langs: int) -> Tensor:
    """``(A, N − 1)`` bool: which of :func:`multiway_pair_losses`' pairs hold column 0."""
    return (langs[:, None] == 0) | (positive_langs(n_langs, langs.device)[langs] == 0)


class MultiwayInfoNCELoss(InBatchLoss):
    """Multi-way in-batch InfoNCE over all languages of each row.

    For each anchor ``a`` (every row, every language) and each positive ``p`` (the anchor
    row's other translations): ``ℓ = −log(e^{s_ap/τ} / (e^{s_ap/τ} + Σ_{n∈Neg(a)} e^{s_an/τ}))``,
    where ``Neg(a)`` is every embedding of every row that shares no text with the anchor's
    row; the loss is the mean of ``ℓ`` over the ``B·N·(N−1)`` pairs. Self-similarity and the
    other positives are not in the denominator. Details, the choice against SupCon and
    references: module docstring (van den Oord et al., 2018).

    Inputs:
        ``N >= 2`` columns of ``B`` parallel sentences (one language per column, same order
        in every batch); no labels.

    Returns:
        ``{"anchor_<lang>": term}`` for each language; the terms sum to the loss.
    """

    #: Count only the pairs with the first column as positives (:class:`PivotInfoNCELoss`).
    pivot = False

    def __init__(self, model: nn.Module, *, languages: Sequence[str] | None = None,
                 **settings: Any) -> None:
        """Create the loss.

        Args:
            model: The ``SentenceTransformer`` to train.
            languages: Column names, used to name the logged terms (``anchor_deu_Latn``);
                default ``anchor_0``, ``anchor_1``, ...
            **settings: :class:`~pipeline.losses.base.InBatchLoss`'s (temperature, ...).

        Raises:
            ValueError: A hyperparameter is out of range.
        """
        super().__init__(model, **settings)
        self.languages = tuple(languages) if languages is not None else None

    def term_names(self, n_langs: int) -> list[str]:
        """Names of the returned terms for ``n_langs`` columns.

        Raises:
            ValueError: Fewer than two columns, or ``languages`` does not match the columns.
        """
        if n_langs < 2:
            raise ValueError(f"multi-way InfoNCE needs at least 2 language columns, got {n_langs}")
        if self.languages is None:
            return [f"anchor_{i}" for i in range(n_langs)]
        if len(self.languages) != n_langs:
            raise ValueError(
                f"the batch has {n_langs} columns but languages={list(self.languages)} names "
                f"{len(self.languages)}; pass one name per dataset column"
            )
        return [f"anchor_{lang}" for lang in self.languages]

    def text_keys(self, sentence_features: list[dict[str, Any]]) -> Tensor | None:
        """``(N, rows)`` text keys of every column for duplicate masking, or ``None`` when off.

        Raises:
            ValueError: The columns do not fit :meth:`term_names`.
        """
        self.term_names(len(sentence_features))
        if not self.mask_duplicates:
            return None
        gather = self.gather_across_devices
        return torch.stack([text_keys(features, gather=gather) for features in sentence_features])

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Embed every column and compute the loss terms (``labels`` are ignored)."""
        sentence_features = list(sentence_features)
        self.term_names(len(sentence_features))
        # Every column is a sentence of the same kind, so all columns share one forward pass.
        embeddings = embed_columns(self.model, sentence_features, separate_first=False)
        return self.compute_loss_from_embeddings(embeddings, self.text_keys(sentence_features))

    def compute_loss_from_embeddings(
        self,
        embeddings: list[Tensor],
        keys: Tensor | None = None,
        chunk_size: int | None = None,
        with_backward: bool = False,
        show_progress_bar: bool = False,
    ) -> dict[str, Tensor]:
        """Loss terms from the per-column embeddings.

        Args:
            embeddings: ``N`` tensors of shape ``(B, dim)``, one per language column.
            keys: ``(N, rows)`` text keys (:meth:`text_keys`), or ``None`` for no masking.
            chunk_size: Anchors handled at once (bounds the ``(anchors, N·rows)`` score
                block); ``None`` = all.
            with_backward: Back-propagate each chunk right away and return detached terms
                (the GradCache loss stage).
            show_progress_bar: Show a bar over the anchor chunks.

        Returns:
            ``{"anchor_<lang>": term}``, summing to the loss.
        """
        names = self.term_names(len(embeddings))
        n_langs, batch = len(embeddings), embeddings[0].shape[0]
        local = prepare(torch.stack(embeddings, dim=1), self.similarity)  # (B, N, dim)
        candidates, offset = gather_with_grad(local, self.gather_across_devices)  # (R, N, dim)
        duplicates = duplicate_rows(keys) if keys is not None else None
        # Chunks back-propagate into a detached copy; one backward through the gather and
        # normalisation follows, so no graph is traversed twice.
        scored = candidates.detach().requires_grad_() if with_backward else candidates
        device = candidates.device
        anchor_rows = offset + torch.arange(batch, device=device).repeat_interleave(n_langs)
        anchor_langs = torch.arange(n_langs, device=device).repeat(batch)
        n_pairs = batch * (2 if self.pivot else n_langs) * (n_langs - 1)
        per_lang = torch.zeros(n_langs, dtype=candidates.dtype, device=device)
        step = chunk_size or len(anchor_rows)
        for begin in tqdm.trange(
            0, len(anchor_rows), step, desc="Multi-way loss", disable=not show_progress_bar
        ):
            rows, langs = anchor_rows[begin:begin + step], anchor_langs[begin:begin + step]
            pairs = multiway_pair_losses(scored, rows, langs, self.temperature, duplicates)
            if self.pivot:
                pairs = pairs * pivot_positives(langs, n_langs)
            losses = pairs.sum(dim=1) / n_pairs  # (chunk,)
            if with_backward:
                losses.sum().backward()
                losses = losses.detach()
            per_lang = per_lang.index_add(0, langs, losses)
        if with_backward:
            candidates.backward(scored.grad)
        return {name: per_lang[i] for i, name in enumerate(names)}

    def get_config_dict(self) -> dict[str, Any]:
        """Hyperparameters, for the model card and ``meta.json``."""
        languages = list(self.languages) if self.languages is not None else None
        return {**super().get_config_dict(), "languages": languages}


class PivotInfoNCELoss(MultiwayInfoNCELoss):
    """Multi-way rows with English-centric positives: only the pairs holding the first column.

    Same inputs, negatives and terms as :class:`MultiwayInfoNCELoss`; an anchor in the first
    column has every translation of its row as positive, any other anchor only the first
    column's sentence; the loss is the mean over those ``2B(N−1)`` pairs (module docstring).
    With ``N = 2`` it equals :class:`MultiwayInfoNCELoss`.
    """

    pivot = True


class CachedMultiwayInfoNCELoss(CachedLoss):
    """:class:`MultiwayInfoNCELoss` with GradCache, for large batches in bounded memory.

    Same inputs, formula and terms as :class:`MultiwayInfoNCELoss`; the gradients are the
    same up to float rounding. Following sentence-transformers'
    ``CachedMultipleNegativesRankingLoss`` (and its ``CachedLossMixin``): (1) embed every
    column in mini-batches without gradient, saving the RNG state of each mini-batch
    (``RandContext``) so dropout can be replayed; (2) compute the loss on the detached
    embeddings, anchor chunk by anchor chunk, and back-propagate it to the embeddings only,
    caching their gradients; (3) in the backward pass of the returned loss, re-embed each
    mini-batch with gradient (same dropout masks) and back-propagate the cached gradient.
    Only one mini-batch of activations is alive at a time, so the batch size (and the number
    of in-batch negatives) is no longer bounded by activation memory; the price is a second
    forward pass. This replaces gradient accumulation, which would shrink the negative pool.

    Returns:
        ``{"anchor_<lang>": term}``. The first term carries the GradCache backward hook
        (its value is the total minus the other, detached, terms), so the terms still sum
        to the loss and the hook receives exactly the gradient of the sum.
    """

    wrapped = MultiwayInfoNCELoss

    def column_terms(self, columns: list[Tensor], with_backward: bool) -> dict[str, Tensor]:
        """The multi-way terms, anchors scored ``mini_batch_size`` at a time."""
        return self.loss.compute_loss_from_embeddings(
            columns, self._keys, chunk_size=self.mini_batch_size, with_backward=with_backward,
            show_progress_bar=self.show_progress_bar,
        )

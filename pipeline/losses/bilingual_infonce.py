r"""Bilingual in-batch InfoNCE: the En-X baseline, symmetric over the two directions.

Inputs: a batch of ``B`` translation pairs, two columns (English, then the other language of
the row; in the En-X corpus that language varies from row to row). No labels.

Formula (``x_i``, ``y_i`` = embeddings of the two sides of pair ``i``, L2-normalised for
``similarity="cosine"``; ``s = x · y``; temperature ``τ``; ``D(i)`` = pairs ``j ≠ i`` that share
the source or the target text with pair ``i``, which are removed from ``i``'s candidates):

.. math::

    L_{x \to y} = \frac{1}{B} \sum_i -\log
        \frac{e^{s(x_i, y_i)/τ}}{\sum_{j \notin D(i)} e^{s(x_i, y_j)/τ}}
    \qquad
    L_{y \to x} = \frac{1}{B} \sum_i -\log
        \frac{e^{s(y_i, x_i)/τ}}{\sum_{j \notin D(i)} e^{s(y_i, x_j)/τ}}

    L = \tfrac12 (L_{x \to y} + L_{y \to x})

Returned as ``{"src_to_tgt": ½ L_{x→y}, "tgt_to_src": ½ L_{y→x}}`` (the terms sum to ``L``).
Without duplicates this equals sentence-transformers' ``MultipleNegativesRankingLoss`` with
``directions=("query_to_doc", "doc_to_query")``, ``partition_mode="per_direction"`` and
``scale = 1/τ`` (the symmetric InfoNCE of Günther et al., 2024). Unlike the multi-way loss,
candidates are only the other side's sentences (no same-language negatives), as in the
standard bilingual dual-encoder setup (e.g. LaBSE without its additive margin).

References:
    - van den Oord et al., 2018, https://arxiv.org/abs/1807.03748 (InfoNCE)
    - Feng et al., 2022, "Language-agnostic BERT Sentence Embedding",
      https://arxiv.org/abs/2007.01852 (bidirectional in-batch translation ranking)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor

from pipeline.losses import (
    duplicate_rows,
    gather_with_grad,
    prepare,
    text_keys,
)
from pipeline.losses.base import CachedLoss, InBatchLoss


class BilingualInfoNCELoss(InBatchLoss):
    """Symmetric in-batch InfoNCE on translation pairs.

    ``L = ½ (CE(x_i → {y_j}) + CE(y_i → {x_j}))`` averaged over the batch, logits
    ``s/τ``, the positive being the row's own translation and pairs that repeat row ``i``'s
    source or target text removed from its candidates (formula and references: module
    docstring).

    Inputs:
        Two columns of ``B`` sentences (source, translation); no labels.

    Returns:
        ``{"src_to_tgt": term, "tgt_to_src": term}``; the terms sum to the loss.
    """

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Embed both columns and compute the two direction terms (``labels`` are ignored).

        Raises:
            ValueError: The batch does not have exactly two columns.
        """
        sentence_features = list(sentence_features)
        keys = self.text_keys(sentence_features)
        source, target = embed_columns(self.model, sentence_features, separate_first=False)
        return self.compute_loss_from_embeddings(source, target, keys)

    def text_keys(self, sentence_features: list[dict[str, Tensor]]) -> Tensor | None:
        """``(2, rows)`` text keys of both columns for duplicate masking, or ``None``.

        Raises:
            ValueError: The batch does not have exactly two columns.
        """
        if len(sentence_features) != 2:
            raise ValueError(
                f"bilingual_infonce needs exactly 2 columns (source, translation), got "
                f"{len(sentence_features)}; use multiway_infonce for more languages"
            )
        if not self.mask_duplicates:
            return None
        gather = self.gather_across_devices
        return torch.stack([text_keys(f, gather=gather) for f in sentence_features])

    def compute_loss_from_embeddings(
        self, source: Tensor, target: Tensor, keys: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Loss terms from ``(B, dim)`` source and target embeddings.

        Args:
            source: Embeddings of the first column.
            target: Embeddings of the second column.
            keys: ``(2, rows)`` text keys of both columns, or ``None`` for no masking.

        Returns:
            ``{"src_to_tgt": ..., "tgt_to_src": ...}``.
        """
        source, target = prepare(source, self.similarity), prepare(target, self.similarity)
        all_source, offset = gather_with_grad(source, self.gather_across_devices)  # (R, dim)
        all_target, _ = gather_with_grad(target, self.gather_across_devices)
        batch = source.shape[0]
        local = torch.arange(offset, offset + batch, device=source.device)
        forward_scores = source @ all_target.T / self.temperature  # (B, R)
        backward_scores = target @ all_source.T / self.temperature  # (B, R)
        if keys is not None:
            # Duplicates of pair i (other than i itself) leave i's candidates. The positive
            # always stays, so no row is fully masked and -inf is safe here.
            blocked = duplicate_rows(keys)[local]
            blocked[torch.arange(batch, device=source.device), local] = False
            forward_scores = forward_scores.masked_fill(blocked, float("-inf"))
            backward_scores = backward_scores.masked_fill(blocked, float("-inf"))
        terms = {}
        for name, scores in (("src_to_tgt", forward_scores), ("tgt_to_src", backward_scores)):
            log_p = scores.diagonal(offset) - torch.logsumexp(scores, dim=1)
            terms[name] = -log_p.mean() / 2
        return terms



class CachedBilingualInfoNCELoss(CachedLoss):
    """:class:`BilingualInfoNCELoss` with GradCache: En-X batches as large as multi-way ones.

    Same inputs, formula and terms; gradients equal up to float rounding. The GradCache passes
    are those of :class:`~pipeline.losses.multiway_infonce.CachedMultiwayInfoNCELoss` (embed
    without gradient, back-propagate the loss to the embeddings, re-embed each mini-batch with
    gradient), so a 512-pair batch needs the activation memory of ``mini_batch_size`` sentences.

    Returns:
        ``{"src_to_tgt": term, "tgt_to_src": term}``; the first carries the backward hook.
    """

    wrapped = BilingualInfoNCELoss

    def column_terms(self, columns: list[Tensor], with_backward: bool) -> dict[str, Tensor]:
        """The two direction terms (one score matrix: no chunking needed)."""
        terms = self.loss.compute_loss_from_embeddings(*columns, self._keys)
        if with_backward:
            torch.stack(list(terms.values())).sum().backward()
            terms = {name: term.detach() for name, term in terms.items()}
        return terms

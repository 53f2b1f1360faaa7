"""What the in-batch InfoNCE losses share: plain (:class:`InBatchLoss`) and cached.

For the cached ones, sentence-transformers' ``CachedLossMixin`` runs the three GradCache passes
(embed without gradient, back-propagate the loss to the embeddings, re-embed each mini-batch
with gradient); :class:`CachedLoss` adds the project's side: the wrapped loss's duplicate keys
taken from the full columns, its named terms (the first carrying the backward hook), and its
hyperparameters in the config.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.gradcache import (
    CachedLossMixin,
    has_static_embedding_input,
)
from torch import Tensor, nn

from pipeline.losses import (
    GRADCACHE_CITATION,
    INFONCE_CITATION,
    LOSSES,
    Similarity,
    check_positive,
    check_similarity,
    first_term_carries_total,
    hyperparameters,
)


class InBatchLoss(nn.Module):
    """The settings every in-batch InfoNCE loss takes; subclasses add the formula."""

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.05,
        similarity: Similarity = "cosine",
        mask_duplicates: bool = True,
        gather_across_devices: bool = False,
    ) -> None:
        """Check and keep the settings.

        Args:
            model: The ``SentenceTransformer`` to train (anything mapping a feature dict to
                ``{"sentence_embedding": (B, dim)}``).
            temperature: Softmax temperature ``τ`` (``scale = 1 / τ`` in sentence-transformers
                terms); lower is sharper.
            similarity: ``cosine`` (L2-normalise, then dot product) or ``dot``.
            mask_duplicates: Remove the rows that repeat one of a row's texts (equal
                ``input_ids`` in some column) from that row's candidates.
            gather_across_devices: With ``torch.distributed`` initialised, score the local
                anchors against the candidates of every device (all-gather with gradient;
                every device must hold the same batch size).

        Raises:
            ValueError: ``temperature`` is not positive, or an unknown ``similarity``.
        """
        super().__init__()
        check_positive("temperature", temperature)
        check_similarity(similarity)
        self.model = model
        self.temperature = float(temperature)
        self.similarity = similarity
        self.mask_duplicates = mask_duplicates
        self.gather_across_devices = gather_across_devices

    def get_config_dict(self) -> dict[str, Any]:
        """Hyperparameters, for the model card and ``meta.json``."""
        return {name: getattr(self, name) for name in hyperparameters(InBatchLoss)}

    @property
    def citation(self) -> str:
        """BibTeX entry shown in the model card."""
        return INFONCE_CITATION


class CachedLoss(CachedLossMixin, nn.Module):
    """A GradCache wrapper of :attr:`wrapped`, an in-batch loss with ``text_keys`` and named terms.

    Subclasses name the wrapped loss class and say how its terms come from whole columns of
    embeddings (:meth:`column_terms`); they take the wrapped loss's settings by keyword.
    """

    #: The in-batch loss this class caches; it owns the hyperparameters and the formula.
    wrapped: type[InBatchLoss]

    def __init__(self, model: nn.Module, *, mini_batch_size: int = 32,
                 show_progress_bar: bool = False, **settings: Any) -> None:
        """Wrap ``wrapped(model, **settings)`` for ``model``.

        Args:
            model: The ``SentenceTransformer`` to train.
            mini_batch_size: Sentences embedded at once (and anchors scored at once); bounds
                memory, not the number of negatives.
            show_progress_bar: Show bars over the mini-batches.
            **settings: The wrapped loss's keyword arguments (temperature, ...).

        Raises:
            ValueError: A hyperparameter is out of range, or the model embeds with a
                ``StaticEmbedding`` (its inputs cannot be split into mini-batches).
        """
        super().__init__()
        if has_static_embedding_input(model):
            name = next(k for k, v in LOSSES.items() if v.endswith(f":{type(self).__name__}"))
            raise ValueError(f"{name} cannot split StaticEmbedding inputs into mini-batches; "
                             f"use {name.removeprefix('cached_')} instead")
        check_positive("mini_batch_size", mini_batch_size)
        self.model = model
        self.loss = self.wrapped(model, **settings)
        self.mini_batch_size = mini_batch_size
        self.show_progress_bar = show_progress_bar
        self._keys: Tensor | None = None
        self._terms: dict[str, Tensor] = {}

    def column_terms(self, columns: list[Tensor], with_backward: bool) -> dict[str, Tensor]:
        """The wrapped loss's terms from one ``(B, dim)`` embedding tensor per column.

        With ``with_backward``, back-propagate them to the embeddings and return them detached.
        """
        raise NotImplementedError

    def calculate_loss(
        self, reps: list[list[Tensor]], labels: Tensor | None = None, *, with_backward: bool = False
    ) -> Tensor:
        """Total loss from the cached mini-batch embeddings (``CachedLossMixin`` hook).

        Keeps the detached terms for :meth:`forward`; ``labels`` are ignored.
        """
        terms = self.column_terms([torch.cat(column) for column in reps], with_backward)
        self._terms = {name: term.detach() for name, term in terms.items()}
        return torch.stack(list(terms.values())).sum()

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Run the GradCache passes and return the named terms."""
        sentence_features = list(sentence_features)
        # Keys (and the column check) from the full columns, before they are cut up.
        self._keys = self.loss.text_keys(sentence_features)
        try:
            total = self.forward_cached(sentence_features, labels)
            return first_term_carries_total(total, self._terms)
        finally:
            self._keys, self._terms = None, {}

    @property
    def temperature(self) -> float:
        """Softmax temperature of the wrapped loss."""
        return self.loss.temperature

    def get_config_dict(self) -> dict[str, Any]:
        """Hyperparameters, for the model card and ``meta.json``."""
        return {**self.loss.get_config_dict(), "mini_batch_size": self.mini_batch_size}

    @property
    def citation(self) -> str:
        """BibTeX entries shown in the model card."""
        return INFONCE_CITATION + GRADCACHE_CITATION

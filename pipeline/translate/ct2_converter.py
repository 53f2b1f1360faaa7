"""CTranslate2's Transformers converter with two vocabulary fixes (imports CTranslate2).

Marian: ``<pad>`` moved to the last id (CTranslate2 expects it there; OPUS-MT models put it
elsewhere). M2M100: every language token at its tokenizer id. :mod:`pipeline.translate.
convert_nmt` uses :class:`Converter` inside its conversion, so importing that stage stays light.
"""

from __future__ import annotations

import logging
from typing import Any

from ctranslate2.converters import TransformersConverter

logger = logging.getLogger(__name__)


class _VocabOverride:
    """A Hugging Face tokenizer whose ``get_vocab()`` reports a corrected id table.

    CTranslate2's loaders build the model vocabulary from ``get_vocab()``; every other
    attribute is the wrapped tokenizer's. ``num_madeup_words = 0`` because the corrected
    table already covers every model id.
    """

    num_madeup_words = 0

    def __init__(self, tokenizer: Any, vocab: dict[str, int]) -> None:
        self._tokenizer = tokenizer
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _marian_vocab(tokenizer: Any, pad_id: int, size: int) -> dict[str, int] | None:
    """Marian id table with ``<pad>`` moved to the last id (``None`` if already there)."""
    if getattr(tokenizer, "separate_vocabs", False):
        raise ValueError("Marian models with separate source/target vocabularies are not "
                         "supported by CTranslate2's converter; pick another model")
    vocab = tokenizer.get_vocab()
    if vocab.get("<pad>") != pad_id or sorted(vocab.values()) != list(range(size)):
        raise ValueError(
            f"Marian tokenizer and config.json disagree (<pad> id {vocab.get('<pad>')} vs "
            f"{pad_id}, {len(vocab)} tokens vs vocab_size {size}); re-save the tokenizer"
        )
    if pad_id == size - 1:
        return None
    return {t: size - 1 if i == pad_id else i - (i > pad_id) for t, i in vocab.items()}


def _move_pad_last(model: Any) -> None:
    """Permute a Marian model's vocabulary rows so that ``<pad>`` is the last id."""
    import torch

    pad, size = model.config.pad_token_id, model.config.vocab_size
    if pad is None or pad == size - 1:
        return
    order = torch.tensor([i for i in range(size) if i != pad] + [pad])
    seen: set[int] = set()
    for module in (model.model.encoder.embed_tokens, model.model.decoder.embed_tokens,
                   model.lm_head):
        weight = module.weight
        if id(weight) not in seen:  # tied embeddings are one parameter: permute once
            seen.add(id(weight))
            weight.data = weight.data[order]
    model.final_logits_bias.data = model.final_logits_bias.data[:, order]
    logger.info("moved <pad> from id %d to the last id %d for CTranslate2", pad, size - 1)


def _m2m100_vocab(tokenizer: Any, size: int) -> dict[str, int]:
    """Full M2M100 id table: pieces, ``__xx__`` language tokens at their ids, madeup words."""
    lang_ids: dict[str, int] = dict(getattr(tokenizer, "lang_token_to_id", {}))
    by_id: dict[int, str | None] = {}
    for i in range(size):
        token = tokenizer.convert_ids_to_tokens(i)
        by_id[i] = None if token in lang_ids else token  # language tokens: own ids only
    by_id.update({i: t for t, i in lang_ids.items()})
    vocab: dict[str, int] = {}
    madeup = 0
    for i in range(size):
        token = by_id[i]
        if token is None or token in vocab:  # ids past the tokenizer's table read as <unk>
            token, madeup = f"madeupword{madeup}", madeup + 1
        vocab[token] = i
    return vocab


class Converter(TransformersConverter):
    """CTranslate2's converter with the Marian ``<pad>`` and M2M100 language-token fixes."""

    def __init__(self, model_dir: str, family: str) -> None:
        super().__init__(model_dir)
        self.family = family
        self.config: Any = None
        self.tokenizer: Any = None
        self.pad_id: int | None = None

    def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
        """Load the model, keeping its config; Marian: ``<pad>`` moved last."""
        model = super().load_model(model_class, model_name_or_path, **kwargs)
        self.config = model.config
        if self.family == "marian":
            self.pad_id = model.config.pad_token_id
            _move_pad_last(model)
        return model

    def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any
                       ) -> Any:
        """Load the tokenizer, reporting the corrected vocabulary where the family needs it."""
        self.tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
        size = self.config.vocab_size
        vocab = None
        if self.family == "marian":
            vocab = _marian_vocab(self.tokenizer, self.pad_id, size)
        elif self.family == "m2m100":
            vocab = _m2m100_vocab(self.tokenizer, size)
        return _VocabOverride(self.tokenizer, vocab) if vocab else self.tokenizer

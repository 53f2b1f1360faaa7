"""Model metadata and per-family tokenisation of CTranslate2 NMT models.

Every CTranslate2 model directory the project uses holds ``multiway_nmt.json``
(:data:`META_FILE`), written by :mod:`pipeline.translate.convert_nmt` or by ``train_nmt``. It
says which tokenisation family the model belongs to and where its tokenizer files are:

- ``marian`` (OPUS-MT, the project's own model): raw sentencepiece (``source.spm`` /
  ``target.spm``), ``</s>`` appended; multi-target models take a tag token such as
  ``>>fra<<`` in front of the source (``target_tag`` template).
- ``m2m100``: sentencepiece, source ``__en__ … </s>``, target prefix ``__de__``.
- ``nllb``: the Hugging Face ``tokenizer.json`` (Rust ``tokenizers``), source
  ``eng_Latn … </s>``, target prefix ``deu_Latn``.

No module here imports ``transformers``: loading it would cost seconds per stage run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import langs

META_FILE = "multiway_nmt.json"
FAMILIES = ("marian", "m2m100", "nllb")
EOS = "</s>"
_SPECIAL = frozenset({"<s>", "</s>", "<pad>", "<unk>", "<mask>"})
# Tokens that carry a language, never text: dropped when a hypothesis is detokenised.
_LANG_TOKEN = {
    "marian": re.compile(r">>.+<<"),
    "m2m100": re.compile(r"__[a-z]{2,3}__|madeupword\d+"),
    "nllb": re.compile(r"[a-z]{3}_[A-Z][a-z]{3}"),
}
_DEFAULT_FILES: dict[str, dict[str, str]] = {
    "marian": {"source_spm": "source.spm", "target_spm": "target.spm"},
    "m2m100": {"source_spm": "sentencepiece.bpe.model", "target_spm": "sentencepiece.bpe.model"},
    "nllb": {"tokenizer_json": "tokenizer.json"},
}
_FIX = "reconvert it with `multiway convert_nmt` (or retrain it with train_nmt)"


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """Contents of ``multiway_nmt.json``.

    Attributes:
        family: ``marian``, ``m2m100`` or ``nllb``.
        source_lang: FLORES code of the source side (Marian models have exactly one).
        target_langs: FLORES codes the model translates into; ``None`` means every
            language its tokenizer has a token for.
        target_tag: Marian multi-target tag template put in front of the source, with
            ``{code}`` (FLORES), ``{iso3}`` or ``{iso1}`` placeholders, e.g. ``>>{iso3}<<``.
        source_spm: Source sentencepiece file (Marian, M2M100), relative to the model dir.
        target_spm: Target sentencepiece file (Marian, M2M100).
        tokenizer_json: Hugging Face ``tokenizer.json`` (NLLB).
        max_positions: Position embeddings of the model (caps input and output length).
        extra: Any other keys of the file (provenance: source model, quantization, ...).
    """

    family: str
    source_lang: str = "eng_Latn"
    target_langs: tuple[str, ...] | None = None
    target_tag: str | None = None
    source_spm: str | None = None
    target_spm: str | None = None
    tokenizer_json: str | None = None
    max_positions: int | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def create(cls, family: str, **fields: Any) -> ModelMeta:
        """Build metadata for ``family``, filling in the family's default tokenizer files.

        Unknown keys go to :attr:`extra`; ``None`` values fall back to the defaults.

        Raises:
            ValueError: Unknown family, language code or badly typed field.
        """
        if family not in FAMILIES:
            raise ValueError(f"unknown NMT family '{family}'; supported: {', '.join(FAMILIES)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"family", "extra"}
        values = {**_DEFAULT_FILES[family], **{k: v for k, v in fields.items() if k in known}}
        values = {k: v for k, v in values.items() if v is not None}
        extra = {k: v for k, v in fields.items() if k not in known and k != "family"}
        langs.get(values.get("source_lang", "eng_Latn"))
        targets = values.get("target_langs")
        if targets is not None:
            if isinstance(targets, str) or not isinstance(targets, Sequence):
                raise ValueError(f"target_langs must be a list of FLORES codes, got {targets!r}")
            values["target_langs"] = langs.validate(list(targets))
        return cls(family=family, extra=extra, **values)

    @classmethod
    def read(cls, model_dir: str | Path, family: str = "auto") -> ModelMeta:
        """Read a model directory's metadata, checking that it is a CTranslate2 model.

        Args:
            model_dir: CTranslate2 model directory.
            family: ``auto`` reads ``multiway_nmt.json``; a family name is used for a
                directory without that file (converted by other tools) and must agree with
                the file when there is one.

        Raises:
            FileNotFoundError: The directory, its ``model.bin`` or (with ``auto``) its
                metadata file is missing.
            ValueError: The metadata file is unreadable or names another family.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"NMT model directory {model_dir} does not exist; train it with train_nmt or "
                "convert one with `multiway convert_nmt --model <key|hub id|dir>`"
            )
        if not (model_dir / "model.bin").is_file():
            raise FileNotFoundError(
                f"{model_dir} is not a CTranslate2 model (no model.bin); {_FIX}"
            )
        path = model_dir / META_FILE
        if not path.is_file():
            if family == "auto":
                raise FileNotFoundError(
                    f"{model_dir} has no {META_FILE}, so its tokenisation is unknown; convert "
                    "the model with `multiway convert_nmt`, or set translate.family to "
                    f"{', '.join(FAMILIES)}"
                )
            return cls.create(family)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            meta = cls.create(**data)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is invalid ({exc}); {_FIX}") from None
        if family not in ("auto", meta.family):
            raise ValueError(
                f"translate.family is '{family}' but {path} says '{meta.family}'; set "
                "translate.family to auto"
            )
        return meta

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``extra`` keys merged in at the top level)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "extra"}
        if self.target_langs is not None:
            data["target_langs"] = list(self.target_langs)
        return {**self.extra, **data}


def read_vocabularies(model_dir: str | Path) -> tuple[list[str], list[str]]:
    """Source and target vocabularies of a CTranslate2 model (token lists, by id).

    Raises:
        FileNotFoundError: The directory has no vocabulary file.
    """
    model_dir = Path(model_dir)

    def load(name: str) -> list[str] | None:
        for path in (model_dir / f"{name}.json", model_dir / f"{name}.txt"):
            if path.is_file():
                text = path.read_text(encoding="utf-8")
                return json.loads(text) if path.suffix == ".json" else text.splitlines()
        return None

    shared = load("shared_vocabulary")
    if shared is not None:
        return shared, shared
    source, target = load("source_vocabulary"), load("target_vocabulary")
    if source is None or target is None:
        raise FileNotFoundError(f"{model_dir} has no CTranslate2 vocabulary file; {_FIX}")
    return source, target


class FamilyTokenizer(ABC):
    """Turns text into the token strings a CTranslate2 model expects, and back.

    Args:
        meta: The model's metadata.
        model_dir: The model directory (tokenizer files are relative to it).
        source_vocab: The model's source vocabulary.
        target_vocab: The model's target vocabulary.
    """

    family = ""

    def __init__(self, meta: ModelMeta, model_dir: Path, source_vocab: Sequence[str],
                 target_vocab: Sequence[str]) -> None:
        self.meta = meta
        self.model_dir = Path(model_dir)
        self.source_vocab = frozenset(source_vocab)
        self.target_vocab = frozenset(target_vocab)
        pattern = _LANG_TOKEN[self.family]
        self.skip = _SPECIAL | {t for t in self.target_vocab if pattern.fullmatch(t)}

    def _file(self, name: str | None, what: str) -> Path:
        path = self.model_dir / (name or "")
        if not name or not path.is_file():
            raise FileNotFoundError(f"{self.model_dir} lacks its {what} ({name}); {_FIX}")
        return path

    def check(self, source_lang: str, target_lang: str) -> None:
        """Raise ``ValueError`` unless the model translates ``source_lang`` → ``target_lang``."""
        for code in (source_lang, target_lang):
            langs.get(code)
        targets = self.meta.target_langs
        if targets is not None and target_lang not in targets:
            raise ValueError(
                f"the NMT model in {self.model_dir} does not translate into {target_lang} "
                f"(it knows {', '.join(targets)}); drop the language or use a model that has "
                "it (configs/nmt.yaml)"
            )

    def _require(self, token: str, vocab: frozenset[str], lang: str) -> None:
        if token not in vocab:
            raise ValueError(
                f"the NMT model in {self.model_dir} has no token {token} for {lang}, so it "
                "does not support that language; drop it or use another model (configs/nmt.yaml)"
            )

    @abstractmethod
    def encode(self, texts: Sequence[str], source_lang: str, target_lang: str) -> list[list[str]]:
        """Source token strings (special tokens included) for each text."""

    def target_prefix(self, target_lang: str) -> list[str] | None:
        """Tokens the decoder is forced to start with, or ``None``."""
        return None

    @abstractmethod
    def decode(self, tokens: Sequence[str]) -> str:
        """Detokenise a hypothesis (without its target prefix); language tokens are dropped."""


class _SentencePieceFamily(FamilyTokenizer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.source_sp = self._load(self.meta.source_spm, "source")
        self.target_sp = self._load(self.meta.target_spm, "target")

    def _load(self, name: str | None, side: str) -> Any:
        """Open a sentencepiece model file; a corrupt one fails in one line naming it."""
        import sentencepiece as spm

        path = self._file(name, f"{side} sentencepiece model")
        try:
            return spm.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as exc:
            raise ValueError(
                f"{path} is not a valid sentencepiece model ({exc}); the model directory is "
                f"written by train_nmt or convert_nmt: restore a committed one with `git "
                f"checkout -- {self.model_dir}`, or {_FIX}"
            ) from None

    def _pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return self.source_sp.encode(list(texts), out_type=str)

    def decode(self, tokens: Sequence[str]) -> str:
        """Detokenise with the target sentencepiece model."""
        return self.target_sp.decode_pieces([t for t in tokens if t not in self.skip]).strip()


class MarianFamily(_SentencePieceFamily):
    """Marian/OPUS-MT: ``[tag] pieces </s>``, no target prefix."""

    family = "marian"

    def tag(self, target_lang: str) -> str | None:
        """The source tag for ``target_lang`` (``None`` for single-target models)."""
        if not self.meta.target_tag:
            return None
        lang = langs.get(target_lang)
        return self.meta.target_tag.format(code=lang.code, iso3=lang.iso3, iso1=lang.iso1)

    def check(self, source_lang: str, target_lang: str) -> None:
        """Check the pair, the model's single source language and the target tag."""
        super().check(source_lang, target_lang)
        if source_lang != self.meta.source_lang:
            raise ValueError(
                f"the Marian model in {self.model_dir} translates from "
                f"{self.meta.source_lang}, not {source_lang}; set langs.source to "
                f"{self.meta.source_lang} or use another model"
            )
        tag = self.tag(target_lang)
        if tag is not None:
            self._require(tag, self.source_vocab, target_lang)

    def encode(self, texts: Sequence[str], source_lang: str, target_lang: str) -> list[list[str]]:
        """Sentencepiece pieces, the target tag in front (multi-target models), ``</s>``."""
        tag = self.tag(target_lang)
        head = [tag] if tag else []
        return [[*head, *pieces, EOS] for pieces in self._pieces(texts)]


class _LanguageTokenFamily(FamilyTokenizer):
    """A family that names languages by tokens: the source's in front, the target's as prefix."""

    @staticmethod
    @abstractmethod
    def lang_token(lang: str) -> str:
        """The vocabulary token of a FLORES code."""

    @abstractmethod
    def _pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """Subword pieces of each text, without special tokens."""

    def check(self, source_lang: str, target_lang: str) -> None:
        """Check that both language tokens are in the vocabulary."""
        super().check(source_lang, target_lang)
        self._require(self.lang_token(source_lang), self.source_vocab, source_lang)
        self._require(self.lang_token(target_lang), self.target_vocab, target_lang)

    def encode(self, texts: Sequence[str], source_lang: str, target_lang: str) -> list[list[str]]:
        """Source language token, subword pieces, ``</s>``."""
        head = self.lang_token(source_lang)
        return [[head, *pieces, EOS] for pieces in self._pieces(texts)]

    def target_prefix(self, target_lang: str) -> list[str]:
        """The target language token."""
        return [self.lang_token(target_lang)]


class M2M100Family(_SentencePieceFamily, _LanguageTokenFamily):
    """M2M100: ``__en__ pieces </s>``, target prefix ``__de__``."""

    family = "m2m100"
    lang_token = staticmethod(langs.to_m2m100)


class NllbFamily(_LanguageTokenFamily):
    """NLLB-200: ``eng_Latn pieces </s>`` (current, non-legacy order), prefix ``deu_Latn``."""

    family = "nllb"
    lang_token = staticmethod(langs.to_nllb)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(
            str(self._file(self.meta.tokenizer_json, "tokenizer.json"))
        )

    def _pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """Pieces from the Rust tokenizer, batched."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.tokens for e in encodings]

    def decode(self, tokens: Sequence[str]) -> str:
        """Detokenise with the tokenizer's own decoder (Metaspace)."""
        return self.tokenizer.decoder.decode([t for t in tokens if t not in self.skip]).strip()


TOKENIZERS: dict[str, type[FamilyTokenizer]] = {
    "marian": MarianFamily, "m2m100": M2M100Family, "nllb": NllbFamily,
}


def load_tokenizer(model_dir: str | Path, meta: ModelMeta) -> FamilyTokenizer:
    """The family tokenizer of a CTranslate2 model directory."""
    source_vocab, target_vocab = read_vocabularies(model_dir)
    return TOKENIZERS[meta.family](meta, Path(model_dir), source_vocab, target_vocab)

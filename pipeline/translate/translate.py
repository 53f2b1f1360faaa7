"""Stage ``translate@<lang>``: translate the source table into one language, resumably.

Reads ``translate.source`` (``id`` + the ``langs.source`` column) in shards of
``shard_size`` rows, translates each shard with the CTranslate2 engine, and writes
``<output_dir>/<lang>.parquet`` (``id`` in source order, ``<lang>``) through a
:class:`~pipeline.translate.shards.ShardStore` (``<output_dir>/<lang>.parts/``). A run
killed at any point and started again keeps the finished shards and produces the same
file as an uninterrupted run; each shard is translated on its own, so its batches, and
therefore its output, do not depend on where a run started. Every input and the model are
checked before anything is written.

``translate.backend`` picks who translates the shards: ``local`` (one CTranslate2
translator in this process, on one or several GPUs via ``device_index``) or ``ray`` (a pool
of actors on a Ray cluster, :mod:`~pipeline.translate.ray_backend`). Both write the same
shards, so the output file is the same, and either resumes the other's shards.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import langs as langs_mod
from pipeline.config import LangsConfig
from pipeline.io import read_table
from pipeline.translate.engine import (
    CT2Translator,
    DecodingOptions,
    iter_translations,
    load_translator,
)
from pipeline.translate.shards import ShardStore, fingerprint, iter_row_chunks, work_done


@dataclasses.dataclass(frozen=True)
class TranslateConfig:
    """``translate@<lang>``: translate the source into one target language with CTranslate2."""

    source: str = "data/source/eng_Latn.parquet"  # Source table from ``prepare_source``.
    # CTranslate2 model directory (``train_nmt`` or ``convert_nmt`` output).
    model_dir: str = "data/models/nmt/bible-marian"
    # Tokenisation family; ``auto`` reads ``multiway_nmt.json`` in the model dir (a family name is
    # needed only for a CT2 dir converted by other tools).
    family: Literal["auto", "marian", "m2m100", "nllb"] = "auto"
    device: str = "auto"  # ``auto``, ``cpu`` or ``cuda``.
    compute_type: str = "auto"  # ``auto`` = int8 on CPU, bfloat16/float16 on GPU; or any CT2 type.
    beam_size: int = 1  # Beam size (1 = greedy).
    max_batch_tokens: int = 2048  # Token budget of a batch (``batch_type="tokens"``).
    max_decoding_length: int = 256  # Cap on output length in subwords.
    # Forbid any subword n-gram of this size from occurring twice in an output (0 = off): guards
    # against decoder repetition loops, which a small NMT model produces often (build_corpus drops
    # such rows).
    no_repeat_ngram_size: int = 4
    inter_threads: int = 2  # Parallel translators (CPU) or batches in flight (GPU).
    intra_threads: int = 1  # Threads per translator (CPU).
    shard_size: int = 1000  # Source rows per output shard (resume granularity, memory bound).
    # Table with ``id`` + language columns of human translations; chrF/BLEU are computed against it
    # when set and the language is present.
    references: str | None = "data/seed/bible_source.parquet"
    # Output ``<output_dir>/<lang>.parquet``; shards in ``<lang>.parts/``.
    output_dir: str = "data/translated"
    # GPUs of the ``local`` backend (CTranslate2 ``device_index``): one model replica per GPU (×
    # ``inter_threads``), batches spread over all of them; ignored on CPU.
    device_index: tuple[int, ...] = (0,)
    # ``local`` (one CTranslate2 translator in the stage's process) or ``ray`` (a pool of translator
    # actors on the Ray cluster named by ``RAY_ADDRESS``, else on a local Ray instance the stage
    # starts and stops; needs the ``scale`` extra). Same shards, same output file.
    backend: Literal["local", "ray"] = "local"
    # Translator actors of the ``ray`` backend; 0 = one per GPU of the cluster (device ``cuda``),
    # else one per ``ray_actor_threads`` CPUs.
    ray_actors: int = 0
    ray_actor_threads: int = 1  # CPU threads of each ``ray`` actor (Ray CPUs it reserves).

logger = logging.getLogger(__name__)

# Bump when the output of an unchanged configuration would change (shards get redone).
_POSTFIX_EVERY = 64


def _schema(path: Path, key: str, fix: str) -> pa.Schema:
    """Schema of the Parquet file named by ``translate.<key>`` (one-line errors)."""
    if not path.is_file():
        raise FileNotFoundError(f"translate.{key} {path} does not exist; {fix}")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"translate.{key} {path} is not a readable Parquet file ({exc})") from None


def _source_schema(path: Path, column: str) -> pa.Schema:
    schema = _schema(path, "source", "run prepare_source first")
    missing = [c for c in ("id", column) if c not in schema.names]
    if missing:
        raise ValueError(
            f"translate.source {path} lacks column(s) {missing} (it has {schema.names}); "
            f"it must hold 'id' and the source language column '{column}' (langs.source)"
        )
    return schema


def _load_references(path: str | None, lang: str) -> dict[object, str] | None:
    """``id`` → reference translation, or ``None`` when there are none for ``lang``."""
    if path is None:
        return None
    ref_path = Path(path)
    names = _schema(ref_path, "references",
                    "run prepare_seed or set translate.references to null").names
    if lang not in names:
        logger.info("no %s column in %s: chrF/BLEU not computed", lang, ref_path)
        return None
    frame = read_table(ref_path, ["id", lang])
    return {i: t for i, t in zip(frame["id"], frame[lang]) if isinstance(t, str) and t.strip()}


def _bleu_tokenizer(lang: str) -> str:
    """Pick the sacrebleu tokenizer: character level for scripts written without spaces."""
    script = langs_mod.get(lang).script
    return {"Hans": "zh", "Hant": "zh", "Jpan": "char", "Thai": "char"}.get(script, "13a")


def score(output: Path, lang: str, references: dict[object, str]) -> dict[str, float]:
    """Score a translated table (chrF, BLEU) against references joined by ``id``."""
    hypotheses, refs = [], []
    for batch in pq.ParquetFile(output).iter_batches(columns=["id", lang]):
        for row_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if row_id in references:
                hypotheses.append(text or "")
                refs.append(references[row_id])
    if not hypotheses:
        logger.warning("no id of %s has a %s reference: chrF/BLEU not computed", output, lang)
        return {"references_matched": 0}
    return corpus_scores(hypotheses, refs, lang)


def corpus_scores(hypotheses: list[str], references: list[str], lang: str) -> dict[str, float]:
    """Corpus chrF and BLEU (sacrebleu; BLEU tokenised for ``lang``'s script)."""
    import sacrebleu

    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=_bleu_tokenizer(lang)).score
    return {"chrf": round(chrf, 2), "bleu": round(bleu, 2), "references_matched": len(references)}


@dataclasses.dataclass
class _Work:
    """Translation work done in this run: totals for the metrics and the progress bar."""

    bar: tqdm
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time: comparable across runs on a busy machine
    tokens: int = 0
    sentences: int = 0

    def show_rate(self, since: float) -> None:
        """Put target tokens/s (including the shard running since ``since``) on the bar."""
        elapsed = self.seconds + time.perf_counter() - since
        self.bar.set_postfix_str(f"{self.tokens / max(elapsed, 1e-9):.0f} tok/s", refresh=False)


def _translate_shard(translator: CT2Translator, texts: list[str | None], lang: str,
                     work: _Work) -> list[str]:
    """Translate one shard; empty source rows give empty translations without decoding."""
    start, cpu = time.perf_counter(), time.process_time()
    out = [""] * len(texts)
    work.bar.update(sum(1 for text in texts if not (text and text.strip())))
    for n, (i, text, tokens) in enumerate(iter_translations(translator, texts, lang), 1):
        out[i] = text
        work.tokens += tokens
        work.bar.update(1)
        if n % _POSTFIX_EVERY == 0:
            work.show_rate(start)
    work.seconds += time.perf_counter() - start
    work.cpu_seconds += time.process_time() - cpu
    work.sentences += len(texts)
    return out


def translate_file(translator: CT2Translator, source: Path, source_column: str, lang: str,
                   output: Path, shard_size: int, fingerprint: dict[str, object]
                   ) -> dict[str, float]:
    """Translate ``source`` into ``output`` shard by shard (resumable; see module doc).

    Args:
        translator: The engine (already checked for ``lang``).
        source: Parquet table with ``id`` and ``source_column``.
        source_column: Column holding the text.
        lang: Target FLORES code (also the output column name).
        output: Final Parquet file.
        shard_size: Rows per shard.
        fingerprint: Everything that determines the output (decides which shards of an
            interrupted run may be kept).

    Returns:
        ``sentences`` and ``shards``, and under ``runtime`` what this run did: shards
        reused, sentences and target tokens translated, seconds, CPU seconds, rates.
    """
    id_type = pq.read_schema(source).field("id").type
    schema = pa.schema([("id", id_type), (lang, pa.string())])
    store = ShardStore(output.parent / f"{lang}.parts", fingerprint)
    store.open()
    total = pq.ParquetFile(source).metadata.num_rows
    shards = reused = 0
    with tqdm(total=total, unit="sent", desc=f"translate {lang}", dynamic_ncols=True) as bar:
        work = _Work(bar)
        for index, chunk in enumerate(iter_row_chunks(source, ["id", source_column], shard_size)):
            shards += 1
            ids = chunk["id"].combine_chunks()
            if store.verify(index, ids, schema):
                reused += 1
                bar.update(len(ids))
                continue
            texts = _translate_shard(translator, chunk[source_column].to_pylist(), lang, work)
            store.write(index, pa.table([ids, pa.array(texts, pa.string())], schema=schema))
    store.merge(shards, output, schema)
    return {"sentences": total, "shards": shards, "runtime": work_done(
        reused, work.sentences, work.tokens, work.seconds, work.cpu_seconds)}


def _check_settings(cfg: TranslateConfig) -> None:
    """One-line errors for settings that no library checks before work starts."""
    for key in ("shard_size", "ray_actor_threads"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"translate.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.ray_actors < 0:
        raise ValueError(f"translate.ray_actors must be >= 0 (0 = automatic), got "
                         f"{cfg.ray_actors}")


def run(cfg: TranslateConfig, langs: LangsConfig, lang: str) -> dict[str, float]:
    """Stage ``translate@<lang>``.

    With ``backend: ray`` the model is loaded here on CPU once, to check it (and the
    language) before anything is written or any Ray worker starts; the translation itself
    runs in :mod:`~pipeline.translate.ray_backend`'s actors.

    Args:
        cfg: The ``translate`` section.
        langs: The ``langs`` section (``langs.source`` names the source column).
        lang: Target FLORES code (the matrix item).

    Returns:
        Flat metrics: sentence and shard counts, ``chrf``/``bleu`` when ``references`` has
        a ``lang`` column, and under ``runtime`` the work of this run (:func:`work_done`;
        with ``ray``, also the number of actors and their summed translation time).

    Raises:
        FileNotFoundError: Missing source, references or model.
        ValueError: Unknown language, unsupported language pair, bad model or settings,
            ``backend: ray`` without Ray installed.
    """
    langs_mod.get(lang)
    _check_settings(cfg)
    source = Path(cfg.source)
    _source_schema(source, langs.source)
    distributed = cfg.backend == "ray"
    if distributed:
        from pipeline.translate import ray_backend

        ray_backend.import_ray()
    # The ray backend's driver only checks the model: on CPU, whatever the actors run on.
    translator = load_translator(
        cfg.model_dir, device="cpu" if distributed else cfg.device,
        compute_type=cfg.compute_type if cfg.device == "cpu" or not distributed else "auto",
        inter_threads=cfg.inter_threads, intra_threads=cfg.intra_threads, family=cfg.family,
        source_lang=langs.source, beam_size=cfg.beam_size, max_batch_tokens=cfg.max_batch_tokens,
        max_decoding_length=cfg.max_decoding_length,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size, device_index=cfg.device_index,
    )
    translator.check(lang)
    references = _load_references(cfg.references, lang)
    output = Path(cfg.output_dir) / f"{lang}.parquet"
    options = DecodingOptions(
        beam_size=cfg.beam_size, max_batch_tokens=cfg.max_batch_tokens,
        max_decoding_length=cfg.max_decoding_length, no_repeat_ngram_size=cfg.no_repeat_ngram_size)
    if distributed:
        max_decoding_length = translator.max_decoding_length
        del translator  # the driver does not translate: free the model before actors start
        metrics = ray_backend.translate_file(
            langs.source, lang, output, max_decoding_length, source=cfg.source,
            model_dir=cfg.model_dir, family=cfg.family, device=cfg.device,
            compute_type=cfg.compute_type, options=options, inter_threads=cfg.inter_threads,
            shard_size=cfg.shard_size, ray_actors=cfg.ray_actors,
            ray_actor_threads=cfg.ray_actor_threads)
    else:
        metrics = translate_file(
            translator, source, langs.source, lang, output, cfg.shard_size, fingerprint(
                source=cfg.source, model_dir=cfg.model_dir, source_column=langs.source,
                lang=lang, device=translator.device, compute_type=translator.compute_type,
                options=options, max_decoding_length=translator.max_decoding_length,
                shard_size=cfg.shard_size))
    work = metrics["runtime"]
    logger.info("%s: %d sentences (%d shards, %d reused) in %.1f s, %.1f sent/s, %.0f tok/s",
                output, metrics["sentences"], metrics["shards"], work["shards_reused"],
                work["translate_seconds"], work["sentences_per_s"], work["target_tokens_per_s"])
    if references:
        metrics.update(score(output, lang, references))
    return metrics

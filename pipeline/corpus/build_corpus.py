"""The ``build_corpus`` stage: join, filter, split, and derive the En-X and human corpora.

Inputs: the English source table (``id`` + ``langs.source`` column) and one translation table
per pool language, ``<translated_dir>/<lang>.parquet`` (``id`` + ``<lang>``), whose ids must
be exactly the source ids. A row is kept only when every one of its translations passes
every filter of :mod:`pipeline.corpus.filters` (a multi-way row must be complete).

Outputs in ``output_dir`` (texts are never modified):

- ``multiway.parquet``: ``id``, ``split`` (``train``/``dev``), ``eng_Latn``, then one column
  per pool language in ``langs.pool`` order.
- ``enx.parquet``: the English-centric baseline of the same size: ``id``, ``split``,
  ``lang`` (FLORES code of X, drawn from the pool, balanced within each split),
  ``eng_Latn`` and ``x`` (the translation into ``lang``); one row per multi-way row, so both
  corpora hold the same English sentences.
- ``human.parquet``: only when ``references`` is set and has every pool language: the
  multi-way rows (same ``id``, ``split``, English) with the human translations instead of
  the machine ones, each pool language from its edition in ``second_editions`` when it has
  one there (not the edition the tests use), else from ``references``. Rows without a
  reference (or with an empty one) are left out and counted.
- ``english.parquet``: only when ``second_editions`` has the source language: the multi-way
  rows' ``id``, ``split`` and English with ``<source>_second``, the same verse in a second
  English edition (a human paraphrase: the English-only control).
- ``stats.json``: row counts, rows dropped by first failing filter and by language,
  per-(language, filter) failure counts, mean characters per language, En-X language counts.
- ``meta.json``: resolved config, package versions.

The build streams (:mod:`pipeline.corpus.stream`): the source and every translation are read
in aligned batches of :data:`~pipeline.corpus.stream.BATCH_ROWS` rows, filtered batch by
batch and written row group by row group, so memory does not grow with the corpus beyond a
few bytes per row (id hashes, the En-X draw). A translation file in another order than the
source (the translate stage keeps the source order) is first put into source order through
temporary files in the system temp directory (about the file's size); the human references
likewise into corpus order. Passes: filter and write ``multiway.parquet``; read it back for
``enx.parquet`` (the En-X draw needs the split sizes first); read it back with the
references for ``human.parquet``, and again for ``english.parquet``. The Parquet files have
row groups of :data:`~pipeline.corpus.stream.ROW_GROUP_ROWS` rows; a corpus of at most that
many rows (the default profile's) is byte for byte what writing the whole table at once gives.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import langs as langs_mod
from pipeline.config import LangsConfig, to_dict
from pipeline.corpus import langid
from pipeline.corpus.filters import REASONS, add_stats, empty_stats, filter_batch
from pipeline.corpus.split import SPLITS, assign_split, enx_draws
from pipeline.corpus.stream import (
    HashIndex,
    Rows,
    TableWriter,
    duplicates,
    id_hashes,
    iter_tables,
    reordered,
    smallest_ids,
)
from pipeline.io import atomic_path, open_parquet, write_json
from pipeline.runtime import write_meta


@dataclasses.dataclass(frozen=True)
class BuildCorpusConfig:
    """``build_corpus``: join translations into the multi-way corpus, filter, split, sample En-X."""

    source: str = "data/source/eng_Latn.parquet"  # Source table from ``prepare_source``.
    translated_dir: str = "data/translated"  # Directory of ``<lang>.parquet`` from ``translate``.
    # Human translations (``id`` + language columns) for the ``human`` corpus; ``None`` skips it.
    references: str | None = "data/seed/bible_source.parquet"
    # Human translations from other editions than ``references``' (``id`` + the languages that have
    # one): the ``human`` corpus takes a pool language from here when it has one (so it does not
    # train on the test editions), and the source language's second edition pairs with the source
    # in the ``english`` corpus. ``None``: neither.
    second_editions: str | None = "data/seed/bible_source_second.parquet"
    # Drop a row when a translation is shorter than this × the source (in characters, divided by the
    # script's factor in ``pipeline.corpus.filters.LENGTH_FACTORS``: Korean 0.45, Chinese 0.3, ...).
    min_length_ratio: float = 0.3
    max_length_ratio: float = 3.0  # ... or longer than this × the source.
    # Drop when a translation shares this fraction of its word bigrams with the source (untranslated
    # copy).
    max_copy_ratio: float = 0.5
    # Drop when any n-gram (n ≤ 4) of words (of characters for Han, Japanese, Thai) repeats more
    # than this many times in a row (decoder loop).
    max_repeat: int = 4
    # Drop when fewer than this fraction of letters are in the language's script.
    min_script_fraction: float = 0.5
    # Drop when a language identifier ranks another language first: ``pool`` (candidates: the source
    # and the pool), ``all`` (every language the identifier knows) or ``none``
    # (``pipeline.corpus.langid``).
    language_id: str = "pool"
    # The language filter flags a text only when the language it finds leads the runner-up by this
    # much (lingua's minimum relative distance, 0 to 0.99; closer calls are not flagged).
    language_id_margin: float = 0.5
    dev_fraction: float = 0.05  # Fraction of rows (by id) held out as the dev split.
    seed: int = 13  # Seed of the split and of the En-X language draw.
    # Where ``multiway.parquet``, ``enx.parquet``, ``human.parquet``, ``stats.json`` and
    # ``meta.json`` go (schemas in ``pipeline.corpus.build_corpus``).
    output_dir: str = "data/corpus"

logger = logging.getLogger(__name__)

# What to look at when a filter removed everything (named in the "no rows left" error).
_FIX = {
    "empty": "the translations are empty; check the translate stage",
    "repeat": "raise build_corpus.max_repeat or check the translations",
    "copy": "raise build_corpus.max_copy_ratio or check that the model translates",
    "script": "lower build_corpus.min_script_fraction or check the target-language tags",
    "language": "check the target-language tags, or set build_corpus.language_id: none",
    "too_short": "lower build_corpus.min_length_ratio or check the translations",
    "too_long": "raise build_corpus.max_length_ratio or check the translations",
}


def _sample(values: set[str], k: int = 3) -> str:
    return ", ".join(repr(v) for v in sorted(values)[:k])


def _check_unique(parquet: pq.ParquetFile, hashes: np.ndarray, path: str | Path) -> None:
    dup = duplicates(parquet, hashes)
    if dup:
        raise ValueError(
            f"{path} has {sum(dup.values()) - len(dup)} duplicated id(s) ({_sample(set(dup))}); "
            "ids must be unique"
        )


def _same_ids(a: pq.ParquetFile, b: pq.ParquetFile) -> bool:
    """True when two files hold the same ids in the same order (read in pieces)."""
    if a.metadata.num_rows != b.metadata.num_rows:
        return False
    rows = Rows(iter_tables(a, ["id"]))
    return all(rows.take(t.num_rows)["id"].equals(t["id"]) for t in iter_tables(b, ["id"]))


def _no_null(array: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.fill_null(array, pa.scalar("", array.type))  # a missing text is an empty one


class _Source:
    """The source table, checked: ``id`` unique, its hashes kept for the translations' check.

    Args:
        path: Source Parquet from ``prepare_source``.
        column: Source language column.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A column is missing or an id is duplicated.
    """

    def __init__(self, path: str | Path, column: str) -> None:
        self.path, self.column = Path(path), column
        self.parquet = open_parquet(path, ["id", column])
        self.rows = self.parquet.metadata.num_rows
        self.hashes = id_hashes(self.parquet)
        _check_unique(self.parquet, self.hashes, path)
        self._index: HashIndex | None = None

    def index(self) -> HashIndex:
        """Lookup of source positions by id hash (built on first use: 16 bytes a row)."""
        if self._index is None:
            self._index = HashIndex(self.hashes)
        return self._index


def translation_rows(translated_dir: str | Path, lang: str, src: _Source,
                     tmp_dir: str | Path) -> Iterator[pa.Table]:
    """Check one language's translations and stream them in source order.

    Args:
        translated_dir: Directory holding ``<lang>.parquet``.
        lang: FLORES code of the language.
        src: The source.
        tmp_dir: Scratch directory for putting a file in another order into source order.

    Returns:
        Tables of ``id`` and ``lang`` (nulls kept) covering the source rows in order.

    Raises:
        FileNotFoundError: The translation file is missing (names the stage to run).
        ValueError: Its ids are not exactly the source ids, or a column is missing.
    """
    path = Path(translated_dir) / f"{lang}.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"translation file {path} is missing; run `dvc repro translate@{lang}`"
        )
    parquet = open_parquet(path, ["id", lang])
    if _same_ids(src.parquet, parquet):  # what the translate stage writes: nothing to move
        return iter_tables(parquet, ["id", lang])
    hashes = id_hashes(parquet)
    _check_unique(parquet, hashes, path)
    pos = src.index().positions(hashes)
    extra = pos < 0
    missing = np.ones(src.rows, dtype=bool)
    missing[pos[~extra]] = False
    if extra.any() or missing.any():
        raise ValueError(
            f"{path} ids do not match the source: {int(missing.sum())} source id(s) missing "
            f"({_sample(set(smallest_ids(src.parquet, missing)))}), {int(extra.sum())} unknown "
            f"id(s) ({_sample(set(smallest_ids(parquet, extra)))}); "
            f"re-run `dvc repro translate@{lang}` on the current source"
        )
    return reordered(parquet, ["id", lang], pos, src.rows, tmp_dir)


def _aligned(table: pa.Table, ids: pa.ChunkedArray | pa.Array, what: str) -> pa.Table:
    # Rows were matched by 64-bit id hash; unequal ids here can only be a hash collision.
    other = table["id"]
    if pc.any(pc.not_equal(other, ids)).as_py():
        raise RuntimeError(f"{what}: ids out of step with the source (an id hash collision?)")
    return table


def _no_rows_error(n: int, stats: dict[str, Any]) -> ValueError:
    reason = max(REASONS, key=lambda r: stats["dropped_by_reason"][r])
    lang = max(stats["failures"], key=lambda lg: stats["failures"][lg][reason])
    return ValueError(
        f"no rows left after filtering {n} rows: the '{reason}' filter removed the most "
        f"({stats['dropped_by_reason'][reason]} rows, mostly in {lang}); {_FIX[reason]}"
    )


def _write_multiway(src: _Source, rows: Mapping[str, Rows], cfg: BuildCorpusConfig,
                    path: Path) -> dict[str, Any]:
    """Pass 1: join, filter and split batch by batch into ``path``; the counts for stats."""
    columns = ["id", "split", src.column, *rows]
    writer = TableWriter(path, columns)
    stats = empty_stats(list(rows))
    splits: Counter[str] = Counter()
    chars = dict.fromkeys(columns[2:], 0)
    detector = langid.detector(cfg.language_id, (src.column, *rows), cfg.language_id_margin)
    with tqdm(total=src.rows, desc="filter", unit="sent") as bar:
        for batch in iter_tables(src.parquet, ["id", src.column]):
            sources = _no_null(batch[src.column])
            texts = {}
            for lang, lang_rows in rows.items():
                table = _aligned(lang_rows.take(batch.num_rows), batch["id"], lang)
                texts[lang] = _no_null(table[lang])
            keep, part = filter_batch(
                sources, texts, detector, max_repeat=cfg.max_repeat,
                max_copy_ratio=cfg.max_copy_ratio, min_script_fraction=cfg.min_script_fraction,
                min_length_ratio=cfg.min_length_ratio, max_length_ratio=cfg.max_length_ratio)
            add_stats(stats, part)
            kept = pa.table({"id": batch["id"], src.column: sources, **texts}).filter(keep)
            # A row's split depends only on its id, so it is the same whichever rows survive.
            split = assign_split(kept["id"].to_pylist(), cfg.dev_fraction, cfg.seed)
            splits.update(split)
            writer.write(kept.append_column("split", pa.array(split, pa.large_string())))
            for c in chars:
                chars[c] += int(pc.sum(pc.utf8_length(kept[c])).as_py() or 0)
            bar.update(batch.num_rows)
    if not writer.rows:
        raise _no_rows_error(src.rows, stats)
    writer.close()
    return {"stats": stats, "rows": writer.rows, "splits": splits,
            "mean_chars": {c: v / writer.rows for c, v in chars.items()}}


def _write_enx(multiway: Path, source: str, pool: tuple[str, ...], splits: Mapping[str, int],
               seed: int, path: Path) -> dict[str, int]:
    """Pass 2: the En-X baseline from the multi-way file (as :func:`sample_enx` draws it)."""
    draws = enx_draws(splits, len(pool), seed)
    done = dict.fromkeys(SPLITS, 0)  # rows of each split already given a language
    codes = pa.array(pool, pa.large_string())
    writer = TableWriter(path, ["id", "split", "lang", source, "x"])
    for table in iter_tables(open_parquet(multiway), ["id", "split", source, *pool]):
        split = np.asarray(table["split"].to_pylist(), dtype=object)
        col = np.zeros(table.num_rows, dtype=np.int64)
        for s in SPLITS:
            mask = split == s
            col[mask] = draws[s][done[s]: done[s] + int(mask.sum())]
            done[s] += int(mask.sum())
        index = pa.array(col)
        x = pc.choose(index, *(table[lang].combine_chunks() for lang in pool))
        writer.write(table.select(["id", "split", source])
                     .append_column("lang", codes.take(index)).append_column("x", x))
    writer.close()
    counts = np.bincount(np.concatenate(list(draws.values())), minlength=len(pool))
    return {lang: int(c) for lang, c in zip(pool, counts, strict=True)}


def _references(references: str | Path, pool: tuple[str, ...],
                key: str = "references") -> pq.ParquetFile | None:
    """Open and check a table of human translations; ``None`` when a pool language lacks one.

    Raises:
        FileNotFoundError: ``references`` does not exist (``key`` names its setting).
        ValueError: ``references`` has no ``id`` column or duplicated ids.
    """
    path = Path(references)
    if not path.is_file():
        raise FileNotFoundError(
            f"build_corpus.{key} {path} does not exist; fix the path or set it to null "
            "to skip the corpora it makes"
        )
    refs = open_parquet(path)
    names = refs.schema_arrow.names
    absent = [lang for lang in pool if lang not in names]
    if absent:
        logger.warning("no human corpus: %s lacks pool language(s) %s", path, absent)
        return None
    if "id" not in names:
        raise ValueError(f"{path} has no 'id' column; it has {names}")
    _check_unique(refs, id_hashes(refs), path)
    return refs


def _complete(texts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    # The in-memory build's test, through pandas (str.strip() of its string dtype), per batch.
    return (texts.to_pandas().fillna("").str.strip() != "").to_numpy(dtype=bool)


def _write_references(multiway: Path, source: str, parts: list[tuple[pq.ParquetFile, Path,
                      dict[str, str]]], order: list[str], tmp_dir: str | Path, path: Path) -> int:
    """The multi-way rows with human texts (from reference tables) in place of the MT ones.

    Args:
        multiway: The filtered multi-way corpus (``id``, ``split``, ``source``, ...).
        source: Source language column (kept from ``multiway``: the original English).
        parts: ``(table, its path, {output column: its column})``: which reference table
            gives which output column.
        order: The output's text columns after ``id``, ``split`` and ``source``.
        tmp_dir: Scratch directory for putting a reference table into corpus order.
        path: Output file: ``id``, ``split``, ``source``, then ``order``; rows in the corpus's
            order, restricted to ids whose references are all present and non-empty.

    Returns:
        Rows written.
    """
    corpus = open_parquet(multiway)
    total = corpus.metadata.num_rows
    readers = []
    for refs, _, columns in parts:
        wanted = ["id", *dict.fromkeys(columns.values())]
        if _same_ids(corpus, refs):
            readers.append(Rows(iter_tables(refs, wanted)))
        else:
            pos = HashIndex(id_hashes(corpus)).positions(id_hashes(refs))
            readers.append(Rows(reordered(refs, wanted, pos, total, tmp_dir)))
    writer = TableWriter(path, ["id", "split", source, *order])
    for table in iter_tables(corpus, ["id", "split", source]):
        texts = {}
        for reader, (_, refs_path, columns) in zip(readers, parts, strict=True):
            ref = _aligned(reader.take(table.num_rows), table["id"], str(refs_path))
            texts.update({out: ref[column] for out, column in columns.items()})
        complete = np.ones(table.num_rows, dtype=bool)
        for column in order:  # rows without a reference are null here, hence incomplete
            complete &= _complete(texts[column])
        for column in order:
            table = table.append_column(column, texts[column])
        writer.write(table.filter(complete))
    writer.close()
    if writer.rows < total:
        logger.warning("%s: %d of %d rows lack a (non-empty) reference in %s", path.name,
                       total - writer.rows, total, ", ".join(str(p) for _, p, _ in parts))
    return writer.rows


def run(cfg: BuildCorpusConfig, langs: LangsConfig) -> dict[str, Any]:
    """Build the multi-way, En-X and human corpora and their statistics.

    Args:
        cfg: Stage config.
        langs: Source language and target pool.

    Returns:
        Flat metrics: ``rows_in``, ``rows_out``, ``rows_train``, ``rows_dev``, ``dropped``,
        ``dropped_<filter>`` (by first failing filter), ``dropped_<lang>`` (rows where the
        language fails), ``enx_rows``, ``human_rows`` (0 when not built).

    Raises:
        FileNotFoundError: The source, a translation file or the references are missing.
        ValueError: Bad language codes, ids not matching the source, no rows left.
    """
    source = langs_mod.get(langs.source).code
    pool = langs_mod.validate(langs.pool)
    if not pool:
        raise ValueError("langs.pool is empty; list the target languages, e.g. [deu_Latn]")
    if source in pool:
        raise ValueError(f"langs.pool contains the source language {source}; remove it")
    out = Path(cfg.output_dir)

    src = _Source(cfg.source, source)
    assign_split([], cfg.dev_fraction, cfg.seed)  # a bad dev_fraction fails before the reads
    with tempfile.TemporaryDirectory(prefix="build_corpus-") as tmp, ExitStack() as outputs:
        rows = {lang: Rows(translation_rows(cfg.translated_dir, lang, src, tmp)) for lang in pool}
        # Temporary files renamed onto the outputs only when all of them are complete.
        multiway = outputs.enter_context(atomic_path(out / "multiway.parquet"))
        built = _write_multiway(src, rows, cfg, multiway)
        enx_langs = _write_enx(multiway, source, pool, built["splits"], cfg.seed,
                               outputs.enter_context(atomic_path(out / "enx.parquet")))
        refs = _references(cfg.references, pool) if cfg.references else None
        second = (_references(cfg.second_editions, (), "second_editions")
                  if cfg.second_editions else None)
        seconds = [c for c in second.schema_arrow.names if c != "id"] if second else []
        human_rows = english_rows = None
        if refs is not None:
            parts = [(refs, Path(cfg.references), {c: c for c in pool if c not in seconds})]
            if second is not None:
                parts.append((second, Path(cfg.second_editions),
                              {c: c for c in pool if c in seconds}))
            human_rows = _write_references(
                multiway, source, parts, list(pool), tmp,
                outputs.enter_context(atomic_path(out / "human.parquet")))
        if source in seconds:
            paraphrase = f"{source}_second"
            english_rows = _write_references(
                multiway, source, [(second, Path(cfg.second_editions), {paraphrase: source})],
                [paraphrase], tmp, outputs.enter_context(atomic_path(out / "english.parquet")))
        for name, rows_written in (("human", human_rows), ("english", english_rows)):
            if rows_written is None and (out / f"{name}.parquet").exists():
                # A table from an earlier run with references would otherwise look current.
                (out / f"{name}.parquet").unlink()

    rows_out = built["rows"]
    stats = built["stats"]
    out_rows = {
        "in": src.rows, "out": rows_out,
        **{s: int(built["splits"].get(s, 0)) for s in SPLITS},
        "enx": rows_out, "human": human_rows or 0, "english": english_rows or 0,
    }
    stats = {
        "rows": out_rows,
        **stats,
        "mean_chars": built["mean_chars"],
        "enx_langs": enx_langs,
    }
    write_json(stats, out / "stats.json")
    write_meta(out / "meta.json", to_dict(cfg), langs=to_dict(langs))
    logger.info(
        "multi-way corpus: kept %d of %d rows (%d train, %d dev); dropped by filter %s",
        out_rows["out"], out_rows["in"], out_rows["train"], out_rows["dev"],
        stats["dropped_by_reason"],
    )
    return {
        "rows_in": out_rows["in"],
        "rows_out": out_rows["out"],
        "rows_train": out_rows["train"],
        "rows_dev": out_rows["dev"],
        "dropped": out_rows["in"] - out_rows["out"],
        **{f"dropped_{r}": c for r, c in stats["dropped_by_reason"].items()},
        **{f"dropped_{lang}": c for lang, c in stats["dropped_by_lang"].items()},
        "enx_rows": out_rows["enx"],
        "human_rows": out_rows["human"],
        "english_rows": out_rows["english"],
    }

"""``prepare_source``: read English text, clean it, deduplicate it, bound its length.

Inputs: a ``.txt`` file (one sentence a line), a ``.jsonl`` file (one JSON object a line),
a ``.parquet`` file, or a Hugging Face ``datasets`` source (``format: hf``). The ``hf`` path
calls ``datasets.load_dataset(input, hf_config, split=hf_split)``, which works offline for a
local directory of data files (``train.jsonl``, ``*.parquet``, ``*.csv``, ...) and, with hub
access, for a hub id; a directory written by ``Dataset.save_to_disk`` is read with
``datasets.load_from_disk`` instead (``load_dataset`` refuses those).

Every input row either lands in the output or is counted under one drop reason
(:data:`DROP_REASONS`); malformed lines (:data:`MALFORMED`) fail the stage past
``max_bad_fraction`` of the lines read. Rows are streamed from the input to a Parquet
writer in batches, so memory holds one batch plus a 16-byte digest per kept line (and the
ids, when the input brings its own and they must be checked for uniqueness).

Output: Parquet at ``cfg.output`` with ``id`` (str) and one text column named by the source
language's FLORES code. Ids are the input's own (``id_column``) when present, else the
0-based index of the row in the input, so a line keeps its id when earlier lines are dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import langs as langmod
from pipeline.config import LangsConfig
from pipeline.io import atomic_path
from pipeline.runtime import unit_hash
from pipeline.sources.text import clean_line


@dataclasses.dataclass(frozen=True)
class PrepareSourceConfig:
    """``prepare_source``: read, normalise, deduplicate and length-filter English text."""

    # A ``.txt`` (one sentence a line), ``.jsonl`` or ``.parquet`` path, or, with ``format: hf``, a
    # Hugging Face ``datasets`` id, a local directory of data files or a ``save_to_disk`` directory.
    input: str = "data/seed/bible_source.parquet"
    # ``auto`` (by file suffix), ``txt``, ``jsonl``, ``parquet`` or ``hf``.
    format: Literal["auto", "txt", "jsonl", "parquet", "hf"] = "auto"
    column: str = "eng_Latn"  # Text field/column (jsonl, parquet, hf).
    # Column holding unique row ids (kept as str); ``None``, or a column the input lacks, gives each
    # row its 0-based index in the input.
    id_column: str | None = "id"
    hf_config: str | None = None  # ``datasets`` config name (``format: hf``).
    hf_split: str = "train"  # ``datasets`` split (``format: hf``).
    # Unicode normal form applied to every line.
    normalization: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFKC"
    min_chars: int = 3  # Shorter lines are dropped (after clean-up).
    max_chars: int = 1000  # Longer lines are dropped.
    # The stage fails when a larger share of the lines read is malformed (not UTF-8, or in a
    # ``.jsonl`` not a JSON object); below it they are dropped and counted.
    max_bad_fraction: float = 0.01
    # Stop once this many lines are kept (after filtering); ``None`` keeps all.
    limit: int | None = None
    # Keep a seeded sample of about this share of the rows (1: all): a row is in it when the hash of
    # ``sample_seed`` and its id falls below the share, so a row's fate depends on its id alone and
    # a larger share keeps every row of a smaller one. Rows left out count as
    # ``dropped_not_sampled``.
    sample_fraction: float = 0.4
    sample_seed: int = 13  # Seed of the sample.
    # Output Parquet (``id`` and one column named by the source language).
    output: str = "data/source/eng_Latn.parquet"
    # The path DVC watches to rerun the stage when the input changes: the input itself when it is
    # local (checked); for a hub dataset, whose identity is already in the params (``input``,
    # ``hf_config``, ``hf_split``), any stable local file, e.g. the profile that names it (DVC needs
    # a path that exists).
    dependency: str = "data/seed/bible_source.parquet"

logger = logging.getLogger(__name__)

#: Every reason a row can be dropped for; each one is a ``dropped_<reason>`` metric.
DROP_REASONS = (
    "not_sampled",  # outside the seeded sample_fraction sample (checked before the text)
    "invalid_utf8",  # the line's bytes are not UTF-8 (or JSON decoded to lone surrogates)
    "invalid_json",  # a .jsonl line that is not a JSON object
    "missing_text",  # the text field is absent or null
    "not_text",  # the text field holds a number, list, ...
    "empty",  # nothing left after clean-up
    "too_short",  # fewer than min_chars characters
    "too_long",  # more than max_chars characters
    "duplicate",  # exactly equal (after clean-up) to a line kept earlier
)
#: Drop reasons that mean the input is broken; ``max_bad_fraction`` bounds their share.
MALFORMED = {"invalid_utf8": "not UTF-8", "invalid_json": "not a JSON object"}

_SUFFIXES = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_BATCH_ROWS = 10_000

# A row as the readers hand it over: (id, raw text or None, drop reason or None). The id is
# an int when it is the row's index in the input, a str when the input brought its own.
Row = tuple["int | str", "str | None", "str | None"]


def resolve_format(cfg: PrepareSourceConfig) -> str:
    """Decide how to read ``cfg.input``.

    Args:
        cfg: The stage config.

    Returns:
        ``txt``, ``jsonl``, ``parquet`` or ``hf``.

    Raises:
        FileNotFoundError: A file format was asked for (or ``auto``) and the file is missing.
        ValueError: The input is a directory, or ``auto`` cannot tell the format by suffix.
    """
    if cfg.format == "hf":
        return "hf"
    path = Path(cfg.input)
    if not path.exists():
        raise FileNotFoundError(
            f"input file not found: {path}; fix prepare_source.input "
            "(for a Hugging Face dataset id or directory set format: hf)"
        )
    if path.is_dir():
        raise ValueError(
            f"input {path} is a directory; point input at a .txt/.jsonl/.parquet file, "
            "or set format: hf to read it with datasets"
        )
    if cfg.format != "auto":
        return cfg.format
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path} from its suffix '{path.suffix}'; "
            f"rename it to {', '.join(_SUFFIXES)} or set format to txt, jsonl, parquet or hf"
        )
    return fmt


def _check_config(cfg: PrepareSourceConfig) -> None:
    if cfg.min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {cfg.min_chars}")
    if cfg.max_chars < max(cfg.min_chars, 1):
        raise ValueError(
            f"max_chars ({cfg.max_chars}) must be >= 1 and >= min_chars ({cfg.min_chars})"
        )
    if cfg.limit is not None and cfg.limit < 1:
        raise ValueError(f"limit must be a positive number of lines or null, got {cfg.limit}")
    if not 0 < cfg.sample_fraction <= 1:
        raise ValueError(f"sample_fraction must be in (0, 1] (1 keeps every row), got "
                         f"{cfg.sample_fraction}")
    if not 0 <= cfg.max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be between 0 and 1, got {cfg.max_bad_fraction}")
    local = Path(cfg.input)
    if local.exists() and local.resolve() != Path(cfg.dependency).resolve():
        raise ValueError(
            f"prepare_source.dependency is {cfg.dependency!r} but the input is the local path "
            f"{cfg.input!r}: set dependency: {cfg.input} so that DVC reruns the stage when "
            f"the input changes"
        )


def _read_txt(path: Path) -> Iterator[Row]:
    with open(path, "rb") as fh:
        if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise ValueError(
                f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark); convert it to "
                f"UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8 {path}"
            )
        fh.seek(0)
        # Binary lines decoded one by one: a bad byte costs one line, not the whole file.
        for index, raw in enumerate(fh):
            try:
                yield index, raw.decode("utf-8"), None
            except UnicodeDecodeError:
                yield index, None, "invalid_utf8"


def _read_jsonl(path: Path, column: str, id_column: str | None) -> Iterator[Row]:
    use_ids: bool | None = None  # decided by the first valid record
    first_keys: list[str] = []
    column_seen = False
    with open(path, "rb") as fh:
        for index, raw in enumerate(fh):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield index, None, "invalid_utf8"
                continue
            if not line.strip():
                yield index, None, "empty"
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                yield index, None, "invalid_json"
                continue
            if use_ids is None:
                first_keys = list(record)
                use_ids = id_column is not None and id_column in record
                if not use_ids:
                    logger.info("%s: no '%s' field in the first record; ids are line numbers",
                                path, id_column)
            row_id: int | str = index
            if use_ids:
                if record.get(id_column) is None:
                    raise ValueError(
                        f"{path}:{index + 1}: record has no '{id_column}' value while earlier "
                        "records have one; give every record an id or set id_column: null"
                    )
                row_id = str(record[id_column])
            value = record.get(column)
            column_seen = column_seen or column in record
            if value is None:
                yield row_id, None, "missing_text"
            elif not isinstance(value, str):
                yield row_id, None, "not_text"
            else:
                yield row_id, value, None
    if use_ids is not None and not column_seen:
        raise ValueError(
            f"{path}: no record has the field '{column}' (the first has {first_keys}); "
            "set prepare_source.column to the text field"
        )


def _text_columns(schema: pa.Schema, column: str, id_column: str | None,
                  where: str) -> list[str]:
    """Check the text (and id) columns of an Arrow schema; return the columns to read."""
    if column not in schema.names:
        raise ValueError(
            f"{where} has no column '{column}'; it has {schema.names}; "
            "set prepare_source.column to the text column"
        )
    tp = schema.field(column).type
    if not (pa.types.is_string(tp) or pa.types.is_large_string(tp)
            or pa.types.is_string_view(tp)):
        raise ValueError(
            f"{where}: column '{column}' holds {tp}, not text; "
            "set prepare_source.column to a string column"
        )
    if id_column is not None and id_column in schema.names:
        return [column, id_column]
    if id_column is not None:
        logger.info("%s has no id column '%s'; ids are row numbers", where, id_column)
    return [column]


def _arrow_rows(batches: Iterable[pa.RecordBatch | pa.Table], columns: list[str],
                where: str) -> Iterator[Row]:
    index = 0
    id_column = columns[1] if len(columns) > 1 else None
    for batch in batches:
        texts = batch.column(columns[0]).to_pylist()
        ids = None
        if id_column is not None:
            try:
                ids = batch.column(id_column).cast(pa.string()).to_pylist()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ValueError(
                    f"{where}: id column '{id_column}' of type "
                    f"{batch.schema.field(id_column).type} cannot be read as text; "
                    "use a string or integer id column or set id_column: null"
                ) from None
        for offset, text in enumerate(texts):
            row_id = index if ids is None else ids[offset]
            if row_id is None:
                raise ValueError(
                    f"{where}: row {index} has no value in id column '{id_column}'; "
                    "fill it or set id_column: null"
                )
            yield row_id, text, None if text is not None else "missing_text"
            index += 1


def _read_parquet(path: Path, column: str, id_column: str | None) -> tuple[Iterator[Row], int]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None
    columns = _text_columns(pf.schema_arrow, column, id_column, str(path))
    batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
    return _arrow_rows(batches, columns, str(path)), pf.metadata.num_rows


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` was written by ``Dataset(Dict).save_to_disk``."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _load_hf(cfg: PrepareSourceConfig) -> Any:
    import datasets

    where = f"Hugging Face dataset '{cfg.input}' (config {cfg.hf_config}, split {cfg.hf_split})"
    try:
        if _is_saved_dataset(Path(cfg.input)):
            ds = datasets.load_from_disk(cfg.input)
            if isinstance(ds, datasets.DatasetDict):
                if cfg.hf_split not in ds:
                    raise ValueError(f'Unknown split "{cfg.hf_split}"; it has {list(ds)}')
                ds = ds[cfg.hf_split]
            return ds
        return datasets.load_dataset(cfg.input, cfg.hf_config, split=cfg.hf_split)
    # datasets raises anything from ConnectionError to its own hub errors; all mean the same
    # thing to the user, and the first line of the original message says which.
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise ValueError(
            f"could not load {where}: {reason}. If the hub/network is unreachable, pass a "
            "local file instead (format txt, jsonl or parquet) or a local directory of "
            "data files with format: hf"
        ) from exc


def _read_hf(cfg: PrepareSourceConfig) -> tuple[Iterator[Row], int]:
    ds = _load_hf(cfg)
    where = f"Hugging Face dataset '{cfg.input}'"
    columns = _text_columns(ds.features.arrow_schema, cfg.column, cfg.id_column, where)
    batches = ds.select_columns(columns).with_format("arrow").iter(batch_size=_BATCH_ROWS)
    return _arrow_rows(batches, columns, where), len(ds)


def read_rows(cfg: PrepareSourceConfig) -> tuple[Iterator[Row], int | None]:
    """Open the configured input as a stream of rows.

    Args:
        cfg: The stage config.

    Returns:
        An iterator of ``(id, raw text or None, drop reason or None)`` (the id is the row's
        0-based index as an int, or the input's own id as a str) and the number of
        rows when the format knows it up front (Parquet, datasets), else ``None``.

    Raises:
        FileNotFoundError: The input file does not exist.
        ValueError: The input cannot be read or lacks the configured text column.
    """
    fmt = resolve_format(cfg)
    path = Path(cfg.input)
    if fmt == "txt":
        return _read_txt(path), None
    if fmt == "jsonl":
        return _read_jsonl(path, cfg.column, cfg.id_column), None
    if fmt == "parquet":
        return _read_parquet(path, cfg.column, cfg.id_column)
    return _read_hf(cfg)


def run(cfg: PrepareSourceConfig, langs: LangsConfig) -> dict[str, Any]:
    """Run ``prepare_source``: write the cleaned English source table.

    Args:
        cfg: The stage config.
        langs: The shared language config; ``langs.source`` names the text column.

    Returns:
        Flat metrics: ``lines_read``, ``lines_kept``, ``dropped_<reason>`` for every reason
        in :data:`DROP_REASONS`, ``dropped_total``, ``control_chars_stripped`` (kept or not,
        lines that had NUL or other control characters removed), ``chars_mean`` and
        ``chars_max`` of the kept lines.

    Raises:
        FileNotFoundError: The input file does not exist.
        ValueError: Bad config values, an unreadable input, a missing column, duplicated
            ids, more malformed lines than ``max_bad_fraction`` allows, or no line
            surviving the filters. No output file is written then.
    """
    source = langmod.get(langs.source).code
    _check_config(cfg)
    if cfg.sample_fraction < 1:
        logger.warning("keeping a seeded sample of about %.0f%% of the rows "
                       "(prepare_source.sample_fraction %s; --sample-fraction 1 keeps them all)",
                       100 * cfg.sample_fraction, cfg.sample_fraction)
    rows, total = read_rows(cfg)
    counts = dict.fromkeys(DROP_REASONS, 0)
    read = kept = control = chars_sum = chars_max = 0
    first_bad: int | None = None  # 1-based row (= txt/jsonl line) of the first malformed one
    seen_text: set[bytes] = set()
    # Row numbers are unique by construction; the input's own ids (str) must be checked.
    seen_ids: set[str] = set()
    batch_ids: list[str] = []
    batch_texts: list[str] = []
    schema = pa.schema([("id", pa.string()), (source, pa.string())])

    with atomic_path(cfg.output) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for row_id, raw, reason in tqdm(rows, total=total, unit="line", desc="prepare_source"):
            read += 1
            if isinstance(row_id, str):
                if row_id in seen_ids:
                    raise ValueError(
                        f"duplicate id '{row_id}' in column '{cfg.id_column}' of {cfg.input}; "
                        "ids must be unique (fix the input or set id_column: null)"
                    )
                seen_ids.add(row_id)
            if (reason is None and cfg.sample_fraction < 1
                    and unit_hash(cfg.sample_seed, str(row_id)) >= cfg.sample_fraction):
                reason = "not_sampled"
            if reason is None:
                text, had_control = clean_line(raw, cfg.normalization)
                control += had_control
                reason = _filter(text, cfg, seen_text)
            if reason is not None:
                counts[reason] += 1
                if reason in MALFORMED and first_bad is None:
                    first_bad = read
                continue
            kept += 1
            chars_sum += len(text)
            chars_max = max(chars_max, len(text))
            batch_ids.append(str(row_id))
            batch_texts.append(text)
            if len(batch_ids) >= _BATCH_ROWS:
                writer.write_batch(pa.record_batch([batch_ids, batch_texts], schema=schema))
                batch_ids, batch_texts = [], []
            if cfg.limit is not None and kept >= cfg.limit:
                logger.info("limit of %d lines reached after reading %d", cfg.limit, read)
                break
        if first_bad is not None:
            _check_malformed(cfg, counts, read, first_bad)
        if kept == 0:
            dropped = {k: v for k, v in counts.items() if v}
            raise ValueError(
                f"no line of {cfg.input} was kept ({read} read, dropped: {dropped or 'none'}); "
                "check input, column, min_chars and max_chars"
            )
        if batch_ids:
            writer.write_batch(pa.record_batch([batch_ids, batch_texts], schema=schema))

    metrics: dict[str, Any] = {"lines_read": read, "lines_kept": kept}
    metrics.update({f"dropped_{k}": v for k, v in counts.items()})
    metrics["dropped_total"] = sum(counts.values())
    metrics["control_chars_stripped"] = control
    metrics["chars_mean"] = round(chars_sum / kept, 2)
    metrics["chars_max"] = chars_max
    logger.info("kept %d of %d lines -> %s; dropped %s", kept, read, cfg.output,
                {k: v for k, v in counts.items() if v})
    return metrics


def _check_malformed(cfg: PrepareSourceConfig, counts: dict[str, int], read: int,
                     first_bad: int) -> None:
    """Fail when malformed lines exceed ``max_bad_fraction`` of those read; else warn once."""
    bad = sum(counts[reason] for reason in MALFORMED)
    what = ", ".join(f"{counts[r]} {label}" for r, label in MALFORMED.items() if counts[r])
    if bad > cfg.max_bad_fraction * read:
        raise ValueError(
            f"{cfg.input}: {bad} of {read} lines are malformed ({what}; the first is line "
            f"{first_bad}), more than prepare_source.max_bad_fraction "
            f"({cfg.max_bad_fraction:g}); fix the input (e.g. iconv -f <its encoding> -t "
            "UTF-8) or raise max_bad_fraction"
        )
    logger.warning("%s: dropped %d malformed lines (%s; the first is line %d), within "
                   "max_bad_fraction %g", cfg.input, bad, what, first_bad, cfg.max_bad_fraction)


def _filter(text: str, cfg: PrepareSourceConfig, seen: set[bytes]) -> str | None:
    """Drop reason for a cleaned line, or ``None`` to keep it (and remember it)."""
    if not text:
        return "empty"
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. "\ud800" escaped in JSON
        return "invalid_utf8"
    # A 16-byte digest per kept line instead of the line itself keeps memory flat.
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if digest in seen:
        return "duplicate"
    seen.add(digest)
    return None

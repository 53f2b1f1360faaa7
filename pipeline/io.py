"""Atomic file output: Parquet tables and JSON, written to a temp file then renamed.

A killed process therefore never leaves a half-written output behind: either the old file
(or none) or the complete new one is on disk. The temp file sits next to the output (the
rename must stay on one filesystem) and its name carries the writer's process id, so the
next write into that directory removes what a killed writer left (``kill -9`` skips every
clean-up), before DVC hashes the directory as an output or a dependency.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)


# ``.<name>.<pid>.<mkstemp's random part>.tmp``
_TEMP_NAME = re.compile(r"\..+\.(\d+)\.[a-z0-9_]+\.tmp")
# This process's temp files being written: a file with our pid that is not among them was
# left by an earlier process that had the same pid (pids repeat in fresh containers).
_OPEN: set[str] = set()


def _writer_alive(tmp: Path, pid: int) -> bool:
    """Whether process ``pid``, which created ``tmp``, may still be writing it."""
    if pid == os.getpid():
        return tmp.name in _OPEN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete the temp files of :func:`atomic_path` in ``directory`` whose writer is dead.

    Args:
        directory: Any directory; a missing one holds nothing.

    Returns:
        The files removed.
    """
    stale = []
    for tmp in Path(directory).glob(".*.tmp"):
        match = _TEMP_NAME.fullmatch(tmp.name)
        if match and not _writer_alive(tmp, int(match.group(1))):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    if stale:
        logger.info("removed %d temp file(s) of killed writers in %s", len(stale), directory)
    return stale


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the body raises; those of killed writers in the same
    directory are removed first (:func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _OPEN.add(tmp_path.name)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the output the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        _OPEN.discard(tmp_path.name)
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(df: pd.DataFrame | pa.Table, path: str | Path) -> None:
    """Write a DataFrame or Arrow table to Parquet atomically (no pandas index column)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def open_parquet(path: str | Path, columns: Iterable[str] = ()) -> pq.ParquetFile:
    """Open a Parquet file for streaming, after checking it exists and has ``columns``.

    Args:
        path: The file.
        columns: Columns that must be present.

    Returns:
        The open file.

    Raises:
        FileNotFoundError: The file does not exist (the message names the stage to run).
        ValueError: The file is not valid Parquet or lacks a requested column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that produces it first")
    try:
        # pre_buffer (pyarrow's default) reads every requested row group into memory ahead,
        # i.e. the whole file; buffered reads then load a column chunk a page at a time.
        parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None
    names = parquet.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {names}")
    return parquet


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file into a DataFrame, with the checks of :func:`open_parquet`."""
    open_parquet(path, columns or [])
    return pq.read_table(path, columns=columns).to_pandas()


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically, pretty-printed with sorted keys.

    Raises:
        ValueError: ``obj`` holds NaN or infinity, which JSON cannot represent (a result
            that does not exist is ``None``, with the count it is missing for).
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"cannot write {path}: {exc} (JSON has no NaN or infinity)") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def metrics_path(name: str, item: str | None = None, root: str | Path = "data",
                 kind: str = "metrics") -> Path:
    """``<root>/<kind>/<stage>[@<item>].json``: a stage's metrics or runtime file.

    ``data/metrics/`` holds the flat metrics DVC tracks; ``data/runtime/`` what varies from
    run to run (times, rates, memory, machine, date, git revision), untracked.
    """
    return Path(root) / kind / (f"{name}@{item}.json" if item else f"{name}.json")


def read_yaml_mapping(path: str | Path, missing: str, holds: str) -> dict[str, Any]:
    """A YAML file that holds a mapping (an empty file: ``{}``).

    Args:
        path: The file.
        missing: The message when it does not exist (what it is and how to fix that).
        holds: What the mapping maps, for the error on anything else (``suite keys to suites``).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not valid YAML, or not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must {holds}, got {type(data).__name__}")
    return data

"""Atomic file output: Parquet tables and JSON, written to a temp file then renamed.

A killed process therefore never leaves a half-written output behind: either the old file
(or none) or the complete new one is on disk.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the output the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_table(df: pd.DataFrame | pa.Table, path: str | Path) -> None:
    """Write a DataFrame or Arrow table to Parquet atomically (no pandas index column)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file into a DataFrame.

    Raises:
        FileNotFoundError: The file does not exist (the message names the stage to run).
        ValueError: The file is not valid Parquet or lacks a requested column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that produces it first")
    try:
        schema_names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path} is not a readable Parquet file: {exc}") from None
    missing = [c for c in columns or [] if c not in schema_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {schema_names}")
    return pq.read_table(path, columns=columns).to_pandas()


def write_json(obj: Any, path: str | Path) -> None:
    """Write JSON atomically, pretty-printed with sorted keys."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))

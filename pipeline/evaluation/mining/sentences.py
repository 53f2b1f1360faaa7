"""The miner's text input: one sentence a line, streamed, whitespace collapsed, repeats dropped."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.sources.text import collapse_whitespace


def _existing(path: str | Path) -> Path:
    """``path`` as a Path; ``FileNotFoundError`` if it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence file not found: {path}")
    return path


def iter_sentences(path: str | Path) -> Iterator[tuple[int, str]]:
    """Stream ``(line number, sentence)`` of a text file, whitespace collapsed.

    Blank lines and repeats (recognised by a 128-bit digest, not kept text) are skipped.
    Line numbers start at 1.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not valid UTF-8 (the message names the file and line).
    """
    path = _existing(path)
    seen: set[bytes] = set()
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                text = collapse_whitespace(line)
                if not text:
                    continue
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                yield lineno, text
    except UnicodeDecodeError as exc:
        # The text decoder fails on a whole read buffer; find the line by decoding each.
        raise ValueError(_bad_utf8(path, exc)) from None


def _bad_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return (f"{path}:{lineno}: not valid UTF-8 ({err.reason}: byte "
                        f"0x{raw[err.start]:02x} at column {err.start + 1})")
    return f"{path}: not valid UTF-8 ({exc.reason})"


def read_sentences(path: str | Path) -> list[str]:
    """The sentences :func:`iter_sentences` streams, as a list."""
    return [text for _, text in iter_sentences(path)]


def read_lines(path: str | Path, wanted: np.ndarray) -> dict[int, str]:
    """The collapsed text of the given line numbers (1-based), streaming the file once."""
    want = set(np.asarray(wanted).tolist())
    out: dict[int, str] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if lineno in want:
                out[lineno] = collapse_whitespace(line)
                if len(out) == len(want):
                    break
    return out


def scan_text_file(path: str | Path) -> int:
    """Count the lines of a text file and check that it is valid UTF-8, in one binary pass.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not valid UTF-8 (the message names the file and line).
    """
    path = _existing(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    n, last = 0, b"\n"
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                raise ValueError(_bad_utf8(path, exc)) from None
            if not chunk:
                break
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")

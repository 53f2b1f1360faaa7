"""The downstream methods' inputs: multi-way corpus rows and tokenised examples.

:func:`encode_split` and :func:`encode_texts` tokenise a task's examples
(:mod:`pipeline.downstream.data`) once per run; :func:`load_corpus` reads the multi-way rows
DR-MIM's multilingual batches and EPAR's pairs are drawn from.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from pipeline.config import LangsConfig
from pipeline.io import read_table
from pipeline.sources.bible import (
    non_empty,
    parquet_languages,
)

if TYPE_CHECKING:  # annotations only
    from pipeline.downstream.data import Kind, Split
    from pipeline.downstream.encoder import Encoder, Seq

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- corpus


def load_corpus(path: str | Path, langs: LangsConfig, max_rows: int, seed: int) -> pd.DataFrame:
    """Rows of the multi-way corpus (``split == 'train'``) in its source and pool languages.

    Args:
        path: ``build_corpus``'s ``multiway.parquet`` (``id``, ``split``, language columns).
        langs: The source and pool languages; those missing from the file are skipped.
        max_rows: Rows kept (a seeded sample).
        seed: Seed of the sample.

    Returns:
        One column per language (source first), one row per parallel row.

    Raises:
        FileNotFoundError: The corpus does not exist.
        ValueError: It holds fewer than two of the languages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; DR-MIM's language-side terms need the multi-way corpus: "
            f"run `dvc repro build_corpus` (or keep only finetune/epar in downstream.methods)"
        )
    present = parquet_languages(path)
    columns = [lang for lang in (langs.source, *langs.pool) if lang in present]
    if len(columns) < 2:
        raise ValueError(f"{path} holds {columns} of the languages {[langs.source, *langs.pool]}; "
                         "DR-MIM needs at least two")
    table = read_table(path, columns=["split", *columns])
    table = table[(table.split == "train") & non_empty(table, columns)]
    table = table.sample(n=min(max_rows, len(table)), random_state=seed).sort_index()
    return table[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------- tokenising


@dataclasses.dataclass
class Encoded:
    """Tokenised examples: one sequence per example, or per context window (QA).

    Attributes:
        seqs: The token sequences.
        example: Index of the example each sequence belongs to.
        labels: Class per sequence (classification and pair tasks).
        starts: Answer start token per sequence (QA training windows).
        ends: Answer end token per sequence (QA training windows).
        offsets: Character span in the context per token, ``None`` outside the context (QA).
    """

    seqs: list[Seq]
    example: list[int]
    labels: list[int] = dataclasses.field(default_factory=list)
    starts: list[int] = dataclasses.field(default_factory=list)
    ends: list[int] = dataclasses.field(default_factory=list)
    offsets: list[list[tuple[int, int] | None]] = dataclasses.field(default_factory=list)


def _seq(enc: dict, i: int) -> Seq:
    """Sequence ``i`` of a batch encoding (token type ids when the tokenizer gives them)."""
    types = enc.get("token_type_ids")
    return tuple(enc["input_ids"][i]), tuple(types[i]) if types is not None else ()


def encode_texts(texts: Sequence[tuple[str, ...]], encoder: Encoder, max_length: int) -> list[Seq]:
    """Tokenise single texts or text pairs (each segment gets the encoder's prefix).

    All items must have the same number of segments (1 or 2).
    """
    if not texts:
        return []
    pre = encoder.prefix
    columns = [[pre + t for t in col] for col in zip(*texts)]
    enc = encoder.tokenizer(*columns, truncation=True, max_length=max_length)
    return [_seq(enc, i) for i in range(len(texts))]


def encode_split(split: Split, kind: Kind, encoder: Encoder, max_length: int, doc_stride: int,
                 train: bool) -> Encoded:
    """Tokenise a split; QA contexts become overlapping windows.

    For QA training, windows that do not contain the first gold answer are dropped (the
    common simplification of zero-shot QA fine-tuning); at test time every window is kept
    and the best span over an example's windows is its prediction.

    Args:
        split: The examples.
        kind: The task kind (``qa`` makes windows).
        encoder: The loaded encoder (tokenizer and prefix).
        max_length: Token limit of a sequence (specials included).
        doc_stride: Overlap of consecutive context windows (QA).
        train: Whether the split is trained on (QA: keep only windows holding the answer).
    """
    if kind != "qa":
        seqs = encode_texts(split.inputs, encoder, max_length)
        return Encoded(seqs, list(range(len(seqs))), labels=list(split.labels))
    tok = encoder.tokenizer
    # A question may take at most half of a window, so a window always has room for the
    # context stride (the tokenizer refuses windows shorter than the stride).
    room = max_length // 2 - 2
    questions = []
    for q, _ in split.inputs:
        q = encoder.prefix + q
        cut = tok(q, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        questions.append(q[: cut[room - 1][1]] if len(cut) > room else q)
    contexts = [c for _, c in split.inputs]
    enc = tok(questions, contexts, truncation="only_second", max_length=max_length,
              stride=doc_stride, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    out = Encoded([], [])
    for i, example in enumerate(enc["overflow_to_sample_mapping"]):
        seq_ids = enc.sequence_ids(i)
        offsets = [tuple(o) if sid == 1 else None
                   for o, sid in zip(enc["offset_mapping"][i], seq_ids)]
        start = end = 0
        if train:
            a_start = split.answer_starts[example]
            a_end = a_start + len(split.answers[example][0])
            ctx = [k for k, o in enumerate(offsets) if o is not None]
            if not ctx or offsets[ctx[0]][0] > a_start or offsets[ctx[-1]][1] < a_end:
                continue
            start = next(k for k in ctx if offsets[k][1] > a_start)
            end = max(k for k in ctx if offsets[k][0] < a_end)
        out.seqs.append(_seq(enc, i))
        out.example.append(int(example))
        out.offsets.append(offsets)
        out.starts.append(start)
        out.ends.append(end)
    return out

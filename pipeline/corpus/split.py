"""Train/dev split by id hash, and the En-X baseline drawn from the multi-way corpus."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.runtime import unit_hash

SPLITS: tuple[str, ...] = ("train", "dev")


def assign_split(ids: Iterable[str], dev_fraction: float, seed: int) -> list[str]:
    """Assign each id to ``train`` or ``dev`` by a seeded hash of the id.

    Args:
        ids: Row ids.
        dev_fraction: Expected fraction of ids sent to ``dev``, in [0, 1).
        seed: Seed mixed into the hash (another seed gives another split).

    Returns:
        ``"train"`` or ``"dev"`` per id, in input order.

    Raises:
        ValueError: ``dev_fraction`` is outside [0, 1).
    """
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(
            f"build_corpus.dev_fraction must be in [0, 1), got {dev_fraction}; e.g. 0.05"
        )
    return ["dev" if unit_hash(seed, str(i)) < dev_fraction else "train" for i in ids]


def balanced_indices(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of :func:`balanced_draw`: ``n`` draws from ``range(k)``, counts within one.

    Args:
        n: Number of draws.
        k: Number of choices.
        rng: Source of randomness (two permutations are drawn: of ``k``, then of ``n``).

    Returns:
        ``n`` indices in ``[0, k)``.
    """
    order = rng.permutation(k)  # which choices get the leftover draws
    # Draw i is element perm[i] of the round robin order[0], order[1], ..., order[j % k].
    return order[rng.permutation(n) % k]


def balanced_draw(n: int, choices: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Draw ``n`` items from ``choices`` so that their counts differ by at most one.

    A shuffled round-robin: ``choices`` repeated up to length ``n``, then permuted; the
    leftover ``n mod len(choices)`` items go to a random subset of ``choices``.

    Args:
        n: Number of draws.
        choices: The items (e.g. language codes).
        rng: Source of randomness.

    Returns:
        ``n`` items.
    """
    return [choices[i] for i in balanced_indices(n, len(choices), rng)]


def enx_draws(split_counts: Mapping[str, int], k: int, seed: int) -> dict[str, np.ndarray]:
    """The En-X language of every multi-way row, split by split, as indices into the pool.

    Only the number of rows per split is needed, so a corpus streamed from disk gets the
    same draw as :func:`sample_enx` on the whole table.

    Args:
        split_counts: Rows per split (missing splits have none).
        k: Pool size.
        seed: Seed of the draw.

    Returns:
        Split → pool index of X for each of its rows, in corpus order.
    """
    rng = np.random.default_rng(seed)
    # Balanced within each split, not only overall; drawn in SPLITS order.
    return {split: balanced_indices(int(split_counts.get(split, 0)), k, rng) for split in SPLITS}


def sample_enx(corpus: pd.DataFrame, source: str, pool: Sequence[str], seed: int) -> pd.DataFrame:
    """The English-centric En-X baseline: one (English, X) pair per multi-way row.

    Every multi-way row keeps its English sentence and contributes the translation into one
    language X drawn from ``pool``, so the En-X set has exactly as many rows and English
    sentences as the multi-way one, and each language gets an equal share (±1) within each
    split.

    Args:
        corpus: Multi-way table with ``id``, ``split``, ``source`` and the ``pool`` columns.
        source: Source language column (``eng_Latn``).
        pool: Target languages to draw X from.
        seed: Seed of the draw.

    Returns:
        Columns ``id``, ``split``, ``lang`` (FLORES code of X), ``source`` (English) and
        ``x`` (the text in ``lang``), in the row order of ``corpus``.
    """
    masks = {split: (corpus["split"] == split).to_numpy() for split in SPLITS}
    draws = enx_draws({split: int(m.sum()) for split, m in masks.items()}, len(pool), seed)
    col = np.zeros(len(corpus), dtype=np.intp)
    for split, mask in masks.items():
        col[mask] = draws[split]
    texts = corpus[list(pool)].to_numpy()
    return pd.DataFrame({
        "id": corpus["id"].to_numpy(),
        "split": corpus["split"].to_numpy(),
        "lang": np.array(pool, dtype=object)[col],
        source: corpus[source].to_numpy(),
        "x": texts[np.arange(len(corpus)), col],
    })

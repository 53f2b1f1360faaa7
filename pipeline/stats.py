"""Paired intervals for the difference between two models scored on the same items.

Both models are scored on the same test items (verses, messages, examples), so the difference
is taken item by item, which removes the difficulty both models share. With several training
seeds per model (seed ``i`` of one model against seed ``i`` of the other: the same batches, or
every seed against one base model), the mean difference varies with the seeds as well as with
the items, and the two vary independently (a crossed design). Its variance is estimated as

    SE² = var(seed means) / seeds + var(item means) / items,

each from its own level (``ddof=1``); the interaction of seed and item is counted in both
terms, so the estimate errs on the wide side by ``σ²_interaction / (seeds × items)``. The
interval is ``mean ± t × SE`` with the Welch–Satterthwaite degrees of freedom of the two
terms, so three seeds give the seed term two degrees of freedom (``t_0.975`` = 4.30 when it
dominates) instead of the normal 1.96. Resampling three seeds with replacement, as a bootstrap
does, shrinks their variance by a third and uses normal-like percentiles: with few seeds such
intervals are too narrow. ``tests/test_report.py`` checks the coverage by simulation (nominal
95 %: 93–97 % on data with known seed, item and interaction variance).

When items come in clusters (the same message mined in both directions and in several
language pairs), the item term is that of cluster sampling: cluster totals around the
overall mean, ``Σ (T_c − mean × n_c)² / (C (C − 1) n̄²)`` over ``C`` clusters.

A difference is a **win** or a **loss** when its 95 % interval excludes zero, else **no
difference at this power**. The report declares one primary endpoint and corrects the other
differences of its headline for multiplicity with :func:`holm`. The smallest difference the
design detects with 80 % power at the 5 % level is ``(t_0.975 + t_0.80) × SE``, from the same
variance and degrees of freedom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
POWER = 0.80


@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired difference ``a - b`` with its interval.

    Attributes:
        diff: Mean over items (and seeds) of ``a - b``.
        low: Lower end of the 95 % interval.
        high: Upper end.
        detectable: Smallest difference the design detects with 80 % power.
        items: Number of paired items.
        p: Two-sided p value of "no difference" (the t test the interval inverts).
    """

    diff: float
    low: float
    high: float
    detectable: float
    items: int
    p: float

    @property
    def verdict(self) -> str:
        """See :func:`verdict`."""
        return verdict(self.low, self.high)


def verdict(low: float, high: float) -> str:
    """``win`` / ``loss`` when the interval ``[low, high]`` excludes zero.

    Otherwise ``no difference at this power``.
    """
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "no difference at this power"


def paired_interval(a: np.ndarray, b: np.ndarray,
                    clusters: np.ndarray | None = None) -> Interval:
    """The mean paired difference ``a − b`` over seeds and items, with its t interval.

    Args:
        a: The first model's score per item, ``(items,)``, or per training seed and item,
            ``(seeds, items)``.
        b: The second model's, the same items in the same order: as many seeds as ``a``
            (paired row by row), or one (a single model, such as the base, set against every
            seed of ``a``).
        clusters: One label per item; items sharing one are one sampling unit. ``None``:
            every item is its own.

    Returns:
        The mean difference and its interval (module docstring); one seed row has no seed
        term.

    Raises:
        ValueError: The arrays differ in shape (beyond one row of ``b``), are empty, have
            more than two dimensions or a missing score, there are fewer than two clusters,
            or the cluster labels differ in length.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 2 and b.ndim == 2 and len(b) == 1:
        b = np.broadcast_to(b, a.shape)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"paired interval needs two equal, non-empty arrays of items or of "
                         f"seeds x items, got shapes {a.shape} and {b.shape}")
    d = np.atleast_2d(a - b)  # (seeds, items)
    if not np.isfinite(d).all():
        raise ValueError("paired interval: a score is missing (NaN) or infinite; every seed "
                         "must score every item")
    n_seeds, n_items = d.shape
    labels = np.arange(n_items) if clusters is None else np.asarray(clusters)
    if len(labels) != n_items:
        raise ValueError(f"{len(labels)} cluster labels for {n_items} items")
    _, which = np.unique(labels, return_inverse=True)
    sizes = np.bincount(which).astype(np.float64)
    if len(sizes) < 2:
        raise ValueError("paired interval needs at least two items (or clusters)")
    mean = float(d.mean())
    totals = np.bincount(which, weights=d.mean(axis=0))
    parts = [(float(((totals - mean * sizes) ** 2).sum()
                    / (len(sizes) * (len(sizes) - 1) * sizes.mean() ** 2)), len(sizes) - 1)]
    if n_seeds > 1:
        parts.append((float(d.mean(axis=1).var(ddof=1) / n_seeds), n_seeds - 1))
    variance = sum(v for v, _ in parts)
    if variance == 0:
        return Interval(diff=mean, low=mean, high=mean, detectable=0.0, items=n_items,
                        p=1.0 if mean == 0 else 0.0)
    df = variance ** 2 / sum(v ** 2 / f for v, f in parts if v > 0)
    se = variance ** 0.5
    t = float(stats.t.ppf(0.5 + LEVEL / 2, df))
    return Interval(diff=mean, low=mean - t * se, high=mean + t * se,
                    detectable=(t + float(stats.t.ppf(POWER, df))) * se, items=n_items,
                    p=float(2 * stats.t.sf(abs(mean) / se, df)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (family-wise error at most the level), input order."""
    order = np.argsort(pvalues, kind="stable")
    m, running, adjusted = len(pvalues), 0.0, [0.0] * len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted

"""Paired bootstrap intervals for the difference between two models scored on the same items.

Both models are scored on the same test items (verses), so the difference is computed item
by item and the items are resampled with replacement (a paired, percentile bootstrap), the
pairing removing the item difficulty both models share. When items come in clusters (the
same verse mined or classified in several languages), the clusters are resampled whole:
their items are not independent draws.

With several training seeds per model (seed ``i`` of one model against seed ``i`` of the
other: the same batches), each resample also draws the seeds with replacement (a two-level
bootstrap, seeds and items drawn independently), so the interval covers training randomness
as well as the choice of test items. With three seeds that level is coarse (a resample can
only mix the three runs), which is why the report also flags seeds whose own differences
disagree in sign.

A difference is a **win** or a **loss** when its 95 % interval excludes zero, else **no
difference at this power**. The smallest difference the design could detect is
``(z_0.975 + z_0.8) × SE`` (80 % power at the 5 % level, SE the bootstrap standard error).
"""

from __future__ import annotations

import dataclasses

import numpy as np

N_BOOT = 2000
LEVEL = 0.95
# z_0.975 + z_0.80: the difference a two-sided 5 % test detects with 80 % power, in SEs.
DETECTABLE_SE = 1.959964 + 0.841621


@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired difference ``a - b`` with its bootstrap interval.

    Attributes:
        diff: Mean over items (and seeds) of ``a - b``.
        low: Lower end of the 95 % interval.
        high: Upper end.
        detectable: Smallest difference the design detects with 80 % power.
        items: Number of paired items.
    """

    diff: float
    low: float
    high: float
    detectable: float
    items: int

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


def paired_bootstrap(a: np.ndarray, b: np.ndarray, seed: int, n_boot: int = N_BOOT,
                     clusters: np.ndarray | None = None) -> Interval:
    """Percentile bootstrap of the mean paired difference of two models' per-item scores.

    Args:
        a: The first model's score per item, ``(items,)``, or per training seed and item,
            ``(seeds, items)``.
        b: The second model's, the same items in the same order: as many seeds as ``a``
            (paired row by row), or one (a single model, such as the base, set against every
            seed of ``a``).
        seed: Seed of the resamples.
        n_boot: Resamples.
        clusters: One label per item; items sharing one are resampled together (a resample
            draws clusters with replacement; its mean is over all their items). ``None``:
            every item is its own cluster.

    Returns:
        The mean difference over seeds and items; with more than one seed row, each resample
        draws the seed rows with replacement as well as the clusters.

    Raises:
        ValueError: The arrays differ in shape (beyond one row of ``b``), are empty, have
            more than two dimensions or a missing score, or the cluster labels differ in
            length.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 2 and b.ndim == 2 and len(b) == 1:
        b = np.broadcast_to(b, a.shape)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.size == 0:
        raise ValueError(f"paired bootstrap needs two equal, non-empty arrays of items or of "
                         f"seeds x items, got shapes {a.shape} and {b.shape}")
    d = np.atleast_2d(a - b)  # (seeds, items)
    if not np.isfinite(d).all():
        raise ValueError("paired bootstrap: a score is missing (NaN) or infinite; every seed "
                         "must score every item")
    # Per seed and cluster: the sum of its differences; per cluster: its size.
    sums, sizes = d, np.ones(d.shape[1])
    if clusters is not None:
        if len(clusters) != d.shape[1]:
            raise ValueError(f"{len(clusters)} cluster labels for {d.shape[1]} items")
        _, which = np.unique(np.asarray(clusters), return_inverse=True)
        sums = np.stack([np.bincount(which, weights=row) for row in d])
        sizes = np.bincount(which).astype(np.float64)
    n_seeds, n_clusters = sums.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 250):  # bounded memory: 250 resamples at a time
        m = min(250, n_boot - start)
        idx = rng.integers(0, n_clusters, size=(m, n_clusters))
        if n_seeds == 1:
            drawn = sums[0][idx]
        else:  # each resample's seed mix: how often each seed row was drawn, as weights
            weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=m) / n_seeds
            drawn = np.take_along_axis(weights @ sums, idx, axis=1)
        means[start:start + m] = drawn.sum(axis=1) / sizes[idx].sum(axis=1)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(diff=float(d.mean()), low=float(low), high=float(high),
                    detectable=float(DETECTABLE_SE * means.std(ddof=1)), items=d.shape[1])

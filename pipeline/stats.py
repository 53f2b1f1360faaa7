"""Paired bootstrap intervals for the difference between two models scored on the same items.

Both models are scored on the same test items (verses), so the difference is computed item
by item and the items are resampled with replacement (a paired, percentile bootstrap): the
interval reflects which items happened to be in the test set, with the pairing removing the
item difficulty both models share. It does not cover training randomness; that needs several
training seeds. When items come in clusters (the same verse mined or classified in several
languages), the clusters are resampled whole: their items are not independent draws.

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
        diff: Mean over items of ``a - b``.
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
    """Percentile bootstrap of the mean paired difference of two per-item score arrays.

    Args:
        a: One score per item of the first model.
        b: The second model's, the same items in the same order.
        seed: Seed of the resamples.
        n_boot: Resamples.
        clusters: One label per item; items sharing one are resampled together (a resample
            draws clusters with replacement; its mean is over all their items). ``None``:
            every item is its own cluster.

    Raises:
        ValueError: The arrays (or the cluster labels) differ in length or are empty.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired bootstrap needs two equal, non-empty 1-D arrays, got "
                         f"shapes {a.shape} and {b.shape}")
    d = a - b
    # Per cluster: the sum of its differences and its size (one item each without clusters).
    sums, sizes = d, np.ones_like(d)
    if clusters is not None:
        if len(clusters) != len(d):
            raise ValueError(f"{len(clusters)} cluster labels for {len(d)} items")
        _, which = np.unique(np.asarray(clusters), return_inverse=True)
        sums, sizes = np.bincount(which, weights=d), np.bincount(which).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 250):  # bounded memory: 250 resamples at a time
        idx = rng.integers(0, len(sums), size=(min(250, n_boot - start), len(sums)))
        means[start:start + len(idx)] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Interval(diff=float(d.mean()), low=float(low), high=float(high),
                    detectable=float(DETECTABLE_SE * means.std(ddof=1)), items=len(d))

"""Percentiles of very many non-negative values (one per pixel of a shot) in constant memory.

Values are counted in log-spaced bins, PER_DECADE per factor of 10 from LOW up, so a
percentile is known to within 0.5 % without keeping (or sorting a copy of) the values.
"""
from __future__ import annotations

import numpy as np

LOW, PER_DECADE, DECADES = 1e-4, 500, 12
BINS = PER_DECADE * DECADES


class LogHistogram:
    """Counts of non-negative values in log-spaced bins (bin 0 holds everything below LOW)."""

    def __init__(self) -> None:
        self.counts = np.zeros(BINS, np.int64)

    def add(self, values: np.ndarray) -> None:
        v = np.maximum(values.astype(np.float32, copy=False), LOW)  # float32: half precision would overflow below
        b = np.floor(np.log10(v / LOW) * PER_DECADE).astype(np.int64)
        self.counts += np.bincount(np.clip(b, 0, BINS - 1).ravel(), minlength=BINS)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float:
        """The q-quantile of the values added, log-interpolated inside its bin; 0 when it
        falls below LOW."""
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, q * cum[-1]))
        before = cum[i - 1] if i else 0
        frac = (q * cum[-1] - before) / max(self.counts[i], 1)
        return float(LOW * 10 ** ((i + frac) / PER_DECADE)) if i else 0.0

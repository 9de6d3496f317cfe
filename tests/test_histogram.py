"""Percentiles kept as a histogram in constant memory (atlas.histogram)."""
import numpy as np
import pytest

from atlas.histogram import LogHistogram


@pytest.mark.parametrize("kind", ["exponential", "lognormal", "blown up"])
def test_histogram_percentile_matches_the_exact_one(kind):
    rng = np.random.default_rng(0)
    values = {"exponential": rng.exponential(0.7, 200_000), "lognormal": rng.lognormal(0, 2, 200_000),
              "blown up": np.concatenate([rng.random(150_000), rng.random(50_000) * 5e6])}[kind]
    hist = LogHistogram()
    for part in np.array_split(values, 7):  # accumulated frame by frame, as a fit does
        hist.add(part)
    assert hist.total == len(values)
    for q in (0.5, 0.95):
        assert hist.quantile(q) == pytest.approx(np.quantile(values, q), rel=5e-3)
    zeros = LogHistogram()
    zeros.add(np.zeros(10))
    assert zeros.quantile(0.95) == 0.0


def test_half_precision_values_are_counted_where_they_belong():
    """The motion bootstrap's residuals are float16, whose range ends at 65504."""
    values = np.random.default_rng(1).random(100_000) * 100
    hist = LogHistogram()
    hist.add(values.astype(np.float16))
    assert hist.quantile(0.95) == pytest.approx(95.0, rel=1e-2)

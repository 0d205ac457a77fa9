"""The evaluation's noise figure (val/loss_sem) from its disjoint validation batches."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.worker.loop import standard_error


def test_standard_error_of_known_values() -> None:
    # four batches with losses 2, 2.2, 2.4, 2.6: stdev 0.2582, n 4 -> 0.1291
    assert standard_error([2.0, 2.2, 2.4, 2.6]) == pytest.approx(0.2581989 / 2)


def test_standard_error_needs_two_finite_values() -> None:
    assert standard_error([]) is None
    assert standard_error([2.5]) is None
    assert standard_error([2.5, math.nan, 2.4]) is None
    assert standard_error([2.5, math.inf]) is None


@given(st.lists(st.floats(0.0, 20.0), min_size=2, max_size=64), st.integers(2, 8))
def test_more_copies_of_the_same_batches_shrink_it_by_their_root(
    values: list[float], copies: int
) -> None:
    """Repeating every batch k times keeps the spread and divides the error by ~sqrt(k):
    an evaluation k times larger on the same kind of data is sqrt(k) times more precise."""
    one = standard_error(values)
    many = standard_error(values * copies)
    assert one is not None and many is not None
    n = len(values)
    if statistics.pstdev(values) == 0:
        assert many == 0 == one
        return
    expected = one * math.sqrt((n - 1) / (n * copies - 1))
    assert many == pytest.approx(expected, rel=1e-6, abs=1e-12)

"""Chronological splits: purging and the embargo keep every training label away from the test span."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.model.splits import holdout, purged_kfold, walk_forward

HOUR = 3600


def labels(n: int, horizon: int, symbols: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """`symbols` series of n hourly samples each, stacked symbol after symbol (as build_samples does);
    each label spans `horizon` bars."""
    start = np.tile(np.arange(n, dtype=np.int64) * HOUR, symbols)
    return start, start + (horizon - 1) * HOUR


def overlaps(start: np.ndarray, end: np.ndarray, train: np.ndarray, test: np.ndarray, gap: int) -> bool:
    """Whether any training label comes within `gap` seconds of the test labels' span."""
    t0, t1 = start[test].min(), end[test].max()
    return bool(((end[train] >= t0 - gap) & (start[train] <= t1 + gap)).any())


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(60, 400),
    horizon=st.integers(1, 25),
    folds=st.integers(2, 6),
    embargo_bars=st.integers(0, 30),
)
def test_purged_kfold_keeps_labels_apart(n: int, horizon: int, folds: int, embargo_bars: int) -> None:
    start, end = labels(n, horizon)
    splits = purged_kfold(start, end, folds, embargo_bars * HOUR)
    assert len(splits) == folds
    tested = np.concatenate([s.test for s in splits])
    assert sorted(tested.tolist()) == list(range(len(start)))  # every sample is tested exactly once
    for split in splits:
        assert not set(split.train.tolist()) & set(split.test.tolist())
        t0, t1 = start[split.test].min(), end[split.test].max()
        train_start, train_end = start[split.train], end[split.train]
        assert ((train_end < t0) | (train_start > t1 + embargo_bars * HOUR)).all()
        # Nothing was dropped that did not have to be.
        dropped = np.setdiff1d(np.arange(len(start)), np.concatenate([split.train, split.test]))
        assert ((end[dropped] >= t0) & (start[dropped] <= t1 + embargo_bars * HOUR)).all()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(60, 400), horizon=st.integers(1, 25), folds=st.integers(1, 5), embargo=st.integers(0, 30)
)
def test_walk_forward_trains_only_on_labels_that_ended_before_the_test(
    n: int, horizon: int, folds: int, embargo: int
) -> None:
    start, end = labels(n, horizon)
    for split in walk_forward(start, end, folds, embargo * HOUR):
        t0 = start[split.test].min()
        assert (end[split.train] < t0 - embargo * HOUR).all()
        assert not overlaps(start, end, split.train, split.test, embargo * HOUR - 1 if embargo else 0)


def test_walk_forward_expanding_and_rolling() -> None:
    start, end = labels(500, 5, symbols=1)
    expanding = walk_forward(start, end, 4, 5 * HOUR)
    rolling = walk_forward(start, end, 4, 5 * HOUR, rolling=100 * HOUR)
    sizes = [len(s.test) for s in expanding]
    assert sizes == [len(s.test) for s in rolling]
    assert max(sizes) - min(sizes) <= 1 and abs(sum(sizes) - 400) <= 1  # the first fifth only trains
    # Expanding: training always starts at the beginning and grows; rolling: a window of fixed length.
    assert all(s.train[0] == 0 for s in expanding)
    assert [len(s.train) for s in expanding] == sorted(len(s.train) for s in expanding)
    assert len({len(s.train) for s in rolling[1:]}) == 1  # the first is cut short by the data's start
    assert len(rolling[0].train) < len(rolling[1].train)
    for s in rolling:
        assert start[s.test].min() - start[s.train].min() <= 5 * HOUR + 100 * HOUR


def test_holdout_purges_labels_that_reach_into_validation() -> None:
    start, end = labels(1000, 20)
    split, cut = holdout(start, end, 0.2)
    assert (start[split.test] >= cut).all()
    assert (end[split.train] < cut).all()
    # 19 samples per symbol start before the cut but end after it: neither trained nor validated on.
    assert len(start) - len(split.train) - len(split.test) == 2 * 19


def test_one_fold_of_purged_kfold_is_refused() -> None:
    start, end = labels(100, 1)
    with pytest.raises(ValueError, match="at least 2"):
        purged_kfold(start, end, 1, 0)

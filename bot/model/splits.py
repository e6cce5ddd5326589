"""Chronological sample splits with purging and an embargo.

A sample's label spans [label_start, label_end]: from the bar its order would fill in to the close of its
longest horizon. Two samples whose labels overlap share information, so a training sample is *purged* when
its label overlaps the test span, and, in k-fold, *embargoed* for `embargo` seconds after the test span
(features there are built from bars the test labels saw). With a 20-bar horizon, a training label ending 19
bars into the test span would otherwise hand the model the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """Sample indices to fit on and to test on; both ascending."""

    train: IntArray
    test: IntArray


def _blocks(label_start: IntArray, parts: int) -> list[IntArray]:
    """Sample indices cut into `parts` consecutive time blocks of about equal size (never splitting an
    instant: all samples at one time land in the same block)."""
    edges = np.quantile(label_start, np.linspace(0, 1, parts + 1)[1:-1], method="lower")
    block_of = np.searchsorted(edges, label_start, side="right")
    return [np.flatnonzero(block_of == k).astype(np.int64) for k in range(parts)]


def purged_before(label_end: IntArray, test_start: int, gap: int = 0) -> npt.NDArray[np.bool_]:
    """Mask of samples whose whole label ends more than `gap` seconds before `test_start`."""
    return np.asarray(label_end < test_start - gap)


def holdout(label_start: IntArray, label_end: IntArray, fraction: float) -> tuple[Split, int]:
    """The last `fraction` of samples by time for validation, the earlier ones (purged) for training.

    Returns the split and the cut time (the first validation label's start)."""
    cut = int(np.quantile(label_start, 1 - fraction))
    test = np.flatnonzero(label_start >= cut).astype(np.int64)
    train = np.flatnonzero(purged_before(label_end, cut)).astype(np.int64)
    return Split(train, test), cut


def purged_kfold(label_start: IntArray, label_end: IntArray, folds: int, embargo: int) -> list[Split]:
    """k contiguous test blocks; training is every sample whose label neither overlaps the test block nor
    starts within `embargo` seconds after it (López de Prado, Advances in Financial ML, ch. 7)."""
    if folds < 2:
        raise ValueError(f"purged k-fold needs at least 2 folds, got {folds}")
    splits = []
    for test in _blocks(label_start, folds):
        if len(test) == 0:
            continue
        t0, t1 = int(label_start[test].min()), int(label_end[test].max())
        keep = purged_before(label_end, t0) | (label_start > t1 + embargo)
        splits.append(Split(np.flatnonzero(keep).astype(np.int64), test))
    return splits


def walk_forward(
    label_start: IntArray, label_end: IntArray, folds: int, embargo: int, rolling: int | None = None
) -> list[Split]:
    """Split time into folds + 1 blocks; fold k tests block k and trains on what came before it, purged and
    `embargo` seconds short of it: all of it (expanding) or the last `rolling` seconds (rolling)."""
    if folds < 1:
        raise ValueError(f"walk-forward needs at least 1 fold, got {folds}")
    splits = []
    for test in _blocks(label_start, folds + 1)[1:]:
        if len(test) == 0:
            continue
        t0 = int(label_start[test].min())
        keep = purged_before(label_end, t0, embargo)
        if rolling is not None:
            keep &= label_start >= t0 - embargo - rolling
        splits.append(Split(np.flatnonzero(keep).astype(np.int64), test))
    return splits

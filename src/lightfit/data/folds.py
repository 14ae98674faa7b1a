"""k-fold cross-validation's folds (`cv.folds=K`): the rows a plain run trains and validates on, cut in K.

The test split stays what it is without cross-validation: the same seed holds out the same
test rows, so a cross-validated score and a plain run's are tested on the same samples.
The other rows (a plain run's train and val splits together) are dealt into K folds: for
classification class by class, so every fold gets its share of every class (stratified, as
scikit-learn's StratifiedKFold), for regression from one seeded permutation. Fold k
validates on fold k and trains on the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightfit.errors import LightfitError


def fold_rows(rows: np.ndarray, folds: int, seed: int, labels: np.ndarray | None = None) -> list[np.ndarray]:
    """`rows` dealt into `folds` parts (each sorted), by a permutation seeded with `seed`.

    With `labels` (one per row) each class is shuffled and dealt round-robin on its own, the
    next class starting where the last one stopped: fold sizes differ by at most one, and a
    class's counts in two folds by at most one.
    """
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows)
    groups = [rows] if labels is None else [rows[labels == c] for c in np.unique(labels)]
    parts: list[list[np.ndarray]] = [[] for _ in range(folds)]
    dealt = 0  # rows dealt so far: the next class continues the round-robin from there
    for group in groups:
        shuffled = rng.permutation(group)
        for k in range(folds):
            parts[k].append(shuffled[(k - dealt) % folds :: folds])
        dealt += len(group)
    return [np.sort(np.concatenate(part)) for part in parts]


def check_folds(folds: int, labels: np.ndarray | None, n_rows: int, names: list[Any] | None = None) -> None:
    """One line when `folds` cannot be cut from `n_rows` rows (with `labels`: from every class)."""
    if labels is None:
        if folds > n_rows:
            raise LightfitError(
                f"cv.folds={folds}: only {n_rows} samples outside the test split; at most {n_rows} folds"
            )
        return
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(np.argmin(counts))
    if folds > counts[smallest]:
        name = classes[smallest] if names is None else names[int(classes[smallest])]
        raise LightfitError(
            f"cv.folds={folds}: class {name} has only {counts[smallest]} samples outside the test split; "
            f"a stratified fold needs one of each class (at most {counts[smallest]} folds)"
        )


def fold_split(
    rows: Tensor,
    y: Any,
    fold: tuple[int, int],
    seed: int,
    *,
    stratified: bool,
    names: list[Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """(val, train) rows of fold k of K (`fold`, k from 1) of `rows`; `y` the labels of the pool."""
    k, folds = fold
    rows_np = rows.cpu().numpy()
    labels = np.asarray(y.numpy() if isinstance(y, Tensor) else y)[rows_np] if stratified else None
    check_folds(folds, labels, len(rows_np), names)
    parts = fold_rows(rows_np, folds, seed, labels)
    train = np.sort(np.concatenate([part for i, part in enumerate(parts, 1) if i != k]))
    return torch.from_numpy(parts[k - 1]), torch.from_numpy(train)

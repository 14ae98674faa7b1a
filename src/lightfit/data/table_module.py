"""`data=table`: a CSV or Parquet file through the same ArrayDataModule as arrays.

The table is read and encoded once (data/table.py) into float32 features and labels; from
there on it is an `ArrayDataModule` like any other: the same splits, loaders, DDP shards,
resume position. The encoding is learned on the training split, which is known before the
features exist because a split depends only on the number of rows and the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lightfit.data.datamodule import ArrayDataModule
from lightfit.data.splits import split_rows
from lightfit.data.table import MISSING, UNKNOWN, TableEncoding, encode_features, encode_target, fit_encoding
from lightfit.data.table_read import check_columns, missing_error, missing_mask, read_table
from lightfit.errors import LightfitError


class TableDataModule(ArrayDataModule):
    """Train/val/test splits of a table's rows: `target` column(s), `features` (default: the rest).

    `drop`: columns to leave out (an id, a name). `unknown`: a text category never seen in
    training is an error, or `ignore` (all zeros). `missing`: rows with missing values are an
    error, or `drop` them, or `mean` (fill numbers with the training means). `encoding`: a
    stored `TableEncoding` (evaluate) instead of one learned here. The other arguments are
    ArrayDataModule's.
    """

    def __init__(
        self,
        path: str,
        target: Any,
        *,
        features: list[str] | None = None,
        drop: list[str] | None = None,
        unknown: str = "error",
        missing: str = "error",
        max_categories: int = 1000,
        encoding: dict[str, Any] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_classes: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool | str = "auto",
        on_device: bool | str = "auto",
        shuffle: bool = True,
        task: str = "classification",
    ) -> None:
        # ArrayDataModule's arguments, written out: the config schema is read from this signature.
        super().__init__(
            path=path,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_classes=num_classes,
            seed=seed,
            num_workers=num_workers,
            pin_memory=pin_memory,
            on_device=on_device,
            shuffle=shuffle,
            task=task,
        )
        if unknown not in UNKNOWN:
            raise LightfitError(f"data.unknown={unknown} is not one of {', '.join(UNKNOWN)}")
        if missing not in MISSING:
            raise LightfitError(f"data.missing={missing} is not one of {', '.join(MISSING)}")
        if max_categories < 1:
            raise LightfitError(f"data.max_categories={max_categories} must be a positive integer")
        self.multi_target = isinstance(target, (list, tuple))
        self.target = [str(t) for t in target] if self.multi_target else [str(target)]
        if not self.target:
            raise LightfitError("data.target=[] names no column; name the column(s) to predict")
        if self.multi_target and self.task == "classification" and len(self.target) > 1:
            raise LightfitError(
                f"data.target={self.target}: several targets are for task=regression; "
                "a classifier predicts one label column"
            )
        # data.drop=id without brackets is one name, not a list of its letters
        features = [features] if isinstance(features, str) else features
        self.features, self.drop = features, [drop] if isinstance(drop, str) else list(drop or [])
        self.unknown, self.missing, self.max_categories = unknown, missing, max_categories
        self.stored_encoding = encoding
        self.encoding: TableEncoding | None = None
        self.file_rows: np.ndarray | None = None  # the file's row of each sample (missing=drop skips some)

    @property
    def class_names(self) -> list[Any] | None:
        return None if self.encoding is None else self.encoding.classes

    def _feature_columns(self, columns: list[str]) -> list[str]:
        check_columns(self.path, self.target, columns, "target")
        check_columns(self.path, self.drop, columns, "data.drop")
        if self.features is not None:
            check_columns(self.path, self.features, columns, "feature")
            if both := set(self.features) & set(self.target):
                raise LightfitError(f"data.features and data.target both name {', '.join(sorted(both))}")
            return [c for c in self.features if c not in self.drop]
        features = [c for c in columns if c not in self.target and c not in self.drop]
        if not features:
            raise LightfitError(f"{self.path}: no feature columns left besides the target and data.drop")
        return features

    def _load(self) -> dict[str, np.ndarray]:
        table = read_table(self.path, as_is=tuple(self.target))
        stored = TableEncoding.from_dict(self.stored_encoding) if self.stored_encoding else None
        if stored is not None:  # the columns training used, whatever this file's other columns
            check_columns(self.path, stored.features, table.column_names, "training's feature")
            check_columns(self.path, self.target, table.column_names, "target")
            features = stored.features
        else:
            features = self._feature_columns(table.column_names)
        fill = self.missing == "mean"
        missing = missing_mask(table, self.target if fill else [*features, *self.target])
        self.file_rows = np.arange(table.num_rows)
        if missing.any():
            # A row without its target cannot be trained or tested on: only data.missing=drop
            # helps it (the means fill features, and a label has no mean).
            no_target = missing_mask(table, self.target).any()
            if self.missing == "error" and no_target:
                advice = (
                    "set data.missing=drop (leave those rows out): a row without its target "
                    "can be neither trained nor tested on"
                )
                raise missing_error(self.path, table, [*features, *self.target], advice)
            if self.missing == "error":
                advice = "set data.missing=drop (leave those rows out) or data.missing=mean (training means)"
                raise missing_error(self.path, table, features, advice)
            if fill:
                advice = "data.missing=mean fills features only; data.missing=drop leaves those rows out"
                raise missing_error(self.path, table, self.target, advice)
            self.file_rows = np.flatnonzero(~missing)
            table = table.take(self.file_rows)
            if table.num_rows == 0:
                raise LightfitError(
                    f"{self.path}: every row has a missing value; nothing is left to train on"
                )
        if stored is None:
            rows = table.num_rows
            stored = fit_encoding(
                table,
                self.path,
                features,
                self.target,
                lambda: self._encoding_rows(rows),
                classification=self.task == "classification",
                max_categories=self.max_categories,
                drop=self.drop,
                unknown=self.unknown,
                missing=self.missing,
                multi_target=self.multi_target,
            )
        training, self.encoding = self.stored_encoding is None, stored
        y = encode_target(table, stored, self.path)
        batches = table.select(stored.features).to_batches()
        del table  # the batches are the last reference: encode_features frees them as it goes
        x = encode_features(batches, stored, self.path, fill=fill, training=training)
        if stored.classes is not None:
            self.num_classes = len(stored.classes)
        return {"x": x, "y": y}

    def _encoding_rows(self, rows: int) -> np.ndarray:
        """The rows the encoding is learned on: the training split, cut as ArrayDataModule._read_and_split
        cuts it (rows and seed decide it). Under cross-validation every row outside the test split,
        so that every fold has the same feature columns."""
        _, val, train = split_rows(rows, [self.test_fraction, self.val_fraction], self.seed)
        return train.numpy() if self.fold is None else np.sort(np.concatenate([val.numpy(), train.numpy()]))

    def split_rows_in_file(self) -> dict[str, np.ndarray]:
        """Each split's rows as row numbers of the file (0 = the first row after the header)."""
        return {name: self.file_rows[split.rows.cpu().numpy()] for name, split in self.splits.items()}

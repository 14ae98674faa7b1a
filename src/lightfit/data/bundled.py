"""The data sets shipped inside the package: no download, the same ArrayDataModule.

digits: UCI handwritten digits (1797 x 8 x 8, 10 classes), the default (scripts/make_digits.py).
diabetes: Efron et al. 2004 (442 x 10, one real-valued target), for regression
(scripts/make_diabetes.py).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lightfit.data.datamodule import ArrayDataModule


def bundled_path(name: str) -> Path:
    """A dataset shipped inside the package (`digits`, `diabetes`), as a file path."""
    return Path(str(resources.files("lightfit.data").joinpath(f"{name}.npz")))


def digits_path() -> Path:
    """The UCI handwritten digits shipped with lightfit (1797 x 8 x 8, 10 classes)."""
    return bundled_path("digits")


def digits(**kwargs) -> ArrayDataModule:
    """The default dataset: the packaged digits through the same ArrayDataModule."""
    return ArrayDataModule(path=str(digits_path()), **kwargs)


def diabetes(**kwargs) -> ArrayDataModule:
    """Diabetes progression (Efron et al. 2004): 442 x 10 features, one target, for regression."""
    kwargs.setdefault("task", "regression")
    return ArrayDataModule(path=str(bundled_path("diabetes")), **kwargs)

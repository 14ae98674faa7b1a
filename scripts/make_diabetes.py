"""Build src/lightfit/data/diabetes.npz, the regression dataset lightfit ships (data=diabetes).

The data are those of B. Efron, T. Hastie, I. Johnstone and R. Tibshirani, "Least Angle
Regression", Annals of Statistics 32(2), 2004: 442 patients, 10 baseline variables (age,
sex, body mass index, average blood pressure, six blood serum measurements) and a
quantitative measure of disease progression one year later (25 to 346). scikit-learn
ships the same copy inside its wheel (BSD-3-Clause), so this script reads it offline:

    pip install scikit-learn && python scripts/make_diabetes.py

The features are the original, unscaled values (`scaled=False`): lightfit's Standardize
layer scales them with the training split's statistics. float32 features and targets,
the dtype training uses, so that `torch.from_numpy` shares their memory.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

OUT = Path(__file__).resolve().parents[1] / "src" / "lightfit" / "data" / "diabetes.npz"


def main() -> None:
    diabetes = load_diabetes(scaled=False)
    x = diabetes.data.astype(np.float32)  # (442, 10)
    y = diabetes.target.astype(np.float32)  # (442,), 25..346
    np.savez_compressed(OUT, x=x, y=y)
    print(f"wrote {OUT} x={x.shape} {x.dtype} y={y.shape} {y.dtype} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

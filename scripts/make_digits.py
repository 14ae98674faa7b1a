"""Build src/lightfit/data/digits.npz, the dataset lightfit ships and trains on by default.

The data are the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin,
C. Kaynak, 1998; CC BY 4.0): 1797 images of 8x8 pixels with values 0..16, 10 classes.
scikit-learn ships the same copy inside its wheel, so this script reads it offline:

    pip install scikit-learn && python scripts/make_digits.py

Features are stored as float32 and labels as int64, the dtypes training uses, so that
`torch.from_numpy` can share their memory instead of converting (copying) them.
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "src" / "lightfit" / "data" / "digits.npz"


def main() -> None:
    digits = load_digits()
    x = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    y = digits.target.astype(np.int64)  # (1797,), values 0..9
    np.savez_compressed(OUT, x=x, y=y)
    print(f"wrote {OUT} x={x.shape} {x.dtype} y={y.shape} {y.dtype} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

"""lightfit: one network, three training loops, NumPy in and tensors out.

`from lightfit import fit, evaluate, predict` gives the Keras-style API (api/keras_style.py),
with `EarlyStopping` for fit's callbacks.
They are imported on first use, so `lightfit train` does not pay for them.
"""

from typing import Any

__version__ = "0.2.0"
__all__ = ["EarlyStopping", "History", "evaluate", "fit", "predict"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lightfit.api import keras_style

        return getattr(keras_style, name)
    raise AttributeError(f"module 'lightfit' has no attribute {name!r}")

"""lightfit: one network, three training loops, NumPy in and tensors out.

`from lightfit import fit, evaluate, predict` gives the Keras-style API (api/keras_style.py),
with `EarlyStopping` for fit's callbacks; `lightfit.load("best.ckpt")` a trained model with its
preprocessing (trained.py), and `lightfit.load_module(Model, "best.ckpt")` the LightningModule
(run/checkpoint.py).
They are imported on first use, so `lightfit train` does not pay for them.
"""

from typing import Any

__version__ = "0.2.0"
KERAS_STYLE = ["EarlyStopping", "History", "evaluate", "fit", "predict"]
__all__ = [*KERAS_STYLE, "TrainedModel", "load", "load_module"]


def __getattr__(name: str) -> Any:
    if name in KERAS_STYLE:
        from lightfit.api import keras_style

        return getattr(keras_style, name)
    if name in ("TrainedModel", "load"):
        from lightfit import trained

        return getattr(trained, name)
    if name == "load_module":
        from lightfit.run.checkpoint import load_module

        return load_module
    raise AttributeError(f"module 'lightfit' has no attribute {name!r}")

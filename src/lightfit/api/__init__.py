"""The Keras-style API: `fit`, `evaluate`, `predict` for any nn.Module and NumPy arrays.

`from lightfit import fit, evaluate, predict` gives these (and `EarlyStopping`, for fit).
They train through the explicit loop (loops/explicit.py). May import loops, tasks, data, nets, run and errors.
"""

from lightfit.api.keras_style import EarlyStopping, History, evaluate, fit, predict

__all__ = ["EarlyStopping", "History", "evaluate", "fit", "predict"]

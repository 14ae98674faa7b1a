"""lightfit: one network, three training loops, NumPy in and tensors out."""

__version__ = "0.1.0"

"""Networks: plain `nn.Module`s that know nothing about Lightning, Hydra or the loops.

`models.py`: the MLP and CNN, and `build_network` (Standardize + model [+ TargetScale]);
`layers.py`: the layers that carry the data's statistics. Imports torch and errors only.
"""

from lightfit.nets.layers import Standardize, TargetScale, target_scale
from lightfit.nets.models import CNN, MLP, build_network

__all__ = ["CNN", "MLP", "Standardize", "TargetScale", "build_network", "target_scale"]

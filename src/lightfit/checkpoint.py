"""Read a checkpoint safely (placeholder until the evaluate/predict work lands)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lightfit.errors import LightfitError


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LightfitError(f"{path} was refused: it is not a plain weights file") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise LightfitError(f"{path} is not a PyTorch checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise LightfitError(f"{path} is not a Lightning checkpoint (no 'state_dict' in it)")
    return checkpoint

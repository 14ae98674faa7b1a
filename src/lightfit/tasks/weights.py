"""Class weights: one weight per class, from `task.class_weight` (balanced or a list),
`task.pos_weight` or Keras' `fit(class_weight={...})`.

Each sample's loss is weighed by its class's weight and the batch's mean is taken (task.py),
as Keras and scikit-learn do. The weights are plain floats, so a checkpoint carries them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightfit.errors import LightfitError
from lightfit.tasks.metrics import CLASSIFICATION

BALANCED = "balanced"  # task.class_weight=balanced: scikit-learn's n_samples / (n_classes * bincount)


def balanced_weights(labels: Tensor, num_classes: int) -> list[float]:
    """scikit-learn's `class_weight="balanced"`: n_samples / (n_classes * bincount(labels)).

    Over the labels it was computed from, the mean weight of a sample is exactly 1, so the
    weighted loss keeps the scale of the plain one.
    """
    counts = torch.bincount(labels.long().flatten().cpu(), minlength=num_classes).double()
    if (empty := (counts == 0).nonzero().flatten().tolist()) != []:
        raise LightfitError(
            f"task.class_weight=balanced: class {empty[0]} has no sample in the training split; "
            "give the weights as a list (task.class_weight=[...])"
        )
    return (len(labels) / (num_classes * counts)).tolist()


def class_weights(
    cfg: dict[str, Any], num_classes: int | None, labels: Tensor | None = None
) -> list[float] | None:
    """One weight per class from `task.class_weight` (balanced, or a list) or `task.pos_weight`
    (two classes: class 1's weight, class 0's is 1); None for neither. `labels`: the training
    split's, for balanced. `num_classes` None (before the data are read): the form is checked."""
    weight, pos_weight = cfg.get("class_weight"), cfg.get("pos_weight")
    if weight is None and pos_weight is None:
        return None
    if cfg.get("name", CLASSIFICATION) != CLASSIFICATION:
        key = "class_weight" if weight is not None else "pos_weight"
        raise LightfitError(f"task.{key} weighs classes: it is for task=classification, not {cfg['name']}")
    if weight is not None and pos_weight is not None:
        raise LightfitError("task.class_weight and task.pos_weight both weigh the classes; set one of them")
    if pos_weight is not None:
        if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)) or pos_weight <= 0:
            raise LightfitError(f"task.pos_weight={pos_weight} must be a positive number")
        if num_classes not in (None, 2):
            raise LightfitError(
                f"task.pos_weight is for two classes and this data has {num_classes}; "
                "use task.class_weight=[...] (one weight per class) or balanced"
            )
        return [1.0, float(pos_weight)]
    if weight == BALANCED:
        if num_classes is None:
            return None
        if labels is None:
            raise LightfitError("task.class_weight=balanced needs the training labels to count them")
        return balanced_weights(labels, num_classes)
    if not isinstance(weight, (list, tuple)) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weight
    ):
        raise LightfitError(
            f"task.class_weight={weight} must be balanced or a list of non-negative numbers, one per class"
        )
    if num_classes is not None and len(weight) != num_classes:
        raise LightfitError(f"task.class_weight has {len(weight)} weights for {num_classes} classes")
    return [float(w) for w in weight]


def keras_class_weights(
    class_weight: dict[int, float] | str, labels: Tensor, num_outputs: int
) -> list[float]:
    """Keras' `class_weight` dict (a class it leaves out weighs 1), or scikit-learn's "balanced"
    counted on the training labels, as one weight per class."""
    if class_weight == BALANCED:
        return balanced_weights(labels, num_outputs)
    if not isinstance(class_weight, dict):
        raise LightfitError(f"class_weight={class_weight!r} must be a dict {{class: weight}} or 'balanced'")
    if unknown := [c for c in class_weight if not isinstance(c, int) or not 0 <= c < num_outputs]:
        raise LightfitError(
            f"class_weight names class {unknown[0]!r}; the model has classes 0..{num_outputs - 1}"
        )
    return [float(class_weight.get(c, 1.0)) for c in range(num_outputs)]

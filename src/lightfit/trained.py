"""A trained model in your own code: `lightfit.load("best.ckpt")`.

    model = lightfit.load("outputs/.../checkpoints/best.ckpt")
    model.predict(x)                # class names (or ids), or values in the units of y
    model.predict_proba(rows)       # (N, classes) probabilities, for a classifier
    model.net(torch.from_numpy(x))  # the network itself: logits, or values in the units of y

The checkpoint alone rebuilds it, as `lightfit predict` does: the run's config stored in it
names the network, its `Standardize` layer holds the training statistics (so raw features go
in), and a table's encoding or the images' size and class names travel with it. Inputs are
read by `lightfit predict`'s readers (cli/predict.py, predict_table.py, predict_images.py),
so the numbers are the command's. The LightningModule itself comes back from
`AutomaticLoop.load_from_checkpoint("best.ckpt")` (`lightfit.load_module`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightfit.cli.predict import (
    check_samples,
    class_names,
    fill_predictions,
    output_shape,
    prediction_task,
    read_any_input,
)
from lightfit.errors import LightfitError
from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint, rebuild_network
from lightfit.tasks import CLASSIFICATION


class TrainedModel:
    """A checkpoint's network with its preprocessing: raw inputs in, answers out.

    `net`: the nn.Module (Standardize + the network [+ TargetScale]) in eval mode; it returns
    logits for a classifier, values in the units of y for a regression. `classes`: what
    `predict` returns for class 0..C-1 (a table's label names, the image folders' names, or
    the ids); None for a regression.
    """

    def __init__(self, checkpoint: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.stored = checkpoint[CHECKPOINT_KEY]
        self.device = torch.device(device)
        self.net = rebuild_network(checkpoint).to(self.device)
        self.task = prediction_task(self.stored)
        self.classes = class_names(self.stored) if self.task.name == CLASSIFICATION else None

    def predict(self, inputs: Any, batch_size: int = 1024) -> np.ndarray:
        """Class names (N,) for a classifier (the most probable class), or values (N,) / (N, k)
        float32 in the units of y for a regression.

        `inputs`: an array of raw features (N, *sample shape); for a checkpoint trained on a
        table, a pandas DataFrame, a pyarrow Table or the path of a CSV/Parquet file with the
        training's feature columns (text columns as text); for one trained on images, image
        paths or a folder; any path `lightfit predict` takes (a `.npy` too).
        """
        return self._predictions(inputs, "values" if self.task.is_regression else "labels", batch_size)

    def predict_proba(self, inputs: Any, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (N, classes) float32, columns in the order of `classes`; rows sum to 1."""
        self.task.check_kind("probs")  # a regression: one line
        return self._predictions(inputs, "probs", batch_size)

    def _predictions(self, inputs: Any, kind: str, batch_size: int) -> np.ndarray:
        if int(batch_size) < 1:
            raise LightfitError(f"batch_size={batch_size} must be a positive integer")
        x, source = self._features(inputs)
        check_samples(x, self.stored, source)
        out = np.empty(*output_shape(kind, len(x), self.stored))  # as `lightfit predict` writes it
        names = class_names(self.stored)  # what labels 0..C-1 become
        fill_predictions(out, self.net, self.task, x, kind, names, int(batch_size), self.device, source)
        return out

    def _features(self, inputs: Any) -> tuple[Any, str]:
        """What the network takes (N, *sample shape), read from `inputs` as `lightfit predict`
        reads files, and a name for them in messages."""
        if isinstance(inputs, str | Path):
            path = Path(inputs).expanduser()
            return read_any_input(path, self.stored, [])[0], str(path)
        table = as_arrow_table(inputs)
        if table is not None:
            from lightfit.cli.predict_table import encode_table, stored_encoding
            from lightfit.data.table_read import numbers_as_float32

            source = f"the {type(inputs).__name__}"
            encoding = stored_encoding(source, self.stored)
            return encode_table(numbers_as_float32(table), source, encoding, [])[0], source
        if is_paths(inputs):
            from lightfit.cli.predict_images import DecodedImages, image_format
            from lightfit.data.images import Listing

            images = image_format("the image paths", self.stored)
            files = [str(Path(p).expanduser()) for p in inputs]  # relative paths: to the working dir
            return DecodedImages(
                Listing(Path(), files), images["size"], images["channels"]
            ), "the image paths"
        x = np.asarray(inputs)
        if x.dtype.kind not in "biuf":
            raise LightfitError(
                f"the inputs have dtype {x.dtype}; give numbers, a table (DataFrame, pyarrow Table, "
                "CSV/Parquet path) or image paths"
            )
        return x, "the inputs"


def as_arrow_table(inputs: Any) -> Any:
    """A pyarrow Table for a pandas DataFrame or a pyarrow Table; None for anything else.
    Checked through sys.modules: neither library is imported unless the caller has it."""
    pandas, pyarrow = sys.modules.get("pandas"), sys.modules.get("pyarrow")
    if pyarrow is not None and isinstance(inputs, pyarrow.Table):
        return inputs
    if pandas is not None and isinstance(inputs, pandas.DataFrame):
        from lightfit.data.table_read import pyarrow as arrow

        # preserve_index=False: the row labels are not a column; NaN and None become missing.
        return arrow().Table.from_pandas(inputs, preserve_index=False)
    return None


def is_paths(inputs: Any) -> bool:
    """A list or tuple of file paths (str or Path), not of numbers."""
    return (
        isinstance(inputs, Sequence)
        and not isinstance(inputs, str)
        and len(inputs) > 0
        and all(isinstance(p, str | Path) for p in inputs)
    )


def load(checkpoint_path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """The trained model of a lightfit checkpoint, with its preprocessing (`predict`, `predict_proba`).

    Read with `torch.load(weights_only=True)`: a file that carries pickled code is refused.
    `device`: where the network runs (cpu, cuda, cuda:1).
    """
    return TrainedModel(load_checkpoint(checkpoint_path), device)

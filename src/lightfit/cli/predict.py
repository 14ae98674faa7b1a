"""Predictions for raw inputs: `lightfit predict ckpt_path=... input=... output=...`.

The input is a `.npy` of features, a CSV/Parquet table with the training columns (a
checkpoint of `data=table`), or an image or a folder of images (`data=images`,
cli/predict_images.py); `output=pred.csv` writes a table (cli/predict_table.py).

The checkpoint alone rebuilds the network, its `Standardize` layer included, so the inputs
are raw features as in training. The input is memory-mapped and read one batch at a time,
and the output is written batch by batch into a memory-mapped `.npy`, so neither has to
fit in memory. It goes to a temporary file that is renamed at the end: a failed run leaves
no half-written output. No Lightning here: a forward pass needs none of it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from lightfit.data.arrays import read_npy
from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
KINDS = ("probs", "labels", "values")


def read_inputs(path: Path) -> np.ndarray:
    """The features `.npy`, memory-mapped (never unpickled)."""
    if not path.is_file():
        raise LightfitError(f"input file not found: {path}")
    x = read_npy(path, mmap=True)
    if not isinstance(x, np.ndarray):  # np.load gives an NpzFile for a .npz
        raise LightfitError(f"{path} is not a .npy file; save the features with np.save")
    if x.dtype.kind not in "biuf":
        raise LightfitError(f"{path} has dtype {x.dtype}; expected numbers (float or int)")
    return x


def device_for(accelerator: str):
    import torch

    if accelerator not in ("cpu", "gpu", "auto"):
        raise LightfitError(f"accelerator={accelerator} is not one of cpu, gpu, auto")
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise LightfitError("accelerator=gpu but no CUDA GPU is available (use accelerator=cpu)")
    use_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_gpu else "cpu")


def output_shape(kind: str, n: int, stored: dict) -> tuple[tuple[int, ...], Any]:
    """The shape and dtype of the predictions: (N, C) float32, (N,) labels (int64, or a table's
    class names), or (N,)/(N, k) float32."""
    from lightfit.run.checkpoint import num_outputs

    if kind == "labels":
        return (n,), class_names(stored).dtype
    if kind == "probs":
        return (n, num_outputs(stored)), np.float32
    return (n, *stored["target_shape"]), np.float32


def class_names(stored: dict) -> np.ndarray:
    """What `kind=labels` writes for class 0..C-1: a table's label names or the class folders'
    names (data=images), else the ids."""
    from lightfit.run.checkpoint import num_outputs

    classes = (stored.get("table") or stored.get("images") or {}).get("classes")
    return np.asarray(classes if classes else np.arange(num_outputs(stored)))


def prediction_task(stored: dict):
    """The checkpoint's task, for its predictions only (no metrics to build)."""
    from lightfit.run.checkpoint import num_outputs, task_config
    from lightfit.tasks import build_task

    return build_task({"name": task_config(stored)["name"], "metrics": []}, num_outputs(stored))


def check_samples(x: np.ndarray, stored: dict, source: Any) -> None:
    """One line unless `x` holds at least one sample of the shape the checkpoint's network takes."""
    expected = tuple(stored["input_shape"])
    if x.ndim == 0 or tuple(x.shape[1:]) != expected:
        raise LightfitError(
            f"{source} has samples of shape {tuple(x.shape[1:])} (array {x.shape}); "
            f"the checkpoint's network takes samples of shape {expected}"
        )
    if len(x) == 0:
        raise LightfitError(f"{source} has no samples (shape {x.shape})")


def fill_predictions(
    out: np.ndarray, net, task, x: np.ndarray, kind: str, names, batch: int, device, source
) -> None:
    """Write the predictions for `x` into `out`, one batch at a time."""
    import torch

    with torch.inference_mode():  # no autograd bookkeeping: nothing here is trained
        for start in range(0, len(x), batch):
            # np.array copies: it reads this batch from the file into a writable array for torch.
            rows = np.array(x[start : start + batch], dtype=np.float32)
            bad = ~np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
            if bad.any():
                raise LightfitError(
                    f"{source} has NaN or infinite values (row {start + int(np.argmax(bad))})"
                )
            # from_numpy shares memory with `rows`; .to(device) copies only to a GPU.
            outputs = net(torch.from_numpy(rows).to(device))  # (B, C) scores, or (B,)/(B, k) values
            result = task.predictions(outputs, kind).cpu().numpy()  # .cpu(): NumPy needs host memory
            out[start : start + len(rows)] = names[result] if kind == "labels" else result


def read_any_input(
    path: Path, stored: dict, keep: list[str], unknown: str | None = None
) -> tuple[np.ndarray, dict[str, list]]:
    """Features from a `.npy` (memory-mapped), a CSV/Parquet table or images, and the columns
    the output table starts with (a table's `keep` columns, the images' `file`)."""
    from lightfit.cli.predict_images import read_image_inputs, wants_images
    from lightfit.data.table_read import table_kind

    if wants_images(path, stored):
        return read_image_inputs(path, stored, keep)
    if table_kind(path) is not None:
        from lightfit.cli.predict_table import read_table_inputs

        if not path.is_file():
            raise LightfitError(f"input file not found: {path}")
        return read_table_inputs(path, stored, keep, unknown)
    if keep:
        raise LightfitError(f"keep={keep} names columns of a table; {path} is not a CSV or Parquet file")
    return read_inputs(path), {}


def write_output(output: Path, kept: dict, stored: dict, shape: tuple, dtype: Any, args: tuple) -> None:
    """A CSV table (built in memory), or a `.npy` filled batch by batch; whole or not at all."""
    if output.suffix.lower() == ".csv":
        from lightfit.cli.predict_table import write_csv

        out = np.empty(shape, dtype)
        fill_predictions(out, *args)
        write_csv(output, kept, out, stored)
        return
    partial = output.with_name(output.name + ".partial")
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=shape)
        fill_predictions(out, *args)
        out.flush()
        del out  # closes the memory map before the rename
        os.replace(partial, output)  # atomic: readers see the whole file or none
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def predict(cfg: DictConfig) -> Path:
    """Write `cfg.output`: class probabilities (N, C) float32 or labels (N,) for a classifier,
    values (N,) or (N, k) float32 in the units of y for a regression; or, for an output
    ending in .csv, a table of them (see cli/predict_table.py); returns its path."""
    from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint, rebuild_network, task_config

    if cfg.kind is not None and cfg.kind not in KINDS:
        raise LightfitError(f"kind={cfg.kind} is not one of {', '.join(KINDS)}")
    if int(cfg.batch_size) < 1:
        raise LightfitError(f"batch_size={cfg.batch_size} must be a positive integer")
    device = device_for(cfg.accelerator)
    checkpoint = load_checkpoint(cfg.ckpt_path)
    stored = checkpoint[CHECKPOINT_KEY]
    task_name = task_config(stored)["name"]
    input_path, output = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    as_csv = output.suffix.lower() == ".csv"
    default = "values" if task_name == "regression" else "probs"
    kind = default if as_csv else cfg.kind or default  # a CSV has the label and every probability
    task = prediction_task(stored)
    task.check_kind(kind)  # before anything is read or written
    keep = [str(k) for k in cfg.get("keep") or []]
    x, kept = read_any_input(input_path, stored, keep, cfg.get("unknown"))
    check_samples(x, stored, input_path)
    net = rebuild_network(checkpoint).to(device)
    output.parent.mkdir(parents=True, exist_ok=True)
    (shape, dtype), names = output_shape(kind, len(x), stored), class_names(stored)
    args = (net, task, x, kind, names, int(cfg.batch_size), device, input_path)
    write_output(output, kept, stored, shape, dtype, args)
    log.info(f"wrote {output}: {'a table' if as_csv else kind} for {len(x)} samples on {device}")
    return output


def main(*, prog: str = "lightfit", config_module: str = "lightfit.conf") -> None:
    """`<prog> predict ckpt_path=... input=... output=...`: predict.yaml, the project's or lightfit's."""
    from lightfit.cli.entry import run_command

    run_command(predict, label=f"{prog}-predict", config_module=config_module, config_name="predict")


if __name__ == "__main__":
    main()

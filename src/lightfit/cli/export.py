"""A checkpoint as a file that runs without lightfit: `lightfit export ckpt_path=... format=onnx|torchscript`.

What is exported is the network with everything numeric that training put around it: the
input standardisation (`Standardize`), the targets' units (`TargetScale`) and, for a
classifier, a softmax, so the model's output is what `lightfit predict` writes: class
probabilities (N, C), or values (N,) / (N, k) in the units of y. The batch dimension is
dynamic. What cannot live in a graph of tensors, a table's text columns and an image's
decoding, is described in a JSON file beside the model (`best.onnx.json` for `best.onnx`): the input's
shape, the columns in order with each text column's categories, the label names, the
images' size and channels, and how a raw row or image becomes the model's input.

ONNX goes through `torch.onnx.export` with the dynamo exporter (the `export` extra: onnx,
onnxscript, onnxruntime); the file is then run by onnxruntime on a batch of the checkpoint's
input shape and compared with PyTorch's output, so a file that does not compute what the
checkpoint computes is never left behind. TorchScript (`torch.jit.trace`) needs nothing more
than torch, and is checked the same way.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
# The largest difference allowed between the exported model and PyTorch: 1e-5, and for values
# in the target's units (hundreds, say) 1e-6 of the value: float32 itself keeps about 7 digits.
ATOL, RTOL = 1e-5, 1e-6
EXTRA_HINT = "pip install 'lightfit[export]'"


def exported_module(net: Any, task_name: str) -> Any:
    """The network and, for a classifier, a softmax: the module whose output `predict` writes."""
    import torch
    from torch import nn

    class Exported(nn.Module):
        def __init__(self, net: nn.Module, probabilities: bool) -> None:
            super().__init__()
            self.net, self.probabilities = net, probabilities

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outputs = self.net(x)  # (B, C) scores, or (B,) / (B, k) values in the units of y
            return outputs.softmax(-1) if self.probabilities else outputs

    return Exported(net, task_name != "regression").eval()


def describe(stored: dict[str, Any], task_name: str, model_file: str, fmt: str) -> dict[str, Any]:
    """The JSON beside the model: what goes in, what comes out, and how a raw input becomes `x`."""
    from lightfit.cli.predict import class_names

    output = "values" if task_name == "regression" else "probs"
    about: dict[str, Any] = {
        "model": model_file,
        "format": fmt,
        "task": task_name,
        "input": {"name": "x", "dtype": "float32", "shape": ["batch", *stored["input_shape"]]},
        "output": {"name": output, "shape": ["batch", *output_shape(stored, task_name)]},
    }
    if task_name != "regression":
        about["output"]["classes"] = class_names(stored).tolist()  # column j is the probability of classes[j]
    about["preprocessing"] = "raw features in training's units; standardisation is in the model"
    if table := stored.get("table"):
        about["table"] = table_description(table)
        about["preprocessing"] = (
            "one row of x per table row: table.columns in order; a number column gives its value "
            "(a missing one: table.columns[i].fill); a date column gives days since 1970-01-01 UTC, a "
            "time of day as a fraction of a day; a text column gives one 0/1 entry per category in "
            "table.columns[i].categories (an unseen category: all zeros); standardisation is in the model"
        )
    if images := stored.get("images"):
        about["images"] = {k: images[k] for k in ("size", "channels") if k in images}
        about["preprocessing"] = (
            "one image, with Pillow: turned upright by its EXIF orientation (ImageOps.exif_transpose), "
            "16-bit grayscale cut to its top 8 bits, converted to L (channels 1) or RGB (channels 3), "
            "resized to images.size [H, W] with Image.Resampling.BILINEAR when its size differs; then "
            "its uint8 pixels as (C, H, W), cast to float32 (0-255, not divided); standardisation is "
            "in the model"
        )
    return about


def output_shape(stored: dict[str, Any], task_name: str) -> list[int]:
    from lightfit.run.checkpoint import num_outputs

    return list(stored["target_shape"]) if task_name == "regression" else [num_outputs(stored)]


def table_description(table: dict[str, Any]) -> dict[str, Any]:
    """A table's encoding as columns in the order of x: name, kind, its categories or fill value."""
    columns = []
    for name in table["features"]:
        if name in table["categories"]:
            columns.append({"name": name, "kind": "text", "categories": table["categories"][name]})
        elif name in table.get("dates", []):  # one number: days since 1970-01-01 UTC (data/table.py)
            columns.append({"name": name, "kind": "date", "fill": table["means"].get(name)})
        else:
            columns.append({"name": name, "kind": "number", "fill": table["means"].get(name)})
    return {"columns": columns, "target": table.get("target"), "classes": table.get("classes")}


def example_batch(stored: dict[str, Any]) -> Any:
    """Two samples of the checkpoint's input shape (not one: an exporter specialises on size 1)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.rand((2, *stored["input_shape"]), generator=generator) * 4 - 2


def write_onnx(module: Any, x: Any, path: Path) -> None:
    import torch

    try:
        import onnxscript  # noqa: F401 - the dynamo exporter's dependency: fail here, with the hint
    except ImportError:
        raise LightfitError(f"format=onnx needs onnx and onnxscript: {EXTRA_HINT}") from None
    # The exporter warns of operators it skips for packages not installed (torchvision's, none used
    # here), and its optimizer reports each pass: the command's own line says what was written.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module, (x,), dynamo=True, dynamic_shapes={"x": {0: batch}},
        input_names=["x"], output_names=["y"], verbose=False,
    )  # fmt: skip
    program.save(str(path))


def run_onnx(path: Path, x: Any) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise LightfitError(f"checking the ONNX file needs onnxruntime: {EXTRA_HINT}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def write_torchscript(module: Any, x: Any, path: Path) -> None:
    import torch

    traced = torch.jit.trace(module, (x,), check_trace=False)  # checked below, on another batch size
    traced.save(str(path))


def run_torchscript(path: Path, x: Any) -> Any:
    import torch

    loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return loaded(x).numpy()


def default_output(ckpt_path: Path, fmt: str) -> Path:
    """<run dir>/export/best.onnx for <run dir>/checkpoints/best.ckpt."""
    return ckpt_path.resolve().parent.parent / "export" / (ckpt_path.stem + FORMATS[fmt])


def export(cfg: DictConfig) -> Path:
    """Write the model file and its JSON; returns the model's path."""
    import warnings

    import numpy as np
    import torch

    # torch 2.13's pytree deprecation, raised from Lightning's and the exporter's use of it
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint, rebuild_network, task_config

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise LightfitError(f"format={fmt} is not one of {', '.join(FORMATS)}")
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    checkpoint = load_checkpoint(ckpt_path)
    stored = checkpoint[CHECKPOINT_KEY]
    task_name = task_config(stored)["name"]
    output = Path(cfg.output).expanduser() if cfg.get("output") else default_output(ckpt_path, fmt)
    if output.suffix.lower() != FORMATS[fmt]:
        raise LightfitError(f"output={output}: a {fmt} model is written to a {FORMATS[fmt]} file")
    module = exported_module(rebuild_network(checkpoint), task_name)
    x = example_batch(stored)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial" + output.suffix)  # whole or not at all
    write, run = (write_onnx, run_onnx) if fmt == "onnx" else (write_torchscript, run_torchscript)
    try:
        with torch.no_grad():
            write(module, x, partial)
            check = torch.cat([x, -x, x * 0.5])  # another batch size than the export's: the dynamic batch
            expected = module(check).numpy()
        got = run(partial, check)
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=RTOL, atol=ATOL):
            worst = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("nan")
            raise LightfitError(
                f"the exported {fmt} model does not compute what the checkpoint does "
                f"(shape {got.shape} vs {expected.shape}, largest difference {worst:.2e}); nothing written"
            )
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    about = describe(stored, task_name, output.name, fmt)
    sidecar = output.with_name(output.name + ".json")  # best.onnx.json: one per model file
    sidecar.write_text(json.dumps(about, indent=2) + "\n")
    log.info(f"wrote {output} and {sidecar.name}: {fmt}, input x {about['input']['shape']}, "
             f"output {about['output']['name']} {about['output']['shape']}")  # fmt: skip
    return output


def main(*, prog: str = "lightfit", config_module: str = "lightfit.conf") -> None:
    """`<prog> export ckpt_path=... format=onnx|torchscript [output=...]`."""
    from lightfit.cli.entry import run_command

    run_command(export, label=f"{prog}-export", config_module=config_module, config_name="export")


if __name__ == "__main__":
    main()

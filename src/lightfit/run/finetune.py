"""Fine-tuning: `init_from=<checkpoint>` starts a new run from another run's network weights.

Weights only: the run builds its optimizer and scheduler anew, starts at epoch 0, and
writes its own checkpoints, split and results, as any fresh run does; only the network's
starting weights differ. (`ckpt_path=` is the other thing: it continues the run that wrote
the checkpoint, optimizer and counters included, and so must share its data, model and task.)

Preprocessing comes from this run's data, not from the checkpoint: the Standardize layer's
`mean` and `std` (`net.0.*`) and, for regression, TargetScale's are computed from the new
training split and are never loaded; every other tensor of the network is. Three reasons.
A table's one-hot widths and an image set's size or channels come from the new data, so
the checkpoint's statistics can have another shape and could not be kept in any case; one
rule for every data set is the rule that always applies. Standardizing is a property of
the data, not something learned: the new data's statistics put its features at mean 0 and
std 1, the scale the loaded first layer was trained on (as Keras users re-`adapt` a
Normalization layer). And the fine-tuned run is then the fresh run of its own config but
for the starting weights, so comparing the two measures what the weights brought.
The price: a feature whose mean really moved between the data sets is re-centred, and the
network no longer sees that shift.

`init_from_strict=false` loads the tensors whose names and shapes match and lists the rest
in one line: a new head for another number of classes, a first layer for a wider one-hot
encoding. The default refuses any mismatch in one line that names the first one. Equal
shapes can still mean other things: a table whose category `Rome` became `Milan` keeps its
width, an image set's classes can be renamed; what the data stored in both checkpoints
(encoded columns, class names, image size and channels) is compared too, and a difference
is refused the same way (or listed in the line, not strict).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")


def preprocessing_keys(net: nn.Module) -> set[str]:
    """The state_dict keys of the network's data statistics (Standardize, TargetScale)."""
    from lightfit.nets.layers import Standardize, TargetScale

    return {
        f"{name}.{buffer}" if name else buffer
        for name, module in net.named_modules()
        if isinstance(module, (Standardize, TargetScale))
        for buffer in module.state_dict()  # saved buffers only: not Standardize's derived scale, shift
    }


def meaning(stored: dict[str, Any]) -> dict[str, Any]:
    """What the network's inputs and outputs stand for, where the data says (`checkpoint_config`):
    a table's encoded columns and class names, an image set's classes, size and channels."""
    found: dict[str, Any] = {}
    if (table := stored.get("table")) is not None:
        from lightfit.data.table import TableEncoding

        encoding = TableEncoding.from_dict(table)
        found |= {"input columns": encoding.feature_names(), "classes": encoding.classes}
    if (images := stored.get("images")) is not None:
        found |= {"classes": images["classes"], "image size": images["size"], "channels": images["channels"]}
    return found


def changes(there: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """Each entry of `meaning` that differs, with where: equal tensor shapes can still read other
    columns (a category replaced by another) or predict other classes."""
    found = []
    for key in there.keys() & here.keys():
        a, b = there[key], here[key]
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            where = (
                f"{len(a)} there, {len(b)} here"
                if at is None
                else f"#{at + 1} is {a[at]} there, {b[at]} here"
            )
        else:
            where = f"{a} there, {b} here"
        found.append(f"{key} ({where})")
    return sorted(found)


def init_weights(
    net: nn.Module, init_from: str, strict: bool = True, stored: dict[str, Any] | None = None
) -> None:
    """Load the weights of the checkpoint at `init_from` into `net`, but for its preprocessing.

    `strict`: every tensor must match by name and shape, and the data's `meaning` (`stored`:
    this run's `checkpoint_config`) must be the checkpoint's, or one LightfitError names the
    first difference. Not strict: the matching tensors are loaded, the others keep their fresh
    initialization, and both lists are in one log line; a checkpoint of which nothing matches
    is refused either way.
    """
    from lightfit.run.checkpoint import CHECKPOINT_KEY, load_checkpoint, net_weights

    path = Path(init_from).expanduser()
    checkpoint = load_checkpoint(path)  # weights only: a hostile pickle is refused, not run
    data = preprocessing_keys(net)
    own = net.state_dict()
    mine = {k: v for k, v in own.items() if k not in data}
    theirs = {k: v for k, v in net_weights(checkpoint).items() if k not in data}
    loaded = {k: theirs[k] for k, v in mine.items() if k in theirs and theirs[k].shape == v.shape}
    differing = [k for k in mine if k not in loaded] + [k for k in theirs if k not in mine]

    def shape(d: dict, key: str) -> str:
        return str(tuple(d[key].shape)) if key in d else "absent"

    # "net." as in the checkpoint's state_dict, where the network is the attribute `net`
    listed = [f"net.{k} {shape(theirs, k)} there, {shape(mine, k)} here" for k in differing]
    if not loaded:
        raise LightfitError(
            f"init_from={path}: none of its network's tensors fits this run's network "
            f"({listed[0]}); is it a checkpoint of this model (model=...)?"
        )
    if differing and strict:
        more = f" (and {len(differing) - 1} more)" if len(differing) > 1 else ""
        raise LightfitError(
            f"init_from={path}: its network differs from this run's: {listed[0]}{more}; "
            "init_from_strict=false loads the tensors that match and starts the others fresh"
        )
    data_changes = changes(meaning(checkpoint[CHECKPOINT_KEY]), meaning(stored or {}))
    if data_changes and strict:
        raise LightfitError(
            f"init_from={path}: its data meant other things: {'; '.join(data_changes)}; "
            "init_from_strict=false loads the tensors that fit all the same"
        )
    net.load_state_dict(own | loaded)
    line = (
        f"init_from={path}: {len(loaded)} of {len(mine)} tensors loaded, preprocessing from this run's data"
    )
    if differing:
        line += f"; not loaded (init_from_strict=false): {', '.join(listed)}"
    if data_changes:
        line += f"; its data differ: {'; '.join(data_changes)}"
    _say(line)


def _say(message: str) -> None:
    """Log once per run, not once per DDP rank."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        log.info(message)

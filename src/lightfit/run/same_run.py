"""A checkpoint from another run: is it the same run, is anything left to train, whose best.ckpt.

`ckpt_path=<file>` (or `last`) continues the run that wrote the checkpoint, optimizer and
loop counters included, and may name a file of another run directory. Before training
starts, `load_resume` (resume.py) asks three things of such a file, and they live here
because they are about the run that wrote it, not about restoring its state:

- Is it the same run? It must share this run's `SAME_RUN` config groups (data, model, task,
  optimizer, scheduler), but for `HOW_LOADED`: a run that continued another's training on
  other data, network or task would report numbers that belong to neither. The refusal
  points to `init_from=` (run/finetune.py), which starts a new run from its weights instead.
- Is anything left to train? One that has trained `trainer.max_epochs` already would train
  nothing and report the numbers of the weights it was given.
- Whose best.ckpt? The checkpoint carries its run's best score; `adopt_best` copies that
  epoch's weights into this run directory, or drops the score, so that results.json names
  only files of this run.

`ckpt_path=auto` needs none of this: it takes this run directory's own newest checkpoint,
checked against the whole config but for `MAY_DIFFER` (resume.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightfit.errors import LightfitError
from lightfit.run.resume import BEST, EPOCH_KEY, Resume, _say, differences

# What a checkpoint given as ckpt_path=<file> (or last) must share with this run: a run that
# continued another's training on other data, network or task would report numbers that
# belong to neither; init_from= (run/finetune.py) starts a new run from its weights instead.
# The optimizer and scheduler too: their state in the checkpoint overrides this run's settings
# (optimizer.lr=0.5 trained on at the old rate, in silence) or does not fit them (Adam's state
# in an SGD: a KeyError inside the first step).
SAME_RUN = ("data", "model", "task", "optimizer", "scheduler")
# Data keys that change how batches reach the device, not which ones: a copied run may differ.
# and model.compile: compiled or eager, the same network.
HOW_LOADED = ("data.num_workers", "data.pin_memory", "data.on_device", "model.compile")


def check_same_run(stored: dict[str, Any], config: dict[str, Any], ckpt_path: str, path: Path) -> None:
    """Refuse, in one line naming the keys, a checkpoint written with other data, model, task,
    optimizer or scheduler."""
    if not stored or not config:  # a checkpoint from before configs were stored
        return
    keys = [
        key
        for group in SAME_RUN
        for key, *_ in differences(stored.get(group), config.get(group), group, HOW_LOADED)
    ]
    if keys:
        raise LightfitError(
            f"ckpt_path={ckpt_path} continues the run that wrote it, but {', '.join(keys)} "
            f"{'differs' if len(keys) == 1 else 'differ'} from this run's; to start this run from its "
            f"weights (a new optimizer, epoch 0), use init_from={path}"
        )


def check_left_to_train(
    checkpoint: dict[str, Any], config: dict[str, Any], ckpt_path: str, path: Path
) -> None:
    """Refuse a checkpoint that has trained `trainer.max_epochs` already: the run would train
    nothing and report the numbers of the weights it was given."""
    max_epochs = (config.get("trainer") or {}).get("max_epochs")
    position = checkpoint.get(EPOCH_KEY)
    if max_epochs is None or max_epochs < 0 or (position is not None and not position["epoch_done"]):
        return  # no limit, or stopped inside an epoch: that epoch is left
    trained = int(checkpoint["epoch"]) + 1  # "epoch" counts from 0
    if trained >= max_epochs:
        epochs = f"{trained} epoch{'s' if trained != 1 else ''}"
        raise LightfitError(
            f"ckpt_path={ckpt_path}: {path} has trained {epochs} and trainer.max_epochs={max_epochs} "
            f"leaves nothing to train; raise trainer.max_epochs to continue it, or start a new run "
            f"from its weights with init_from={path}"
        )


def best_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The best score a checkpoint carries (BestScore's state): the explicit loop's key, or
    the RunCallback's state in a Lightning loop's checkpoint."""
    from lightfit.run.best import BEST_KEY

    if BEST_KEY in checkpoint:
        return checkpoint[BEST_KEY]
    return (checkpoint.get("callbacks") or {}).get("RunCallback") or {}


def holds_best(checkpoint: dict[str, Any], best: dict[str, Any]) -> bool:
    """Whether `checkpoint` holds the weights of the best epoch that `best` records: written
    at the end of that epoch, with that same best score."""
    position = checkpoint.get(EPOCH_KEY)
    at_end = position is None or position["epoch_done"]
    same = all(best_state(checkpoint).get(key) == best.get(key) for key in ("score", "tie_break", "epoch"))
    return at_end and checkpoint.get("epoch") == best["epoch"] and same


def adopt_best(resume: Resume, run_dir: Path) -> Resume:
    """A checkpoint of another run directory continues into this one, which reports only itself.

    The checkpoint carries the best score so far; its weights are that run's best.ckpt, or
    the checkpoint itself when it was written at the best epoch's end. They are copied to
    this run's `checkpoints/best.ckpt` (rank 0), so the best score keeps its weights here and
    results.json names a file of this run directory. When neither holds them (that run went
    on past the checkpoint and found a better epoch), the score is dropped and best.ckpt is
    chosen among the epochs this run trains, said in one line.
    """
    from lightfit.run.checkpoint import load_checkpoint

    path, checkpoint = resume.path, resume.checkpoint
    own = (run_dir / "checkpoints").resolve()
    best = best_state(checkpoint)
    if path.resolve().parent == own or best.get("epoch") is None:
        return resume  # this run's own checkpoint, or no best epoch yet
    for source in (path, path.parent / BEST):
        try:
            found = checkpoint if source == path else load_checkpoint(source)
        except LightfitError:
            continue  # no best.ckpt beside it, or not a readable one
        if holds_best(found, best):
            _copy_to_rank_zero(source, own / BEST)
            _say(f"ckpt_path={path}: its best weights (epoch {best['epoch'] + 1}) copied to {own / BEST}")
            return resume
    _say(
        f"warning: ckpt_path={path}: the weights of its best epoch ({best['epoch'] + 1}) are not "
        f"beside it; best.ckpt is chosen among the epochs this run trains",
        logging.WARNING,
    )
    return Resume(path, checkpoint, keeps_best=False)


def _copy_to_rank_zero(source: Path, target: Path) -> None:
    """Copy `source` to `target` atomically (a temporary file, then a rename), on rank 0 only."""
    import os
    import shutil

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        return  # the other ranks read best.ckpt only after training, past a barrier
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.copy")
    shutil.copyfile(source, partial)
    os.replace(partial, target)

"""Per-batch hooks a callback does not have are not called.

Lightning calls each of six hooks of every callback at every training step, and two at
every validation batch, whether the callback overrides them or not: a profiler context,
a state key and a call, about 2 us each here, 12 to 24 us a step for one callback that
does nothing then. It skips a hook that is not callable (`_call_callback_hooks` in
lightning/pytorch/trainer/call.py, in every Lightning lightfit supports), so lightfit's own
callbacks set the per-batch hooks they do not override to None. Any other hook, and any
per-batch hook a subclass defines, is called as before.
"""

from __future__ import annotations

from typing import TypeVar

from lightning.pytorch.callbacks import Callback

STAGES = ("train", "validation", "test", "predict")
BATCH_HOOKS = tuple(f"on_{stage}_batch_{when}" for stage in STAGES for when in ("start", "end")) + (
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)

C = TypeVar("C", bound=type)


def only_batch_hooks_it_has(cls: C) -> C:
    """`cls` with Callback's own (empty) per-batch hooks set to None, so Lightning skips them."""
    for name in BATCH_HOOKS:
        if getattr(cls, name) is getattr(Callback, name):
            setattr(cls, name, None)
    return cls

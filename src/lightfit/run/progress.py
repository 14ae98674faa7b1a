"""What a run shows while it trains: a progress bar on a terminal, epoch lines elsewhere.

On an interactive terminal Lightning's TQDM bar and a model summary (rich's table with
`rich` installed). Redirected to a file or a CI log, bars would be a wall of carriage
returns, so there are none: `RunCallback` logs one line per epoch instead. `track` does the
same for other long work (reading many runs).

Epochs are counted from 1 on screen, as in the epoch line and the plots: Lightning's bar
labels the last of 300 epochs "Epoch 299", the bar here "Epoch 300/300". Lightning's own
counter (`trainer.current_epoch`, the `epoch` column of metrics.csv) stays 0-based.

Lightning is imported inside the functions: Hydra's logging config imports this module
for `StdoutHandler` before every command, and `--help` should not wait for Lightning.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def epoch_label(current_epoch: int, max_epochs: int | None) -> str:
    """`Epoch 3/20` for Lightning's 0-based `current_epoch` 2; `Epoch 3` without a known end."""
    label = f"Epoch {current_epoch + 1}"
    return f"{label}/{max_epochs}" if max_epochs is not None and max_epochs > 0 else label


def progress_callbacks(interactive: bool) -> list[Any]:
    """On a terminal: one callback that prints the model summary when fit starts (rich's when
    installed) and draws Lightning's TQDM bar; nothing elsewhere.

    One callback for both, and the training bar moved at most every `DRAW_EVERY` seconds (and
    at the epoch's last batch): Lightning calls each callback's per-batch hooks at every step
    (about 2 us per callback and hook here; those it lacks are skipped, run/batch_hooks.py),
    and its bars read the metrics and update at every batch, for a step that takes about a
    millisecond on the CPU. TQDM, not rich's bar: a rich render took 1.5 to 2.5 ms, some in
    Lightning's refresh thread holding the GIL, 7 to 10 ms an 0.8 s epoch of workload (b);
    TQDM's bar about 1 ms (docs/performance.md).
    """
    if not interactive:
        return []
    return [_tqdm_bar(refresh_rate=EVERY)]  # TQDM's refresh_rate counts batches (val, test)


# Moved every 10 batches, the bar was updated 46 times in a 0.9 s epoch of workload (b) (the
# task, the metrics read and formatted) and redrawn 4 times; by the clock it is updated about
# as often as it is redrawn, on a fast step and a slow one alike.
DRAW_EVERY = 0.25
EVERY = 10  # TQDM's validation and test bars move every 10 batches, and at the last one


class DrawClock:
    """Whether the training bar should move at this batch: the clock, or the epoch's last."""

    def __init__(self) -> None:
        self.next = 0.0

    def due(self, trainer: Any, batch_idx: int) -> bool:
        now = time.monotonic()
        if now < self.next and batch_idx + 1 < trainer.num_training_batches:
            return False
        self.next = now + DRAW_EVERY
        return True


def _tqdm_bar(**kwargs: Any) -> Any:
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, TQDMProgressBar

    from lightfit.run.batch_hooks import only_batch_hooks_it_has

    @only_batch_hooks_it_has  # per step: on_train_batch_end only
    class TQDMBar(TQDMProgressBar):
        """Lightning's TQDM bar and model summary (rich's table when rich is installed), with
        epochs counted from 1."""

        summary = ModelSummary() if importlib.util.find_spec("rich") is None else RichModelSummary()
        clock = DrawClock()

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            super().on_fit_start(trainer, pl_module)
            self.summary.on_fit_start(trainer, pl_module)  # prints on rank 0

        def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
            super().on_train_epoch_start(trainer, *args)
            self.train_progress_bar.set_description(epoch_label(trainer.current_epoch, trainer.max_epochs))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            bar = self.train_progress_bar  # moved here by the clock, not by refresh_rate's count
            if bar is not None and not bar.disable and self.clock.due(trainer, args[-1]):
                bar.n = args[-1] + 1  # (outputs, batch, batch_idx)
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
                bar.refresh()

    return TQDMBar(**kwargs)


class StdoutHandler(logging.StreamHandler):
    """A console log handler that writes to whatever `sys.stdout` is at the time.

    A plain StreamHandler keeps the stdout it was given at start-up. A rich progress display
    redirects `sys.stdout` while it is drawn so that printed lines appear above the bar;
    log lines sent to the old stdout would be drawn over by the bar instead.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


def track(items: Sequence[T], description: str, stream: TextIO | None = None) -> Iterator[T]:
    """Yield `items` and show how far along they are, on stderr unless `stream` says otherwise.

    On a terminal with rich installed: a progress bar that disappears when done. Anywhere
    else: one line per item, `reading runs 3/20: multirun/.../2`, so a log shows where it was.
    """
    stream = stream or sys.stderr
    if stream.isatty() and importlib.util.find_spec("rich") is not None:
        from rich.console import Console
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, console=Console(file=stream), transient=True)
        return
    for number, item in enumerate(items, 1):
        print(f"{description} {number}/{len(items)}: {item}", file=stream, flush=True)
        yield item

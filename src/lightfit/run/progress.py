"""What a run shows while it trains: a rich progress bar on a terminal, epoch lines elsewhere.

On an interactive terminal Lightning draws a progress bar and a model summary; with `rich`
installed (`pip install rich`) they are its nicer versions. Redirected to a file or a CI
log, bars would be a wall of carriage returns, so there are none: `EpochLine` prints one
line per epoch instead. `track` does the same for other long work (reading many runs).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


def progress_callbacks(interactive: bool) -> list[Any]:
    """Rich progress bar and model summary on a terminal when rich is installed; else none
    (Lightning then uses its TQDM bar and plain summary, if the Trainer enables them)."""
    if not interactive or importlib.util.find_spec("rich") is None:
        return []
    from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar

    # A redraw every 10 batches, not Lightning's default of every batch: a small network's
    # step takes about a millisecond on the CPU, and the bar needs far fewer redraws than that.
    return [RichProgressBar(refresh_rate=10), RichModelSummary()]


class StdoutHandler(logging.StreamHandler):
    """A console log handler that writes to whatever `sys.stdout` is at the time.

    A plain StreamHandler keeps the stdout it was given at start-up. The rich progress bar
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

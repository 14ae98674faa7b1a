"""What the bench shows while it runs, the way training does: a rich progress bar on a terminal
(when rich is installed), one line per finished item otherwise. The lines are the same in both."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


class Progress:
    """`start(item)` when an item begins, `done(line)` when it ends; use it as a context manager."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        if sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
            from rich import progress

            # No refresh thread (auto_refresh=False): the bar is redrawn only when an item
            # starts or ends. A thread redrawing it while a case trains in this process
            # would take CPU time from the case being timed.
            self.bar = progress.Progress(
                progress.TextColumn("{task.description}"),
                progress.BarColumn(),
                progress.MofNCompleteColumn(),
                progress.TimeElapsedColumn(),
                auto_refresh=False,
                transient=True,
            )
            self.task = self.bar.add_task("bench", total=total)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()

    def start(self, item: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=item)
            self.bar.refresh()

    def done(self, line: str) -> None:
        if self.bar is None:
            print(line, flush=True)
            return
        self.bar.console.print(line, markup=False, highlight=False, soft_wrap=True)  # above the bar
        self.bar.advance(self.task)
        self.bar.refresh()


def headline(result: dict[str, Any]) -> str:
    """A case's result in a few words, for its progress line."""
    if "epoch_seconds" in result:
        return f"{result['epoch_seconds']:.3f} s/epoch"
    if "speedup" in result:
        return f"{result['speedup']:.1f}x TensorDataset + DataLoader"
    if "us_per_step" in result:
        return ", ".join(f"{name} {us:.1f}" for name, us in result["us_per_step"].items()) + " us/step"
    if "seconds" in result and "runs" in result:
        return f"{result['seconds']:.2f} s start to exit"
    if "peak_rss_bytes" in result:
        return f"peak RSS {max(result['peak_rss_bytes']) / 1e9:.2f} GB"
    return result.get("skipped") or result.get("failed") or "done"

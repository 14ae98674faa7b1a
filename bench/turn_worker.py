"""One case of the `turns` case (bench/turns.py), in its own process, training when its turn comes.

    python -m bench.turn_worker CASE WORKLOAD TMP ROWS EPOCHS [LIGHTFIT OVERRIDES...]

At the end of each epoch the case writes the seconds of that epoch (from its turn's start;
"warm-up" for the first, which ran before the turns began) to the file descriptor the
conductor gave it, then waits for one byte, its next turn. The lightfit loops are real
`lightfit train` runs: they wait where each loop builds its epoch line (`epoch_line`), at
the end of the epoch's training and validation, before its checkpoint save, which is
therefore timed as part of the next turn.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning as L

from bench import cases
from bench.runs import lightfit_case
from bench.workloads import device, make_workload, sync

FDS = "BENCH_TURN_FDS"  # "READ,WRITE": the ends of the two pipes to the conductor


class Baton:
    """The turn: reported when an epoch ends, then waited for."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = map(int, os.environ[FDS].split(","))
        self.started: float | None = None

    def epoch_end(self) -> None:
        sync(device())
        ended = time.perf_counter()
        report = "warm-up" if self.started is None else repr(ended - self.started)
        os.write(self.write_fd, f"{report}\n".encode())
        if not os.read(self.read_fd, 1):
            raise SystemExit("bench.turn_worker: the conductor has gone")
        self.started = time.perf_counter()


class PassTurn(cases.EpochClock):
    """The Lightning cases' clock, which also passes the turn: still their only callback, since
    Lightning calls each callback's hooks at every step (a second one would slow it)."""

    def __init__(self, baton: Baton) -> None:
        super().__init__()
        self.baton = baton

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, module)
        self.baton.epoch_end()


def run_lightfit(baton: Baton, overrides: list[str]) -> None:
    """`lightfit train OVERRIDES`, in this process, the turn passed where the epoch line is built."""
    from lightfit.cli import train
    from lightfit.run import console

    epoch_line = console.epoch_line

    def epoch_line_after_turn(*args: object, **kwargs: object) -> str:
        baton.epoch_end()
        return epoch_line(*args, **kwargs)

    # The loops import it by name when the run starts, after this; a loop imported already
    # would keep the original and never pass the turn.
    users = ("lightfit.loops.run_explicit", "lightfit.run.callbacks")
    if imported := [name for name in users if name in sys.modules]:
        raise SystemExit(f"bench.turn_worker: {', '.join(imported)} imported before epoch_line was wrapped")
    console.epoch_line = epoch_line_after_turn  # type: ignore[assignment]
    sys.argv = ["lightfit-train", *overrides]
    train.main()


def main(argv: list[str]) -> None:
    case, name, tmp, rows, epochs, *overrides = argv
    baton = Baton()
    if lightfit_case(case):
        run_lightfit(baton, overrides)
        return
    w = make_workload(name, Path(tmp), int(rows), int(epochs))
    if case == "plain-loop":
        cases.case_plain_loop(w, after_epoch=baton.epoch_end)
    elif case == "fabric-loop":
        cases.case_fabric_loop(w, after_epoch=baton.epoch_end)
    elif case == "lightning-barebones":
        cases.case_lightning_barebones(w, clock=PassTurn(baton))
    elif case == "lightning-trainer":
        cases.case_lightning_trainer(w, clock=PassTurn(baton))
    elif case == "lightning-validated":
        cases.case_lightning_validated(w, clock=PassTurn(baton))
    elif case == "lightning-full":
        cases.case_lightning_full(w, clock=PassTurn(baton), tmp=Path(tmp))
    else:
        raise SystemExit(f"bench.turn_worker: no case {case!r}")


if __name__ == "__main__":
    main(sys.argv[1:])

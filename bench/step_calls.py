"""Python function calls per training step, counted by cProfile: what each loop runs around
the math, a count that does not depend on how busy the machine is.

    python -m bench.step_calls [--steps 200]

Each case trains workload (b) in its own process (no progress bar, one torch thread) and
counts the calls from batch 100 of the second epoch on, over `--steps` steps:

- lightning-trainer, lightning-validated: the bench's references (bench/cases.py);
- automatic, manual: `lightfit train loop=...`, in the process;
- automatic-minimal, manual-minimal: the same runs with the step cut to the minimal
  module's (`F.cross_entropy(self.net(x), y)`, no task loss, no metrics), which sets the
  step's own calls apart from the run's around it.

Times do not count here, calls do: a call is a fraction of a microsecond to a few, so the
counts say where framework code runs per step, and the turns case says what it costs.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightfit.loops import AutomaticLoop, ManualLoop

CASES = ("lightning-trainer", "lightning-validated", "automatic", "automatic-minimal", "manual",
         "manual-minimal")  # fmt: skip
FIRST = 100  # batch of the second epoch where counting starts


class MinimalAutomatic(AutomaticLoop):
    """lightfit's automatic loop with the minimal module's step."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)


class MinimalManual(ManualLoop):
    """lightfit's manual loop with the least a manual step does."""

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


class Window(L.Callback):
    """Profile from batch FIRST of the second epoch, for `steps` batches."""

    def __init__(self, steps: int) -> None:
        self.steps, self.profile = steps, cProfile.Profile()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, i: int) -> None:
        if trainer.current_epoch == 1 and i == FIRST:
            self.profile.enable()
        elif trainer.current_epoch == 1 and i == FIRST + self.steps:
            self.profile.disable()


def count(case: str, steps: int) -> dict[str, float]:
    """Train `case` in this process; its calls per step (all, and primitive: not recursive)."""
    from bench import cases
    from bench.workloads import make_workload

    class Clock(cases.EpochClock, Window):  # the references' only callback: their clock, counting
        def __init__(self) -> None:
            cases.EpochClock.__init__(self)
            Window.__init__(self, steps)

    torch.set_num_threads(1)
    w = make_workload("b", Path(tempfile.mkdtemp(prefix="step-calls-")), 60000, 2)
    if case.startswith("lightning-"):
        window = Clock()
        run = cases.case_lightning_trainer if case == "lightning-trainer" else cases.case_lightning_validated
        run(w, clock=window)
    else:
        window = Window(steps)
        train_lightfit(case, w, window)
    stats = pstats.Stats(window.profile)
    return {"calls": stats.total_calls / steps, "primitive": stats.prim_calls / steps}


def train_lightfit(case: str, w: Any, window: Window) -> None:
    import lightfit.loops.run_lightning as run_lightning
    from lightfit.cli import main

    loop, _, minimal = case.partition("-")
    module = {"automatic": MinimalAutomatic, "manual": MinimalManual}[loop] if minimal else None
    extra = [f"loop.module._target_=bench.step_calls.{module.__name__}"] if module else []
    run_lightning.progress_callbacks = lambda interactive: [window]  # the window, and no bar
    run_dir = tempfile.mkdtemp(prefix="step-calls-run-")
    argv = ["train", f"loop={loop}", "trainer.max_epochs=2", *w.overrides, *extra, f"hydra.run.dir={run_dir}"]
    try:
        main(argv, prog="lightfit")
    except SystemExit as stopped:  # the command's exit, 0 when the run went well
        if stopped.code:
            raise


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.step_calls", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="steps counted per case")
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = p.parse_args(argv)
    if args.case:
        print(json.dumps(count(args.case, args.steps)))
        return
    root = Path(__file__).resolve().parent.parent
    rows = {}
    for case in CASES:
        command = [sys.executable, "-m", "bench.step_calls", "--case", case, "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True, cwd=root, check=True)
        rows[case] = json.loads(done.stdout.strip().splitlines()[-1])
    reference = rows["lightning-trainer"]["calls"]
    print("| case | calls per step | over lightning-trainer |\n|---|---:|---:|")
    for case, row in rows.items():
        print(f"| {case} | {row['calls']:.0f} | {row['calls'] - reference:+.0f} |")


if __name__ == "__main__":
    main()

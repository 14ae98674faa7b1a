"""Python function calls per training step, counted by cProfile: what each loop runs around
the math, a count that does not depend on how busy the machine is.

    python -m bench.step_calls [--steps 200]

Each case trains workload (b) in its own process (no progress bar, one torch thread) and
counts the calls from batch 100 of the second epoch on, over `--steps` steps:

- lightning-trainer, lightning-validated: the bench's references (bench/cases.py);
- automatic, manual: `lightfit train loop=...`, in the process;
- automatic-minimal, manual-minimal: the same runs with the step cut to the minimal
  module's (`F.cross_entropy(self.net(x), y)`, no task loss, no metrics), which sets the
  step's own calls apart from the run's around it;
- plain-loop, fabric-loop: the explicit loop's references (bench/cases.py), counted from a
  wrapper around their `train_step`;
- explicit: `lightfit train loop=explicit`, in the process, counted from a wrapper around
  the run's `on_step` (two calls a step more than it makes, as for the plain loops).

`--diff CASE REFERENCE` lists the functions whose calls per step differ between two cases:
where the one's extra calls go.

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
         "manual-minimal", "plain-loop", "fabric-loop", "explicit")  # fmt: skip
FIRST = 100  # batch of the second epoch where counting starts
# what each case is set against in the table; lightning-trainer for the others
REFERENCES = dict.fromkeys(("plain-loop", "fabric-loop", "explicit"), "plain-loop")


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


class StepWindow:
    """`Window` for the loops without callbacks: `tick(epoch, i)`, before batch `i` of `epoch`,
    is called once per step by a wrapper around one of the loop's own calls."""

    def __init__(self, steps: int) -> None:
        self.steps, self.profile = steps, cProfile.Profile()

    def tick(self, epoch: int, i: int) -> None:
        if epoch == 1 and i == FIRST:
            self.profile.enable()
        elif epoch == 1 and i == FIRST + self.steps:
            self.profile.disable()


def count(case: str, steps: int) -> pstats.Stats:
    """Train `case` in this process; the profile of its `steps` steps."""
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
    elif case in ("plain-loop", "fabric-loop"):
        window = StepWindow(steps)
        train_plain(case, w, window)
    elif case == "explicit":
        window = StepWindow(steps)
        train_explicit(w, window)
    else:
        window = Window(steps)
        train_lightfit(case, w, window)
    return pstats.Stats(window.profile)


def train_plain(case: str, w: Any, window: StepWindow) -> None:
    """plain-loop or fabric-loop, `window.tick` before each `train_step`."""
    from bench import cases

    train_step, per_epoch, done = cases.train_step, w.steps_per_epoch, 0

    def ticking(*args: Any) -> None:  # two calls a step, as the explicit loop's
        nonlocal done
        window.tick(done // per_epoch, done % per_epoch)
        done += 1
        train_step(*args)

    cases.train_step = ticking  # timed_epochs looks it up at each step
    (cases.case_plain_loop if case == "plain-loop" else cases.case_fabric_loop)(w)


def train_explicit(w: Any, window: StepWindow) -> None:
    """`lightfit train loop=explicit`, `window.tick` in the run's `on_step`, after each optimizer
    step inside an epoch: `batches` trained, the next batch's index."""
    from lightfit.loops.run_explicit import ExplicitRun

    on_step = ExplicitRun.on_step

    def ticking(run: ExplicitRun, epoch: int, batches: int) -> None:
        window.tick(epoch, batches)
        on_step(run, epoch, batches)

    ExplicitRun.on_step = ticking  # type: ignore[method-assign]
    train_lightfit("explicit", w, None)


def train_lightfit(case: str, w: Any, window: Window | None) -> None:
    import lightfit.loops.run_lightning as run_lightning
    from lightfit.cli import main

    loop, _, minimal = case.partition("-")
    module = {"automatic": MinimalAutomatic, "manual": MinimalManual}[loop] if minimal else None
    extra = [f"loop.module._target_=bench.step_calls.{module.__name__}"] if module else []
    run_lightning.progress_callbacks = lambda interactive: [window] if window else []  # no bar
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
    p.add_argument("--case", choices=CASES, help="count this case alone, in this process")
    p.add_argument("--diff", nargs=2, choices=CASES, metavar=("CASE", "REFERENCE"),
                   help="the functions whose calls per step differ between two cases")  # fmt: skip
    p.add_argument("--top", type=int, default=40, help="functions listed by --diff")
    p.add_argument("--save", type=Path, help=argparse.SUPPRESS)  # with --case: the profile, for --diff
    args = p.parse_args(argv)
    if args.case:
        stats = count(args.case, args.steps)
        if args.save:
            stats.dump_stats(args.save)
        calls, primitive = stats.total_calls / args.steps, stats.prim_calls / args.steps  # type: ignore[attr-defined]
        print(json.dumps({"calls": calls, "primitive": primitive}))
        return
    if args.diff:
        print_diff(*(per_function(in_subprocess(case, args.steps)) for case in args.diff), args.top)
        return
    print("| case | calls per step | over its reference |\n|---|---:|---:|")
    rows = {case: in_subprocess(case, args.steps).total_calls / args.steps for case in CASES}  # type: ignore[attr-defined]
    for case, calls in rows.items():
        reference = REFERENCES.get(case, "lightning-trainer")
        print(f"| {case} | {calls:.0f} | {calls - rows[reference]:+.0f} ({reference}) |")


def in_subprocess(case: str, steps: int) -> pstats.Stats:
    """`case` counted in a process of its own (a run patches what it counts through)."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / f"{case}.prof"
        command = [sys.executable, "-m", "bench.step_calls", "--case", case, "--steps", str(steps)]
        subprocess.run([*command, "--save", str(saved)], capture_output=True, text=True, cwd=root, check=True)
        stats = pstats.Stats(str(saved))
    stats.steps = steps  # type: ignore[attr-defined]
    return stats


def per_function(stats: pstats.Stats) -> dict[str, float]:
    """Calls per step of each function, by name and place (`forward (linear.py:130)`)."""
    calls: dict[str, float] = {}
    for (path, line, name), (_, n, *_) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{name} ({Path(path).name}:{line})" if line else name
        calls[key] = calls.get(key, 0.0) + n / stats.steps  # type: ignore[attr-defined]
    return calls


def print_diff(case: dict[str, float], reference: dict[str, float], top: int) -> None:
    """The `top` functions whose calls per step differ most between `case` and `reference`."""
    print(f"{sum(case.values()):.0f} calls per step against {sum(reference.values()):.0f}")
    rows = sorted(((case.get(k, 0) - reference.get(k, 0), k) for k in case.keys() | reference.keys()),
                  key=lambda row: (-abs(row[0]), row[1]))  # fmt: skip
    print("| difference | case | reference | function |\n|---:|---:|---:|---|")
    for difference, key in rows[:top]:
        if round(difference, 2):
            print(f"| {difference:+.2f} | {case.get(key, 0):.2f} | {reference.get(key, 0):.2f} | {key} |")


if __name__ == "__main__":
    main()

"""The `turns` case: lightfit's loops and their references, one epoch each in turn.

Issue 12 asks for ratios "in the same run": the explicit loop within 1.10x of the plain
loop, automatic and manual within 1.10x of Lightning's barebones trainer. On this shared
machine the same loop's epochs drift from 0.5 to 1.1 s within a minute, in spells of
several seconds, so two cases run one after the other can differ by more than 10% for no
reason of their own. Here each case runs in its own process (the lightfit loops as real
`lightfit train` runs, on a terminal as a user would start them), and a conductor lets
one process at a time train one epoch, then the next. Each judged pair runs back to back
(explicit next to plain-loop, automatic and manual on either side of lightning-barebones),
and the order reverses every turn, so that a drift favours neither side of a pair. Each
turn's ratio sets epochs against each other that ran a second or two apart; the median
over the turns is what is judged, the middle half of the turns' ratios says how they spread.

Four more references split each ratio into the framework's part and lightfit's: fabric-loop
(plain-loop written with Fabric), lightning-trainer (the minimal module with the full
Trainer, its own logger, checkpoints and bar off) and lightning-validated (lightning-trainer
given the LightningDataModule and a validation_step, so it validates each epoch as every
lightfit run does), and lightning-full: stock Lightning as lightning-hydra-template's defaults
set it up (per-step `self.log` of torchmetrics, ModelCheckpoint, EarlyStopping, CSVLogger, the
TQDM bar), set against automatic+callbacks (`callbacks=[early_stopping,lr_monitor]`).
"""

from __future__ import annotations

import os
import pty
import select
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from bench.runs import failure, lightfit_case, lightfit_overrides, loop_exists, new_run_dir
from bench.turn_worker import FDS
from bench.workloads import Workload

# the order of a turn (reversed every other turn): each judged pair back to back
CASES = ("plain-loop", "explicit", "fabric-loop", "lightning-trainer", "lightning-validated", "automatic",
         "lightning-barebones", "manual", "automatic+callbacks", "lightning-full")  # fmt: skip
RATIOS = (  # (case, over this case, the target: at most this median ratio, or None)
    ("explicit", "plain-loop", 1.10),  # issue 12
    ("automatic", "lightning-barebones", 1.10),
    ("manual", "lightning-barebones", 1.10),
    ("fabric-loop", "plain-loop", None),  # what Fabric's wrappers cost
    ("explicit", "fabric-loop", None),  # what the explicit loop adds to them
    ("lightning-trainer", "lightning-barebones", None),  # what Lightning's full Trainer costs
    ("automatic", "lightning-trainer", None),  # what the automatic loop adds to it
    ("manual", "lightning-trainer", None),
    # Lightning's own cost of validating each epoch through a LightningDataModule, as lightfit does
    ("lightning-validated", "lightning-trainer", None),
    ("automatic", "lightning-validated", 1.05),  # issue 27: what lightfit adds to that
    ("manual", "lightning-validated", None),
    # issue 27: lightfit with early stopping and the lr log against the stock way of the same
    ("automatic+callbacks", "lightning-full", 0.80),
)
TIMEOUT = 600.0  # seconds one epoch may take before the case counts as failed


class WorkerFailed(Exception):
    pass


class Worker:
    """One case's process, on a pseudo-terminal, and the two pipes that pass it the turn."""

    def __init__(self, case: str, w: Workload, tmp: Path, extra: list[str], run_dir: Path) -> None:
        self.case = case
        go_read, self.go = os.pipe()
        self.reports, report_write = os.pipe()
        rest = lightfit_overrides(w, case, run_dir, extra) if lightfit_case(case) else []
        command = [sys.executable, "-m", "bench.turn_worker", case, w.name, str(tmp), str(rows(w)),
                   str(w.epochs), *rest]  # fmt: skip
        terminal, child_terminal = pty.openpty()
        env = {**os.environ, FDS: f"{go_read},{report_write}"}
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=child_terminal, stderr=child_terminal,
            pass_fds=(go_read, report_write), env=env,
        )  # fmt: skip
        for fd in (go_read, report_write, child_terminal):
            os.close(fd)
        self.output = bytearray()  # drained in a thread: a full terminal would block the worker
        threading.Thread(target=self.drain, args=(terminal,), daemon=True).start()

    def drain(self, terminal: int) -> None:
        try:
            while data := os.read(terminal, 1 << 16):
                self.output += data
        except OSError:  # EIO: the worker has closed the terminal
            pass
        finally:
            os.close(terminal)

    def report(self) -> str:
        """The worker's next line: an epoch's seconds, or "warm-up"."""
        line = bytearray()
        while not line.endswith(b"\n"):
            if not select.select([self.reports], [], [], TIMEOUT)[0]:
                self.proc.kill()
            if not (data := os.read(self.reports, 64)):
                raise self.failed(self.proc.wait())
            line += data
        return line.decode().strip()

    def turn(self) -> float:
        os.write(self.go, b"g")
        return float(self.report())

    def finish(self) -> None:
        """Let the run end (test, results.json) and wait for it."""
        os.write(self.go, b"g")
        os.close(self.go)  # no more turns: a worker that asks for one reads the end of the pipe
        self.go = -1
        if (rc := self.proc.wait(timeout=TIMEOUT)) != 0:
            raise self.failed(rc)

    def failed(self, rc: int) -> WorkerFailed:
        """The worker's exit code and the last lines it printed."""
        return WorkerFailed(f"{self.case}: {failure(rc, self.output.decode(errors='replace'))}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.go >= 0:
            os.close(self.go)
        os.close(self.reports)


def rows(w: Workload) -> int:
    """The synthetic data set's rows (train, val and test), for the worker to rebuild `w`."""
    return sum(len(split.rows) for split in w.datamodule.splits.values())


def case_turns(w: Workload, tmp: Path, extra: list[str]) -> dict[str, Any]:
    """Each case's epoch times, turn by turn; w.epochs - 1 turns after a warm-up epoch."""
    chosen = [case for case in CASES if not (run := lightfit_case(case)) or loop_exists(run[0])]
    workers: list[Worker] = []
    try:
        for case in chosen:
            workers.append(Worker(case, w, tmp, extra, new_run_dir(tmp, f"turns-{w.name}-{case}")))
        for worker in workers:  # the warm-up epochs, all at once: not counted
            worker.report()
        seconds: dict[str, list[float]] = {case: [] for case in chosen}
        for turn in range(w.epochs - 1):
            for worker in workers if turn % 2 == 0 else workers[::-1]:
                seconds[worker.case].append(worker.turn())
        for worker in workers:
            worker.finish()
    except WorkerFailed as failed:
        return {"failed": str(failed)}
    finally:
        for worker in workers:
            worker.close()
    return {"turns": w.epochs - 1, "turn_seconds": seconds}


def paired_ratios(result: dict[str, Any], case: str, reference: str) -> list[float]:
    seconds = result.get("turn_seconds", {})
    return [a / b for a, b in zip(seconds.get(case, []), seconds.get(reference, []), strict=False)]


def spread(ratios: list[float]) -> tuple[float, float, float]:
    """The median and the quartiles of the turns' ratios."""
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def turns_rows(workload: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    """The ratio targets on (b) (issues 12 and 27), judged on the turns (see the module's docstring)."""
    result = (workload or {}).get("cases", {}).get("turns", {})
    rows = []
    for case, reference, limit in RATIOS:
        if limit and (ratios := paired_ratios(result, case, reference)):
            median, q1, q3 = spread(ratios)
            measured = f"{median:.2f}x (median of {len(ratios)} turns; middle half {q1:.2f}-{q3:.2f}x)"
            run = case if "+" in case else f"loop={case}"  # a variant names its settings itself
            target = f"(b) {run} <= {limit:.2f}x {reference}, taking turns epoch by epoch"
            rows.append((target, measured, median <= limit))
    return rows


def turns_markdown(w: dict[str, Any]) -> list[str]:
    result = w["cases"].get("turns")
    if result is None:
        return []
    if "turn_seconds" not in result:
        return ["", f"Taking turns: {result.get('skipped') or result.get('failed')}"]
    seconds = result["turn_seconds"]
    each = ", ".join(f"{case} {statistics.median(s):.3f}" for case, s in seconds.items())
    lines = [
        "",
        f"Taking turns ({result['turns']} turns): each case in its own process, one epoch each in "
        "turn, the pairs below back to back, the order reversing every turn, after a warm-up epoch "
        "that all ran at once. Median s/epoch: "
        f"{each}. A ratio is the median of the turns' ratios:",
        "",
        "| ratio | median | middle half of the turns | target |",
        "|---|---:|---|---|",
    ]
    for case, reference, limit in RATIOS:
        if ratios := paired_ratios(result, case, reference):
            median, q1, q3 = spread(ratios)
            target = f"<= {limit:.2f}x" if limit and w["name"] == "b" else ""  # the targets: on (b)
            lines.append(f"| {case} / {reference} | {median:.2f}x | {q1:.2f}-{q3:.2f}x | {target} |")
    return lines


def merge_turns(before: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Two rounds' turns as one list per case, still paired turn by turn."""
    seconds = {case: before["turn_seconds"][case] + s for case, s in result["turn_seconds"].items()}
    return {"turns": before["turns"] + result["turns"], "turn_seconds": seconds}

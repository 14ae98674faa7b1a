"""Kill training at random moments, resume it each time, and check it ends as if never stopped.

For each loop: one run without interruption, then the same command (plus `ckpt_path=auto`)
again and again in another run directory, each time killed at a random optimizer step
(SIGKILL and SIGTERM in turn) until the requested number of kills is reached; the last
attempt runs to the end. Then the final weights (a sha256 of the last checkpoint's
tensors), results.json's metrics and metrics.csv's rows are compared with the
uninterrupted run's. Exit code 1 if any differ.

    make kill-test                                   3 loops, 5 kills each
    make kill-test ARGS="--quick"                    2 loops, 2 kills, 2 epochs (what the tests run)
    python scripts/kill_test.py --ddp --loops automatic --kills 1 --signals TERM
                                                     trainer=ddp_cpu: SIGTERM to the launcher

"Steps redone" counts optimizer steps trained more than once (lost with a SIGKILL since the
last checkpoint): every optimizer step of a single-process run writes one byte to a file
(a torch step hook in the child). Under DDP the ranks are started by lightfit, without
the hook, so it is not counted there.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Small and slow enough to be killed mid-epoch: digits, batch 16 (81 batches an epoch),
# dropout (RNG), a scheduler, a step checkpoint every 7 optimizer steps.
SETTINGS = [
    "data.batch_size=16",
    "checkpoint.every_n_train_steps=7",
    "logger=csv",
    "model.dropout=0.3",
    "scheduler=step",
    "scheduler.step_size=1",
]
# The child: `lightfit train`, with one byte written per optimizer step (steps redone).
CHILD = """
import os, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
fd = os.open(os.environ["KILL_TEST_STEPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
register_optimizer_step_post_hook(lambda *args: os.write(fd, b"."))
sys.argv[0] = "lightfit-train"
from lightfit.cli.train import main
main()
"""
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}


def say(message: str) -> None:
    """One line per run; Rich's console on a terminal when it is installed."""
    if sys.stdout.isatty():
        try:
            from rich.console import Console

            Console().print(message, highlight=False)
            return
        except ImportError:
            pass
    print(message, flush=True)


@dataclass
class Attempt:
    """One start of the command: how it ended and what it did."""

    resumed_from: str  # "fresh", "step/stop checkpoint (epoch 2, batch 14)" or "epoch end (epoch 1)"
    signal: str | None  # the signal sent, None if it ran to the end
    returncode: int
    steps: int | None  # optimizer steps trained (None: not counted, DDP)
    seconds: float


@dataclass
class Outcome:
    loop: str
    attempts: list[Attempt] = field(default_factory=list)
    reference_steps: int | None = None
    same: dict[str, bool] = field(default_factory=dict)

    @property
    def kills(self) -> list[str]:
        return [a.signal for a in self.attempts if a.signal]

    @property
    def steps_redone(self) -> int | None:
        steps = [a.steps for a in self.attempts]
        if self.reference_steps is None or None in steps:
            return None
        return sum(steps) - self.reference_steps

    @property
    def identical(self) -> bool:
        return bool(self.same) and all(self.same.values())


def supports_auto() -> bool:
    """Whether this lightfit has ckpt_path=auto; if not, the script picks the checkpoint itself."""
    try:
        from lightfit.run import resume
    except ImportError:
        return False
    return hasattr(resume, "AUTO")


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """interrupted.ckpt or last.ckpt, whichever is further in training (what ckpt_path=auto takes)."""
    found = []
    for name in ("interrupted.ckpt", "last.ckpt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            found.append(((checkpoint["epoch"], checkpoint["global_step"]), path, checkpoint))
    if not found:
        return None
    _, path, checkpoint = max(found, key=lambda item: item[0])
    return path, checkpoint


def describe(checkpoint: dict | None) -> str:
    if checkpoint is None:
        return "fresh"
    position = checkpoint.get("epoch_position")
    if position and not position["epoch_done"]:
        return f"mid-epoch (epoch {position['epoch'] + 1}, batch {position['batches']})"
    return f"epoch end (epoch {checkpoint['epoch'] + 1})"


def start(run_dir: Path, overrides: list[str], steps_file: Path | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if steps_file is not None:
        env["KILL_TEST_STEPS"] = str(steps_file)
        command = [sys.executable, "-c", CHILD]
    else:
        command = [sys.executable, "-m", "lightfit.cli.train"]
    return subprocess.Popen(
        [*command, *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a group of its own: the DDP ranks can be cleaned up with it
    )


def training_began(proc: subprocess.Popen, run_dir: Path, steps_file: Path | None, since: float) -> bool:
    """Waits until the run trains (its first optimizer step, or a new checkpoint under DDP)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    while proc.poll() is None:
        if steps_file is not None and steps_file.is_file() and steps_file.stat().st_size > 0:
            return True
        if steps_file is None and last.is_file() and last.stat().st_mtime > since:
            return True
        time.sleep(0.02)
    return False


def global_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]


def reached(proc: subprocess.Popen, run_dir: Path, steps_file: Path | None, target: int) -> bool:
    """Waits for a state, not a time: `target` optimizer steps made by this start (under DDP,
    where steps are not counted: a checkpoint at global step `target` or later). False if the
    process ended first."""
    last, seen = run_dir / "checkpoints" / "last.ckpt", None
    while proc.poll() is None:
        if steps_file is not None:
            if steps_file.is_file() and steps_file.stat().st_size >= target:
                return True
        elif last.is_file() and last.stat().st_mtime_ns != seen:
            seen = last.stat().st_mtime_ns  # written whole, then renamed into place
            if global_step(last) >= target:
                return True
        time.sleep(0.02)  # polling interval only; nothing depends on it
    return False


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The ranks of a DDP job die with their launcher; wait for them so that the next start is clean.
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    return proc.returncode, stderr


def count(steps_file: Path | None) -> int | None:
    if steps_file is None:
        return None
    return steps_file.stat().st_size if steps_file.is_file() else 0


def weights_hash(run_dir: Path) -> str:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for key in sorted(state["state_dict"]):
        digest.update(key.encode())
        digest.update(state["state_dict"][key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def results(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in data.items() if "/" in k or k == "epochs"}


def metrics_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def run_loop(loop: str, args: argparse.Namespace, workdir: Path, rng: random.Random) -> Outcome:
    overrides = [f"loop={loop}", f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", *SETTINGS]
    if args.ddp:
        overrides.append("trainer=ddp_cpu")
    overrides += args.override
    outcome = Outcome(loop)
    reference, killed = workdir / f"{loop}-whole", workdir / f"{loop}-killed"
    steps_file = None if args.ddp else workdir / f"{loop}-whole.steps"

    began = time.monotonic()
    proc = start(reference, overrides, steps_file)
    training_began(proc, reference, steps_file, 0)
    trained_from = time.time()
    code, stderr = finish(proc, args.timeout)
    if code != 0:
        raise SystemExit(f"{loop}: the uninterrupted run failed ({code}):\n{stderr[-3000:]}")
    # Training ends with the last epoch's last.ckpt; testing and exiting come after it.
    train_seconds = (reference / "checkpoints" / "last.ckpt").stat().st_mtime - trained_from
    outcome.reference_steps = count(steps_file)
    total = outcome.reference_steps if steps_file else global_step(reference / "checkpoints" / "last.ckpt")
    say(f"{loop}: uninterrupted run, {time.monotonic() - began:.1f}s ({train_seconds:.1f}s training)")
    # Kills land within training: each attempt makes at most this many steps before its kill.
    span = max(1, total // (args.kills + 1))
    signals = [args.signals[i % len(args.signals)] for i in range(args.kills)]

    auto = supports_auto()
    for attempt in range(args.kills + 1):
        found = newest_checkpoint(killed)
        extra = []
        if auto:
            extra = ["ckpt_path=auto"]
        elif found is not None:
            extra = [f"ckpt_path={found[0]}"]
        resumed_from = describe(found[1] if found else None)
        steps = workdir / f"{loop}-killed-{attempt}.steps" if steps_file else None
        began = time.monotonic()
        proc = start(killed, overrides + extra, steps)
        sent = None
        # A random step of this start (under DDP: counted as global steps, from where it resumed).
        resumed_at = found[1]["global_step"] if found and steps is None else 0
        target = resumed_at + rng.randint(1, span)
        if attempt < args.kills and reached(proc, killed, steps, target):
            sent = signals[attempt]
            os.killpg(proc.pid, SIGNALS[sent]) if sent == "KILL" else proc.send_signal(SIGNALS[sent])
        code, stderr = finish(proc, args.timeout)
        expected = {0} if sent is None else {0, -SIGNALS[sent], 128 + SIGNALS[sent]}
        if code not in expected:
            raise SystemExit(f"{loop}: attempt {attempt + 1} failed ({code}):\n{stderr[-3000:]}")
        outcome.attempts.append(Attempt(resumed_from, sent, code, count(steps), time.monotonic() - began))
        how = f"SIG{sent} -> exit {code}" if sent else f"ran to the end (exit {code})"
        say(f"{loop}: attempt {attempt + 1} from {resumed_from}: {how}, {outcome.attempts[-1].seconds:.1f}s")
        if code == 0:
            break

    if (killed / "results.json").is_file():
        outcome.same = {
            "weights": weights_hash(reference) == weights_hash(killed),
            "results.json": results(reference) == results(killed),
            "metrics.csv": metrics_rows(reference) == metrics_rows(killed),
        }
    return outcome


def table(outcomes: list[Outcome]) -> str:
    head = ["loop", "kills", "resumes", "mid-epoch", "steps redone", "weights", "results", "csv", "identical"]
    rows = [head]
    for o in outcomes:
        kinds = ", ".join(f"{o.kills.count(s)} {s}" for s in SIGNALS if s in o.kills) or "0"
        resumes = [a for a in o.attempts if a.resumed_from != "fresh"]
        mid = sum(a.resumed_from.startswith("mid-epoch") for a in resumes)
        redone = "-" if o.steps_redone is None else str(o.steps_redone)
        yes = {True: "yes", False: "NO"}
        same = [yes[o.same[k]] if k in o.same else "-" for k in ("weights", "results.json", "metrics.csv")]
        rows.append([o.loop, kinds, str(len(resumes)), str(mid), redone, *same, yes[o.identical]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", nargs="+", help="default: automatic manual explicit (--quick: 2 of them)")
    parser.add_argument("--kills", type=int, default=5, help="kills per loop (default 5)")
    parser.add_argument("--signals", nargs="+", default=["KILL", "TERM"], choices=list(SIGNALS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="for the kill moments and the training")
    parser.add_argument("--quick", action="store_true", help="automatic and explicit, 2 kills, 2 epochs")
    parser.add_argument("--ddp", action="store_true", help="trainer=ddp_cpu (2 processes)")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--keep", type=Path, help="run the runs in this folder and keep them")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--json", type=Path, help="also write the outcome here")
    args = parser.parse_args(argv)
    if args.quick:
        args.loops, args.kills, args.epochs = args.loops or ["automatic", "explicit"], 2, 2
    args.loops = args.loops or ["automatic", "manual", "explicit"]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="kill-test-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    try:
        outcomes = [run_loop(loop, args, workdir, rng) for loop in args.loops]
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(outcomes), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "loop": o.loop,
                        "kills": o.kills,
                        "resumed_from": [a.resumed_from for a in o.attempts],
                        "attempts": [{"signal": a.signal, "steps": a.steps} for a in o.attempts],
                        "steps_redone": o.steps_redone,
                        "same": o.same,
                    }
                    for o in outcomes
                ],
                indent=1,
            )
        )
    return 0 if all(o.identical for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

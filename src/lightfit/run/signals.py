"""Stopping on a signal: SIGTERM, SIGUSR1 or Ctrl-C end training at a batch end, on every rank.

`StopRequest` turns the signals into a flag that the loops check once per batch (under DDP
the ranks agree on the batch); `TrainingInterrupted` is the one-line error a stopped run
exits with, after `interrupted.ckpt` was saved.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import torch

from lightfit.errors import LightfitError

# SIGUSR1: SLURM's warning before the time limit (`#SBATCH --signal=USR1@90`; see slurm.py).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []))


class TrainingInterrupted(LightfitError):
    """Training stopped on a signal (SIGTERM, SIGUSR1, Ctrl-C) after saving `interrupted.ckpt`."""

    def __init__(self, signum: int, where: str, saved: Path | None, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        kept = f"saved {saved}; " if saved else ""
        self.head = f"stopped by {name} at {where}; {kept}"
        self.resumable = bool(saved) or (run_dir / "checkpoints" / "last.ckpt").is_file()
        nothing = "no epoch had completed, so there is nothing to resume"
        hint = resume_hint(run_dir) if self.resumable else nothing
        super().__init__(self.head + hint)
        self.signum = signum
        self.exit_code = 128 + signum

    def resume_in(self, run_dir: Path) -> None:
        """The hint resumes `run_dir` (a cross-validation's, whose fold this run was), not the run's own."""
        if self.resumable:
            self.args = (self.head + resume_hint(run_dir),)

    def instead_of_hint(self, note: str) -> None:
        """Say `note` (what happens next, e.g. the job was requeued) instead of how to resume."""
        self.args = (self.head + note,)


def resume_hint(run_dir: Path) -> str:
    """How to continue a stopped run: pasted alone, the command takes the run's own overrides
    (cli/rerun.py), which Hydra saved in the run directory."""
    where = shlex.quote(str(run_dir))
    command = _command()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():  # hydra.output_subdir=null: nothing to take them from
        return f"continue with: {command} <the same overrides> ckpt_path=auto hydra.run.dir={where}"
    return (
        f"continue with: {command} ckpt_path=auto hydra.run.dir={where} (it takes that run's "
        f"overrides from {saved}; an override you add wins)"
    )


def _command() -> str:
    """The command that trained, with the run's `--config-dir`s, as it runs pasted into the shell."""
    from hydra.core.hydra_config import HydraConfig

    from lightfit.run.distributed import command_configs

    if not HydraConfig.initialized():
        return f"{shell_program()} train"
    _, dirs = command_configs(HydraConfig.get().runtime)
    return f"{shell_program()} train" + "".join(f" --config-dir={shlex.quote(d)}" for d in dirs)


def shell_program() -> str:
    """The running program as the user's shell finds it: `lightfit`, or a project's own
    (`affair_risk`, whose configs are the package `affair_risk.conf`), or its path in this
    Python's environment (`.venv/bin/affair_risk`) when that is not the one on PATH: the
    environment was not activated, and `affair_risk` alone would be "command not found"."""
    name = program_name()
    script = Path(sys.executable).parent / name
    if not script.is_file():  # not installed as a console script (a package on PYTHONPATH)
        return name
    found = shutil.which(name)
    if found and Path(found).resolve() == script.resolve():
        return name
    relative = os.path.relpath(script)  # .venv/bin/affair_risk, from the project's folder
    return shlex.quote(str(script) if relative.startswith("..") else relative)


def program_name() -> str:
    """`lightfit`, or the project whose config package the command composed: its main config
    source (train) or the one it put on the search path (evaluate, predict: cli/entry.py)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "lightfit"
    for source in HydraConfig.get().runtime.config_sources:
        if source.path == "lightfit.conf":
            continue
        ours = source.provider == "main" or source.provider.startswith("hydra.searchpath")
        if ours and source.schema == "pkg" and source.path.endswith(".conf"):
            return source.path.removesuffix(".conf")  # pkg://affair_risk.conf: the command affair_risk
    return "lightfit"


class StopRequest:
    """While active, SIGTERM, SIGUSR1 and a first Ctrl-C only set `signum`; the loop stops at a batch end.

    A second Ctrl-C interrupts at once, as usual. Outside the main thread (where signal
    handlers cannot be set) this does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        # Under DDP (`agreed`): the process group for the flag, and the exchange in flight.
        self._group: Any = None
        self._pending: torch.Tensor | None = None
        self._work: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def reclaim_sigterm(self) -> None:
        """Point SIGTERM back here after a library (Lightning's Trainer) installed its own handler."""
        if signal.SIGTERM in self._previous:
            signal.signal(signal.SIGTERM, self._handle)

    def agreed(self, distributed: bool = False) -> bool:
        """Whether to stop now; under DDP (`distributed`) every rank gets the same answer.

        The ranks must stop at the same batch, or the ones still training wait forever for
        the others in their next gradient all-reduce, and saving the checkpoint (a collective
        too) never finishes. So each rank's request is reduced with max across ranks: a
        signal seen by any rank stops all of them, one batch later. The flag travels on the
        CPU in a gloo group of its own, started at one batch end and read at the next: the
        GPU is never waited for, and the exchange overlaps a training step.
        """
        if not distributed:
            return self.signum is not None
        dist = torch.distributed
        if self._group is None:  # every rank gets here at its first batch end: a collective
            self._group = dist.new_group(backend="gloo")
        pending, work = self._pending, self._work
        self._pending = torch.tensor([self.signum or 0])
        self._work = dist.all_reduce(self._pending, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        if pending is None:
            return False
        work.wait()
        signum = int(pending)
        if signum and self.signum is None:
            self.signum = signum  # another rank got the signal first
        return signum != 0

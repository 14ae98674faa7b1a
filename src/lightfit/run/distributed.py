"""DDP on one machine from a Hydra job: start the ranks with torch's launcher, not by re-running argv.

Lightning's DDP strategy starts ranks 1..n-1 by re-running `sys.argv`. Under Hydra that
breaks: in a sweep (`-m`) every child re-runs the whole sweep. So when a job asks for
several processes and nothing outside created them (torchrun, SLURM's srun), the Hydra
job process launches them with torch's elastic launcher, the engine behind `torchrun`:

    Hydra job (writes .hydra/, waits)
      ├─ rank 0: python -m lightfit.cli.train <this job's overrides> hydra.run.dir=<job dir>
      └─ rank 1: the same command; Lightning gives it no checkpoints, logs or results.json

The ranks get the environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, TORCHELASTIC_RUN_ID), so Lightning and Fabric join them into one process
group and start nothing themselves. If a rank fails, the launcher stops the others; if the
job is interrupted (Ctrl-C, SIGTERM), it stops them all; the job fails with one line.
A rank that finished ends its process group itself (`end_process_group`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lightfit.errors import EXIT_OTHER_RANK_FAILED, LAUNCHER_PID, LightfitError

ENTRY_POINT = "lightfit.cli.train"  # what each rank runs: python -m lightfit.cli.train
LIGHTFIT_CONF = "pkg://lightfit.conf"  # the configs it composes unless the job's command had others
# Hydra overrides that shape the job process (sweeps, launchers, where it writes), not the ranks.
JOB_ONLY = (
    "hydra.mode",
    "hydra.run.",
    "hydra.sweep.",
    "hydra.launcher",
    "hydra/launcher",
    "hydra.sweeper",
    "hydra/sweeper",
    "hydra.output_subdir",
    "hydra.job.name",
    "hydra.job.id",
    "hydra.job.num",
)
# What torch's launcher passes on to the ranks; SIGUSR1 (SLURM's time-limit warning) stops
# them like SIGTERM, where torch's launcher takes a list (LaunchConfig.signals_to_handle).
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")
MONITOR_INTERVAL_S = 0.1  # torchrun's default from torch 2.3 on


def processes_to_start(trainer: DictConfig) -> int:
    """How many processes this job must start itself: 0 if one is enough or a launcher made them.

    Lightning decides (from accelerator, devices, strategy, num_nodes and the environment),
    so the count is exactly the number it would start by re-running the command.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.strategies.launchers import _SubprocessScriptLauncher
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        strategy = Fabric(
            accelerator=trainer.accelerator,
            devices=trainer.devices,
            strategy=trainer.strategy,
            num_nodes=trainer.num_nodes,
        ).strategy
    except (MisconfigurationException, ValueError, RuntimeError) as exc:  # e.g. trainer=gpu, no GPU
        reason = str(exc).strip().splitlines()[0]
        raise LightfitError(
            f"trainer.accelerator={trainer.accelerator} devices={trainer.devices}: {reason}"
        ) from None
    reruns_argv = isinstance(getattr(strategy, "launcher", None), _SubprocessScriptLauncher)
    if not reruns_argv or strategy.cluster_environment.creates_processes_externally:
        return 0  # one process, spawn/fork strategies, or torchrun/SLURM/LSF/MPI made the processes
    if strategy.num_nodes > 1:
        raise LightfitError(
            f"trainer.num_nodes={strategy.num_nodes}: start lightfit on every node with torchrun or "
            "SLURM (hydra/launcher=slurm); see 'Multiple devices and machines' in the README"
        )
    return strategy.num_processes if strategy.num_processes > 1 else 0


def command_configs(runtime: Any) -> tuple[str | None, list[str]]:
    """What a job's command composed besides lightfit's configs: its main config source
    (`pkg://affair_risk.conf` for a project's command; None for lightfit's own) and its
    `--config-dir`s. The DDP ranks and the stop hint rerun the command with them."""
    sources = runtime.config_sources
    main = next((f"{s.schema}://{s.path}" for s in sources if s.provider == "main"), None)
    dirs = [s.path for s in sources if s.provider == "command-line"]
    return (None if main == LIGHTFIT_CONF else main), dirs


def rank_command(hydra: Any, run_dir: Path) -> list[str]:
    """The arguments after `python` for every rank: this job's config and overrides, its run directory.

    A project's command (`affair_risk train`) is lightfit's train on the project's config
    module: the ranks compose the same one (`--config-path=pkg://affair_risk.conf`).
    """
    main, config_dirs = command_configs(hydra.runtime)
    hydra_overrides = [o for o in hydra.overrides.hydra if not o.lstrip("+~").startswith(JOB_ONLY)]
    return [
        "-m",
        ENTRY_POINT,
        f"--config-name={hydra.job.config_name}",
        *([f"--config-path={main}"] if main else []),
        *(f"--config-dir={path}" for path in config_dirs),
        *hydra.overrides.task,
        *hydra_overrides,
        f"hydra.run.dir={_quoted(run_dir)}",  # the ranks write into this job's directory ...
        "hydra.output_subdir=null",  # ... but the job process has written .hydra/ already
        f"hydra.job.name={hydra.job.name}",  # log to the same <job name>.log
    ]


def launch(nprocs: int, run_dir: Path) -> None:
    """Run this job's training in `nprocs` processes on this machine; return when all are done."""
    from hydra.core.hydra_config import HydraConfig
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    args = rank_command(HydraConfig.get(), run_dir)
    with (
        tempfile.TemporaryDirectory(prefix="lightfit-ddp-") as scratch,  # error files of the ranks
        _environ({LAUNCHER_PID: str(os.getpid())}),
        _signal_handlers_restored(),
        _quiet("torch.distributed.elastic"),  # its failure report is a page; ours is one line
    ):
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nprocs,
            run_id=uuid.uuid4().hex,
            rdzv_backend="c10d",  # this process hosts the rendezvous, as `torchrun --standalone`
            rdzv_endpoint="localhost:0",
            max_restarts=0,  # a failed rank fails the job; Hydra or SLURM decide about retries
            # how often it looks at the ranks: torch 2.2 waits 30 s between looks (0.1 s from 2.3),
            # so a failed rank stopped the others, and a finished run ended, up to 30 s late
            monitor_interval=MONITOR_INTERVAL_S,
            **_log_dir(scratch),  # output is not redirected: ranks print here
        )
        if hasattr(config, "signals_to_handle"):
            config.signals_to_handle = ",".join(n for n in HANDLED_SIGNALS if hasattr(signal, n))
        try:
            elastic_launch(config, sys.executable)(*args)
        except ChildFailedError as exc:
            raise _rank_failed(exc) from None
        except SignalException as exc:  # the launcher has passed the signal on and stopped every rank
            raise _interrupted(exc.sigval, Path(scratch), nprocs) from None


def _log_dir(scratch: str) -> dict[str, Any]:
    """Where the ranks' error files go, as LaunchConfig takes it: a LogsSpecs from torch 2.3 on,
    `log_dir` before (the same layout below it)."""
    try:
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    except ImportError:  # torch 2.2
        return {"log_dir": scratch}
    return {"logs_specs": DefaultLogsSpecs(log_dir=scratch)}


class RankFailed(LightfitError):
    """The job's ranks failed or were stopped; the message and exit code are those of the first."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        # submitit pickles a failed job's exception to its parent: both arguments must travel
        return type(self), (str(self), self.exit_code)


def _rank_message(error_file: str | Path) -> str | None:
    """The one-line error a rank left in its error file (errors.say writes it), if any."""
    path = Path(error_file)
    if not path.is_file():
        return None
    message = json.loads(path.read_text()).get("message")
    return message if isinstance(message, str) else None


def _rank_failed(exc: Any) -> RankFailed:
    """One line for failed ranks: a rank's own one-line error if it left one, else what ended it;
    not a rank that only stopped because another one's process had ended."""
    failures = sorted(exc.failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    for _, failure in failures:
        message = _rank_message(failure.error_file)
        if message and failure.exitcode > 0:
            return RankFailed(message, failure.exitcode)
    causes = [item for item in failures if item[1].exitcode != EXIT_OTHER_RANK_FAILED]
    rank, failure = (causes or failures)[0]
    if failure.exitcode < 0:
        cause, code = f"signal {failure.signal_name()}", 128 - failure.exitcode
    else:
        cause, code = f"exit code {failure.exitcode}", failure.exitcode
    return RankFailed(f"training process rank {rank} failed with {cause} (its output is above)", code)


def _interrupted(signum: int, scratch: Path, nprocs: int) -> RankFailed:
    """Stopped by a signal: rank 0's own line (where it stopped, what it saved) if it left one."""
    name = signal.Signals(signum).name
    files = sorted(scratch.glob("*/attempt_*/0/error.json"))  # torch's layout: <run>/attempt_<n>/<rank>/
    message = _rank_message(files[-1]) if files else None
    return RankFailed(message or f"stopped by {name}; all {nprocs} processes were stopped", 128 + signum)


def exit_with_launcher() -> None:
    """In a rank started by `launch`: die with the job process, even if it is killed with SIGKILL.

    Torch's launcher stops its ranks when it fails or gets a signal it can catch; this covers the
    signal it cannot (Linux only: the kernel sends SIGKILL to this process when its parent dies).
    """
    parent = os.environ.get(LAUNCHER_PID)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(parent):  # it died before prctl took effect
        raise SystemExit(1)


def end_process_group() -> None:
    """In a rank whose command succeeded: wait for the other ranks, then destroy the process group.

    Neither Lightning nor Fabric destroys the default process group, so gloo's threads were
    torn down with the interpreter, and now and then a rank that had finished its work died
    in that teardown (`terminate called without an active exception`, SIGABRT): the job
    failed after writing its results. Destroyed here, in the rank's main thread, before exit.
    The barrier lets no rank close its connections while another still talks to it. Only a
    command that succeeded calls it: after an error a rank exits at once, and the launcher
    stops the others (a barrier would wait for a rank that is gone).
    """
    dist = sys.modules.get("torch.distributed")  # not imported: no process group, nothing to end
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    # torch 2.2's destroy only drops torch's own references; what else holds the group (a
    # trainer, its DDP wrapper) may sit in reference cycles: collected now, not at the exit.
    gc.collect()


def _quoted(path: Path) -> str:
    """A path as a quoted Hydra override value: spaces, commas and '=' stay part of it."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the ranks started inside, then put things back."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """Torch's launcher installs its own handlers and leaves them; a sweep's next job expects Python's."""
    signals = [getattr(signal, name) for name in HANDLED_SIGNALS if hasattr(signal, name)]
    saved = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet(prefix: str) -> Iterator[None]:
    """Silence the loggers under `prefix` (torch sets a level on each of them, not on the parent)."""
    names = [prefix, *(n for n in logging.root.manager.loggerDict if n.startswith(prefix + "."))]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

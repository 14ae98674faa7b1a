"""SLURM: a job near its time limit puts itself back in the queue and continues where it stopped.

    #SBATCH --signal=USR1@90      SLURM sends SIGUSR1 90 s before the time limit
    srun lightfit train ...

On SIGUSR1 the run stops at the next batch end and saves `checkpoints/interrupted.ckpt`
(signals.StopRequest); then rank 0 runs `scontrol requeue $SLURM_JOB_ID`, as Lightning's
`SLURMEnvironment(auto_requeue=True)` does. The requeued job keeps its job id, so its
default run directory, `outputs/slurm-<job id>` (`run_name`), is the same, and in a batch
job `ckpt_path` defaults to `auto` (`default_ckpt_path`): the first attempt finds no
checkpoint there and starts fresh, a requeued one continues from the newest. As with
Lightning's own requeue, no override is needed; `ckpt_path=null` turns it off.

Only SIGUSR1 requeues. SIGTERM saves `interrupted.ckpt` too, but it is also what `scancel`
sends: a job that requeued itself on SIGTERM could not be cancelled. SLURM requeues a
preempted job by itself where the partition says so (PreemptMode=REQUEUE).

Under Hydra's submitit launcher (`hydra/launcher=slurm`) submitit owns requeueing: it
asks for SIGUSR2 and resubmits the job with the same overrides; lightfit calls no
`scontrol` there.
"""

from __future__ import annotations

import os
import signal
import subprocess
from datetime import datetime
from typing import Any

REQUEUE_SIGNAL = signal.SIGUSR1  # what `#SBATCH --signal=USR1@90` sends, and Lightning's default
INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # salloc/srun --pty shells: Lightning's rule too


def job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else SLURM_JOB_ID."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def batch_job_id() -> str | None:
    """The job id in a batch job; None outside SLURM and in an interactive shell.

    In `salloc` or `srun --pty bash` every command of the session shares one job id, so it
    cannot name a run.
    """
    if os.environ.get("SLURM_JOB_NAME") in INTERACTIVE_JOB_NAMES:
        return None
    return job_id()


def run_name(pattern: str) -> str:
    """`slurm-<job id>` in a SLURM batch job (the same after a requeue), else the time as `pattern`.

    The OmegaConf resolver `${lightfit.run_name:%Y-%m-%d/%H-%M-%S}` of conf/train.yaml's `hydra.run.dir`.
    """
    found = batch_job_id()
    return f"slurm-{found}" if found else datetime.now().strftime(pattern)


def default_ckpt_path() -> str | None:
    """`auto` in a SLURM batch job, else None (start fresh): `${lightfit.default_ckpt_path:}`.

    A batch job's run directory is its own (`outputs/slurm-<job id>`), so `auto` starts the
    first attempt fresh and continues a requeued one. Not in `salloc`/`srun --pty` shells,
    whose commands share one job id (Lightning's rule for interactive jobs, `batch_job_id`).
    """
    return "auto" if batch_job_id() else None


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def requeue(signum: int, resumes: bool) -> str | None:
    """After a stop by `signum` was saved: requeue this SLURM job if that is what the signal asks.

    Returns what happened, as a clause of the stop's one-line message (None: nothing to say).
    `resumes`: the run has `ckpt_path=auto` (a batch job's default), so the requeued job
    continues rather than starting over in the same run directory.
    """
    found = job_id()
    if signum != REQUEUE_SIGNAL or found is None or under_submitit():
        return None
    if not resumes:
        return f"SLURM job {found} not requeued: without ckpt_path=auto it would start over"
    try:
        done = subprocess.run(["scontrol", "requeue", found], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scontrol requeue {found} failed ({exc})"
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return f"scontrol requeue {found} failed ({reason[0] if reason else f'exit {done.returncode}'})"
    return f"requeued SLURM job {found}; it continues from there"


def lightning_plugins() -> list[Any]:
    """Lightning's SLURM environment without its own requeueing, where Lightning would pick SLURM.

    Lightning's default, `SLURMEnvironment(auto_requeue=True)`, saves `hpc_ckpt_<n>.ckpt`
    and requeues on SIGUSR1 from inside the signal handler, mid-step; lightfit stops at a
    batch end and requeues itself. Under torchrun inside SLURM, Lightning picks torchrun's
    environment, and so does this (a SLURM environment here would override it).
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]

"""Preemptible clusters: ckpt_path=auto, SLURM requeue, and checkpoint writes that fail.

Real processes and files: a fake `scontrol` on PATH records what it was asked, a real
file-size limit (`ulimit -f`) and a real read-only folder make the writes fail.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config, run_train

from lightfit.errors import LightfitError
from lightfit.run import slurm
from lightfit.run.resume import load_resume, newest_checkpoint

FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$SCONTROL_LOG"
[ -z "$SCONTROL_FAILS" ] || { echo "$SCONTROL_FAILS" >&2; exit 1; }
"""
# What SLURM sets in a one-task batch job; Lightning reads these to choose its SLURM environment.
SLURM_JOB = {
    "SLURM_JOB_ID": "1234",
    "SLURM_JOB_NAME": "train",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}
EPOCHS = ["trainer.max_epochs=3", "data.batch_size=8"]  # epochs long enough (~0.3 s) to stop in one


@pytest.fixture
def scontrol(tmp_path, monkeypatch) -> Path:
    """A fake `scontrol` first on PATH; returns the file where it writes its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SCONTROL_LOG", str(log))
    return log


def start(*args: str, cwd: Path, env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lightfit.train", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_for_line(proc: subprocess.Popen, prefix: str) -> list[str]:
    """The stdout lines up to the first that starts with `prefix`."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"ended before printing {prefix!r}: {proc.stderr.read()}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lightfit-train: error:")]


# -- ckpt_path=auto ------------------------------------------------------------------------


def test_auto_starts_fresh_then_takes_the_newest_readable_checkpoint(tmp_path, caplog):
    run_dir = tmp_path / "run"
    overrides = ["ckpt_path=auto", "logger=none"]
    first = run_train(run_dir, *overrides, "trainer.max_epochs=1")
    assert first["epochs"] == 1
    checkpoints = run_dir / "checkpoints"
    cfg = compose_config(*overrides, "trainer.max_epochs=2")
    config, net = _config_and_net(cfg)

    # A truncated checkpoint ahead of last.ckpt is skipped with a warning naming it.
    (checkpoints / "interrupted.ckpt").write_bytes((checkpoints / "last.ckpt").read_bytes()[:1000])
    path, checkpoint = newest_checkpoint(run_dir)
    assert path.name == "last.ckpt" and checkpoint["epoch"] == 0
    assert f"skips an unreadable checkpoint: {checkpoints / 'interrupted.ckpt'}" in caplog.text

    # The most advanced one wins, whatever its name.
    ahead = torch.load(checkpoints / "last.ckpt", weights_only=True) | {"global_step": 10**6}
    torch.save(ahead, checkpoints / "interrupted.ckpt")
    assert load_resume("auto", run_dir, net, config).path.name == "interrupted.ckpt"

    # The same command with more epochs continues; other settings would give other numbers.
    (checkpoints / "interrupted.ckpt").unlink()
    other = config | {"optimizer": config["optimizer"] | {"lr": 0.5}}
    with pytest.raises(LightfitError, match=r"with optimizer.lr=0.001, this run has optimizer.lr=0.5"):
        load_resume("auto", run_dir, net, other)
    resumed = run_train(run_dir, *overrides, "trainer.max_epochs=2")
    whole = run_train(tmp_path / "whole", "logger=none", "trainer.max_epochs=2")
    assert resumed["epochs"] == 2 and resumed["test/acc"] == whole["test/acc"]


def _config_and_net(cfg):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightfit.nets import build_network
    from lightfit.run.checkpoint import network_config

    dm = instantiate(cfg.data, task=cfg.task.name)
    dm.setup("fit")
    net = build_network(instantiate(network_config(cfg.model)), dm.input_shape, dm.num_outputs)
    return OmegaConf.to_container(cfg, resolve=True), net


def test_an_explicit_bad_checkpoint_is_still_an_error(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LightfitError, match=f"{bad} is not a PyTorch checkpoint"):
        load_resume(str(bad), tmp_path, torch.nn.Linear(1, 1), {})


# -- SLURM ---------------------------------------------------------------------------------


def test_run_dir_is_the_job_id_in_a_slurm_batch_job(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert compose_config(hydra=True).hydra.run.dir.startswith("outputs/20")  # outputs/<date>/<time>
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert compose_config(hydra=True).hydra.run.dir == "outputs/slurm-1234"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert compose_config(hydra=True).hydra.run.dir == "outputs/slurm-1200_7"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc: one job id for many commands
    assert compose_config(hydra=True).hydra.run.dir.startswith("outputs/20")


@pytest.mark.parametrize("job_name", ["train", "bash", "interactive", None])
def test_ckpt_path_is_auto_in_a_batch_job_only(monkeypatch, job_name):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert compose_config().ckpt_path is None  # outside SLURM: a fresh run unless asked
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    if job_name is not None:
        monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    batch = job_name not in ("bash", "interactive")  # salloc, srun --pty: Lightning's interactive names
    assert compose_config().ckpt_path == ("auto" if batch else None)
    assert compose_config("ckpt_path=null").ckpt_path is None  # the command line still wins
    assert compose_config("ckpt_path=last").ckpt_path == "last"


def test_requeue_asks_scontrol_once_and_says_what_happened(scontrol, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.requeue(signal.SIGUSR1, resumes=True) is None  # not in SLURM
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert slurm.requeue(signal.SIGTERM, resumes=True) is None  # scancel sends SIGTERM too
    assert "not requeued: without ckpt_path=auto" in slurm.requeue(signal.SIGUSR1, resumes=False)
    assert not scontrol.exists()
    assert slurm.requeue(signal.SIGUSR1, resumes=True) == "requeued SLURM job 1234; it continues from there"
    assert scontrol.read_text() == "requeue 1234\n"
    monkeypatch.setenv("SCONTROL_FAILS", "Requested operation is presently disabled")
    assert slurm.requeue(signal.SIGUSR1, resumes=True) == (
        "scontrol requeue 1234 failed (Requested operation is presently disabled)"
    )
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # submitit requeues its jobs itself
    assert slurm.requeue(signal.SIGUSR1, resumes=True) is None


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_same_command_continues(tmp_path, scontrol):
    # Neither a run dir (the job id names it) nor ckpt_path=auto (a batch job's default).
    command = ["logger=none", *EPOCHS]
    first = start(*command, cwd=tmp_path, env=SLURM_JOB)
    assert "starting fresh" in "".join(wait_for_line(first, "epoch 1/3"))
    first.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=USR1@90` sends
    _, stderr = first.communicate(timeout=120)
    run_dir = tmp_path / "outputs" / "slurm-1234"
    saved = run_dir / "checkpoints" / "interrupted.ckpt"
    assert first.returncode == 128 + signal.SIGUSR1, stderr
    assert error_lines(stderr) == [
        f"lightfit-train: error: stopped by SIGUSR1 at epoch 2, batch {_batch(saved)}; saved {saved}; "
        "requeued SLURM job 1234; it continues from there"
    ], stderr
    assert "Traceback" not in stderr
    assert scontrol.read_text() == "requeue 1234\n"  # once, by lightfit; not by Lightning as well
    assert not list(run_dir.glob("hpc_ckpt_*"))

    second = start(*command, cwd=tmp_path, env=SLURM_JOB)  # the requeued job: the same command
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    assert f"ckpt_path=auto: resuming from {saved}" in stdout
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 3
    assert scontrol.read_text() == "requeue 1234\n"

    # ckpt_path=null on purpose: a requeued job would start over, so it is not requeued.
    third = start("ckpt_path=null", *command, "hydra.run.dir=fresh", cwd=tmp_path, env=SLURM_JOB)
    wait_for_line(third, "epoch 1/3")
    third.send_signal(signal.SIGUSR1)
    _, stderr = third.communicate(timeout=120)
    assert error_lines(stderr)[0].endswith(
        "SLURM job 1234 not requeued: without ckpt_path=auto it would start over"
    )
    assert scontrol.read_text() == "requeue 1234\n"


def _batch(checkpoint: Path) -> int:
    """The batch of its epoch a Lightning checkpoint was saved after."""
    loaded = torch.load(checkpoint, weights_only=True)
    return loaded["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["started"]


# -- checkpoint writes that fail -----------------------------------------------------------


def _cannot_override_permissions() -> None:
    """In the child process: a root user gives up bypassing file permissions (so chmod binds it too).

    Dropped from the capability bounding set, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and
    CAP_FOWNER are gone from the program that is executed next.
    """
    if os.geteuid() == 0:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        for capability in (1, 2, 3):
            prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP


def _read_only_folders_work_here(tmp_path: Path) -> bool:
    folder = tmp_path / "probe"
    folder.mkdir(mode=0o555)
    probe = [sys.executable, "-c", f"open({str(folder / 'f')!r}, 'w')"]
    denied = subprocess.run(probe, preexec_fn=_cannot_override_permissions, capture_output=True)
    return denied.returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["file-size limit", "read-only folder"])
def test_a_failed_write_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, failure):
    if sys.platform != "linux":
        pytest.skip("uses Linux process limits and capabilities")
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    # Both paths to the writer: Fabric's save (explicit) and the Trainer's (automatic).
    loop = "explicit" if failure == "file-size limit" else "automatic"
    if failure == "read-only folder" and not _read_only_folders_work_here(tmp_path):
        pytest.skip("this user writes into read-only folders (root with CAP_SETPCAP missing?)")
    proc = start(
        f"hydra.run.dir={run_dir}", f"loop={loop}", "logger=none", *EPOCHS,
        cwd=tmp_path, preexec_fn=_cannot_override_permissions,
    )  # fmt: skip
    wait_for_line(proc, "epoch 1/3")
    while not (checkpoints / "last.ckpt").exists():  # the explicit loop prints before it saves
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)  # polling interval only
    before = (checkpoints / "last.ckpt").read_bytes()  # renamed into place: whole once it exists
    if failure == "file-size limit":  # `ulimit -f` on the running process: a write past it fails
        limit = len(before) // 2
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        expected = r"\[Errno 27\] File too large"
    else:
        checkpoints.chmod(0o555)
        expected = r"\[Errno 13\] Permission denied"
    _, stderr = proc.communicate(timeout=120)
    checkpoints.chmod(0o755)
    assert proc.returncode == 1, stderr
    (line,) = [line for line in stderr.splitlines() if line.strip()]
    name = r"(best|last)\.ckpt"
    assert re.fullmatch(
        rf"lightfit-train: error: could not write checkpoint {checkpoints}/{name}: {expected}; "
        rf"the previous {name} is unchanged",
        line,
    ), stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file
    assert (checkpoints / "last.ckpt").read_bytes() == before
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["epoch"] == 0
    assert not (run_dir / "results.json").exists()

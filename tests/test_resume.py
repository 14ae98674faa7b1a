"""Nothing lost: kill -9 and resume, SIGTERM and Ctrl-C, a diverging loss, atomic writes."""

from __future__ import annotations

import copy
import csv
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, run_train

from lightfit.errors import LightfitError
from lightfit.run.checkpoint_io import AtomicCheckpointIO, BackgroundCheckpointIO, copies
from lightfit.run.resume import resolve_ckpt_path, rng_states

# Small batches make an epoch long enough (~0.3 s) to be killed in the middle of one.
SLOW = [
    "trainer.max_epochs=4",
    "data.batch_size=8",
    "model.dropout=0.3",
    "scheduler=step",
    "scheduler.step_size=1",
]
METRICS = ("test/acc", "test/loss", "val/acc", "val/loss")


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lightfit.cli.train", f"hydra.run.dir={run_dir}", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith(prefix):
            return
        assert time.monotonic() < deadline, f"no line starting with {prefix!r}"
    raise AssertionError(f"process ended before printing {prefix!r}: {proc.stderr.read()}")


def wait_for_checkpoint(proc: subprocess.Popen, path: Path, epoch: int) -> None:
    """Waits for a state, not a time: `path` holds `epoch` (0-based) or a later one."""
    seen = None
    while proc.poll() is None:
        if path.is_file() and path.stat().st_mtime_ns != seen:
            seen = path.stat().st_mtime_ns  # written whole, then renamed into place
            if torch.load(path, weights_only=True)["epoch"] >= epoch:
                return
        time.sleep(0.01)  # polling interval only
    raise AssertionError(f"process ended before {path} held epoch {epoch}: {proc.stderr.read()}")


# automatic and explicit: tests/test_kill.py kills them at random moments and resumes them.
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["manual"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, loop):
    overrides = [f"loop={loop}", *SLOW]
    whole = run_train(tmp_path / "whole", *overrides)

    proc = start(tmp_path / "killed", *overrides)
    wait_for_line(proc, "epoch 2/4")  # printed before epoch 2's last.ckpt is saved
    wait_for_checkpoint(proc, tmp_path / "killed/checkpoints/last.ckpt", epoch=1)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    last = torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] in (1, 2)  # the last complete epoch (0-based) before the kill

    resumed = run_train(tmp_path / "killed", *overrides, "ckpt_path=last", "logger=csv")
    rows = list(csv.DictReader((tmp_path / "killed/metrics.csv").open()))
    assert sorted(int(r["epoch"]) for r in rows if r["train/loss"]) == [0, 1, 2, 3]  # the whole run, once
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "killed/checkpoints/last.ckpt")
    assert {k: resumed[k] for k in METRICS} == {k: whole[k] for k in METRICS}


@pytest.mark.slow
@pytest.mark.parametrize(("loop", "signum"), [("automatic", signal.SIGTERM), ("explicit", signal.SIGINT)])
def test_signal_stops_at_a_batch_and_saves_a_checkpoint(tmp_path, loop, signum):
    run_dir = tmp_path / "run"
    proc = start(run_dir, f"loop={loop}", *SLOW)
    wait_for_line(proc, "epoch 1/4")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("lightfit-train: error:")]
    assert len(lines) == 1 and f"stopped by {signal.Signals(signum).name} at epoch" in lines[0], stderr
    assert "Traceback" not in stderr
    interrupted = torch.load(run_dir / "checkpoints/interrupted.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)  # complete epochs only
    assert interrupted["state_dict"].keys() == last["state_dict"].keys()
    assert interrupted["epoch"] >= last["epoch"]
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["automatic", "explicit"])
def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, loop):
    run_dir = tmp_path / "run"
    # Epoch 1 trains normally; the scheduler then multiplies the learning rate by 1e12.
    overrides = [
        f"loop={loop}",
        "optimizer=sgd",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=1e12",
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightfit.cli.train",
            f"hydra.run.dir={run_dir}",
            "trainer.max_epochs=3",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "the training loss became NaN or infinite at epoch 2, batch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    last = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (run_dir / "results.json").exists()


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # fails half-way through torch.save


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"weights": torch.zeros(1000), "bad": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))


def test_a_background_write_gives_best_the_same_file_and_keeps_it_when_last_moves_on(tmp_path):
    last, best = tmp_path / "last.ckpt", tmp_path / "best.ckpt"
    io = BackgroundCheckpointIO()
    weights = torch.ones(3)
    io.save_checkpoint({"weights": weights}, last, copies(best))
    weights.add_(1)  # training goes on while the thread writes: the write has its own copy
    io.wait()
    assert best.stat().st_ino == last.stat().st_ino  # written once, two names
    io.save_checkpoint({"weights": weights}, last, copies(None))  # the score did not improve
    io.teardown()
    assert torch.equal(torch.load(best, weights_only=True)["weights"], torch.ones(3))
    assert torch.equal(torch.load(last, weights_only=True)["weights"], torch.full((3,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file


def test_a_background_save_keeps_the_moment_it_was_made_and_logs_its_cost(tmp_path, caplog):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "state_dict": net.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "rng_states": rng_states(),
        "position": {"ranks": [{"seen": np.arange(3)}], "counts": [1, 2]},
    }
    expected = copy.deepcopy(state)
    io = BackgroundCheckpointIO()
    with io.timed():
        io.save_checkpoint(state, tmp_path / "last.ckpt")
    optimizer.step()  # training goes on: weights and momentum change in place
    state["position"]["ranks"][0]["seen"][0] = 99
    state["position"]["counts"].append(3)
    with caplog.at_level(logging.DEBUG, logger="lightfit"):
        io.teardown()
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert_equal_nested(saved, expected)
    assert isinstance(saved["state_dict"], OrderedDict)  # as load_state_dict gets it from a plain save
    assert re.fullmatch(
        r"checkpoints: 1 written; [\d.]+ ms per save on the training thread, [\d.]+ ms per write in the "
        r"background, [\d.]+ ms of it CPU",
        caplog.records[-1].getMessage(),
    )


def assert_equal_nested(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_equal_nested(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal_nested(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_a_failed_background_write_is_raised_by_the_next_save(tmp_path):
    path = tmp_path / "last.ckpt"
    io = BackgroundCheckpointIO()
    io.save_checkpoint({"weights": torch.ones(3)}, path)
    io.save_checkpoint({"weights": torch.zeros(3), "bad": Unpicklable()}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.teardown()  # or the next save: the training thread hears of it
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(3))


def test_ckpt_path_last_needs_a_checkpoint(tmp_path):
    with pytest.raises(LightfitError, match=r"ckpt_path=last: there is no .*last.ckpt; point hydra.run.dir"):
        resolve_ckpt_path("last", tmp_path)
    with pytest.raises(LightfitError, match="checkpoint not found: .*nope.ckpt"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_resume_from_a_path_into_a_new_run_dir(tmp_path):
    first = run_train(tmp_path / "a", "trainer.max_epochs=1", "logger=none")
    resumed = run_train(
        tmp_path / "b",
        "trainer.max_epochs=2",
        "logger=none",
        f"ckpt_path={tmp_path / 'a/checkpoints/last.ckpt'}",
    )
    whole = run_train(tmp_path / "c", "trainer.max_epochs=2", "logger=none")
    assert resumed["test/acc"] == whole["test/acc"] and first["epochs"] == 1
    # Exact: the resumed run ends with the weights of the run that was never stopped.
    assert_same_weights(tmp_path / "b/checkpoints/last.ckpt", tmp_path / "c/checkpoints/last.ckpt")
    assert json.loads((tmp_path / "b/results.json").read_text())["epochs"] == 2


def test_resume_refuses_a_checkpoint_of_another_shape(tmp_path):
    run_train(tmp_path / "a", "trainer.max_epochs=1", "logger=none")
    # named by the config key that makes the shapes differ (check_compatible: the tensor, for
    # a checkpoint without its config)
    with pytest.raises(LightfitError, match=r"but model.hidden differs from this run's; .* use init_from="):
        run_train(
            tmp_path / "a", "trainer.max_epochs=2", "logger=none", "model.hidden=[32]", "ckpt_path=last"
        )


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_resume_refuses_a_hostile_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "payload": Payload(marker)}, path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightfit.cli.train",
            f"ckpt_path={path}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"lightfit-train: error: {path} was refused")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.core
def test_a_stop_mid_epoch_with_accumulation_resumes_exactly(tmp_path):
    """Manual loop, gradients accumulated over 3 batches: the stop waits for the optimizer step,
    and resuming from interrupted.ckpt gives the uninterrupted run's weights, results and rows."""
    overrides = ["loop=manual", *SLOW, "trainer.max_epochs=3", "loop.accumulate_grad_batches=3", "logger=csv"]
    whole = run_train(tmp_path / "whole", *overrides)

    proc = start(tmp_path / "stopped", *overrides)
    wait_for_line(proc, "epoch 1/3")
    # At once: epochs 2 and 3 are the window (a sleep here let a fast machine finish the run).
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    interrupted = tmp_path / "stopped/checkpoints/interrupted.ckpt"
    position = torch.load(interrupted, weights_only=True)["epoch_position"]
    assert position["epoch"] in (1, 2) and not position["epoch_done"], position
    assert position["batches"] % 3 == 0  # on an accumulation boundary

    resumed = run_train(tmp_path / "stopped", *overrides, f"ckpt_path={interrupted}")
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "stopped/checkpoints/last.ckpt")
    assert {k: resumed[k] for k in METRICS} == {k: whole[k] for k in METRICS}
    rows = [(tmp_path / run / "metrics.csv").read_text() for run in ("whole", "stopped")]
    assert rows[0] == rows[1]


@pytest.mark.slow  # two processes, a stop and a resume: about 20 s; the in-process resumes stay in make test
def test_the_stop_hint_pasted_alone_resumes_to_the_same_weights(tmp_path):
    # data=diabetes: the default config (digits) would hold a different network
    overrides = ["data=diabetes", "data.batch_size=8", "model.dropout=0.3", "trainer.max_epochs=30"]
    whole = run_train(tmp_path / "whole", *overrides)
    proc = start(tmp_path / "stopped", *overrides)
    wait_for_line(proc, "epoch 2/30")
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    saved = tmp_path / "stopped" / ".hydra" / "overrides.yaml"
    hint = re.search(
        r"; continue with: (\S*lightfit train .*) \(it takes that run's overrides from (\S+);", stderr
    )
    assert hint and hint.group(2) == str(saved), stderr
    command = shlex.split(hint.group(1))  # lightfit, or .venv/bin/lightfit when not on PATH
    assert command[2:] == ["ckpt_path=auto", f"hydra.run.dir={tmp_path / 'stopped'}"]

    # pasted into a shell, as it is: the program is found
    resumed = subprocess.run(hint.group(1), shell=True, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {tmp_path / 'stopped'} with its own overrides: {' '.join(overrides)}" in resumed.stdout
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "stopped/checkpoints/last.ckpt")
    results = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert results["test/loss"] == whole["test/loss"] and results["task"] == "regression"


def test_a_resuming_command_takes_the_saved_overrides_under_its_own(tmp_path):
    from lightfit.cli.rerun import saved_overrides

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- data=diabetes\n- model.hidden=[8]\n- trainer.max_epochs=3\n- +model.extra=1\n"
    )
    here = f"hydra.run.dir={tmp_path}"
    assert saved_overrides(["ckpt_path=auto", here, "trainer.max_epochs=5"]) == (
        ["data=diabetes", "model.hidden=[8]", "+model.extra=1"],
        tmp_path,
    )
    assert saved_overrides(["ckpt_path=last", here, "model=cnn"])[0] == [
        "data=diabetes",
        "trainer.max_epochs=3",
    ]
    assert saved_overrides([here, "trainer.max_epochs=5"]) == ([], None)  # not resuming: a fresh run there
    assert saved_overrides(["-m", "ckpt_path=auto", here]) == ([], None)
    assert saved_overrides(["ckpt_path=auto", f"hydra.run.dir={tmp_path / 'elsewhere'}"]) == ([], None)


@pytest.mark.core
def test_the_explicit_loop_resumed_at_a_later_epoch_shuffles_as_that_epoch(tmp_path):
    """Epoch 3 of a run resumed after epoch 2 sees epoch 3's order, not epoch 0's again: the
    loop sets the sampler's epoch itself (a loader wrapped by Fabric would count from 0)."""
    overrides = ["loop=explicit", *SLOW[1:], "logger=none"]
    whole = run_train(tmp_path / "whole", *overrides, "trainer.max_epochs=3")
    run_train(tmp_path / "resumed", *overrides, "trainer.max_epochs=2")
    resumed = run_train(tmp_path / "resumed", *overrides, "trainer.max_epochs=3", "ckpt_path=last")
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "resumed/checkpoints/last.ckpt")
    assert {k: resumed[k] for k in METRICS} == {k: whole[k] for k in METRICS}


def test_fit_refuses_a_fabric_loader_when_it_resumes_at_a_later_epoch():
    from lightning.fabric import Fabric

    from lightfit.data import digits
    from lightfit.loops import FitHooks
    from lightfit.loops.explicit import fit
    from lightfit.tasks import Task

    fabric = Fabric(accelerator="cpu", devices=1)
    dm = digits(batch_size=64)
    dm.setup("fit")
    net = torch.nn.Linear(64, 10)
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    loader = fabric.setup_dataloaders(dm.train_dataloader())
    task = Task("classification", num_outputs=10)
    with pytest.raises(LightfitError, match=r"fit\(hooks.start_epoch=1\): pass the train DataLoader itself"):
        fit(fabric, model, optimizer, loader, epochs=2, task=task, hooks=FitHooks(start_epoch=1))

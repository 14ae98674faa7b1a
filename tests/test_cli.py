"""The command line as a user meets it: outputs of a run, and one clear line for each mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli


@pytest.mark.slow
def test_fast_dev_run_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    proc = cli("train", "trainer.fast_dev_run=true", f"hydra.run.dir={run}", module="lightfit")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/" in proc.stdout and "test/acc" in proc.stdout
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test/acc"] <= 1
    assert (run / ".hydra" / "config.yaml").is_file()


def test_console_script_runs_the_same_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "lightfit-train"  # installed beside this Python
    assert exe.is_file(), "lightfit-train is not installed"
    proc = subprocess.run([exe, "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "loop:" in proc.stdout


def test_one_command_lists_its_subcommands(tmp_path):
    exe = Path(sys.executable).parent / "lightfit"  # the console script, installed beside this Python
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "evaluate", "predict", "export", "new", "plot", "compare"):
        assert f"\n  {command} " in proc.stdout, command
    unknown = cli("fit", module="lightfit")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "lightfit: error: unknown command 'fit'; choose from train, evaluate" in unknown.stderr
    bare = cli(module="lightfit")
    assert bare.returncode == 2 and "usage: lightfit <command>" in bare.stdout


@pytest.mark.slow
def test_hydra_flags_work_after_the_subcommand(tmp_path):
    proc = cli("train", "--cfg", "job", "data=diabetes", module="lightfit", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "name: regression" in proc.stdout and "loss: mse" in proc.stdout  # data=diabetes chose the task
    proc = cli("train", "--help", module="lightfit", cwd=tmp_path)
    assert proc.returncode == 0 and "task: classification, regression" in proc.stdout
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lightfit-train: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_option_in_a_group(tmp_path):
    proc = cli("model=transformer", cwd=tmp_path)
    assert_one_line_error(proc, "model/transformer", "cnn, mlp")


def test_unknown_key(tmp_path):
    assert_one_line_error(cli("trainer.max_epoch=3", cwd=tmp_path), "max_epoch")


def test_wrong_override_syntax(tmp_path):
    assert_one_line_error(
        cli("trainer.max_epochs=[1", cwd=tmp_path), "cannot parse override", "trainer.max_epochs=[1"
    )


@pytest.mark.slow
def test_missing_data_file(tmp_path):
    proc = cli(
        "data=npz", f"data.path={tmp_path / 'missing.npz'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "data file not found", "missing.npz")
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.slow
def test_npz_without_expected_keys(tmp_path):
    np.savez(tmp_path / "bad.npz", a=np.zeros((4, 2)), b=np.zeros(4))
    proc = cli(
        "data=npz", f"data.path={tmp_path / 'bad.npz'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path
    )
    assert_one_line_error(proc, "bad.npz has keys [a, b]", "expected 'x' and 'y'")


def test_required_value_missing(tmp_path):
    assert_one_line_error(cli("data=npz", cwd=tmp_path), "data.path=")


def test_an_old_torch_with_numpy_2_is_one_line():
    """torch 2.2 with numpy 2 raises `Numpy is not available` at the first from_numpy (measured)."""
    from importlib.metadata import version

    from lightfit.errors import one_line

    message = one_line(RuntimeError("Numpy is not available"))
    assert message == (
        f"torch {version('torch')} cannot use numpy {version('numpy')} (it was built against numpy 1.x): "
        "pip install 'numpy<2', or a newer torch"
    )
    assert one_line(RuntimeError("something else")) is None  # a bug keeps its traceback

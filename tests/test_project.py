"""A project's own command on its own configs: `lightfit.cli.main(prog=..., config_module=...)`.

The project here is a real package written into a temporary folder, as a generated project
would be: its conf/ holds only its train.yaml and what it adds; lightfit's groups come
through Hydra's search path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN_YAML = """\
defaults:
  - train_base
  - data: digits
  - model: mlp
  - loop: automatic
  - _self_
  - experiment: null
  - hparams_search: null
  - debug: null

hydra:
  searchpath: [pkg://lightfit.conf]
"""


def write_project(root: Path, name: str = "proj", files: dict[str, str] | None = None) -> Path:
    """A package `name` with conf/train.yaml (and `files`, paths relative to the package)."""
    package = root / name
    for path, text in {"__init__.py": "", "conf/__init__.py": "", "conf/train.yaml": TRAIN_YAML,
                       **(files or {})}.items():  # fmt: skip
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(text)
    return root


def project_cli(root: Path, *args: str, name: str = "proj") -> subprocess.CompletedProcess:
    """`<name> <args>`: the project's command, as its console script runs it."""
    code = f"from lightfit.cli import main; main(prog={name!r}, config_module={name + '.conf'!r})"
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTFIT_TRACEBACK", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(
        tmp_path / "src",
        files={
            "conf/loop/mine.yaml": "name: manual\naccumulate_grad_batches: 3\n",
            "conf/data/mine.yaml": "defaults:\n  - digits\n  - _self_\nbatch_size: 7\n",
        },
    )


def test_a_project_composes_its_configs_with_lightfits_groups(project):
    proc = project_cli(project, "train", "--cfg", "job", "loop=mine", "trainer=ddp_cpu", "optimizer=sgd")
    assert proc.returncode == 0, proc.stderr
    assert "name: manual" in proc.stdout and "accumulate_grad_batches: 3" in proc.stdout
    assert "strategy: ddp" in proc.stdout and "_target_: torch.optim.sgd.SGD" in proc.stdout


def test_a_projects_errors_and_help_name_its_command(project):
    proc = project_cli(project, "train", "trainer.max_epoch=3")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("proj-train: error: ") and "max_epoch" in lines[0]
    usage = project_cli(project, "--help")
    assert usage.returncode == 0 and "usage: proj <command>" in usage.stdout and " new " not in usage.stdout
    unknown = project_cli(project, "new", "x", "y")
    assert unknown.returncode == 2 and "proj: error: unknown command 'new'" in unknown.stderr


def test_a_project_evaluates_with_lightfits_evaluate_yaml(project):
    proc = project_cli(project, "evaluate", "ckpt_path=missing.ckpt")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "proj-evaluate: error: checkpoint not found: missing.ckpt"
    proc = project_cli(project, "evaluate", "--cfg", "job", "ckpt_path=a.ckpt", "data=mine")
    assert proc.returncode == 0 and "batch_size: 7" in proc.stdout, proc.stderr  # the project's data group
    proc = project_cli(project, "predict", "ckpt_path=missing.ckpt", "input=x.npy", "output=y.npy")
    assert proc.returncode == 2 and proc.stderr.startswith("proj-predict: error: "), proc.stderr


def test_ddp_ranks_compose_the_projects_configs(project, monkeypatch, tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from lightfit.run.distributed import rank_command

    monkeypatch.syspath_prepend(str(project))
    GlobalHydra.instance().clear()
    with initialize_config_module("proj.conf", version_base="1.3"):
        cfg = compose("train", overrides=["trainer=ddp_cpu", "loop=mine"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    command = rank_command(cfg.hydra, tmp_path / "run")
    assert command[:4] == ["-m", "lightfit.cli.train", "--config-name=train", "--config-path=pkg://proj.conf"]
    assert "loop=mine" in command


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+loop.module.l1=0.1", "loop.module (lightfit.loops.AutomaticLoop): Key 'l1' not in"),
        (
            "loop.module._target_=lightfit.loops.Nothing",
            "loop.module._target_=lightfit.loops.Nothing cannot be",
        ),
        ("+loop.fit.epochs_=x", "loop.fit (lightfit.loops.explicit.fit): Key 'epochs_' not in"),
    ],
)
def test_a_loops_own_keys_are_checked_against_its_signature(tmp_path, override, message):
    from conftest import run_train

    from lightfit.errors import LightfitError

    loop = "loop=explicit" if "loop.fit" in override else "loop=automatic"
    with pytest.raises(LightfitError, match=re.escape(message)):
        run_train(tmp_path / "run", loop, override, "logger=none")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before anything ran

"""Shared helpers: real Hydra composition, real training runs (in-process or as a CLI)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lightfit.cli import config

config.register()  # as lightfit.cli.train.main() does before Hydra composes
FAST = ["trainer.max_epochs=2", "logger=none"]

# Each optional extra in pyproject.toml and a module it installs. `make test` installs only
# .[dev,plot]; a test of another extra skips with one line that says how to install it.
# LIGHTFIT_EXPECT_EXTRAS=1 (.ci/run, after installing them all): a missing extra fails instead.
EXTRAS = {
    "bench": "keras",
    "docs": "mkdocs",
    "export": "onnxruntime",
    "serve": "litserve",
    "images": "PIL",
    "mlflow": "mlflow",
    "optuna": "hydra_plugins.hydra_optuna_sweeper",
    "plot": "matplotlib",
    "rich": "rich",
    "slurm": "hydra_plugins.hydra_submitit_launcher",
    "table": "pyarrow",
    "template": "copier",
    "wandb": "wandb",
    "tensorboard": "tensorboard",
}


def _installed(extra: str) -> bool:
    if os.environ.get("LIGHTFIT_EXPECT_EXTRAS") == "1":
        return True  # the test runs, and fails on the import if the extra is missing
    try:
        return importlib.util.find_spec(EXTRAS[extra]) is not None
    except ModuleNotFoundError:  # hydra_plugins itself is missing
        return False


def _why(extra: str) -> str:
    return f'needs {extra}: pip install -e ".[{extra}]"'


def needs(extra: str) -> pytest.MarkDecorator:
    """Mark a test (or `pytestmark = needs(...)`, a module) that runs only with an optional extra."""
    return pytest.mark.skipif(not _installed(extra), reason=_why(extra))


def require(extra: str) -> None:
    """Inside a test or at the top of a module: skip the rest of it without the optional extra."""
    __tracebackhide__ = True  # the skip line names the caller's file and line, not this one
    if not _installed(extra):
        pytest.skip(_why(extra), allow_module_level=True)


def compose_config(*overrides: str, run_dir: Path | None = None, hydra: bool = False) -> DictConfig:
    """Compose conf/train.yaml as `python -m lightfit.cli.train` would, with the run dir set.

    `hydra=True` keeps the `hydra` node (launcher settings and the like).
    """
    GlobalHydra.instance().clear()
    with initialize_config_module("lightfit.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
    if not hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def run_train(run_dir: Path, *overrides: str) -> dict:
    """A real training run in this process; returns results.json."""
    from lightfit.cli.train import train

    run_dir.mkdir(parents=True, exist_ok=True)
    train(compose_config(*overrides, run_dir=run_dir))
    return json.loads((run_dir / "results.json").read_text())


def state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_dict(a), state_dict(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def cli(
    *args: str, cwd: Path | None = None, module: str = "lightfit.cli.train", timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, in a fresh process (`module="lightfit evaluate"`: a subcommand)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTFIT_TRACEBACK", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", *module.split(), *args],  # module: "lightfit.train" or "lightfit predict"
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def predicted(run: Path, input_path: Path, tmp_path: Path) -> Any:
    """What `lightfit predict` writes for `input_path`: probabilities or values, (N, ...)."""
    out = tmp_path / f"predicted-{input_path.stem}.npy"
    proc = cli(f"ckpt_path={run}/checkpoints/best.ckpt", f"input={input_path}", f"output={out}",
               module="lightfit predict")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import numpy as np

    return np.load(out)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"

"""A project's own command on its own configs: `lightfit.cli.main(prog=..., config_module=...)`.

The project here is a real package written into a temporary folder, as a generated project
would be: its conf/ holds only its train.yaml and what it adds; lightfit's groups come
through Hydra's search path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

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


def test_a_projects_own_optimizer_and_trainer_files_replace_lightfits(tmp_path):
    """As in a generated project: its trainer/default.yaml is what trainer=gpu, ... start from."""
    trainer = "defaults:\n  - /schema/trainer@_here_\n  - _self_\nmax_epochs: 7\naccelerator: cpu\n"
    optimizer = "defaults:\n  - /schema/optimizer/adam@_here_\n  - _self_\nlr: 0.005\n"
    files = {"conf/trainer/default.yaml": trainer, "conf/optimizer/adam.yaml": optimizer}
    root = write_project(tmp_path / "src", files=files)
    proc = project_cli(root, "train", "--cfg", "job", "trainer=auto")
    assert proc.returncode == 0, proc.stderr
    assert "max_epochs: 7" in proc.stdout and "lr: 0.005" in proc.stdout
    assert "accelerator: auto" in proc.stdout  # trainer=auto says so itself


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


class L1Module(L.LightningModule):
    """A project's own module, written from scratch: lightfit's contract and an L1 penalty."""

    def __init__(self, net, task, optimizer, scheduler=None, l1: float = 0.0) -> None:
        super().__init__()
        self.net, self.task, self.l1 = net, task, l1
        self.make_optimizer = optimizer
        self.train_metrics = task.stage_metrics("train")
        self.val_metrics = task.stage_metrics("val")
        self.test_metrics = task.stage_metrics("test")

    def step(self, batch, metrics):
        x, y = batch
        outputs = self.net(x)
        loss = self.task.loss(outputs, y)
        metrics.update(outputs, y, loss)
        return loss

    def training_step(self, batch, batch_idx):
        penalty = self.l1 * sum(p.abs().sum() for p in self.net.parameters())
        return self.step(batch, self.train_metrics) + penalty

    def validation_step(self, batch, batch_idx):
        self.step(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        self.step(batch, self.test_metrics)

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


class NoMetrics(L.LightningModule):
    def __init__(self, net, task, optimizer, scheduler=None) -> None:
        super().__init__()
        self.net, self.task = net, task

    def training_step(self, batch, batch_idx):
        return self.task.loss(self.net(batch[0]), batch[1])


def no_hooks_fit(fabric, model, optimizer, train_loader, val_loader=None, *, task, epochs):
    return {}


def test_a_module_missing_the_contract_fails_in_one_line(tmp_path):
    from conftest import run_train

    from lightfit.errors import LightfitError

    with pytest.raises(LightfitError) as error:
        run_train(tmp_path / "run", "loop.module._target_=test_project.NoMetrics", "logger=none")
    message = str(error.value)
    assert message == (
        "loop.module (test_project.NoMetrics) does not keep lightfit.contract.TrainingModule: "
        "no train_metrics, val_metrics, test_metrics"
    )
    with pytest.raises(
        LightfitError, match=r"loop.fit \(test_project.no_hooks_fit\) does not keep .*FitLoop: "
    ):
        run_train(
            tmp_path / "run2", "loop=explicit", "loop.fit._target_=test_project.no_hooks_fit", "logger=none"
        )


def test_the_contract_names_what_a_data_module_lacks():
    from lightfit.contract import DataModule, FitLoop, check
    from lightfit.errors import LightfitError
    from lightfit.loops.explicit import fit

    check(fit, FitLoop, "loop.fit")  # lightfit's own keep it
    with pytest.raises(
        LightfitError, match=r"^data \(builtins.dict\) does not keep .*DataModule: no input_shape, "
    ):
        check({}, DataModule, "data")
    with pytest.raises(LightfitError, match=r"no parameter scheduler, .*parameter hooks$"):
        check(no_hooks_fit, FitLoop, "loop.fit")


def test_a_projects_module_trains_with_its_own_key_and_resumes_exactly(tmp_path, monkeypatch):
    """loop.module._target_ names a module defined here; `l1` comes from the config, is used,
    and a run stopped mid-epoch by SIGTERM resumes to the weights of the uninterrupted run."""
    from conftest import assert_same_weights, run_train
    from test_resume import SLOW, start, wait_for_line

    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    )
    overrides = [
        *SLOW,
        "trainer.max_epochs=3",
        "loop.module._target_=test_project.L1Module",
        "+loop.module.l1=0.001",
    ]
    whole = run_train(tmp_path / "whole", *overrides, "logger=csv")
    plain = run_train(tmp_path / "plain", *overrides[:-1], "logger=none")
    assert whole["test/loss"] != plain["test/loss"]  # the penalty changed the training
    from lightfit import load_module

    loaded = load_module(L1Module, tmp_path / "whole/checkpoints/best.ckpt")  # no net, task or l1 given
    assert loaded.l1 == 0.001 and not loaded.training  # its own key, from the run's config

    proc = start(tmp_path / "stopped", *overrides, "logger=csv")
    wait_for_line(proc, "epoch 1/3")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    interrupted = tmp_path / "stopped/checkpoints/interrupted.ckpt"
    position = torch.load(interrupted, weights_only=True)["epoch_position"]
    assert not position["epoch_done"], position  # stopped inside an epoch
    resumed = run_train(tmp_path / "stopped", *overrides, "logger=csv", f"ckpt_path={interrupted}")
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "stopped/checkpoints/last.ckpt")
    assert resumed["test/acc"] == whole["test/acc"] and resumed["test/loss"] == whole["test/loss"]
    rows = [(tmp_path / run / "metrics.csv").read_text() for run in ("whole", "stopped")]
    assert rows[0] == rows[1]


def test_a_checkpoints_targets_may_name_the_running_projects_functions(tmp_path, monkeypatch):
    """evaluate/predict call a checkpoint's `_target_`s: lightfit's and the running project's
    functions, networks and data modules; never another callable."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from lightfit.errors import LightfitError
    from lightfit.run.checkpoint import check_targets

    # A package name of its own: `proj` may be imported already, from another test's folder.
    project = write_project(tmp_path, "projtargets", {"data.py": "def load(path):\n    return path\n"})
    monkeypatch.syspath_prepend(str(project))
    node = {"data": {"_target_": "projtargets.data.load", "path": "x.npz"}}
    with pytest.raises(
        LightfitError, match="'projtargets.data.load' is not a network, a data module or part of lightfit;"
    ):
        check_targets(node, "the checkpoint's config")  # outside the project's command
    GlobalHydra.instance().clear()
    with initialize_config_module("projtargets.conf", version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    try:
        check_targets(node, "the checkpoint's config")  # the project's own function
        with pytest.raises(
            LightfitError, match="'os.system' is not a network, .* part of lightfit or projtargets;"
        ):
            check_targets({"_target_": "os.system"}, "the checkpoint's config")
    finally:
        HydraConfig.instance().cfg = None


def test_the_stop_hint_names_the_projects_own_command(project, monkeypatch, tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from lightfit.run.signals import resume_hint

    monkeypatch.syspath_prepend(str(project))
    GlobalHydra.instance().clear()
    with initialize_config_module("proj.conf", version_base="1.3"):
        cfg = compose("train", overrides=["loop=mine"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- loop=mine\n")
    hint = resume_hint(tmp_path)
    assert hint.startswith(f"continue with: proj train ckpt_path=auto hydra.run.dir={tmp_path}"), hint


def test_the_stop_hint_works_pasted_without_the_venv_on_path(monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from lightfit.run.signals import resume_hint

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # lightfit's own command

    script = Path(sys.executable).parent / "lightfit"  # the console script pip installed
    assert script.is_file()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the environment not activated
    program = resume_hint(Path("run")).removeprefix("continue with: ").split()[0]
    assert Path(program).resolve() == script.resolve() and os.access(program, os.X_OK), program
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")  # activated
    assert resume_hint(Path("run")).startswith("continue with: lightfit train ")


def test_evaluate_in_a_project_names_the_projects_predict(project, monkeypatch):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from lightfit.cli.evaluate_input import no_labels

    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    GlobalHydra.instance().clear()
    # as cli/entry.py runs `proj evaluate`: lightfit's evaluate.yaml, the project's configs after it
    with initialize_config_module("lightfit.conf", version_base="1.3"):
        overrides = ["hydra.searchpath=[pkg://proj.conf]"]
        cfg = compose("evaluate", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    HydraConfig.instance().set_config(cfg)
    assert str(no_labels(Path("x.npy"), "a .npy")).endswith("to get predictions use proj predict")


def own_fit(fabric, model, optimizer, train_loader, val_loader=None, *, task, epochs, scheduler=None,
            accumulate_grad_batches=1, gradient_clip_val=None, hooks=None):  # fmt: skip
    """A project's fit (its loop.py): the contract's parameters, and one epoch at a time."""
    from lightfit.loops.explicit import fit

    return fit(fabric, model, optimizer, train_loader, val_loader, task=task, epochs=epochs, hooks=hooks)


@pytest.mark.parametrize(
    ("override", "named"),
    [("trainer.max_steps=5", "trainer.max_steps=5"), ("scheduler=onecycle", "scheduler=torch.optim")],
)
def test_a_projects_fit_refuses_what_only_lightfits_fit_reads(tmp_path, override, named):
    """A project's own loop.fit reads whole epochs off its hooks: a step limit or a scheduler
    that steps every batch would be ignored there, so it is refused in one line, before training."""
    from conftest import run_train

    from lightfit.errors import LightfitError

    fit = ["loop=explicit", "loop.fit._target_=test_project.own_fit", "logger=none"]
    with pytest.raises(LightfitError, match=rf"^{re.escape(named)}.*: loop.fit=test_project.own_fit steps"):
        run_train(tmp_path / "run", *fit, override)

"""logger=wandb: offline unless W&B is set up, the config as W&B's config, one W&B run per run dir."""

from __future__ import annotations

import pytest
from conftest import compose_config, require, run_train

from lightfit.run import loggers


@pytest.fixture
def no_wandb_setup(tmp_path, monkeypatch):
    """A user who never set W&B up: no mode, no key, no ~/.netrc entry; W&B's own files in tmp."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def test_offline_unless_wandb_is_set_up(no_wandb_setup, tmp_path, monkeypatch):
    assert loggers.wandb_mode() == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")  # what `wandb login` writes
    monkeypatch.setenv("NETRC", str(netrc))
    assert loggers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's word wins
    assert loggers.wandb_mode() == "disabled"


@pytest.mark.slow  # two runs, each starting W&B's service process
def test_an_offline_run_writes_its_files_and_a_resumed_run_keeps_its_id(no_wandb_setup, tmp_path):
    require("wandb")
    run = tmp_path / "run"
    short = ["logger=wandb", "trainer.limit_train_batches=3", "optimizer.lr=0.002"]
    run_train(run, *short, "trainer.max_epochs=1")
    run_id = (run / "wandb_run_id").read_text().strip()
    first = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(first) == 1 and (first[0] / f"run-{run_id}.wandb").is_file()
    records = (first[0] / f"run-{run_id}.wandb").read_bytes()  # what `wandb sync` uploads
    assert b"optimizer.lr" in records and b"0.002" in records  # the run's config, named as overrides
    run_train(run, *short, "trainer.max_epochs=2", "ckpt_path=auto")
    assert (run / "wandb_run_id").read_text().strip() == run_id
    assert len(sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # `wandb sync` joins them


def test_tensorboard_gets_the_config_as_hyperparameters(tmp_path):
    require("tensorboard")
    (logger,) = loggers.build_loggers(
        compose_config("logger=tensorboard", "optimizer.lr=0.002", run_dir=tmp_path)
    )
    assert logger.hparams["optimizer.lr"] == 0.002

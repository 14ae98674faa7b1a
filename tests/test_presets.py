"""Experiment and debug presets, loggers and the console: each composes, runs, and does its job."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from conftest import compose_config, require, run_train
from hydra.utils import instantiate

from lightfit.run import progress
from lightfit.run.progress import StdoutHandler, progress_callbacks

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = [
    f"{group}={p.stem}" for group in ("experiment", "debug") for p in sorted((CONF / group).glob("*.yaml"))
]
BRIEF = {  # on top of each preset, so that every run takes a second or two
    "experiment": ["trainer.fast_dev_run=true"],
    "debug=overfit": ["trainer.max_epochs=2"],
    "debug=profile": ["trainer.max_epochs=1", "trainer.limit_train_batches=3"],
}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs(preset, run_dir, caplog):
    brief = BRIEF.get(preset, BRIEF.get(preset.split("=")[0], []))
    with caplog.at_level(logging.INFO):
        results = run_train(run_dir, preset, "logger=none", *brief)
    assert 0 <= results["test/acc"] <= 1
    if preset == "debug=profile":
        assert "Profiler Report" in caplog.text and "run_training_epoch" in caplog.text


def test_experiments_set_groups_and_the_command_line_still_wins():
    cfg = compose_config("experiment=digits_cnn")
    assert cfg.model._target_ == "lightfit.nets.CNN" and list(cfg.model.channels) == [32, 64]
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert (cfg.trainer.max_epochs, cfg.optimizer.lr) == (30, 0.003)
    cfg = compose_config(
        "experiment=digits_cnn", "trainer.max_epochs=3", "optimizer.lr=0.1", "scheduler=step"
    )
    assert (cfg.trainer.max_epochs, cfg.optimizer.lr) == (3, 0.1)
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.StepLR"
    cfg = compose_config("experiment=digits_manual_accum", "debug=limit")  # debug comes last
    assert cfg.loop.name == "manual" and cfg.loop.accumulate_grad_batches == 4
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches) == (2, 5)


def first_batch_labels(*overrides: str) -> list[list[int]]:
    """Labels of the first training batch in epochs 0 and 1."""
    datamodule = instantiate(compose_config(*overrides).data)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    labels = []
    for epoch in (0, 1):
        if hasattr(loader.batch_sampler.sampler, "set_epoch"):
            loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does each epoch
        labels.append(next(iter(loader))[1].tolist())
    return labels


def test_overfit_sees_the_same_batches_every_epoch():
    # Lightning's overfit_batches cannot stop the shuffling inside our batch sampler; data.shuffle does.
    first, second = first_batch_labels("debug=overfit")
    assert first == second
    first, second = first_batch_labels()
    assert first != second


def test_tensorboard_events_are_written_and_readable(run_dir):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train(run_dir, "logger=tensorboard", "debug=limit")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(scalars)
    assert len(events.Scalars("train/loss")) == 2  # one per epoch


def test_a_tqdm_bar_only_on_a_terminal_and_a_rich_summary_with_rich():
    from lightning.pytorch.callbacks import RichModelSummary, TQDMProgressBar

    assert progress_callbacks(interactive=False) == []
    (bar,) = progress_callbacks(interactive=True)  # the bar prints the summary: one callback
    assert isinstance(bar, TQDMProgressBar)  # rich's bar renders in a thread that holds the GIL
    require("rich")
    assert isinstance(bar.summary, RichModelSummary)


def test_progress_bars_count_epochs_from_one():
    # Lightning's own bar labels the second of 2 epochs "Epoch 1".
    import lightning as L
    import torch

    from lightfit.data import digits
    from lightfit.loops import AutomaticLoop
    from lightfit.nets import MLP, build_network
    from lightfit.tasks import Task

    datamodule = digits()
    datamodule.setup("fit")
    net = build_network(MLP, datamodule.input_shape, 10, datamodule.mean, datamodule.std)
    module = AutomaticLoop(net, Task(num_outputs=10), optimizer=lambda params: torch.optim.Adam(params))
    bar = progress._tqdm_bar()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar],
    )
    trainer.fit(module, datamodule=datamodule)
    assert bar.train_progress_bar.desc.rstrip(": ") == "Epoch 2/2"
    assert progress.epoch_label(0, None) == "Epoch 1"


def test_console_log_lines_follow_stdout_redirects():
    # A rich progress bar swaps sys.stdout so that lines printed meanwhile land above it.
    handler, record = StdoutHandler(), logging.makeLogRecord({"msg": "epoch 1/2", "levelno": logging.INFO})
    captured = io.StringIO()
    with redirect_stdout(captured):
        handler.emit(record)
    assert captured.getvalue() == "epoch 1/2\n"

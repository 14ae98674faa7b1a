"""The callbacks group: early stopping and the learning rate in all three loops, the same numbers."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_same_weights, compose_config, run_train
from test_resume import start, wait_for_checkpoint

from lightfit.data import digits_path
from lightfit.errors import LightfitError

LOOPS = ("automatic", "manual", "explicit")
# val/loss falls by about 0.15 an epoch here: with min_delta=0.5 it improves in epoch 1 only,
# and patience=2 stops after epoch 3 (best 2.1207 in epoch 1).
STOPPING = [
    "callbacks=[early_stopping,lr_monitor]",
    "callbacks.early_stopping.patience=2",
    "callbacks.early_stopping.min_delta=0.5",
    "trainer.limit_train_batches=5",
    "trainer.max_epochs=10",
    "scheduler=step",
    "scheduler.step_size=1",
    "logger=csv",
]


def rows(run_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def rates(run_dir: Path) -> list[float]:
    return [float(r["train/lr"]) for r in rows(run_dir) if r.get("train/lr")]


def test_the_group_composes_and_checks_its_keys():
    cfg = compose_config("callbacks=[early_stopping,lr_monitor]", "monitor=val/acc")
    assert list(cfg.callbacks) == ["early_stopping", "lr_monitor"]
    assert cfg.callbacks.early_stopping.monitor == "val/acc"  # the run's monitor, by default
    assert compose_config().callbacks is None  # none by default

    from lightfit.cli.known_keys import check_keys
    from lightfit.run.callback_group import build_callbacks

    with pytest.raises(LightfitError, match=r"unknown key callbacks\.early_stopping\.patients: .*patience"):
        check_keys(compose_config("callbacks=early_stopping", "+callbacks.early_stopping.patients=2"))
    with pytest.raises(LightfitError, match=r"trainer.callbacks: a config group of its own: callbacks="):
        check_keys(compose_config("+trainer.callbacks=[x]"))
    (stopping,) = build_callbacks(compose_config("callbacks=early_stopping", "monitor=val/acc"))
    assert stopping.mode == "max"  # the metric's own direction
    (stopping,) = build_callbacks(compose_config("callbacks=early_stopping", "task.mode=max"))
    assert stopping.mode == "max"  # task.mode, for the run's monitor
    with pytest.raises(LightfitError, match=r"^callbacks\.early_stopping\.monitor=val/f1 is not a metric"):
        build_callbacks(compose_config("callbacks=early_stopping", "callbacks.early_stopping.monitor=val/f1"))
    # Lightning's own class in lightfit's yaml: `mode: null` becomes the metric's direction
    # (Lightning's EarlyStopping refused None: "`mode` can be min, max, got None")
    lightning_class = "callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping"
    (stopping,) = build_callbacks(
        compose_config("callbacks=early_stopping", "monitor=val/acc", lightning_class)
    )
    assert (type(stopping).__module__.split(".")[0], stopping.mode) == ("lightning", "max")


def test_the_explicit_loop_refuses_a_callback_it_cannot_run():
    from lightfit.run.callback_group import build_callbacks

    with pytest.raises(LightfitError) as refused:
        build_callbacks(compose_config("loop=explicit", "callbacks=[lr_monitor,swa]"))
    message = str(refused.value)
    assert message == (
        "callbacks.swa (lightning.pytorch.callbacks.StochasticWeightAveraging) runs in loop=automatic and "
        "loop=manual (a Lightning Trainer); loop=explicit runs early_stopping and lr_monitor"
    )
    assert len(build_callbacks(compose_config("loop=manual", "callbacks=[lr_monitor,swa]"))) == 2


def test_the_decision_follows_min_delta_and_patience():
    from lightfit.run.early_stopping import EarlyStopping

    stopping = EarlyStopping(monitor="val/acc", min_delta=0.1, patience=2, mode="max")
    decisions = [stopping.update(v, epoch) for epoch, v in enumerate([0.5, 0.65, 0.7, float("nan")])]
    assert decisions == [False, False, False, True]  # 0.7 is not 0.1 better than 0.65; NaN never is
    assert stopping.state_dict() == {"best": 0.65, "best_epoch": 1, "wait": 2, "stopped_epoch": 3}
    assert stopping.reason() == (
        "early stop: val/acc did not improve by more than 0.1 in 2 epochs (best 0.6500 in epoch 2)"
    )


@pytest.mark.core
def test_explicit_early_stopping_writes_its_epoch_line_results_and_rates(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lightfit"):
        results = run_train(tmp_path, "loop=explicit", *STOPPING)
    assert results["stopped_epoch"] == 3 and results["epochs"] == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3
    assert "lr 0.0005" in lines[1]
    # the best value's last digits differ between torch versions (.ci/lowest)
    stop = r"early stop: val/loss did not improve by more than 0\.5 in 2 epochs \(best 2\.1\d+ in epoch 1\)$"
    assert re.search(stop, lines[2]), lines[2]
    assert rates(tmp_path) == [0.001, 0.0005, 0.00025]  # the rate each epoch started with


@pytest.mark.slow
def test_early_stopping_and_rates_are_the_same_in_all_loops(tmp_path):
    runs = {loop: run_train(tmp_path / loop, f"loop={loop}", *STOPPING) for loop in LOOPS}
    for loop in LOOPS:
        assert runs[loop]["stopped_epoch"] == 3 and runs[loop]["epochs"] == 3, loop
        assert rates(tmp_path / loop) == [0.001, 0.0005, 0.00025], loop
        assert_same_weights(
            tmp_path / "explicit/checkpoints/last.ckpt", tmp_path / f"{loop}/checkpoints/last.ckpt"
        )
        assert runs[loop]["test/loss"] == runs["explicit"]["test/loss"], loop


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_a_run_resumed_inside_the_patience_window_stops_where_it_would_have(tmp_path, loop):
    """Stopped after epoch 2 (best in epoch 1, one epoch waited), continued with ckpt_path=last:
    without early stopping's state in the checkpoint, epoch 3 would be a first best, not a stop."""
    overrides = [f"loop={loop}", *STOPPING]
    whole = run_train(tmp_path / "whole", *overrides)
    run_train(tmp_path / "resumed", *overrides, "trainer.max_epochs=2")
    resumed = run_train(tmp_path / "resumed", *overrides, "ckpt_path=last")
    assert resumed["stopped_epoch"] == whole["stopped_epoch"] == 3
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "resumed/checkpoints/last.ckpt")
    assert rates(tmp_path / "resumed") == rates(tmp_path / "whole")
    # Continued once more after the stop: nothing is trained.
    again = run_train(tmp_path / "resumed", *overrides, "ckpt_path=last")
    assert again["stopped_epoch"] == 3 and again["test/loss"] == whole["test/loss"]


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_a_run_killed_inside_the_patience_window_stops_where_it_would_have(tmp_path, loop):
    """SIGKILL in epoch 3 (best in epoch 1, one epoch waited; the stop comes at its end), then
    ckpt_path=auto from the newest checkpoint, a step checkpoint inside epoch 3: the same stop
    epoch, weights and learning rates as a run never killed."""
    overrides = [
        f"loop={loop}", *STOPPING, "callbacks.early_stopping.min_delta=5",  # only epoch 1 is a best
        "trainer.limit_train_batches=null", "data.batch_size=8", "checkpoint.every_n_train_steps=20",
    ]  # fmt: skip
    whole = run_train(tmp_path / "whole", *overrides)
    assert whole["stopped_epoch"] == 3

    proc = start(tmp_path / "killed", *overrides)
    last = tmp_path / "killed/checkpoints/last.ckpt"
    wait_for_checkpoint(proc, last, epoch=2)  # a step checkpoint of epoch 3 (0-based 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (tmp_path / "killed/results.json").exists()  # killed before the stop
    position = torch.load(last, weights_only=True)["epoch_position"]
    assert position["epoch"] == 2 and not position["epoch_done"], position

    resumed = run_train(tmp_path / "killed", *overrides, "ckpt_path=auto")
    assert resumed["stopped_epoch"] == 3 and resumed["epochs"] == whole["epochs"]
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", last)
    assert rates(tmp_path / "killed") == rates(tmp_path / "whole")


def test_keras_style_fit_stops_early_with_keras_names_and_restores_the_best_weights(capsys):
    from torch import nn

    from lightfit import EarlyStopping, evaluate, fit

    with np.load(digits_path()) as f:
        x, y = (f["x"].reshape(-1, 64) / 16.0).astype(np.float32)[:600], f["y"][:600]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    stopping = EarlyStopping(monitor="val_loss", min_delta=10.0, patience=2, restore_best_weights=True)
    history = fit(model, x, y, validation_split=0.2, epochs=20, lr=1e-2, callbacks=[stopping])
    assert history.epoch == [0, 1, 2] and len(history.history["val_loss"]) == 3  # epoch 1's best, 2 waited
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert lines[-1].startswith("epoch 3/20") and lines[-1].endswith(
        "early stop: val_loss did not improve by more than 10 in 2 epochs "
        f"(best {history.history['val_loss'][0]:.4f} in epoch 1)"
    )
    best = evaluate(model, x[480:], y[480:])["loss"]  # the weights of epoch 1, not 3
    assert best == pytest.approx(history.history["val_loss"][0], rel=1e-5)
    assert best > history.history["val_loss"][2]

    with pytest.raises(
        LightfitError, match=r'^EarlyStopping\(monitor="val_f1"\): fit computes loss, acc, val_loss'
    ):
        fit(model, x, y, validation_split=0.2, callbacks=[EarlyStopping(monitor="val_f1")])
    with pytest.raises(
        LightfitError, match="needs validation data: pass validation_split or validation_data"
    ):
        fit(model, x, y, callbacks=[EarlyStopping()])


@pytest.mark.slow
def test_weight_averaging_runs_in_both_lightning_loops_with_the_same_weights(tmp_path):
    overrides = [
        "callbacks=[swa,lr_monitor]",
        "trainer.limit_train_batches=5",
        "trainer.max_epochs=4",
        "logger=csv",
    ]
    for loop in ("automatic", "manual"):
        run_train(tmp_path / loop, f"loop={loop}", *overrides)
        assert rates(tmp_path / loop)[-1] != 0.001  # SWA's own schedule took over in the last epoch
    assert_same_weights(
        tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / "manual/checkpoints/last.ckpt"
    )


def test_lightning_calls_only_the_batch_hooks_a_lightfit_callback_has():
    """Lightning skips a per-batch hook set to None (lightfit.run.batch_hooks): lightfit's
    callbacks keep the ones they use, and a subclass's own hook is called at every step."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from lightfit.run.batch_hooks import BATCH_HOOKS
    from lightfit.run.callbacks import RunCallback
    from lightfit.run.early_stopping import EarlyStopping
    from lightfit.run.lr_monitor import LearningRateMonitor
    from lightfit.run.progress import _tqdm_bar

    def hooks(callback: object) -> list[str]:
        return [name for name in BATCH_HOOKS if callable(getattr(callback, name))]

    assert hooks(RunCallback()) == ["on_train_batch_end"]
    assert hooks(EarlyStopping()) == hooks(LearningRateMonitor()) == []
    assert "on_train_batch_end" in hooks(_tqdm_bar()) and "on_before_backward" not in hooks(_tqdm_bar())

    class Counting(EarlyStopping):
        calls = 0

        def on_before_optimizer_step(self, *args: object) -> None:
            type(self).calls += 1

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.ones(6, 2)), batch_size=2)
    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(max_epochs=1, callbacks=[Counting(), LearningRateMonitor()], **off)
    trainer.fit(Tiny(), loader)
    assert Counting.calls == 3  # one per step: the subclass's hook, not the None it inherits

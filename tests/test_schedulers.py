"""Schedulers as Lightning users write them: interval, frequency, monitor, the run's length;
each steps at the same moments in the three loops (the same weights), or stops in one line."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_weights, compose_config, run_train

from lightfit.cli.known_keys import check_keys
from lightfit.errors import LightfitError

LOOPS = ("automatic", "manual", "explicit")
SHORT = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "logger=none", "optimizer=sgd"]


def test_the_scheduler_configs_compose_and_pass_the_key_check():
    for name in ("step", "cosine", "onecycle", "warmup_cosine", "plateau"):
        cfg = compose_config(f"scheduler={name}")
        check_keys(cfg)
        assert cfg.scheduler.interval == ("step" if name in ("onecycle", "warmup_cosine") else "epoch")
    assert compose_config("scheduler=onecycle", "optimizer.lr=0.3").scheduler.max_lr == 0.3


def test_onecycle_spans_the_run_and_follows_max_steps(run_dir):
    """3 epochs of 4 batches, accumulating 2: 6 optimizer steps; max_steps=5 cuts it to 5."""
    run_train(run_dir, "loop=explicit", *SHORT, "scheduler=onecycle", "loop.accumulate_grad_batches=2")
    state = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["lr_schedulers"][0]
    assert (state["total_steps"], state["last_epoch"]) == (6, 6)
    run_train(run_dir.parent / "cut", "loop=explicit", *SHORT, "scheduler=onecycle", "trainer.max_steps=5")
    state = torch.load(run_dir.parent / "cut/checkpoints/last.ckpt", weights_only=True)["lr_schedulers"][0]
    assert (state["total_steps"], state["last_epoch"]) == (5, 5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scheduler=plateau", "scheduler.monitor=val/f1"],
         "scheduler.monitor=val/f1 is not a metric this run computes; choose one of"),
        (["scheduler=plateau", "scheduler.interval=step"],
         "scheduler.interval=step: ReduceLROnPlateau steps on a metric, which lightfit computes once"),
        (["scheduler=plateau", "trainer.check_val_every_n_epoch=2"],
         "scheduler.frequency=1: ReduceLROnPlateau steps on val/loss, which validation computes every 2"),
        (["scheduler=step", "scheduler.interval=batch"], "scheduler.interval=batch: step or epoch"),
        (["scheduler=warmup_cosine", "scheduler.warmup_steps=50"],
         "scheduler.warmup_steps=50 must be fewer than the run's 12 steps: scheduler.warmup_steps=1, "
         "or a longer run"),
    ],
)  # fmt: skip
def test_a_scheduler_that_cannot_step_is_one_line(run_dir, overrides, message):
    with pytest.raises(LightfitError) as raised:
        run_train(run_dir, *SHORT, *overrides)
    assert str(raised.value).startswith(message)


@pytest.mark.slow
@pytest.mark.parametrize(
    "scheduler",
    [
        ["scheduler=onecycle"],
        ["scheduler=onecycle", "loop.accumulate_grad_batches=3", "trainer.max_steps=5"],
        ["scheduler=warmup_cosine", "scheduler.warmup_steps=3"],
        ["scheduler=plateau", "scheduler.patience=0", "scheduler.factor=0.1", "scheduler.monitor=train/loss",
         "scheduler.mode=max"],
        ["scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=0.5",
         "trainer.val_check_interval=3"],
        ["scheduler=step", "scheduler.step_size=2", "scheduler.interval=step", "scheduler.frequency=3"],
    ],
    ids=["onecycle", "onecycle-accumulate-max_steps", "warmup_cosine", "plateau-train-loss",
         "plateau-val-mid-epoch", "steplr-every-3-steps"],
)  # fmt: skip
def test_each_scheduler_gives_the_same_weights_in_the_three_loops(tmp_path, scheduler):
    runs = {loop: run_train(tmp_path / loop, f"loop={loop}", *SHORT, *scheduler) for loop in LOOPS}
    for loop in LOOPS:
        assert_same_weights(
            tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / loop / "checkpoints/last.ckpt"
        )
        assert runs[loop]["test/acc"] == runs["automatic"]["test/acc"]
    # The learning rate moved, and every loop's last.ckpt holds it after the last epoch's step.
    rates = {loop: saved_lr(tmp_path / loop) for loop in LOOPS}
    assert rates == dict.fromkeys(LOOPS, rates["explicit"]) and rates["explicit"] != 0.05


def saved_lr(run_dir):
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    return checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]


@pytest.mark.slow
def test_a_plateau_step_is_in_last_ckpt_and_an_automatic_run_resumes_past_it(tmp_path):
    """The lr halves at the ends of epochs 2 and 3 (patience 0, threshold 0.5). Each loop's
    last.ckpt holds the scheduler after its epoch's step (Lightning would step it after the
    file is written), and an automatic run resumed from last.ckpt, written at an epoch's end or
    inside an epoch, ends with the weights and scheduler of the run never stopped."""
    plateau = [*SHORT, "scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=0.5"]
    for loop in LOOPS:
        run_train(tmp_path / loop, f"loop={loop}", *plateau)
    saved = {loop: torch.load(tmp_path / loop / "checkpoints/last.ckpt", weights_only=True) for loop in LOOPS}
    assert {loop: saved_lr(tmp_path / loop) for loop in LOOPS} == dict.fromkeys(LOOPS, 0.0125)
    for loop in LOOPS:
        assert saved[loop]["lr_schedulers"] == saved["explicit"]["lr_schedulers"], loop

    automatic = [*plateau, "loop=automatic"]
    run_train(tmp_path / "end", *automatic, "trainer.max_epochs=2")  # last.ckpt at epoch 2's end
    run_train(tmp_path / "end", *automatic, "ckpt_path=last")
    run_train(tmp_path / "mid", *automatic, "trainer.max_steps=6")  # last.ckpt at epoch 2's batch 2
    mid = tmp_path / "mid/checkpoints/last.ckpt"
    assert torch.load(mid, weights_only=True)["epoch_position"]["batches"] == 2
    run_train(tmp_path / "mid", *automatic, f"ckpt_path={mid}")
    for run in ("end", "mid"):
        last = tmp_path / run / "checkpoints/last.ckpt"
        assert_same_weights(tmp_path / "automatic/checkpoints/last.ckpt", last)
        resumed = torch.load(last, weights_only=True)
        assert resumed["lr_schedulers"] == saved["automatic"]["lr_schedulers"], run


def test_lightnings_own_lr_monitor_logs_the_plateau_that_the_run_steps(run_dir):
    """The automatic loop's ReduceLROnPlateau is stepped by lightfit's callback, not by Lightning
    (run/callbacks.py); Lightning's LearningRateMonitor, added by _target_, still logs its rate."""
    import csv

    short = [o for o in SHORT if not o.startswith("logger")]
    plateau = ["scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=0.5"]
    # Lightning's monitor at its default logging_interval: each scheduler at its own interval
    lightning_lr = "+callbacks.lightning_lr._target_=lightning.pytorch.callbacks.LearningRateMonitor"
    run_train(run_dir, "loop=automatic", *short, "logger=csv", *plateau, lightning_lr)
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    # one value an epoch, as it started: halved after epoch 2
    assert [float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")] == [0.05, 0.05, 0.025]

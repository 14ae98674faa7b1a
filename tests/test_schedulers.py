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
         "scheduler.warmup_steps=50 must be fewer than the run's 12 steps"),
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
    # The learning rate moved. (After the last epoch Lightning steps a ReduceLROnPlateau once
    # more, after last.ckpt is written: the automatic loop's file can be one step behind.)
    checkpoint = torch.load(tmp_path / "explicit/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] != 0.05

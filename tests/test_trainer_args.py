"""Every lightning.Trainer argument is a `trainer.<key>`; the explicit loop honours the ones a
plain loop can (max_steps, val_check_interval, ...) with Lightning's numbers, refuses the rest."""

from __future__ import annotations

import dataclasses
import inspect
import logging

import lightning as L
import pytest
import torch
from conftest import assert_same_weights, cli, compose_config, run_train
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from lightfit.cli.config import EXPLICIT_KEYS, TrainerSchema
from lightfit.errors import LightfitError, one_line

LOOPS = ("automatic", "manual", "explicit")
# 4 batches an epoch on digits: max_steps=6 ends inside the second epoch
SHORT = ["trainer.max_epochs=3", "trainer.limit_train_batches=4", "logger=csv", "model.dropout=0.3"]


def composed_error(*overrides: str) -> str:
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Hydra's, turned into one line below
        compose_config(*overrides)
    return one_line(raised.value)


def test_the_schema_is_lightnings_trainer_signature():
    """The table in TrainerSchema holds every Trainer argument but those lightfit sets itself."""
    fields = {f.name for f in dataclasses.fields(TrainerSchema)}
    takes = set(inspect.signature(L.Trainer).parameters)
    assert fields | set(TrainerSchema.instead) == takes
    assert not fields & set(TrainerSchema.instead)
    assert set(EXPLICIT_KEYS) <= fields


def test_any_trainer_argument_composes():
    trainer = compose_config(
        "trainer.max_steps=200", "trainer.val_check_interval=0.5", "trainer.min_epochs=5",
        "trainer.max_time=00:01:00:00", "trainer.detect_anomaly=true", "trainer.benchmark=true",
    ).trainer  # fmt: skip
    assert (trainer.max_steps, trainer.val_check_interval, trainer.min_epochs) == (200, 0.5, 5)
    assert trainer.detect_anomaly is True and trainer.max_time == "00:01:00:00"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_step=3", "unknown key trainer.max_step: trainer takes no 'max_step' "
                               "(did you mean trainer.max_steps?)"),
        ("trainer.val_check_intervl=0.5", "(did you mean trainer.val_check_interval?)"),
        ("trainer.max_steps=many", "max_steps"),
        ("trainer.callbacks=[]", "trainer.callbacks: a config group of its own"),
        ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches: a loop setting, "
                                              "the same in every loop: loop.accumulate_grad_batches"),
        ("trainer.default_root_dir=x", "trainer.default_root_dir: set by lightfit to the run dir"),
    ],
)  # fmt: skip
def test_a_bad_trainer_key_is_one_line_while_composing(override, message):
    assert message in composed_error(override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("callbacks=[early_stoping,lr_monitor]", "Could not load 'callbacks/early_stoping' (available in "
                                                 "'callbacks': early_stopping, ema, lr_monitor, swa)"),
        ("callbacks.early_stopping.patience=5", "callbacks.early_stopping is not in this run: add "
                                                "callbacks=[early_stopping]"),
    ],
)  # fmt: skip
def test_a_callback_not_in_the_run_is_one_line_with_what_to_type(override, message):
    assert message in composed_error(override)


def test_a_misspelt_top_level_key_names_the_nearest_one():
    """Keys outside a typed schema (seed, or serve's port) were Hydra's "Key 'seeed' is not in struct"."""
    assert composed_error("seeed=1") == "unknown key seeed: the config takes no 'seeed' (did you mean seed?)"
    GlobalHydra.instance().clear()
    with initialize_config_module("lightfit.conf", version_base="1.3"), pytest.raises(Exception) as raised:  # noqa: PT011
        compose("serve", overrides=["prot=9000"])
    assert one_line(raised.value) == "unknown key prot: the config takes no 'prot' (did you mean port?)"


@pytest.mark.slow  # a process of its own; the same line while composing is tested above, in-process
def test_a_misspelt_trainer_key_on_the_command_line(tmp_path):
    proc = cli("trainer.max_step=3", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "lightfit-train: error: unknown key trainer.max_step: trainer takes no 'max_step' "
        "(did you mean trainer.max_steps?)"
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.detect_anomaly=true", "trainer.detect_anomaly=True: loop=explicit does not take it "
                                        "(loop=automatic and loop=manual do; default: False)"),
        ("trainer.num_sanity_val_steps=2", "trainer.num_sanity_val_steps=2: loop=explicit does not take it"),
        ("trainer.max_time=1h", "trainer.max_time=1h: DD:HH:MM:SS"),
        ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5: a fraction of the epoch"),
    ],
)  # fmt: skip
def test_the_explicit_loop_refuses_what_it_does_not_honour(run_dir, override, message):
    with pytest.raises(LightfitError) as raised:
        run_train(run_dir, "loop=explicit", "trainer.max_epochs=1", "logger=none", override)
    assert str(raised.value).startswith(message)
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize(
    ("loop", "override", "message"),
    [
        ("automatic", "trainer.val_check_interval=1000", "trainer.val_check_interval=1000 is more than "
                                                         "the 20 batches of an epoch: add "
                                                         "trainer.check_val_every_n_epoch=null"),
        ("manual", "trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5: a fraction"),
    ],
)  # fmt: skip
def test_the_lightning_loops_refuse_a_val_check_interval_in_one_line(run_dir, loop, override, message):
    """Lightning raises these from inside `fit` (a traceback); the explicit loop's line instead."""
    with pytest.raises(LightfitError) as raised:
        run_train(run_dir, f"loop={loop}", "trainer.max_epochs=1", "logger=none", override)
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_minimum_past_the_maximum_is_refused_in_every_loop(run_dir, loop):
    """Every loop stopped at max_epochs and ignored min_epochs in silence."""
    with pytest.raises(LightfitError) as raised:
        run_train(run_dir, f"loop={loop}", "trainer.max_epochs=2", "trainer.min_epochs=3", "logger=none")
    assert str(raised.value) == (
        "trainer.min_epochs=3 is more than trainer.max_epochs=2, which ends the run first: "
        "trainer.max_epochs=3, or a smaller trainer.min_epochs"
    )
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize("key", ["max_epochs", "max_steps"])
def test_a_run_of_nothing_is_refused(run_dir, key):
    """trainer.max_epochs=0 trained nothing and reported the untrained network's test numbers."""
    with pytest.raises(LightfitError) as raised:
        run_train(run_dir, f"trainer.{key}=0", "logger=none")
    assert str(raised.value) == f"trainer.{key}=0 trains nothing: give 1 or more (-1: no limit)"
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize("loop", LOOPS)
def test_the_epoch_line_says_max_steps_ended_the_run(run_dir, loop, caplog):
    """A run ended by max_steps printed `epoch 2/3 ...` and then its test numbers, nothing said why."""
    with caplog.at_level(logging.INFO, logger="lightfit"):
        run_train(run_dir, f"loop={loop}", *SHORT, "trainer.max_steps=6")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3"]
    assert lines[-1].endswith("s  stopped: trainer.max_steps=6 reached")
    assert "stopped" not in lines[0]


def test_explicit_validates_mid_epoch_and_stops_at_max_steps(run_dir):
    run_train(run_dir, "loop=explicit", *SHORT, "trainer.max_steps=6", "trainer.val_check_interval=0.5")
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 6)  # 2 batches into epoch 2
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    # validation after batches 2 and 4 of epoch 1 and after batch 2 of epoch 2, where it stopped
    assert [row.split(",")[:2] for row in rows if row.split(",")[-1]] == [["0", "1"], ["0", "3"], ["1", "5"]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "limits",
    [
        ["trainer.max_steps=6", "trainer.val_check_interval=0.5"],
        ["trainer.max_steps=5", "trainer.val_check_interval=2", "loop.accumulate_grad_batches=2"],
        ["trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null", "trainer.max_epochs=2"],
        ["trainer.check_val_every_n_epoch=2"],
        ["trainer.val_check_interval=2", "loop.accumulate_grad_batches=3"],
    ],
    ids=["max_steps-half-epoch", "max_steps-every-2-batches-accumulate", "across-epochs", "every-2-epochs",
         "validate-inside-a-window"],
)  # fmt: skip
def test_the_three_loops_stop_and_validate_alike(tmp_path, limits):
    """Same weights at the end and in best.ckpt (the epochs validated), same step count.

    validate-inside-a-window: batch 2 of a 3-batch window; the window's gradients survive
    the validation and its step comes after batch 3 (it once dropped them in loop=manual)."""
    runs = {loop: run_train(tmp_path / loop, f"loop={loop}", *SHORT, *limits) for loop in LOOPS}
    for loop in ("manual", "explicit"):
        for name in ("last.ckpt", "best.ckpt"):
            assert_same_weights(
                tmp_path / "automatic/checkpoints" / name, tmp_path / loop / "checkpoints" / name
            )
        assert runs[loop]["test/acc"] == runs["automatic"]["test/acc"]
        assert runs[loop]["epochs"] == runs["automatic"]["epochs"]
    steps = {
        torch.load(tmp_path / loop / "checkpoints/last.ckpt", weights_only=True)["global_step"]
        for loop in LOOPS
    }
    assert len(steps) == 1


@pytest.mark.slow
@pytest.mark.parametrize("loop", LOOPS)
def test_a_run_ended_by_max_steps_resumes_inside_the_epoch(tmp_path, loop):
    common = [f"loop={loop}", *SHORT, "scheduler=step", "scheduler.step_size=1"]
    run_train(tmp_path / "whole", *common, "trainer.max_steps=10")
    run_train(tmp_path / "parts", *common, "trainer.max_steps=6")
    run_train(tmp_path / "parts", *common, "trainer.max_steps=10", "ckpt_path=last")
    assert_same_weights(tmp_path / "whole/checkpoints/last.ckpt", tmp_path / "parts/checkpoints/last.ckpt")

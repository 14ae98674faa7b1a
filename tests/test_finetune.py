"""A run reports only itself (ckpt_path= of another run), and init_from= fine-tunes: real short runs."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from conftest import assert_same_weights, cli, require, run_train, state_dict

from lightfit.errors import LightfitError

ONE = ["trainer.max_epochs=1", "logger=none"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One epoch on digits: the checkpoint the tests continue or fine-tune."""
    run_dir = tmp_path_factory.mktemp("digits") / "a"
    run_train(run_dir, *ONE)
    return run_dir


def net_tensors(path, skip=("net.0.",)):
    """A checkpoint's network tensors, but for the preprocessing (Standardize is net.0)."""
    return {k: v for k, v in state_dict(path).items() if k.startswith("net.") and not k.startswith(skip)}


@pytest.mark.slow
def test_ckpt_path_of_a_run_with_other_data_is_refused_in_one_line(digits_run, tmp_path):
    last = digits_run / "checkpoints/last.ckpt"
    proc = cli(f"hydra.run.dir={tmp_path / 'b'}", f"ckpt_path={last}", "data.val_fraction=0.2",
               "trainer.max_epochs=3", "logger=none")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"lightfit-train: error: ckpt_path={last} continues the run that wrote it, but data.val_fraction "
        f"differs from this run's; to start this run from its weights (a new optimizer, epoch 0), "
        f"use init_from={last}"
    )
    assert not (tmp_path / "b/results.json").exists()


def test_ckpt_path_of_a_run_with_another_model_names_each_key(digits_run, tmp_path):
    last = digits_run / "checkpoints/last.ckpt"
    with pytest.raises(
        LightfitError, match=r"but model.dropout, model.hidden differ from this run's; .* init_from="
    ):
        run_train(
            tmp_path / "c",
            f"ckpt_path={last}",
            "model.hidden=[32]",
            "model.dropout=0.5",
            "trainer.max_epochs=3",
        )


@pytest.mark.parametrize(
    ("override", "keys"),
    [
        ("optimizer.lr=0.5", "optimizer.lr differs"),  # was trained on at the checkpoint's 0.001, in silence
        ("optimizer=sgd", "optimizer._target_, optimizer.amsgrad"),  # was a KeyError inside the first step
        ("scheduler=cosine", "scheduler differs"),
    ],
)
def test_ckpt_path_with_another_optimizer_or_scheduler_is_refused(digits_run, tmp_path, override, keys):
    last = digits_run / "checkpoints/last.ckpt"
    with pytest.raises(LightfitError, match=rf"continues the run that wrote it, but {keys}.* init_from="):
        run_train(tmp_path / "d", f"ckpt_path={last}", override, "trainer.max_epochs=3", "logger=none")


def test_ckpt_path_with_nothing_left_to_train_says_so(digits_run, tmp_path):
    last = digits_run / "checkpoints/last.ckpt"
    with pytest.raises(
        LightfitError,
        match=rf"ckpt_path={last}: {last} has trained 1 epoch and trainer.max_epochs=1 leaves nothing "
        r"to train; raise trainer.max_epochs to continue it, or start a new run from its weights "
        rf"with init_from={last}$",
    ):
        run_train(tmp_path / "b", *ONE, f"ckpt_path={last}")
    assert not (tmp_path / "b/results.json").exists()


@pytest.mark.slow
def test_a_run_continued_from_another_run_dir_reports_only_itself(tmp_path, caplog):
    """The issue's case: the continued run validates no better epoch. Its best.ckpt is the
    other run's best weights copied into its own run dir, and results.json names that copy."""
    a = tmp_path / "a"
    first = run_train(a, *ONE)
    # a's epoch 2 is not validated: a/last.ckpt is epoch 2, its best epoch 1 (a/best.ckpt)
    run_train(a, "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=5", "logger=none", "ckpt_path=last")
    continued = run_train(tmp_path / "b", "trainer.max_epochs=3", "trainer.check_val_every_n_epoch=5",
                          "logger=none", f"ckpt_path={a / 'checkpoints/last.ckpt'}")  # fmt: skip
    own_best = tmp_path / "b/checkpoints/best.ckpt"
    assert continued["best_checkpoint"] == str(own_best)
    assert_same_weights(own_best, a / "checkpoints/best.ckpt")
    assert continued["test/acc"] == first["test/acc"]  # the best weights, tested on the same split
    assert torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)["epoch"] == 2

    # Moved away from its best.ckpt: the best score is dropped, best.ckpt is one of this run's epochs.
    (tmp_path / "elsewhere").mkdir()
    moved = shutil.copy(a / "checkpoints/last.ckpt", tmp_path / "elsewhere/moved.ckpt")
    with caplog.at_level(logging.WARNING, logger="lightfit"):
        alone = run_train(tmp_path / "c", "trainer.max_epochs=3", "logger=none", f"ckpt_path={moved}")
    assert f"ckpt_path={moved}: the weights of its best epoch (1) are not beside it" in caplog.text
    assert alone["best_checkpoint"] == str(tmp_path / "c/checkpoints/best.ckpt")
    assert torch.load(alone["best_checkpoint"], weights_only=True)["epoch"] == 2


def test_init_from_loads_the_weights_with_this_runs_preprocessing(tmp_path):
    """Regression, learning rate 0: the fine-tuned run ends with the checkpoint's weights, its
    epochs and optimizer start at 0, and its statistics (inputs, targets) are its own data's."""
    from conftest import compose_config
    from hydra.utils import instantiate

    data = ["data=diabetes", "logger=none"]
    run_train(tmp_path / "a", *data, "trainer.max_epochs=2")
    source = tmp_path / "a/checkpoints/best.ckpt"
    other_split = [*data, "data.test_fraction=0.3", "trainer.max_epochs=1", "optimizer.lr=0"]
    tuned = run_train(tmp_path / "b", *other_split, f"init_from={source}")

    last = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=True)
    assert tuned["best_checkpoint"] == str(tmp_path / "b/checkpoints/best.ckpt")
    assert last["epoch"] == 0 and tuned["epochs"] == 1
    steps = next(iter(last["optimizer_states"][0]["state"].values()))["step"]
    assert steps == last["global_step"]  # a new optimizer: this run's steps only
    preprocessing = ("net.0.", "net.2.")  # Standardize, TargetScale
    theirs = net_tensors(source, preprocessing)
    assert theirs.keys() == net_tensors(tmp_path / "b/checkpoints/last.ckpt", preprocessing).keys()
    assert_same_weights_of(theirs, net_tensors(tmp_path / "b/checkpoints/last.ckpt", preprocessing))
    dm = instantiate(compose_config(*other_split).data, task="regression")
    dm.setup("fit")
    ours = last["state_dict"]
    torch.testing.assert_close(ours["net.0.mean"], torch.as_tensor(dm.mean), rtol=0, atol=0)
    torch.testing.assert_close(ours["net.2.mean"], torch.as_tensor(dm.target_stats[0]), rtol=0, atol=0)
    assert not torch.equal(ours["net.0.mean"], state_dict(source)["net.0.mean"])


def assert_same_weights_of(a, b):
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")


def test_init_from_another_head_is_refused_unless_not_strict(digits_run, tmp_path):
    source = digits_run / "checkpoints/best.ckpt"
    with pytest.raises(
        LightfitError,
        match=rf"init_from={source}: its network differs from this run's: net.1.4.weight \(10, 128\) there, "
        r"\(12, 128\) here \(and 1 more\); init_from_strict=false loads the tensors that match",
    ):
        run_train(tmp_path / "b", *ONE, "data.num_classes=12", f"init_from={source}")
    with pytest.raises(
        LightfitError, match=r"none of its network.s tensors fits .* this model \(model=...\)\?"
    ):
        run_train(tmp_path / "c", *ONE, "data=diabetes", "model.hidden=[7]", "init_from_strict=false",
                  f"init_from={source}")  # fmt: skip
    with pytest.raises(LightfitError, match="give one of them"):
        run_train(tmp_path / "d", *ONE, f"init_from={source}", f"ckpt_path={source}")


@pytest.mark.slow
def test_init_from_not_strict_gives_a_new_head_and_the_same_weights_in_all_loops(
    digits_run, tmp_path, caplog
):
    source = digits_run / "checkpoints/best.ckpt"
    tune = [*ONE, "data.num_classes=12", "init_from_strict=false", f"init_from={source}"]
    for loop in ("automatic", "manual", "explicit"):
        with caplog.at_level(logging.INFO, logger="lightfit"):
            run_train(tmp_path / loop, *tune, f"loop={loop}")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init_from=")]
    assert lines == 3 * [
        f"init_from={source}: 2 of 4 tensors loaded, preprocessing from this run's data; not loaded "
        "(init_from_strict=false): net.1.4.weight (10, 128) there, (12, 128) here, "
        "net.1.4.bias (10,) there, (12,) here"
    ]
    for loop in ("manual", "explicit"):
        assert_same_weights(
            tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / f"{loop}/checkpoints/last.ckpt"
        )
    tuned = state_dict(tmp_path / "automatic/checkpoints/last.ckpt")
    assert tuned["net.1.4.weight"].shape == (12, 128)
    # A fine-tuned run resumed from its own checkpoint continues it; init_from is not loaded again.
    with caplog.at_level(logging.INFO, logger="lightfit"):
        run_train(tmp_path / "automatic", *tune, "trainer.max_epochs=2", "ckpt_path=last")
    assert f"init_from={source} not loaded: resuming this run from" in caplog.text


@pytest.mark.slow
def test_init_from_a_table_compares_the_encoded_columns(tmp_path, caplog):
    """Equal widths, other meaning: a city replaced by another keeps the one-hot width, and is
    refused by name; a city fewer narrows the first layer, which is listed and trained fresh."""
    require("table")
    from test_table import write_churn

    churn = write_churn(tmp_path / "churn.csv")
    table = ["data=table", "data.target=churn", "data.drop=[customer_id]", *ONE]
    run_train(tmp_path / "a", *table, f"data.path={churn}")
    source = tmp_path / "a/checkpoints/best.ckpt"
    milan = tmp_path / "milan.csv"
    milan.write_text(churn.read_text().replace(",Rome,", ",Milan,"))
    with pytest.raises(
        LightfitError,
        match=rf"init_from={source}: its data meant other things: input columns \(#5 is city=Paris there, "
        r"city=Milan here\); init_from_strict=false loads the tensors that fit all the same$",
    ):
        run_train(tmp_path / "b", *table, f"data.path={milan}", f"init_from={source}")
    no_rome = tmp_path / "no_rome.csv"
    no_rome.write_text("".join(row for row in churn.open() if ",Rome," not in row))
    with caplog.at_level(logging.INFO, logger="lightfit"):
        run_train(
            tmp_path / "c", *table, f"data.path={no_rome}", f"init_from={source}", "init_from_strict=false"
        )
    assert (
        f"init_from={source}: 3 of 4 tensors loaded, preprocessing from this run's data; not loaded "
        "(init_from_strict=false): net.1.1.weight (128, 8) there, (128, 7) here; its data differ: "
        "input columns (#6 is city=Rome there, plan=basic here)"
    ) in caplog.text, caplog.text

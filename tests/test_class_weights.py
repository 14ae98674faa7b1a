"""Class weights: `task.class_weight`, `task.pos_weight`, a loss's own `weight`, Keras' `fit(class_weight=)`.

Real short runs on a two-class set cut from the digits (zeros against few ones), then
evaluate and predict on their checkpoints, which carry the weights as plain numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_same_weights, compose_config, run_train
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from lightfit.cli.evaluate import evaluate
from lightfit.cli.predict import predict
from lightfit.data import digits_path
from lightfit.errors import LightfitError
from lightfit.run.checkpoint import load_checkpoint
from lightfit.tasks import Task
from lightfit.tasks.task import check_task_config

RUN = ["trainer.max_epochs=1", "logger=none", "data=npz", "data.batch_size=32"]


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    """Digits 0 (about 180) against 24 digits 1: a small minority class."""
    arrays = np.load(digits_path())
    x, y = arrays["x"], arrays["y"]
    rows = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:24]])
    path = tmp_path_factory.mktemp("data") / "unbalanced.npz"
    np.savez(path, x=x[rows], y=(y[rows] == 1).astype(np.int64))
    return path


def compose_entry(name: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module("lightfit.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def stored_weights(run) -> list[float]:
    return load_checkpoint(run / "checkpoints/last.ckpt")["lightfit"]["class_weight"]


def check_evaluate_and_predict(run, results, tmp_path) -> None:
    """evaluate rebuilds the weighted loss from the checkpoint alone; predict reads it too."""
    best = run / "checkpoints/best.ckpt"
    metrics = evaluate(compose_entry("evaluate", f"ckpt_path={best}"))
    assert metrics["test/loss"] == results["test/loss"]
    x = tmp_path / "x.npy"
    np.save(x, np.load(digits_path())["x"][:5])
    predict(compose_entry("predict", f"ckpt_path={best}", f"input={x}", f"output={tmp_path / 'p.npy'}"))
    assert np.load(tmp_path / "p.npy").shape == (5, 2)


def test_balanced_weights_are_scikit_learns_formula_on_the_train_split(tmp_path, unbalanced):
    run = tmp_path / "run"
    results = run_train(run, *RUN, f"data.path={unbalanced}", "task.class_weight=balanced")
    y = np.load(unbalanced)["y"][np.load(run / "splits.npz")["train"]]  # the training split's labels
    expected = len(y) / (2 * np.bincount(y))  # sklearn.utils.class_weight.compute_class_weight
    assert expected[1] > 4 * expected[0]  # the minority class weighs more
    np.testing.assert_allclose(stored_weights(run), expected, rtol=1e-6)
    check_evaluate_and_predict(run, results, tmp_path)


@pytest.mark.slow
def test_three_loops_train_the_same_weights_with_class_weights(tmp_path, unbalanced):
    for loop in ("automatic", "manual", "explicit"):
        run_train(
            tmp_path / loop, *RUN, f"data.path={unbalanced}", "task.class_weight=balanced", f"loop={loop}"
        )
    weights = {loop: stored_weights(tmp_path / loop) for loop in ("automatic", "manual", "explicit")}
    assert weights["automatic"] == weights["manual"] == weights["explicit"]
    for loop in ("manual", "explicit"):
        assert_same_weights(
            tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / f"{loop}/checkpoints/last.ckpt"
        )
    # and the weights changed the training: an unweighted run ends elsewhere
    run_train(tmp_path / "plain", *RUN, f"data.path={unbalanced}")
    with pytest.raises(AssertionError):
        assert_same_weights(
            tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / "plain/checkpoints/last.ckpt"
        )


def test_a_loss_target_with_a_list_weight_trains_and_evaluates(tmp_path, unbalanced):
    run = tmp_path / "run"
    loss = "task.loss={_target_:torch.nn.CrossEntropyLoss,weight:[1.0,3.0]}"
    results = run_train(run, *RUN, f"data.path={unbalanced}", "loop=explicit", loss)
    assert "class_weight" not in load_checkpoint(run / "checkpoints/last.ckpt")["lightfit"]
    check_evaluate_and_predict(run, results, tmp_path)


def test_pos_weight_is_class_ones_weight_as_in_bce_with_logits(tmp_path, unbalanced):
    # Two softmax scores are one logit (z1 - z0): the weighted loss is BCEWithLogitsLoss(pos_weight).
    outputs, y = torch.randn(50, 2), (torch.rand(50) < 0.2).long()
    weighted = Task(class_weight=[1.0, 3.0], num_outputs=2).loss(outputs, y)
    bce = F.binary_cross_entropy_with_logits(
        outputs[:, 1] - outputs[:, 0], y.float(), pos_weight=torch.tensor(3.0)
    )
    torch.testing.assert_close(weighted, bce)

    run = tmp_path / "run"
    results = run_train(run, *RUN, f"data.path={unbalanced}", "loop=explicit", "task.pos_weight=3.0")
    assert stored_weights(run) == [1.0, 3.0]
    metrics = evaluate(compose_entry("evaluate", f"ckpt_path={run}/checkpoints/best.ckpt"))
    assert metrics["test/loss"] == results["test/loss"]


def test_keras_style_fit_weighs_the_loss_as_keras(tmp_path):
    from lightfit import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32), np.arange(40) % 3
    with torch.no_grad():
        per_sample = F.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y), reduction="none")
    weights = torch.tensor([1.0, 2.0, 5.0])[torch.from_numpy(y)]
    # lr=0 and one batch: the epoch's loss is the loss of the untouched model
    fit_args = {"epochs": 1, "batch_size": 40, "optimizer": "sgd", "lr": 0.0, "verbose": False}
    weighted = fit(model, x, y, class_weight={1: 2.0, 2: 5.0}, **fit_args)  # class 0: 1, as in Keras
    plain = fit(model, x, y, **fit_args)
    # Keras: sum(w * loss) / batch size (not / sum(w), as CrossEntropyLoss(weight=) divides)
    assert weighted.history["loss"][0] == pytest.approx((per_sample * weights).mean().item(), rel=1e-6)
    assert plain.history["loss"][0] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    balanced = fit(model, x[:31], y[:31], class_weight="balanced", **fit_args)  # 11, 10, 10 samples
    counts = np.bincount(y[:31])
    w = torch.tensor(31 / (3 * counts), dtype=torch.float32)[torch.from_numpy(y[:31])]
    assert balanced.history["loss"][0] == pytest.approx((per_sample[:31] * w).mean().item(), rel=1e-6)
    with pytest.raises(LightfitError, match="class_weight names class 7"):
        fit(model, x, y, class_weight={7: 2.0}, **fit_args)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data=diabetes", "task=regression", "task.class_weight=[1,2]"],
            "for task=classification, not regression",
        ),
        (["task.class_weight=[1,2]", "task.pos_weight=2"], "set one of them"),
        (["task.class_weight=heavy"], "must be balanced or a list of non-negative numbers"),
        (["task.pos_weight=-1"], "task.pos_weight=-1.0 must be a positive number"),
        (
            ["task.class_weight=balanced", "task.loss={_target_:torch.nn.CrossEntropyLoss,weight:[1.0,2.0]}"],
            "not both",
        ),
    ],
)
def test_bad_class_weights_stop_before_the_data_with_one_line(overrides, message):
    cfg = compose_config(*overrides)
    with pytest.raises(LightfitError, match=message):
        check_task_config(cfg.task, cfg.monitor)


def test_weights_that_do_not_fit_the_data_name_the_key(tmp_path, unbalanced):
    with pytest.raises(LightfitError, match="task.class_weight has 3 weights for 2 classes"):
        run_train(tmp_path / "a", *RUN, f"data.path={unbalanced}", "task.class_weight=[1,2,3]")
    with pytest.raises(LightfitError, match="task.pos_weight is for two classes and this data has 10"):
        run_train(tmp_path / "b", "logger=none", "task.pos_weight=2")
    assert not (tmp_path / "a/results.json").exists()


def test_a_checkpoint_from_before_class_weights_still_resumes():
    from lightfit.run.resume import first_difference

    old = {"task": {"name": "classification"}, "model": {"hidden": [128]}}
    now = {
        "task": {"name": "classification", "class_weight": None},
        "model": {"hidden": [128], "compile": True},
    }
    assert first_difference(old, now) is None  # a key added since, at null; compile changes no number
    weighted = {**now, "task": {"name": "classification", "class_weight": [1.0, 2.0]}}
    assert first_difference(old, weighted) == ("task.class_weight", "(absent)", [1.0, 2.0])

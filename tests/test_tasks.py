"""Tasks: regression beside classification, torchmetrics metrics by name, the best checkpoint."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import FAST, assert_same_weights, cli, compose_config, require, run_train

from lightfit.data import bundled_path
from lightfit.errors import LightfitError
from lightfit.run.best import BestScore
from lightfit.run.checkpoint import load_checkpoint, rebuild_network
from lightfit.tasks import Task, check_task_config

LOOPS = ("automatic", "manual", "explicit")


def ols_r2(x_train, y_train, x_test, y_test) -> float:
    """Ordinary least squares with an intercept: the reference a regression should reach."""
    design = np.c_[x_train, np.ones(len(x_train))]
    coef, *_ = np.linalg.lstsq(design, y_train, rcond=None)
    predicted = np.c_[x_test, np.ones(len(x_test))] @ coef
    return 1 - ((y_test - predicted) ** 2).sum() / ((y_test - y_test.mean()) ** 2).sum()


def test_diabetes_alone_trains_a_regression_in_the_units_of_y(run_dir):
    results = run_train(run_dir, "data=diabetes", "trainer.max_epochs=40", "logger=csv")
    assert (results["task"], results["monitor"], results["mode"]) == ("regression", "val/loss", "min")
    assert set(results) >= {"test/loss", "test/mae", "test/rmse", "test/r2", "val/r2"}
    # Raw units: the target is disease progression, 25..346; an error of 40-60 is a real model,
    # an error below 2 would be a metric computed on standardised values.
    assert 30 < results["test/mae"] < 70 and results["test/rmse"] > results["test/mae"]
    # The same split as the run (seed 0): least squares is the reference.
    cfg = compose_config("data=diabetes")
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, task="regression")
    dm.setup()
    train, test = dm.splits["train"], dm.splits["test"]
    reference = ols_r2(
        train.x[train.rows].numpy(),
        train.y[train.rows].numpy(),
        test.x[test.rows].numpy(),
        test.y[test.rows].numpy(),
    )
    assert results["test/r2"] > reference - 0.1, (results["test/r2"], reference)
    header = next(csv.reader((run_dir / "metrics.csv").open()))
    assert {"train/mae", "val/r2", "val/rmse"} <= set(header)


@pytest.mark.core
@pytest.mark.parametrize(
    "extra", [[], ["optimizer=sgd", "optimizer.lr=0.01", "loop.accumulate_grad_batches=2"]]
)
def test_the_three_loops_give_the_same_weights_on_regression(tmp_path, extra):
    runs = {
        loop: run_train(tmp_path / loop, f"loop={loop}", "data=diabetes", *FAST, *extra) for loop in LOOPS
    }
    for loop in LOOPS[1:]:
        assert_same_weights(
            tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / f"{loop}/checkpoints/last.ckpt"
        )
        assert runs[loop]["test/r2"] == runs["automatic"]["test/r2"]


def test_metrics_by_name_and_a_confusion_matrix(run_dir):
    results = run_train(
        run_dir,
        "task.metrics=[acc,f1,precision,recall,auroc,confusion]",
        "trainer.max_epochs=2",
        "logger=csv",
    )
    for name in ("acc", "f1", "precision", "recall", "auroc"):
        assert 0 < results[f"test/{name}"] <= 1, name
    assert "test/confusion" not in results  # a table, not a number
    rows = [[int(float(v)) for v in row] for row in csv.reader((run_dir / "test_confusion.csv").open())]
    matrix = np.array(rows)
    assert matrix.shape == (10, 10)
    assert matrix.sum() == 359  # every test sample once (digits: 1797 x 0.2)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(results["test/acc"], abs=1e-6)
    recall = np.diag(matrix) / matrix.sum(1)  # macro recall from the same matrix
    assert recall.mean() == pytest.approx(results["test/recall"], abs=1e-6)
    require("plot")
    from lightfit.cli.plot import main as plot

    plot([str(run_dir)])  # make plot RUN=...: the curves, and the confusion matrix beside them
    assert (run_dir / "confusion.png").stat().st_size > 1000


def test_a_torchmetrics_class_by_target(run_dir):
    target = "{_target_:torchmetrics.classification.MulticlassCohenKappa,name:kappa}"
    results = run_train(run_dir, f"task.metrics=[acc,{target}]", "task.monitor=val/kappa", *FAST)
    assert 0 < results["test/kappa"] <= 1 and results["mode"] == "max"  # from the class's direction


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task.metrics=[acc,foo]"], "unknown metric 'foo' for task=classification; valid names: acc, auroc"),
        (
            ["data=diabetes", "task.metrics=[auroc]"],
            "'auroc' is a classification metric; task=regression offers",
        ),
        (["task.monitor=val/f1"], "monitor=val/f1 is not a metric this run computes; choose one of"),
        (["task.loss=mse"], "task.loss=mse is not a classification loss"),
        (["model.dropout=1.5"], "model.dropout=1.5 must be in [0, 1)"),
        (["model.hidden=[0]"], "model.hidden=[0]: every width must be a positive integer"),
        (
            ["optimizer=sgd", "optimizer.momentum=-0.5"],
            "optimizer.momentum=-0.5: Invalid momentum value: -0.5",
        ),
        (["loop.accumulate_grad_batches=0"], "loop.accumulate_grad_batches=0 must be at least 1"),
        (["checkpoint.every_n_train_steps=-5"], "checkpoint.every_n_train_steps=-5 must be a number of"),
    ],
    ids=["unknown", "wrong-task", "monitor", "loss", "dropout", "width", "momentum", "accumulate", "steps"],
)
def test_mistakes_stop_before_training(run_dir, overrides, message):
    with pytest.raises(LightfitError) as error:
        run_train(run_dir, *overrides)
    assert message in str(error.value)
    assert not (run_dir / "results.json").exists() and not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_one_line_and_exit_2_from_the_command_line(tmp_path):
    """A value torch rejects while the optimizer is built: one line naming the override."""
    proc = cli("optimizer.lr=-1", "task.metrics=[acc,f1]", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "lightfit-train: error: optimizer.lr=-1.0: Invalid learning rate: -1.0" in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_integer_targets_under_regression_are_warned_once(run_dir, caplog):
    results = run_train(run_dir, "task=regression", "trainer.fast_dev_run=true", "logger=none")
    warned = [
        r for r in caplog.records if "holds integers (int64); training a regression on them" in r.message
    ]
    assert len(warned) == 1 and results["task"] == "regression"


def test_monitor_mode_follows_the_metric():
    assert check_task_config(compose_config().task, "val/loss") == "min"
    assert check_task_config(compose_config("task.metrics=[acc,f1]").task, "val/f1") == "max"
    assert check_task_config(compose_config("data=diabetes").task, "val/rmse") == "min"
    assert check_task_config(compose_config("data=diabetes").task, "val/r2") == "max"
    cfg = compose_config("monitor=val/acc")  # the old top-level key still works
    assert cfg.monitor == "val/acc" and compose_config("task.monitor=val/acc").monitor == "val/acc"


def test_optuna_direction_follows_the_monitor():
    require("optuna")
    directions = {
        (): "minimize",
        ("task.monitor=val/acc",): "maximize",
        ("data=diabetes", "task.monitor=val/r2"): "maximize",
        ("data=diabetes", "task.monitor=val/rmse"): "minimize",
    }
    for overrides, direction in directions.items():
        cfg = compose_config("hparams_search=digits_optuna", *overrides, hydra=True)
        assert cfg.hydra.sweeper.direction == direction, overrides


def test_best_score_ties_go_to_the_lower_loss_then_the_later_epoch():
    best = BestScore("val/acc", "max")
    assert best.update({"val/acc": 1.0, "val/loss": 0.5}, 0)
    assert best.update({"val/acc": 1.0, "val/loss": 0.3}, 1)  # tie, lower loss
    assert not best.update({"val/acc": 1.0, "val/loss": 0.4}, 2)  # tie, higher loss
    assert not best.update({"val/acc": 0.9, "val/loss": 0.1}, 3)
    assert not best.update({"val/acc": float("nan"), "val/loss": 0.1}, 4)
    assert best.epoch == 1
    by_loss = BestScore("val/loss", "min")
    assert by_loss.update({"val/loss": 0.2}, 0) and by_loss.update({"val/loss": 0.2}, 1)
    assert by_loss.epoch == 1


@pytest.mark.parametrize("loop", ["automatic", "explicit"])
def test_a_saturated_metric_does_not_freeze_the_first_epoch(tmp_path, loop):
    """Two well separated classes, a few validation samples: val/acc reaches 1.0 and stays."""
    rng = np.random.default_rng(0)
    y = np.arange(600) % 2
    x = (rng.normal(size=(600, 4)) + 4 * y[:, None]).astype(np.float32)
    path = tmp_path / "easy.npz"
    np.savez(path, x=x, y=y)
    run = tmp_path / "run"
    overrides = [f"data.path={path}", "data=npz", "data.val_fraction=0.02", "task.monitor=val/acc"]
    run_train(run, f"loop={loop}", *overrides, "optimizer.lr=0.01", "trainer.max_epochs=6", "logger=csv")
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/acc")]
    accuracy, losses = [float(r["val/acc"]) for r in rows], [float(r["val/loss"]) for r in rows]
    first = accuracy.index(1.0)
    assert accuracy[first:] == [1.0] * (6 - first) and first <= 2, accuracy  # saturated early
    best_epoch = load_checkpoint(run / "checkpoints/best.ckpt")["epoch"]
    assert best_epoch == first + int(np.argmin(losses[first:])) and best_epoch > first, (losses, best_epoch)


@pytest.mark.slow
def test_multi_output_regression_and_predict_in_raw_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = np.c_[1000 + 50 * x[:, 0], -3 * x[:, 1]].astype(np.float32)  # (N, 2), very different scales
    data = tmp_path / "two.npz"
    np.savez(data, x=x, y=y)
    run = tmp_path / "run"
    results = run_train(
        run, "task=regression", "data=npz", f"data.path={data}", "trainer.max_epochs=30", "logger=none"
    )
    assert results["test/r2"] > 0.9
    features = tmp_path / "x.npy"
    np.save(features, x[:7])
    out = tmp_path / "pred.npy"
    proc = cli(
        f"ckpt_path={run}/checkpoints/best.ckpt",
        f"input={features}",
        f"output={out}",
        module="lightfit predict",
    )
    assert proc.returncode == 0, proc.stderr
    predicted = np.load(out)
    assert predicted.shape == (7, 2) and predicted.dtype == np.float32
    net = rebuild_network(load_checkpoint(run / "checkpoints/best.ckpt"))
    np.testing.assert_allclose(predicted, net(torch.from_numpy(x[:7])).detach().numpy(), rtol=1e-6)
    assert abs(predicted[:, 0].mean() - 1000) < 100  # the units of y, not standardised values
    refused = tmp_path / "labels.npy"
    proc = cli(
        f"ckpt_path={run}/checkpoints/best.ckpt", f"input={features}", f"output={refused}", "kind=labels",
        module="lightfit predict",
    )  # fmt: skip
    assert proc.returncode == 2 and "kind=labels: a regression checkpoint predicts values" in proc.stderr
    assert not refused.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_evaluate_reproduces_a_regression_run(tmp_path):
    run = tmp_path / "run"
    results = run_train(run, "data=diabetes", *FAST)
    proc = cli(f"ckpt_path={run}/checkpoints/best.ckpt", module="lightfit evaluate")
    assert proc.returncode == 0, proc.stderr
    evaluated = json.loads((run / "eval.json").read_text())
    for name in ("loss", "mae", "rmse", "r2"):
        assert evaluated[f"test/{name}"] == pytest.approx(results[f"test/{name}"], rel=1e-6), name


@pytest.mark.parametrize(
    ("task", "y", "message"),
    [
        ("classification", np.linspace(0, 1, 100), "98 labels that are not integers (e.g. 0.010101)"),
        (
            "regression",
            np.where(np.arange(100) == 5, np.nan, 1.0),
            "1 targets that are NaN or infinite (first at row 5)",
        ),
    ],
    ids=["float-labels", "nan-targets"],
)
def test_bad_targets_are_named(tmp_path, task, y, message):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((100, 3), dtype=np.float32), y=y)
    with pytest.raises(LightfitError) as error:
        run_train(tmp_path / "run", f"task={task}", "data=npz", f"data.path={path}")
    assert message in str(error.value)
    if task == "classification":
        assert str(error.value).endswith("for real-valued targets use task=regression")
    assert not (tmp_path / "run" / "results.json").exists()


def test_task_checks_in_python():
    with pytest.raises(LightfitError, match="task.name=ranking is not one of classification, regression"):
        Task("ranking")
    with pytest.raises(LightfitError, match="names a metric twice"):
        Task("regression", metrics=["mae", "mae"])
    task = Task("regression", metrics=["r2"], num_outputs=1)
    metrics = task.stage_metrics("val")
    # r2 in float64: float32 sums lose it when the targets' mean is large next to their spread
    y = torch.tensor(1e5 + np.random.default_rng(0).normal(size=1000), dtype=torch.float32)
    predicted = y + 0.1 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for part in range(0, 1000, 10):
        metrics.update(predicted[part : part + 10], y[part : part + 10], torch.tensor(0.0))
    exact = 1 - ((y.double() - predicted.double()) ** 2).sum() / ((y.double() - y.double().mean()) ** 2).sum()
    assert metrics.compute()["val/r2"].item() == pytest.approx(exact.item(), abs=1e-4)


def test_bundled_regression_set_ships_with_the_package():
    with np.load(bundled_path("diabetes")) as f:
        assert f["x"].shape == (442, 10) and f["y"].shape == (442,) and f["y"].dtype == np.float32


def _binary_scores(pred: np.ndarray, y: np.ndarray, p1: np.ndarray) -> dict[str, float]:
    """scikit-learn's binary f1, precision, recall (pos_label=1) and ROC AUC, by hand in NumPy."""
    tp, fp, fn = [int(np.sum((pred == a) & (y == b))) for a, b in ((1, 1), (1, 0), (0, 1))]
    pos, neg = p1[y == 1], p1[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return {"f1": 2 * tp / (2 * tp + fp + fn), "precision": tp / (tp + fp), "recall": tp / (tp + fn),
            "auroc": greater / (len(pos) * len(neg))}  # fmt: skip


def test_binary_average_scores_the_positive_class_as_scikit_learn_does():
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.2).astype(np.int64)  # unbalanced: 1 is the rare class
    logits = rng.normal(size=(1000, 2)) + np.stack([np.zeros(1000), 0.8 * y - 0.5], axis=1)
    p1 = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    pred = logits.argmax(axis=1)
    names = ["acc", "f1", "precision", "recall", "auroc"]
    computed = {}
    for average in ("binary", "macro"):
        metrics = Task("classification", metrics=names, num_outputs=2, average=average).stage_metrics("val")
        for start in range(0, 1000, 10):  # 100 batches: folded more than once
            part = slice(start, start + 10)
            metrics.update(
                torch.from_numpy(logits[part]).float(), torch.from_numpy(y[part]), torch.tensor(0.0)
            )
        computed[average] = {k.removeprefix("val/"): v.item() for k, v in metrics.compute().items()}
    expected = _binary_scores(pred, y, p1)
    for name, value in expected.items():
        assert computed["binary"][name] == pytest.approx(value, abs=1e-5), name
    assert computed["binary"]["acc"] == computed["macro"]["acc"] == pytest.approx(np.mean(pred == y))
    macro_f1 = np.mean(
        [_binary_scores((pred == c).astype(int), (y == c).astype(int), p1)["f1"] for c in (0, 1)]
    )
    assert computed["macro"]["f1"] == pytest.approx(macro_f1, abs=1e-5)
    assert computed["macro"]["f1"] - computed["binary"]["f1"] > 0.1  # what task.average changes here

    with pytest.raises(LightfitError, match="average=binary needs two classes, and this data has 10"):
        Task("classification", metrics=["f1"], num_outputs=10, average="binary").stage_metrics("val")
    with pytest.raises(LightfitError, match="average=samples is not one of macro, micro, weighted, binary"):
        Task("classification", average="samples")

"""`from lightfit import fit, evaluate, predict`: Keras-style training on NumPy arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightfit import History, evaluate, fit, predict
from lightfit.api.keras_style import as_tensor
from lightfit.data import digits_path
from lightfit.errors import LightfitError


@pytest.fixture(scope="module")
def digits():
    with np.load(digits_path()) as f:
        x = (f["x"].reshape(-1, 64) / 16.0).astype(np.float32)  # scaled to 0..1, still float32
        y = f["y"]
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1500], y[:1500], x[1500:], y[1500:]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def test_fit_evaluate_predict_on_digits(digits, capsys):
    x, y, x_test, y_test = digits
    model = mlp()
    history = fit(model, x, y, validation_split=0.1, epochs=6, batch_size=32, lr=1e-2)
    assert isinstance(history, History)
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc"}
    assert all(len(values) == 6 for values in history.history.values())
    assert history.epoch == list(range(6))
    assert history.history["loss"][-1] < history.history["loss"][0]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 6 and "val_acc" in lines[0] and lines[0].endswith("s")

    scores = evaluate(model, x_test, y_test)
    assert set(scores) == {"loss", "acc"}
    assert all(type(v) is float for v in scores.values())
    assert scores["acc"] > 0.9

    outputs = predict(model, x_test)
    assert type(outputs) is np.ndarray and outputs.dtype == np.float32 and outputs.shape == (len(x_test), 10)
    accuracy = float((outputs.argmax(1) == y_test).mean())
    assert accuracy == pytest.approx(scores["acc"], abs=1e-6)
    # As Keras' predict: the last layer's outputs, logits here (docs/keras.md); the README's softmax
    # gives probabilities.
    with torch.no_grad():
        np.testing.assert_array_equal(outputs, model(torch.from_numpy(x_test)).numpy())
    assert not np.allclose(outputs.sum(axis=1), 1)
    probs = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.slow
def test_validation_data_and_no_validation(digits):
    x, y, x_test, y_test = digits
    history = fit(mlp(), x, y, validation_data=(x_test, y_test), epochs=2, verbose=False)
    assert len(history.history["val_acc"]) == 2
    history = fit(mlp(), x, y, epochs=2, verbose=False)
    assert set(history.history) == {"loss", "acc"}


@pytest.mark.slow
def test_same_seed_same_weights(digits):
    x, y, *_ = digits
    a, b = mlp(), mlp()
    fit(a, x, y, epochs=2, verbose=False)
    fit(b, x, y, epochs=2, verbose=False)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_inputs_are_not_copied_where_the_dtype_allows():
    x = np.random.default_rng(0).random((10, 4), dtype=np.float32)
    assert as_tensor(x, torch.float32).data_ptr() == x.ctypes.data  # from_numpy: shared memory
    y = np.arange(10, dtype=np.int64)
    assert as_tensor(y, torch.int64).data_ptr() == y.ctypes.data
    x64 = x.astype(np.float64)
    assert as_tensor(x64, torch.float32).data_ptr() != x64.ctypes.data  # float64 -> float32 is a copy


class Echo(nn.Module):
    """Returns its input, plus a weight so that it has a device."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x


class Constant(nn.Module):
    """Returns a view of its own weight for every sample."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.arange(3, dtype=torch.float32))

    def forward(self, x):
        return self.w.expand(len(x), 3)


def test_predict_output_does_not_alias_model_or_input():
    x = np.ones((5, 3), dtype=np.float32)
    out = predict(Echo(), x)
    assert not np.shares_memory(out, x)
    out[:] = 7
    assert (x == 1).all()

    model = Constant()
    out = predict(model, x, batch_size=8)
    assert not np.shares_memory(out, model.w.detach().numpy())
    out[:] = -1
    assert model.w.tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.full((4, 64), np.nan, dtype=np.float32), np.zeros(4, dtype=np.int64), "x has 4 samples with NaN"),
        (np.zeros((4, 64), dtype=np.float32), np.array([0, 1, 2, 12]), r"y has 1 labels >= num_classes=10"),
        (np.zeros((4, 64), dtype=np.float32), np.array([0, -1, 2, 1]), "y has 1 negative labels"),
        (
            np.zeros((4, 64), dtype=np.float32),
            np.zeros(3, dtype=np.int64),
            "y has 3 labels but x has 4 samples",
        ),
    ],
)
def test_bad_arrays_are_named(x, y, message):
    with pytest.raises(LightfitError, match=message):
        fit(mlp(), x, y, verbose=False)


def test_regression_with_keras_names_any_loss_and_metrics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (x @ np.arange(1.0, 6.0) + 100).astype(np.float32)  # (N,): the model's (N, 1) is matched
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))
    history = fit(
        model, x, y, loss="mse", metrics=["mae", "r2"], epochs=3, validation_split=0.2, verbose=False
    )
    assert set(history.history) == {"loss", "mae", "r2", "val_loss", "val_mae", "val_r2"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    results = evaluate(model, x, y, loss="mse", metrics=["mae"])
    assert set(results) == {"loss", "mae"} and results["mae"] > 0
    assert predict(model, x[:4]).shape == (4, 1)
    with pytest.raises(
        LightfitError, match=r"y has 2 target\(s\) per sample \(shape \(400, 2\)\) but the model outputs 1"
    ):
        fit(model, x, np.c_[y, y], loss="mse", verbose=False)
    with pytest.raises(LightfitError, match="'acc' is a classification metric"):
        fit(model, x, y, loss="huber", metrics=["acc"], verbose=False)


def _regression_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    return x, (x @ np.arange(1.0, 6.0)).astype(np.float32)


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 1))


def test_evaluate_uses_what_fit_was_told_and_an_argument_still_wins():
    x, y = _regression_data()
    model = _linear()
    fit(model, x, y, loss="mse", metrics=["mae"], epochs=2, verbose=False)
    remembered = evaluate(model, x, y)  # as Keras' evaluate uses what compile set
    assert remembered == evaluate(model, x, y, loss="mse", metrics=["mae"], task="regression")
    assert set(remembered) == {"loss", "mae"}
    errors = predict(model, x)[:, 0] - y
    assert remembered["loss"] == pytest.approx(float(np.mean(errors**2)), rel=1e-5)
    assert remembered["mae"] == pytest.approx(float(np.mean(np.abs(errors))), rel=1e-5)

    assert set(evaluate(model, x, y, metrics=["rmse"])) == {"loss", "rmse"}  # the loss is still mse
    assert evaluate(model, x, y, metrics=["rmse"])["loss"] == remembered["loss"]
    by_mae = evaluate(model, x, y, loss="mae")
    assert by_mae["loss"] == pytest.approx(remembered["mae"], rel=1e-5) and set(by_mae) == {"loss", "mae"}

    # Another model keeps its own; task= alone picks that task's default loss (mse) and metrics.
    other = _linear(seed=1)
    fit(other, x, y, task="regression", epochs=1, verbose=False)
    assert set(evaluate(other, x, y)) == {"loss", "mae", "rmse", "r2"}
    assert set(evaluate(model, x, y)) == {"loss", "mae"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x, y: evaluate(m, x, y),
         r'for real-valued targets pass loss="mse" \(or another regression loss\) or task="regression"$'),
        (lambda m, x, y: fit(m, x, y, loss="msee"),
         r'^loss="msee" is not a classification loss; valid: cross_entropy \(or a loss module'),
        (lambda m, x, y: fit(m, x, y, task="ranking"),
         r'^task="ranking" is not one of classification, regression'),
        (lambda m, x, y: fit(m, x, y, loss="huber", metrics=["acc"]),
         r"^metrics: 'acc' is a classification metric; task=\"regression\" offers mae, mape"),
        (lambda m, x, y: fit(m, x, y, loss="mse", metrics=["accuracy"]),
         r"^metrics: unknown metric 'accuracy' for task=\"regression\"; valid names: "),
        (lambda m, x, y: fit(m, x, y * 1e19, loss="mse", verbose=False),
         r"^the training loss became NaN or infinite at epoch 1, batch 1 \(try a lower lr\)$"),
    ],
    ids=["labels", "loss", "task", "other-task-metric", "unknown-metric", "nan"],
)  # fmt: skip
def test_errors_name_the_python_arguments(call, message):
    x, y = _regression_data()
    with pytest.raises(LightfitError, match=message) as raised:
        call(_linear(), x, y)
    for override in ("task.loss", "task=regression", "optimizer.lr", "loop.", "checkpoints/"):
        assert override not in str(raised.value)

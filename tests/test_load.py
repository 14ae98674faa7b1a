"""A checkpoint in the user's own code: `lightfit.load(path)` and `AutomaticLoop.load_from_checkpoint(path)`
give `lightfit predict`'s numbers on raw inputs. Tables and images: test_table.py, test_images.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_train
from test_evaluate_predict import compose_entry

import lightfit
from lightfit.cli.predict import predict
from lightfit.data import bundled_path, digits_path
from lightfit.errors import LightfitError
from lightfit.loops import AutomaticLoop, ManualLoop

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger=none"]


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    run_train(run, *SHORT, "loop=manual")
    return run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def raw_digits(digits_ckpt):
    """The first 50 raw digits (0..16, not standardised), as an array and as a .npy."""
    x = np.load(digits_path())["x"][:50]
    path = digits_ckpt.parent.parent / "x.npy"
    np.save(path, x)
    return x, path


def command(ckpt, inputs, output, *overrides):
    """What `lightfit predict` writes, read back."""
    return np.load(predict(compose_entry("predict", f"ckpt_path={ckpt}", f"input={inputs}",
                                         f"output={output}", *overrides)))  # fmt: skip


@pytest.mark.core
def test_load_predicts_what_the_predict_command_writes(digits_ckpt, raw_digits, tmp_path):
    x, path = raw_digits
    model = lightfit.load(digits_ckpt)
    probs = model.predict_proba(x)
    assert probs.dtype == np.float32 and probs.shape == (50, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(probs, command(digits_ckpt, path, tmp_path / "p.npy"))
    labels = model.predict(x)
    np.testing.assert_array_equal(labels, command(digits_ckpt, path, tmp_path / "l.npy", "kind=labels"))
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    np.testing.assert_array_equal(model.predict(path), labels)  # a path, read as the command reads it
    np.testing.assert_array_equal(model.predict(x.tolist()), labels)  # nested lists of numbers too
    assert model.classes.tolist() == list(range(10))


def test_load_from_checkpoint_needs_no_other_argument(digits_ckpt, raw_digits):
    x, _ = raw_digits
    expected = lightfit.load(digits_ckpt).predict_proba(x)
    for cls in (AutomaticLoop, ManualLoop):  # trained by the manual loop; any of them loads it
        module = cls.load_from_checkpoint(digits_ckpt)
        assert type(module) is cls and not module.training  # eval mode: dropout off
        with torch.no_grad():
            logits = module(torch.from_numpy(x).float())  # raw inputs: Standardize is inside
        np.testing.assert_array_equal(logits.softmax(dim=1).numpy(), expected)
    assert lightfit.load_module(AutomaticLoop, digits_ckpt).task.name == "classification"
    # Still a weights-only file: nothing pickled was added to make this work.
    assert "state_dict" in torch.load(digits_ckpt, map_location="cpu", weights_only=True)


def test_bad_inputs_get_one_line(digits_ckpt, tmp_path):
    model = lightfit.load(digits_ckpt)
    with pytest.raises(LightfitError, match=r"samples of shape \(3,\).*takes samples of shape \(8, 8\)"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(LightfitError, match="dtype <U1; give numbers, a table"):
        model.predict(np.array([["a"]]))
    with pytest.raises(LightfitError, match="NaN or infinite values"):
        model.predict(np.full((1, 8, 8), np.nan))
    with pytest.raises(LightfitError, match="not trained with data=images"):
        model.predict([tmp_path / "a.png"])
    with pytest.raises(LightfitError, match="batch_size=0 must be a positive integer"):
        model.predict(np.zeros((1, 8, 8)), batch_size=0)
    with pytest.raises(LightfitError, match="checkpoint not found"):
        lightfit.load(tmp_path / "none.ckpt")


def test_a_regression_answers_in_the_units_of_y(tmp_path):
    run = tmp_path / "run"
    run_train(run, *SHORT, "data=diabetes", "loop=explicit")
    ckpt = run / "checkpoints" / "best.ckpt"
    data = np.load(bundled_path("diabetes"))
    x, y = data["x"][:40], data["y"]
    np.save(tmp_path / "x.npy", x)
    values = lightfit.load(ckpt).predict(x)
    assert values.shape == (40,) and values.dtype == np.float32
    np.testing.assert_array_equal(values, command(ckpt, tmp_path / "x.npy", tmp_path / "v.npy"))
    # TargetScale: the network answers in y's units (disease progression, 25 to 346), not standardised.
    assert abs(values.mean() - y.mean()) < y.std() and values.std() > 1
    module = AutomaticLoop.load_from_checkpoint(ckpt)  # trained by the explicit loop
    with torch.no_grad():
        np.testing.assert_array_equal(module(torch.from_numpy(x).float()).numpy().reshape(-1), values)
    with pytest.raises(LightfitError, match="kind=probs: a regression checkpoint predicts values"):
        lightfit.load(ckpt).predict_proba(x)

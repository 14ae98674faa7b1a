"""Evaluate and predict from the checkpoint of one tiny real run, and refuse what they should."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli, run_train
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from lightfit.cli.evaluate import evaluate
from lightfit.cli.predict import predict
from lightfit.data import digits, digits_path
from lightfit.errors import LightfitError
from lightfit.run.checkpoint import load_checkpoint, rebuild_network


def compose_entry(name: str, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module("lightfit.conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One short training run shared by every test here: (run dir, results.json)."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    results = run_train(run, "trainer.max_epochs=2", "logger=none")
    return run, results


@pytest.fixture(scope="module")
def features(tiny):
    """Raw digits features as the network takes them, saved as a .npy."""
    path = tiny[0].parent / "x.npy"
    np.save(path, np.load(digits_path())["x"][:300])
    return path


@pytest.mark.core
def test_evaluate_reproduces_the_runs_test_metrics(tiny, tmp_path):
    run, results = tiny
    metrics = evaluate(compose_entry("evaluate", f"ckpt_path={run}/checkpoints/best.ckpt"))
    assert metrics["test/acc"] == results["test/acc"]  # same split, same weights, same code
    assert metrics["test/loss"] == results["test/loss"]
    written = json.loads((run / "eval.json").read_text())
    assert written["test/acc"] == results["test/acc"] and written["data"]["seed"] == 0

    # The loss is the mean over test samples (the last batch is short: 359 = 5 * 64 + 39).
    datamodule = digits(seed=0)
    datamodule.setup()
    test = datamodule.splits["test"]
    net = rebuild_network(load_checkpoint(run / "checkpoints/best.ckpt"))
    with torch.no_grad():
        loss = F.cross_entropy(net(test.x[test.rows]), test.y[test.rows]).item()
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-5)

    # data=... from the command line wins over the checkpoint's; its seed is still the run's.
    npz = tmp_path / "digits.npz"
    np.savez(npz, **np.load(digits_path()))
    other = evaluate(
        compose_entry(
            "evaluate",
            f"ckpt_path={run}/checkpoints/best.ckpt",
            "data=npz",
            f"data.path={npz}",
            f"output={tmp_path / 'other.json'}",
        )
    )
    assert other["test/acc"] == results["test/acc"]
    assert json.loads((tmp_path / "other.json").read_text())["data"]["path"] == str(npz)


@pytest.mark.core
def test_predict_writes_probabilities_and_labels(tiny, features, tmp_path):
    run, _ = tiny
    ckpt = f"ckpt_path={run}/checkpoints/best.ckpt"
    predict(
        compose_entry("predict", ckpt, f"input={features}", f"output={tmp_path / 'p.npy'}", "batch_size=64")
    )
    probs = np.load(tmp_path / "p.npy")
    assert probs.dtype == np.float32 and probs.shape == (300, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    net = rebuild_network(load_checkpoint(run / "checkpoints/best.ckpt"))
    with torch.no_grad():  # raw features in: the Standardize layer in the net scales them
        expected = net(torch.from_numpy(np.load(features))).softmax(dim=1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)

    proc = cli(
        ckpt, f"input={features}", f"output={tmp_path / 'l.npy'}", "kind=labels", module="lightfit predict"
    )
    assert proc.returncode == 0, proc.stderr
    labels = np.load(tmp_path / "l.npy")
    assert labels.dtype == np.int64 and labels.shape == (300,)
    np.testing.assert_array_equal(labels, probs.argmax(axis=1))
    assert sorted(os.listdir(tmp_path)) == ["l.npy", "p.npy"]  # no partial files left behind


# -- refusals ---------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_keras_style_functions_are_not_shadowed():
    # Importing a submodule sets it as an attribute of the package: lightfit.evaluate and
    # lightfit.predict must stay the functions while the command-line modules are loaded.
    import lightfit
    import lightfit.cli.evaluate
    import lightfit.cli.predict  # noqa: F401

    assert callable(lightfit.evaluate) and callable(lightfit.predict)


def test_checkpoint_refusals(tiny, tmp_path):
    run, _ = tiny
    marker = tmp_path / "pwned"
    with pytest.raises(LightfitError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint\n")
    with pytest.raises(LightfitError, match="is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.ckpt")
    torch.save({"state_dict": {}, "lightfit": Payload(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(LightfitError, match="refused: it is not a plain weights file"):
        load_checkpoint(tmp_path / "evil.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(LightfitError, match="not a lightfit checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")

    checkpoint = load_checkpoint(run / "checkpoints/best.ckpt")
    checkpoint["lightfit"]["config"]["model"]["hidden"] = [32]  # weights are for [128]
    with pytest.raises(LightfitError, match="weights do not fit the model.*size mismatch"):
        rebuild_network(checkpoint)
    # A config can call anything through _target_: only networks and lightfit's own are allowed.
    checkpoint["lightfit"]["config"]["model"] = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    with pytest.raises(LightfitError, match="'os.system' is not a network.*refusing"):
        rebuild_network(checkpoint)
    assert not marker.exists()


@pytest.mark.slow
def test_bad_inputs_get_one_line_and_leave_no_output(tiny, features, tmp_path):
    run, _ = tiny
    ckpt = f"ckpt_path={run}/checkpoints/best.ckpt"
    x = np.load(features)
    x[150, 3, 4] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(LightfitError, match=r"nan.npy has NaN or infinite values \(row 150\)"):
        predict(
            compose_entry("predict", ckpt, f"input={tmp_path / 'nan.npy'}", f"output={tmp_path / 'out.npy'}")
        )
    assert sorted(os.listdir(tmp_path)) == ["nan.npy"]  # no output, no partial file

    np.save(tmp_path / "flat.npy", x.reshape(len(x), -1))
    with pytest.raises(LightfitError, match=r"samples of shape \(64,\).*takes samples of shape \(8, 8\)"):
        predict(
            compose_entry("predict", ckpt, f"input={tmp_path / 'flat.npy'}", f"output={tmp_path / 'o.npy'}")
        )
    with pytest.raises(LightfitError, match="input file not found"):
        predict(
            compose_entry("predict", ckpt, f"input={tmp_path / 'no.npy'}", f"output={tmp_path / 'o.npy'}")
        )

    torch.save({"state_dict": {}, "x": Payload(tmp_path / "pwned")}, tmp_path / "evil.ckpt")
    proc = cli(f"ckpt_path={tmp_path / 'evil.ckpt'}", module="lightfit evaluate")
    assert_one_line_error(proc, "lightfit-evaluate", "evil.ckpt was refused", "not a plain weights file")
    assert not (tmp_path / "pwned").exists()


def assert_one_line_error(proc, prog, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_prediction_imports_no_lightning():
    """A forward pass needs none of Lightning; its import would add seconds to every prediction."""
    code = "import sys, lightfit.cli.predict; print(sorted(m for m in sys.modules if 'lightning' in m))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr

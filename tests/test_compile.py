"""`model.compile=true`: torch.compile in every loop, checkpoints with the plain network's names.

torch.compile on CPU generates C++ and needs a C compiler; the runs compile for seconds each.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import compose_config, run_train, state_dict
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from lightfit.cli.evaluate import evaluate
from lightfit.run.checkpoint import net_weights

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger=none"]


def test_model_compile_is_a_key_of_every_model():
    assert compose_config().model.compile is False
    assert compose_config("model=cnn", "model.compile=true").model.compile is True


@pytest.mark.slow  # torch.compile's first use imports torch._dynamo: about 15 s on 2 cores
def test_weights_saved_by_a_compiled_wrapper_load_into_the_plain_network():
    # A project's module that keeps torch.compile(net) saves `net._orig_mod.*`: read as `net.*`.
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    wrapped = {f"net.{k}": v for k, v in torch.compile(net).state_dict().items()}
    assert next(iter(wrapped)).startswith("net._orig_mod.")
    net.load_state_dict(net_weights({"state_dict": wrapped}))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.parametrize("loop", ["automatic", "manual", "explicit"])
def test_a_compiled_run_saves_plain_names_that_evaluate_and_resume_read(tmp_path, loop):
    run = tmp_path / "run"
    results = run_train(run, f"loop={loop}", "model.compile=true", *SHORT)
    keys = state_dict(run / "checkpoints/last.ckpt").keys()
    assert "net.0.mean" in keys and not any("_orig_mod" in k for k in keys)
    GlobalHydra.instance().clear()
    with initialize_config_module("lightfit.conf", version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={run}/checkpoints/best.ckpt"])
    # evaluate runs the network eagerly: the same numbers up to the compiled kernels' rounding
    assert evaluate(cfg)["test/acc"] == pytest.approx(results["test/acc"], abs=1e-3)
    more = [*SHORT[1:], "trainer.max_epochs=2", "ckpt_path=last"]
    assert run_train(run, f"loop={loop}", "model.compile=true", *more)["epochs"] == 2

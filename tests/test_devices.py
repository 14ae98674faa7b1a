"""Trainer options for devices and precision: every loop runs under each (GPU tests skip without CUDA)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_same_weights, compose_config, run_train

LOOPS = ("automatic", "manual", "explicit")
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "logger=none"]


def test_trainer_options_compose():
    assert compose_config("trainer=ddp").trainer.strategy == "ddp"
    ddp_cpu = compose_config("trainer=ddp_cpu", "trainer.devices=4", "trainer.num_nodes=2").trainer
    assert (ddp_cpu.accelerator, ddp_cpu.devices, ddp_cpu.num_nodes) == ("cpu", 4, 2)
    assert compose_config("trainer=mps").trainer.accelerator == "mps"
    assert compose_config("trainer.precision=32").trainer.precision == "32"  # Lightning reads it as 32-true


def test_precision_32_and_bf16_mixed_on_cpu_in_every_loop(tmp_path):
    full = run_train(tmp_path / "32", *SHORT, "trainer.precision=32")
    assert math.isfinite(full["test/loss"])
    for loop in LOOPS:
        results = run_train(tmp_path / loop, f"loop={loop}", *SHORT, "trainer.precision=bf16-mixed")
        assert math.isfinite(results["test/loss"]) and 0 < results["test/acc"] <= 1
        assert results["test/loss"] != full["test/loss"]  # bfloat16 did change the arithmetic
    assert_same_weights(
        tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / "manual/checkpoints/last.ckpt"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_one_gpu_with_data_on_the_device(tmp_path, loop, precision):
    results = run_train(
        tmp_path, "trainer=gpu", f"loop={loop}", f"trainer.precision={precision}", "trainer.max_epochs=3"
    )
    assert results["test/acc"] > 0.8  # 3 epochs on digits, as on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_loops_agree_with_host_resident_data(tmp_path):
    for loop in ("automatic", "explicit"):
        run_train(tmp_path / loop, "trainer=gpu", f"loop={loop}", "data.on_device=false", *SHORT)
    states = [
        torch.load(tmp_path / loop / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
        for loop in ("automatic", "explicit")
    ]
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key])  # same batches, same arithmetic

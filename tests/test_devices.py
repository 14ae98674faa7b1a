"""Trainer options for devices and precision: every loop runs under each (GPU tests skip without CUDA)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_same_weights, compose_config, run_train, state_dict

LOOPS = ("automatic", "manual", "explicit")
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=5", "logger=none"]


def test_trainer_options_compose():
    assert compose_config("trainer=ddp").trainer.strategy == "ddp"
    ddp_cpu = compose_config("trainer=ddp_cpu", "trainer.devices=4", "trainer.num_nodes=2").trainer
    assert (ddp_cpu.accelerator, ddp_cpu.devices, ddp_cpu.num_nodes) == ("cpu", 4, 2)
    assert compose_config("trainer=mps").trainer.accelerator == "mps"
    assert compose_config("trainer.precision=32").trainer.precision == "32"  # Lightning reads it as 32-true


@pytest.mark.slow
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
def test_data_on_the_gpu_or_in_pinned_host_memory_train_alike(tmp_path):
    for on_device in ("true", "false"):  # gathered on the GPU, or on the host and copied
        run_train(tmp_path / on_device, "trainer=gpu", f"data.on_device={on_device}", *SHORT)
    a, b = (state_dict(tmp_path / d / "checkpoints/last.ckpt") for d in ("true", "false"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)  # the same batches

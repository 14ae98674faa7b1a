"""Real training runs: each loop trains, writes its outputs, and the loops agree exactly."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import FAST, assert_same_weights, run_train

from lightfit.errors import LightfitError
from lightfit.tasks import Task

LOOPS = ("automatic", "manual", "explicit")


@pytest.mark.core
@pytest.mark.parametrize("loop", LOOPS)
def test_each_loop_writes_results_checkpoints_and_metrics(run_dir, loop):
    results = run_train(run_dir, f"loop={loop}", "trainer.max_epochs=3", "logger=csv")
    assert results["loop"] == loop
    assert set(results) >= {"test/acc", "test/loss", "val/acc", "val/loss"}
    assert all(isinstance(results[k], float) for k in ("test/acc", "test/loss", "val/acc", "val/loss"))
    assert results["test/acc"] > 0.8  # 3 epochs on digits
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    train_rows = [r for r in rows if r.get("train/loss")]
    val_rows = [r for r in rows if r.get("val/acc")]
    assert len(train_rows) == 3 and len(val_rows) == 3
    assert [int(r["epoch"]) for r in train_rows] == [0, 1, 2]


@pytest.mark.parametrize(
    "extra",
    [
        [],
        [
            "optimizer=sgd",
            "scheduler=step",
            "scheduler.step_size=1",
            "loop.accumulate_grad_batches=3",
            "loop.gradient_clip_val=0.5",
        ],
    ],
    ids=["default", "sgd-steplr-accumulate-clip"],
)
def test_automatic_and_manual_give_the_same_weights(tmp_path, extra):
    runs = {}
    for loop in ("automatic", "manual"):
        runs[loop] = run_train(tmp_path / loop, f"loop={loop}", *FAST, *extra)
    assert_same_weights(
        tmp_path / "automatic/checkpoints/last.ckpt", tmp_path / "manual/checkpoints/last.ckpt"
    )
    assert runs["automatic"]["test/acc"] == runs["manual"]["test/acc"]


@pytest.mark.slow
def test_cnn_trains(run_dir):
    results = run_train(run_dir, "model=cnn", "trainer.max_epochs=1", "logger=none")
    assert 0 <= results["test/acc"] <= 1


def test_stage_metrics_are_per_sample_means_over_the_epoch():
    """300 batches of 3 and a short one of 2 (the per-batch values are summed every FOLD
    batches): the loss is the mean over the 902 samples, not over batches."""
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(902, 10, generator=gen), torch.randint(0, 10, (902,), generator=gen)
    metrics = Task("classification", num_outputs=10).stage_metrics("val")
    for start in range(0, 902, 3):
        part = slice(start, start + 3)
        metrics.update(logits[part], y[part], torch.nn.functional.cross_entropy(logits[part], y[part]))
    result = metrics.compute()
    torch.testing.assert_close(result["val/loss"], torch.nn.functional.cross_entropy(logits, y))
    assert result["val/acc"].item() == pytest.approx((logits.argmax(1) == y).float().mean().item())
    metrics.reset()
    for batch in range(300):  # the first bad loss is in the second fold
        loss = torch.tensor(float("nan") if batch in (280, 290) else 1.0)
        metrics.update(logits[:2], y[:2], loss)
    with pytest.raises(LightfitError, match="NaN or infinite at epoch 3, batch 281"):
        metrics.check_finite(epoch=2)

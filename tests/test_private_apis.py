"""Other libraries' private or internal names that lightfit still relies on (docs/development.md).

One test per use: when an upgrade removes or changes the name, its test fails with a message
that names it and where lightfit uses it, before a training run breaks in a less clear way.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import lightning as L
import pytest
import torch
from torch import nn

from lightfit.tasks.metrics import StageMetrics

pytestmark = pytest.mark.core  # .ci/lowest checks them on the oldest supported versions too


def gone(name: str, where: str, package: str) -> str:
    version = importlib.metadata.version(package)
    return f"{name} (used in {where}) is gone or changed in {package} {version}: see docs/development.md"


def test_lightning_subprocess_script_launcher():
    name = "lightning.fabric.strategies.launchers._SubprocessScriptLauncher"
    message = gone(name, "run/distributed.py processes_to_start", "lightning")
    try:
        from lightning.fabric.strategies.launchers import _SubprocessScriptLauncher
    except ImportError:
        pytest.fail(message)
    # What lightfit asks of it: the launcher of strategy=ddp is one, that of ddp_spawn is not.
    reruns = L.Fabric(accelerator="cpu", devices=2, strategy="ddp").strategy.launcher
    spawns = L.Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn").strategy.launcher
    assert isinstance(reruns, _SubprocessScriptLauncher), message
    assert not isinstance(spawns, _SubprocessScriptLauncher), message


def test_torch_module_apply_moves_what_stage_metrics_keep():
    message = gone("torch.nn.Module._apply(fn, recurse)", "tasks/metrics.py StageMetrics", "torch")
    assert "recurse" in inspect.signature(nn.Module._apply).parameters, message
    metrics = StageMetrics("train")
    metrics.losses, metrics.outputs = [torch.ones(())], [torch.ones(2, 3)]
    metrics.targets = [torch.zeros(2, dtype=torch.long)]
    metrics.double()  # .to(), .cuda(), .double() all go through _apply
    assert metrics.outputs[0].dtype == torch.float64, message
    assert metrics.losses[0].dtype == torch.float64, message
    assert metrics.targets[0].dtype == torch.long, message  # labels stay integers


class _Probe(L.LightningModule):
    """Records `fit_loop.epoch_loop.batch_progress.current.processed` in on_train_batch_end."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.seen: list[tuple[int, int]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x).squeeze(-1), y)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        self.seen.append((batch_idx, progress))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_batch_progress_counts_the_batch_being_ended():
    name = "Trainer.fit_loop.epoch_loop.batch_progress.current.processed"
    message = gone(name, "loops/module.py on_save_checkpoint", "lightning")
    data = torch.utils.data.TensorDataset(torch.randn(12, 2), torch.randn(12))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    try:
        trainer.fit(probe, loader)
    except AttributeError:
        pytest.fail(message)
    # lightfit saves `processed` as the batches trained in the epoch, the current one included
    assert probe.seen == [(0, 1), (1, 2), (2, 3)], message

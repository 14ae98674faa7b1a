"""Run by test_ddp.py under torchrun with 2 CPU processes; each rank writes what it saw and ended with.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_probe.py OUT_DIR

Real pieces only: the ArrayDataModule, the manual loop in a Lightning Trainer, the explicit
loop with Fabric, both with gradient accumulation (the no-sync path of DDP). Feature 0 of
every sample is its id, so the batches tell which samples each rank got.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lightfit.data import ArrayDataModule
from lightfit.loops import ManualLoop
from lightfit.loops.explicit import fit
from lightfit.nets import MLP, build_network
from lightfit.tasks import Task

N, CLASSES, BATCH, EPOCHS = 207, 3, 16, 2  # 207: train, val and test splits of odd sizes (145, 21, 41)


def datamodule() -> ArrayDataModule:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    x[:, 0] = np.arange(N)  # the sample's id
    return ArrayDataModule(x, rng.integers(0, CLASSES, N), batch_size=BATCH, seed=0)


def network(dm: ArrayDataModule) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(MLP, dm.input_shape, CLASSES, dm.mean, dm.std)


class Recording(ManualLoop):
    """The manual loop, noting the ids of every batch it is given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[str, list[list[int]]] = defaultdict(list)

    def note(self, key: str, batch: tuple[Tensor, Tensor]) -> None:
        self.seen[key].append(batch[0][:, 0].int().tolist())

    def training_step(self, batch, batch_idx):
        self.note(f"train/{self.current_epoch}", batch)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.note(f"val/{self.current_epoch}", batch)
        super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.note("test", batch)
        super().test_step(batch, batch_idx)


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    L.seed_everything(0, verbose=False)
    report: dict = {"world_size": int(os.environ["WORLD_SIZE"])}

    # The manual loop in a Lightning Trainer (as train.py builds it).
    dm = datamodule()
    dm.setup("fit")
    module = Recording(
        network(dm),
        Task("classification", num_outputs=CLASSES),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        accumulate_grad_batches=2,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=EPOCHS,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    report["seen"] = module.seen
    report["manual"] = {k: v.tolist() for k, v in module.net.state_dict().items()}

    # The explicit loop with Fabric, in the same process group.
    dm = datamodule()
    dm.setup("fit")
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    dm.distribute(fabric.global_rank, fabric.world_size, fabric.device)
    net = network(dm)
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.1))
    train_loader, val_loader = fabric.setup_dataloaders(
        dm.train_dataloader(), dm.val_dataloader(), use_distributed_sampler=False
    )
    history = fit(
        fabric, model, optimizer, train_loader, val_loader,
        epochs=EPOCHS, task=Task("classification", num_outputs=CLASSES), accumulate_grad_batches=2,
    )  # fmt: skip
    report["explicit"] = {k: v.tolist() for k, v in net.state_dict().items()}
    report["explicit_history"] = history
    report["initial"] = {k: v.tolist() for k, v in network(dm).state_dict().items()}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

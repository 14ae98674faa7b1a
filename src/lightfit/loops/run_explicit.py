"""How loop=explicit runs: Fabric for devices, the plain `fit()` of explicit.py, then validate and test.

What the Lightning loops get from callbacks (run/callbacks.py) happens here in plain code:
the epoch line and the logger each epoch, best.ckpt and last.ckpt (BestScore decides, as in
RunCheckpoints), interrupted.ckpt on a stop, the best weights tested at the end.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

from hydra.utils import instantiate
from lightning.fabric import Fabric

from lightfit.loops.explicit import (
    StopTraining,
    checkpoint_state,
    evaluate_epoch,
    fit,
    num_batches,
    restore_state,
)
from lightfit.loops.module import CHECKPOINT_KEY
from lightfit.run.best import BEST_KEY
from lightfit.run.console import epoch_line
from lightfit.run.context import Run, checkpoint_config, load_net_weights
from lightfit.run.loggers import build_loggers
from lightfit.run.resume import INTERRUPTED, AtomicCheckpointIO
from lightfit.run.signals import TrainingInterrupted

log = logging.getLogger("lightfit")
STAGES = ("train", "val", "test")


class ExplicitRun:
    """One loop=explicit run: set up in `__init__`, then `train()` and `test()`."""

    def __init__(self, run: Run) -> None:
        t, cfg = run.cfg.trainer, run.cfg
        self.run = run
        self.fabric = Fabric(
            accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
            precision=t.precision, plugins=[AtomicCheckpointIO()],
        )  # fmt: skip
        self.fabric.launch()
        optimizer = instantiate(cfg.optimizer)(run.net.parameters())
        # Fabric: moves the model to the device, wraps it for DDP (plain PyTorch: net.to(device))
        self.model, self.optimizer = self.fabric.setup(run.net, optimizer)
        self.scheduler = instantiate(cfg.scheduler)(self.optimizer) if cfg.get("scheduler") else None
        dm = run.datamodule
        dm.distribute(
            self.fabric.global_rank, self.fabric.world_size, self.fabric.device
        )  # this rank's shard
        self.loaders = dict(
            zip(
                STAGES,
                self.fabric.setup_dataloaders(
                    dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(),
                    use_distributed_sampler=False,  # the data module shards itself, without padding
                ),  # batches arrive on the device
                strict=True,
            )
        )  # fmt: skip
        self.fast = int(t.fast_dev_run)  # like Lightning: that many batches, one epoch, no checkpoints
        self.limits = {s: self.fast or t.get(f"limit_{s}_batches") for s in STAGES}
        self.epochs = 1 if self.fast else t.max_epochs
        batches = num_batches(self.loaders["train"], self.limits["train"])
        self.steps_per_epoch = math.ceil(batches / cfg.loop.accumulate_grad_batches)
        self.loggers = build_loggers(cfg)  # logger=csv, tensorboard, mlflow, none, or a list of them
        self.extra = {CHECKPOINT_KEY: checkpoint_config(cfg, dm)}

    def state(self, epoch: int, step: int) -> dict[str, Any]:
        """A checkpoint of this moment (Lightning's layout), with the best score so far."""
        extra = self.extra | {BEST_KEY: self.run.best.state_dict()}
        return checkpoint_state(self.model, self.optimizer, self.scheduler, epoch, step, extra)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch line and the logger (rank 0), then best.ckpt if it improved and last.ckpt."""
        step = (epoch + 1) * self.steps_per_epoch
        if self.fabric.is_global_zero:
            log.info(epoch_line(epoch + 1, self.epochs, metrics, metrics["time"]))
            for logger in self.loggers:
                logger.log_metrics(
                    {k: v for k, v in metrics.items() if "/" in k} | {"epoch": epoch}, step - 1
                )
                logger.save()  # to disk every epoch: a killed run keeps its metrics
        if self.fast:
            return
        if self.run.best.update(metrics, epoch):  # ties: the lower val/loss, then the later epoch
            self.fabric.save(self.run.checkpoints / "best.ckpt", self.state(epoch, step))  # rank 0 writes
        self.fabric.save(self.run.checkpoints / "last.ckpt", self.state(epoch, step))

    def train(self) -> None:
        run, loop = self.run, self.run.cfg.loop
        start_epoch = 0
        if run.resume.checkpoint is not None:
            start_epoch = restore_state(run.resume.checkpoint, run.net, self.optimizer, self.scheduler)
            run.best.load_state_dict(run.resume.checkpoint.get(BEST_KEY, {}))
        for logger in self.loggers:
            run.resume.keep_metrics(logger)
        try:
            fit(
                self.fabric, self.model, self.optimizer, self.loaders["train"], self.loaders["val"],
                epochs=self.epochs, task=run.task, scheduler=self.scheduler,
                accumulate_grad_batches=loop.accumulate_grad_batches,
                gradient_clip_val=loop.gradient_clip_val, start_epoch=start_epoch,
                limit_train_batches=self.limits["train"], limit_val_batches=self.limits["val"],
                on_epoch_end=self.on_epoch_end,
                should_stop=lambda: run.stop.agreed(self.fabric.world_size > 1),
            )  # fmt: skip
        except StopTraining as stopped:  # every rank stopped at the same batch: all take part in the save
            saved = run.checkpoints / INTERRUPTED
            steps = math.ceil(stopped.batch / loop.accumulate_grad_batches)  # optimizer steps this epoch
            step = stopped.epoch * self.steps_per_epoch + steps
            self.fabric.save(saved, self.state(stopped.epoch, step))  # the best score too, for ckpt_path=auto
            raise TrainingInterrupted(run.stop.signum, str(stopped), saved, run.run_dir) from None
        for logger in self.loggers:
            logger.finalize("success")

    def test(self) -> dict[str, Any]:
        """Validation and test metrics of the best weights (as the Lightning loops do)."""
        best_path = self.run.checkpoints / "best.ckpt"
        if best_path.is_file():
            load_net_weights(self.run.net, best_path)
        results: dict[str, Any] = {"tables": {}}
        for stage in ("val", "test"):
            loader = self.loaders[stage]
            batches = itertools.islice(loader, num_batches(loader, self.limits[stage]))
            metrics = self.run.task.stage_metrics(stage).to(self.fabric.device)
            for key, value in evaluate_epoch(self.model, batches, self.run.task, metrics).items():
                if value.ndim == 0:
                    results[key] = value.item()  # .item(): one number to the host, for results.json
                else:
                    results["tables"][key] = value.cpu()  # a confusion matrix, for its CSV
        results["best_checkpoint"] = str(best_path) if best_path.is_file() else None
        results["epochs"] = self.epochs
        return results


def train_explicit(run: Run) -> dict[str, Any]:
    """Fit with the explicit loop, then validate and test the best weights."""
    explicit = ExplicitRun(run)
    explicit.train()
    return explicit.test()

"""How loop=explicit runs: Fabric for devices, the plain `fit()` of explicit.py, then validate and test.

What the Lightning loops get from callbacks (run/callbacks.py) happens here in plain code:
the epoch line and the logger each epoch, best.ckpt and last.ckpt (BestScore decides, as in
RunCheckpoints), interrupted.ckpt on a stop, the best weights tested at the end. Of the
config's callbacks it runs lightfit's early stopping and learning-rate monitor, calling the
same objects the Lightning loops get (run/callback_group.py refuses any other).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.fabric import Fabric

from lightfit.loops.explicit import (
    checkpoint_state,
    evaluate_epoch,
    num_batches,
    restore_state,
)
from lightfit.run.best import BEST_KEY
from lightfit.run.callback_group import CALLBACKS_KEY, stopped_epoch
from lightfit.run.checkpoint import CHECKPOINT_KEY
from lightfit.run.checkpoint_io import BackgroundCheckpointIO, copies
from lightfit.run.console import epoch_line, step_limit
from lightfit.run.context import Run, built, checkpoint_config, load_net_weights
from lightfit.run.contract import FitLoop, check, check_own_fit
from lightfit.run.early_stopping import EarlyStopping
from lightfit.run.hooks import EarlyStop, FitHooks, StopTraining, max_time_seconds
from lightfit.run.loggers import build_loggers
from lightfit.run.lr_monitor import LearningRateMonitor
from lightfit.run.resume import EPOCH_KEY, INTERRUPTED, epoch_position, restore_position
from lightfit.run.schedule import Schedule
from lightfit.run.signals import TrainingInterrupted

log = logging.getLogger("lightfit")
STAGES = ("train", "val", "test")
# What lightfit passes a fit function itself; the loop.fit node's other keys are the function's own.
FIT_ARGS = (
    "fabric", "model", "optimizer", "train_loader", "val_loader", "task", "epochs", "scheduler",
    "accumulate_grad_batches", "gradient_clip_val", "hooks",
)  # fmt: skip


class ExplicitRun:
    """One loop=explicit run: set up in `__init__`, then `train()` and `test()`."""

    def __init__(self, run: Run) -> None:
        t, cfg = run.cfg.trainer, run.cfg
        self.run = run
        self.io = BackgroundCheckpointIO()  # Fabric writes through it, in a thread
        self.fabric = Fabric(
            accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
            precision=t.precision, plugins=[self.io],
        )  # fmt: skip
        self.fabric.launch()
        self.distributed = self.fabric.world_size > 1  # read once: should_stop asks at every step
        set_torch_flags(t.deterministic, t.benchmark)  # as Trainer(deterministic=..., benchmark=...)
        optimizer = instantiate(cfg.optimizer)(run.net.parameters())
        # Fabric: moves the model to the device, wraps it for DDP (plain PyTorch: net.to(device))
        self.model, self.optimizer = self.fabric.setup(run.net, optimizer)
        dm = run.datamodule
        if run.resume.mid_epoch:  # the train loader skips the batches trained before the checkpoint
            dm.resume_train_at(*run.resume.mid_epoch)
        dm.distribute(
            self.fabric.global_rank, self.fabric.world_size, self.fabric.device
        )  # this rank's shard
        # The train loader stays a plain DataLoader: fit() sets its epoch (a resumed run starts at
        # a later one) and moves its batches; Fabric's wrapper would count epochs from 0.
        evaluation = self.fabric.setup_dataloaders(
            dm.val_dataloader(),
            dm.test_dataloader(),
            use_distributed_sampler=False,  # the data module shards itself, without padding
        )  # their batches arrive on the device
        self.loaders = dict(zip(STAGES, (dm.train_dataloader(), *evaluation), strict=True))
        self.schedule = Schedule.from_config(cfg)  # the scheduler, and when it steps
        self.scheduler = None
        if self.schedule is not None:  # the run's length (OneCycleLR): from the train loader's
            self.scheduler = self.schedule.build(self.optimizer, len(self.loaders["train"]))
        self.fast = int(t.fast_dev_run)  # like Lightning: that many batches, one epoch, no checkpoints
        self.limits = {s: self.fast or t.get(f"limit_{s}_batches") for s in STAGES}
        self.epochs = 1 if self.fast else t.max_epochs
        batches = num_batches(self.loaders["train"], self.limits["train"])
        self.batches_per_epoch = batches
        self.accumulate = cfg.loop.accumulate_grad_batches  # read once: a config lookup costs ~20 us
        self.steps_per_epoch = math.ceil(batches / self.accumulate)
        self.every_n_train_steps = cfg.checkpoint.every_n_train_steps
        self.epochs_trained = 0
        self.train_metrics = run.task.stage_metrics("train").to(self.fabric.device)
        self.loggers = build_loggers(cfg)  # logger=csv, tensorboard, mlflow, none, or a list of them
        self.extra = {CHECKPOINT_KEY: checkpoint_config(cfg, dm, run.task)}
        # callbacks=[early_stopping,lr_monitor]: the objects the Lightning loops would get
        self.stoppers = [c for c in run.callbacks if isinstance(c, EarlyStopping)]
        self.rates = [c for c in run.callbacks if isinstance(c, LearningRateMonitor)]
        self.epochs_trained = self.epochs
        # loop.fit: the function that trains (lightfit.loops.explicit.fit, or a project's own)
        self.fit = built(
            "loop.fit", cfg.loop.fit, lambda: instantiate(cfg.loop.fit, _partial_=True, _convert_="all")
        )
        check(self.fit, FitLoop, "loop.fit")
        check_own_fit(self.fit, cfg, self.schedule)  # a project's fit: what it does not read

    def state(self, epoch: int, batches: int) -> dict[str, Any]:
        """A checkpoint of this moment (Lightning's layout), with the best score so far and the
        position in the epoch (`batches` trained in it). Under DDP every rank calls it (a gather)."""
        step = epoch * self.steps_per_epoch + math.ceil(batches / self.accumulate)
        done = batches >= self.batches_per_epoch
        extra = self.extra | {
            BEST_KEY: self.run.best.state_dict(),
            EPOCH_KEY: epoch_position(epoch, batches, done, self.train_metrics),
            CALLBACKS_KEY: {c.state_key: c.state_dict() for c in self.run.callbacks},  # as in Lightning's
        }
        return checkpoint_state(self.model, self.optimizer, self.scheduler, epoch, step, extra)

    def on_step(self, epoch: int, batches: int) -> None:
        """`last.ckpt` every N optimizer steps (`checkpoint.every_n_train_steps`)."""
        step = epoch * self.steps_per_epoch + batches // self.accumulate
        if self.every_n_train_steps and not self.fast and step % self.every_n_train_steps == 0:
            with self.io.timed():  # its cost: in train.log at the end
                state = self.state(epoch, batches)  # every rank: a gather
                # as at the epoch end: without Fabric.save's barrier and its walk over the state
                self.fabric.strategy.save_checkpoint(self.run.checkpoints / "last.ckpt", state)  # rank 0

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch line and the logger (rank 0), then best.ckpt if it improved and last.ckpt;
        raises `EarlyStop` after that when early stopping says this was the last epoch. An epoch
        that max_steps or max_time ended early has fewer `batches`: last.ckpt then resumes
        inside it, as Lightning's does."""
        batches = int(metrics.get("batches", self.batches_per_epoch))  # a project's fit: whole epochs
        step = epoch * self.steps_per_epoch + math.ceil(batches / self.accumulate)
        self.epochs_trained = epoch + 1
        for monitor in self.rates:
            metrics = metrics | monitor.epoch_end()  # the rates this epoch started with
        # The same decision on the same float as the Lightning loops; every stopper sees the epoch
        # (an epoch that did not validate has no val/ metric to judge, as in the Lightning loops).
        stops = [
            s.reason() for s in self.stoppers if s.monitor in metrics and s.update(metrics[s.monitor], epoch)
        ]
        if self.fabric.is_global_zero:
            stops += step_limit(step, -1 if self.fast else self.run.cfg.trainer.max_steps)
            log.info(epoch_line(epoch + 1, self.epochs, metrics, metrics["time"], note="  ".join(stops)))
            for logger in self.loggers:
                logger.log_metrics(
                    {k: v for k, v in metrics.items() if "/" in k} | {"epoch": epoch}, step - 1
                )
                logger.save()  # to disk every epoch: a killed run keeps its metrics
        if self.fast:
            self.end_epoch(epoch, stopped=bool(stops))
            return
        with self.io.timed():  # its cost: in train.log at the end
            # ties: the lower val/loss, then the later epoch; an epoch without validation is no candidate
            validated = any(k.startswith("val/") for k in metrics)
            improved = validated and self.run.best.update(metrics, epoch)
            state = self.state(epoch, batches)  # every rank: a gather; the best score in it
            # Fabric.save without its barrier, which has nothing to wait for: the write goes on in
            # the background. Rank 0 writes last.ckpt and, when the score improved, best.ckpt: one
            # file, two names.
            best = self.run.checkpoints / "best.ckpt" if improved else None
            self.fabric.strategy.save_checkpoint(self.run.checkpoints / "last.ckpt", state, copies(best))
        self.end_epoch(epoch, stopped=bool(stops))

    def end_epoch(self, epoch: int, stopped: bool) -> None:
        """After the epoch's checkpoint: the next epoch's learning rates, or the early stop."""
        for monitor in self.rates:
            monitor.epoch_start([self.optimizer])  # the scheduler has stepped: the next epoch's rates
        if stopped:
            self.epochs_trained = epoch + 1
            raise EarlyStop

    def on_validation(self, epoch: int, batches: int, metrics: dict[str, float]) -> None:
        """A validation inside the epoch (trainer.val_check_interval): to the logger (rank 0)."""
        step = epoch * self.steps_per_epoch + math.ceil(batches / self.accumulate)
        if self.fabric.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics | {"epoch": epoch}, step - 1)

    def should_stop(self) -> bool:
        return self.run.stop.agreed(self.distributed)  # under DDP: every rank's answer

    def train(self) -> None:
        run, loop = self.run, self.run.cfg.loop
        start_epoch, start_batch = 0, 0
        if (checkpoint := run.resume.checkpoint) is not None:
            start_epoch = restore_state(checkpoint, run.net, self.optimizer, self.scheduler)
            if run.resume.keeps_best:  # else another run's best weights were not found (adopt_best)
                run.best.load_state_dict(checkpoint.get(BEST_KEY, {}))
            if EPOCH_KEY in checkpoint:  # this rank's RNGs and, mid-epoch, its training metrics so far
                restore_position(checkpoint[EPOCH_KEY], self.fabric.global_rank, self.train_metrics)
            if run.resume.mid_epoch:
                start_epoch, start_batch = run.resume.mid_epoch
            for callback in run.callbacks:  # early stopping's best and wait, the epoch's learning rates
                if (state := checkpoint.get(CALLBACKS_KEY, {}).get(callback.state_key)) is not None:
                    callback.load_state_dict(state)
        for monitor in self.rates:
            monitor.epoch_start([self.optimizer])  # kept when a checkpoint inside the epoch brought them
        for logger in self.loggers:
            run.resume.keep_metrics(logger)
        self.epochs_trained = start_epoch
        t = run.cfg.trainer
        hooks = RunHooks(
            start_epoch, start_batch, self.train_metrics, self.limits["train"], self.limits["val"],
            # fast_dev_run: like Lightning, those batches and one validation, nothing else
            max_steps=-1 if self.fast else t.max_steps, min_epochs=t.min_epochs, min_steps=t.min_steps,
            max_time=None if self.fast else max_time_seconds(t.max_time),
            val_check_interval=None if self.fast else t.val_check_interval,
            check_val_every_n_epoch=1 if self.fast else t.check_val_every_n_epoch,
            lr_scheduler=self.schedule.settings() if self.schedule else {}, run=self,
        )  # fmt: skip
        ended = [s.stopped_epoch for s in self.stoppers if s.stopped_epoch is not None]
        try:
            if ended:  # resumed after an early stop: nothing left to train
                self.epochs_trained = min(ended) + 1
                raise EarlyStop
            self.fit(
                self.fabric, self.model, self.optimizer, self.loaders["train"], self.loaders["val"],
                task=run.task, epochs=self.epochs, scheduler=self.scheduler,
                accumulate_grad_batches=loop.accumulate_grad_batches,
                gradient_clip_val=loop.gradient_clip_val, hooks=hooks,
            )  # fmt: skip
        except StopTraining as stopped:  # every rank stopped at the same batch: all take part in the save
            saved = run.checkpoints / INTERRUPTED
            self.fabric.save(saved, self.state(stopped.epoch, stopped.batch))  # the best score too
            self.io.teardown()  # the write is on disk before the process says so
            raise TrainingInterrupted(run.stop.signum, str(stopped), saved, run.run_dir) from None
        except EarlyStop:
            pass  # the epoch's checkpoints are saved: training ends here, as after the last epoch
        self.io.teardown()  # the last checkpoints are on disk before best.ckpt is read
        self.fabric.barrier()  # on every rank: rank 0 wrote them
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
        results["epochs"] = self.epochs_trained
        results |= stopped_epoch(self.run.callbacks)  # with early stopping: the epoch it stopped after
        return results


@dataclass
class RunHooks(FitHooks):
    """The run's side of `fit`: step and epoch checkpoints, the epoch line, a stop on a signal."""

    run: ExplicitRun | None = None

    def on_step(self, epoch: int, batches: int) -> None:
        self.run.on_step(epoch, batches)

    def should_stop(self) -> bool:
        return self.run.should_stop()

    def on_validation(self, epoch: int, batches: int, metrics: dict[str, float]) -> None:
        self.run.on_validation(epoch, batches, metrics)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.on_epoch_end(epoch, metrics)


def set_torch_flags(deterministic: bool | str, benchmark: bool | None) -> None:
    """`Trainer(deterministic=..., benchmark=...)` as Lightning applies them, for the explicit loop."""
    if deterministic and benchmark is None:
        benchmark = False  # cuDNN's benchmark picks kernels by timing: not reproducible
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic == "warn":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif isinstance(deterministic, bool):
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # deterministic cuBLAS (NVIDIA's docs)


def train_explicit(run: Run) -> dict[str, Any]:
    """Fit with the explicit loop, then validate and test the best weights."""
    explicit = ExplicitRun(run)
    explicit.train()
    return explicit.test()

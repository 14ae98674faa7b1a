"""Train a classifier: `python -m lightfit.train [overrides]` (or `lightfit-train`).

Composes conf/train.yaml, seeds everything, trains with the loop chosen by `loop=`,
tests the best checkpoint on the test split, and writes `results.json` into the run
directory. Heavy imports wait until the config is known, so `--help` and config errors
answer at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightfit import config, distributed
from lightfit.errors import LightfitError, reported_in_job, run_hydra_entry

if TYPE_CHECKING:
    from lightfit.resume import Resume, StopRequest

log = logging.getLogger("lightfit")
RESULTS = "results.json"
PROG = "lightfit-train"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file and rename: readers never see a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _quiet_lightning() -> None:
    # We log metrics once per epoch, so Lightning's hint about log_every_n_steps does not apply.
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # The CSV logger writes into the run directory, which Hydra has already created.
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    # Resuming into the same run directory finds its checkpoints there, as it should.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # Metrics are summed across ranks by StageMetrics.compute() before they are logged.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    # Lightning 2.6 on torch >= 2.10 (upstream deprecation, harmless).
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


def _trainer(cfg: DictConfig, run_dir: Path, callbacks: list, logger: Any, **loop_kwargs: Any):
    import lightning as L

    from lightfit.progress import progress_callbacks
    from lightfit.resume import AtomicCheckpointIO

    interactive = sys.stdout.isatty()
    return L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        **loop_kwargs,
        callbacks=[*callbacks, *progress_callbacks(interactive)],  # rich bar and summary on a terminal
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        enable_progress_bar=interactive,  # CI logs get one line per epoch instead
        enable_model_summary=interactive,
        use_distributed_sampler=False,  # under DDP the data module shards itself, without padding
    )


def train_lightning(
    cfg: DictConfig, datamodule: Any, net: Any, run_dir: Path, resume: Resume, stop: StopRequest
) -> dict[str, Any]:
    """loop=automatic or loop=manual: a LightningModule and a Trainer."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightfit.callbacks import EpochLine, StopOnSignal
    from lightfit.loggers import build_loggers
    from lightfit.loops import LIGHTNING_LOOPS
    from lightfit.resume import INTERRUPTED, TrainingInterrupted

    loop = cfg.loop
    if loop.name not in LIGHTNING_LOOPS:
        raise LightfitError(f"loop={loop.name} is not a Lightning loop")
    knobs = {
        "accumulate_grad_batches": loop.accumulate_grad_batches,
        "gradient_clip_val": loop.gradient_clip_val,
    }
    module = LIGHTNING_LOOPS[loop.name](
        net,
        optimizer=instantiate(cfg.optimizer),
        num_classes=datamodule.num_classes,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=checkpoint_config(cfg, datamodule),
        # manual: the module does accumulation and clipping itself; Trainer flags would raise.
        **(knobs if loop.name == "manual" else {}),
    )
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=cfg.monitor, mode="max", save_last=True
    )
    loggers = build_loggers(cfg)
    for logger in loggers:
        resume.keep_metrics(logger)
    stopper = StopOnSignal(stop, run_dir / "checkpoints" / INTERRUPTED)
    trainer = _trainer(
        cfg,
        run_dir,
        [checkpoints, EpochLine(), stopper],
        loggers or False,
        **(knobs if loop.name == "automatic" else {}),
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path, weights_only=True)
    except BaseException:  # SIGTERMException and SystemExit included: Lightning raises those on a stop
        if stop.signum is None:
            raise
        raise TrainingInterrupted(stop.signum, stopper.where, stopper.saved, run_dir) from None
    best = checkpoints.best_model_path or None  # None after fast_dev_run: test the current weights
    # A second Trainer without logger for the final evaluation: metrics.csv keeps one row
    # per epoch and stage, and results.json gets the numbers.
    evaluator = _trainer(cfg, run_dir, [], False, enable_checkpointing=False)
    if best:
        load_net_weights(net, best)
    results = {}
    for evaluate in (evaluator.validate, evaluator.test):
        results.update(
            {k: float(v) for k, v in evaluate(module, datamodule=datamodule, verbose=False)[0].items()}
        )
    results["best_checkpoint"] = best
    results["epochs"] = trainer.current_epoch
    return results


def train_explicit(
    cfg: DictConfig, datamodule: Any, net: Any, run_dir: Path, resume: Resume, stop: StopRequest
) -> dict[str, Any]:
    """loop=explicit: the plain PyTorch loop of loops/explicit.py, with Fabric for devices."""
    import math

    from hydra.utils import instantiate
    from lightning.fabric import Fabric

    from lightfit.console import epoch_line
    from lightfit.loggers import build_loggers
    from lightfit.loops.classifier import CHECKPOINT_KEY
    from lightfit.loops.explicit import (
        StopTraining,
        checkpoint_state,
        evaluate_epoch,
        fit,
        num_batches,
        restore_state,
    )
    from lightfit.metrics import StageMetrics
    from lightfit.resume import INTERRUPTED, AtomicCheckpointIO, TrainingInterrupted

    t, loop = cfg.trainer, cfg.loop
    fabric = Fabric(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        plugins=[AtomicCheckpointIO()],
    )
    fabric.launch()
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    model, optimizer = fabric.setup(net, optimizer)  # moves the model to the device, wraps it for DDP
    scheduler = instantiate(cfg.scheduler)(optimizer) if cfg.get("scheduler") else None
    datamodule.distribute(fabric.global_rank, fabric.world_size, fabric.device)  # this rank's shard
    loaders = fabric.setup_dataloaders(
        datamodule.train_dataloader(),
        datamodule.val_dataloader(),
        datamodule.test_dataloader(),
        use_distributed_sampler=False,  # the data module shards itself, without padding
    )  # batches arrive on the device
    train_loader, val_loader, test_loader = loaders
    fast = int(t.fast_dev_run)  # like Lightning: that many batches, one epoch, no checkpoints
    limits = {s: fast or t.get(f"limit_{s}_batches") for s in ("train", "val", "test")}
    epochs = 1 if fast else t.max_epochs
    steps_per_epoch = math.ceil(num_batches(train_loader, limits["train"]) / loop.accumulate_grad_batches)
    loggers = build_loggers(cfg)
    extra = {CHECKPOINT_KEY: checkpoint_config(cfg, datamodule)}
    best_path, last_path = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    best = {"score": -math.inf}
    start_epoch = 0
    if resume.checkpoint is not None:
        start_epoch = restore_state(resume.checkpoint, net, optimizer, scheduler)
        best["score"] = resume.checkpoint.get("best_score", -math.inf)
    for logger in loggers:
        resume.keep_metrics(logger)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        step = (epoch + 1) * steps_per_epoch
        if fabric.is_global_zero:
            log.info(epoch_line(epoch + 1, epochs, metrics, metrics["time"]))
            for logger in loggers:
                logger.log_metrics(
                    {k: v for k, v in metrics.items() if "/" in k} | {"epoch": epoch}, step - 1
                )
                logger.save()  # to disk every epoch: a killed run keeps its metrics
        if fast:
            return
        if metrics[cfg.monitor] > best["score"]:  # strictly better, as ModelCheckpoint(mode="max")
            best["score"] = metrics[cfg.monitor]
            state = checkpoint_state(model, optimizer, scheduler, epoch, step, extra | best_state())
            fabric.save(best_path, state)  # rank 0 writes; every rank waits for it
        fabric.save(
            last_path, checkpoint_state(model, optimizer, scheduler, epoch, step, extra | best_state())
        )

    def best_state() -> dict[str, Any]:
        return {"best_score": best["score"]}

    try:
        fit(
            fabric, model, optimizer, train_loader, val_loader,
            epochs=epochs, num_classes=datamodule.num_classes, scheduler=scheduler,
            accumulate_grad_batches=loop.accumulate_grad_batches, gradient_clip_val=loop.gradient_clip_val,
            start_epoch=start_epoch, limit_train_batches=limits["train"], limit_val_batches=limits["val"],
            on_epoch_end=on_epoch_end, should_stop=lambda: stop.agreed(fabric.world_size > 1),
        )  # fmt: skip
    except StopTraining as stopped:  # every rank stopped at the same batch: all take part in the save
        saved = run_dir / "checkpoints" / INTERRUPTED
        fabric.save(saved, checkpoint_state(model, optimizer, scheduler, stopped.epoch, 0, extra))
        raise TrainingInterrupted(stop.signum, str(stopped), saved, run_dir) from None
    for logger in loggers:
        logger.finalize("success")
    if best_path.is_file():  # test the best weights, as the Lightning loops do
        load_net_weights(net, best_path)
    results: dict[str, Any] = {}
    for stage, loader in (("val", val_loader), ("test", test_loader)):
        batches = itertools.islice(loader, num_batches(loader, limits[stage]))
        metrics = StageMetrics(stage, datamodule.num_classes).to(fabric.device)
        results.update({k: v.item() for k, v in evaluate_epoch(model, batches, metrics).items()})
    results["best_checkpoint"] = str(best_path) if best_path.is_file() else None
    results["epochs"] = epochs
    return results


def load_net_weights(net: Any, path: str | Path) -> None:
    """Load a checkpoint's network weights (any loop's) into `net`; never unpickles code."""
    from lightfit.checkpoint import load_checkpoint, net_weights

    net.load_state_dict(net_weights(load_checkpoint(path)))


def checkpoint_config(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its network: the resolved config and the data shape."""
    return {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "input_shape": list(datamodule.input_shape),
        "num_classes": int(datamodule.num_classes),
    }


def train(cfg: DictConfig) -> float | None:
    """The whole run for a composed config; returns `cfg.optimized_metric` if set (for sweepers)."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from lightfit.checkpoint import load_checkpoint
    from lightfit.console import metrics_line
    from lightfit.nets import build_network
    from lightfit.resume import Resume, StopRequest, check_compatible, resolve_ckpt_path

    _quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if nprocs := distributed.processes_to_start(cfg.trainer):
        # DDP: this process starts the ranks (each runs this job's command) and waits for them.
        distributed.launch(nprocs, run_dir)
        results = json.loads((run_dir / RESULTS).read_text())  # written by rank 0
        return results[cfg.optimized_metric] if cfg.get("optimized_metric") else None
    distributed.exit_with_launcher()  # a rank started by distributed.launch dies with the job
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = build_network(
        instantiate(cfg.model),
        datamodule.input_shape,
        datamodule.num_classes,
        datamodule.mean,
        datamodule.std,
    )
    # Training's randomness (dropout) starts from the seed in every loop and strategy:
    # Lightning's DDP strategy re-seeds this way when fit starts, Fabric and one device do not.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)  # weights only: a hostile pickle is refused, not run
        check_compatible(checkpoint, net, resume)
    run = train_explicit if cfg.loop.name == "explicit" else train_lightning
    with StopRequest() as stop:
        results = run(cfg, datamodule, net, run_dir, Resume(resume, checkpoint), stop)
    results["loop"] = cfg.loop.name
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        write_json_atomic(run_dir / RESULTS, results)
        log.info(metrics_line("test: ", {k: v for k, v in results.items() if k.startswith("test/")}))
        log.info(f"run dir: {run_dir}")
    metric = cfg.get("optimized_metric")
    return results[metric] if metric else None


@hydra.main(config_path="pkg://lightfit.conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    with reported_in_job(PROG):
        return train(cfg)


def main() -> None:
    config.register()  # the typed schemas Hydra checks the composed config against
    run_hydra_entry(PROG, _hydra_main)


if __name__ == "__main__":
    main()

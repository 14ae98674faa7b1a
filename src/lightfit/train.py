"""Train: `python -m lightfit.train [overrides]` (or `lightfit-train`).

Composes conf/train.yaml, seeds everything, trains with the loop chosen by `loop=` for the
task chosen by `task=`, tests the best checkpoint on the test split, and writes
`results.json` (and tables such as `test_confusion.csv`) into the run directory. Heavy
imports wait until the config is known, so `--help` and config errors answer at once.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import hydra
from omegaconf import DictConfig, OmegaConf

from lightfit import config, distributed
from lightfit.errors import LightfitError, reported_in_job, run_hydra_entry

if TYPE_CHECKING:
    from torch import Tensor

    from lightfit.best import BestScore
    from lightfit.resume import Resume, StopRequest
    from lightfit.tasks import Task

T = TypeVar("T")

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
    cfg: DictConfig,
    datamodule: Any,
    net: Any,
    task: Task,
    best: BestScore,
    run_dir: Path,
    resume: Resume,
    stop: StopRequest,
) -> dict[str, Any]:
    """loop=automatic or loop=manual: a LightningModule and a Trainer."""
    from hydra.utils import instantiate

    from lightfit.callbacks import EpochLine, RunCheckpoints, StopOnSignal
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
        task,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        run_config=checkpoint_config(cfg, datamodule),
        # manual: the module does accumulation and clipping itself; Trainer flags would raise.
        **(knobs if loop.name == "manual" else {}),
    )
    checkpoints = RunCheckpoints(run_dir / "checkpoints", best)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    resume.keep_metrics(logger)
    stopper = StopOnSignal(stop, run_dir / "checkpoints" / INTERRUPTED)
    trainer = _trainer(
        cfg,
        run_dir,
        [checkpoints, EpochLine(), stopper],
        logger,
        **(knobs if loop.name == "automatic" else {}),
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.path, weights_only=True)
    except BaseException:  # SIGTERMException and SystemExit included: Lightning raises those on a stop
        if stop.signum is None:
            raise
        raise TrainingInterrupted(stop.signum, stopper.where, stopper.saved, run_dir) from None
    best_path = checkpoints.best_path  # None after fast_dev_run: test the current weights
    # A second Trainer without logger for the final evaluation: metrics.csv keeps one row
    # per epoch and stage, and results.json gets the numbers.
    evaluator = _trainer(cfg, run_dir, [], False, enable_checkpointing=False)
    if best_path:
        load_net_weights(net, best_path)
    results: dict[str, Any] = {}
    for evaluate in (evaluator.validate, evaluator.test):
        results.update(
            {k: float(v) for k, v in evaluate(module, datamodule=datamodule, verbose=False)[0].items()}
        )
    results["tables"] = module.tables
    results["best_checkpoint"] = str(best_path) if best_path else None
    results["epochs"] = trainer.current_epoch
    return results


def train_explicit(
    cfg: DictConfig,
    datamodule: Any,
    net: Any,
    task: Task,
    best: BestScore,
    run_dir: Path,
    resume: Resume,
    stop: StopRequest,
) -> dict[str, Any]:
    """loop=explicit: the plain PyTorch loop of loops/explicit.py, with Fabric for devices."""
    import math

    from hydra.utils import instantiate
    from lightning.fabric import Fabric

    from lightfit.best import BEST_KEY
    from lightfit.console import epoch_line
    from lightfit.loops.explicit import (
        StopTraining,
        checkpoint_state,
        evaluate_epoch,
        fit,
        num_batches,
        restore_state,
    )
    from lightfit.loops.module import CHECKPOINT_KEY
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
    logger = instantiate(cfg.logger) if cfg.get("logger") else None
    extra = {CHECKPOINT_KEY: checkpoint_config(cfg, datamodule)}
    best_path, last_path = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    start_epoch = 0
    if resume.checkpoint is not None:
        start_epoch = restore_state(resume.checkpoint, net, optimizer, scheduler)
        best.load_state_dict(resume.checkpoint.get(BEST_KEY, {}))
    resume.keep_metrics(logger)

    def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
        step = (epoch + 1) * steps_per_epoch
        if fabric.is_global_zero:
            log.info(epoch_line(epoch + 1, epochs, metrics, metrics["time"]))
            if logger:
                logger.log_metrics(
                    {k: v for k, v in metrics.items() if "/" in k} | {"epoch": epoch}, step - 1
                )
                logger.save()  # to disk every epoch: a killed run keeps its metrics
        if fast:
            return
        if best.update(metrics, epoch):  # ties: the lower val/loss, then the later epoch
            state = checkpoint_state(model, optimizer, scheduler, epoch, step, extra | best_state())
            fabric.save(best_path, state)  # rank 0 writes; every rank waits for it
        fabric.save(
            last_path, checkpoint_state(model, optimizer, scheduler, epoch, step, extra | best_state())
        )

    def best_state() -> dict[str, Any]:
        return {BEST_KEY: best.state_dict()}

    try:
        fit(
            fabric, model, optimizer, train_loader, val_loader,
            epochs=epochs, task=task, scheduler=scheduler,
            accumulate_grad_batches=loop.accumulate_grad_batches, gradient_clip_val=loop.gradient_clip_val,
            start_epoch=start_epoch, limit_train_batches=limits["train"], limit_val_batches=limits["val"],
            on_epoch_end=on_epoch_end, should_stop=lambda: stop.agreed(fabric.world_size > 1),
        )  # fmt: skip
    except StopTraining as stopped:  # every rank stopped at the same batch: all take part in the save
        saved = run_dir / "checkpoints" / INTERRUPTED
        fabric.save(saved, checkpoint_state(model, optimizer, scheduler, stopped.epoch, 0, extra))
        raise TrainingInterrupted(stop.signum, str(stopped), saved, run_dir) from None
    if logger:
        logger.finalize("success")
    if best_path.is_file():  # test the best weights, as the Lightning loops do
        load_net_weights(net, best_path)
    results: dict[str, Any] = {"tables": {}}
    for stage, loader in (("val", val_loader), ("test", test_loader)):
        batches = itertools.islice(loader, num_batches(loader, limits[stage]))
        metrics = task.stage_metrics(stage).to(fabric.device)
        for key, value in evaluate_epoch(model, batches, task, metrics).items():
            if value.ndim == 0:
                results[key] = value.item()  # .item(): one number to the host, for results.json
            else:
                results["tables"][key] = value.cpu()  # a confusion matrix, for its CSV
    results["best_checkpoint"] = str(best_path) if best_path.is_file() else None
    results["epochs"] = epochs
    return results


def load_net_weights(net: Any, path: str | Path) -> None:
    """Load a checkpoint's network weights (any loop's) into `net`; never unpickles code."""
    from lightfit.checkpoint import load_checkpoint, net_weights

    net.load_state_dict(net_weights(load_checkpoint(path)))


def checkpoint_config(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its network: the resolved config and the data's shapes."""
    stored = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "input_shape": list(datamodule.input_shape),
        "num_outputs": int(datamodule.num_outputs),
        "task": cfg.task.name,
        "target_shape": None if datamodule.target_shape is None else list(datamodule.target_shape),
    }
    if datamodule.num_classes is not None:
        stored["num_classes"] = int(datamodule.num_classes)
    return stored


def built(group: str, node: Any, build: Callable[[], T]) -> T:
    """`build()`; a value torch rejects (`optimizer.lr=-1`) becomes one line naming the override."""
    try:
        return build()
    except LightfitError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        keys = [k for k, v in node.items() if not str(k).startswith("_") and str(v) in reason]
        where = f"{group}.{keys[0]}={node[keys[0]]}" if keys else f"the {group} config"
        raise LightfitError(f"{where}: {reason}") from None


def build_network_and_task(cfg: DictConfig, datamodule: Any) -> tuple[Any, Task]:
    """The network for the data's shapes (with their statistics), and the task that trains it."""
    from hydra.utils import instantiate

    from lightfit.nets import TargetScale, build_network
    from lightfit.tasks import build_task

    targets = None
    if datamodule.target_shape is not None:  # regression: the targets' statistics, in the network
        targets = TargetScale(*datamodule.target_stats)
    net = built(
        "model",
        cfg.model,
        lambda: build_network(
            instantiate(cfg.model),
            datamodule.input_shape,
            datamodule.num_outputs,
            datamodule.mean,
            datamodule.std,
            targets,
        ),
    )
    # Built once here only to check the values (lr, momentum, ...): the loops build their own.
    optimizer = built("optimizer", cfg.optimizer, lambda: instantiate(cfg.optimizer)(net.parameters()))
    if cfg.get("scheduler"):
        built("scheduler", cfg.scheduler, lambda: instantiate(cfg.scheduler)(optimizer))
    return net, build_task(cfg.task, datamodule.num_outputs, net)


def write_tables(run_dir: Path, tables: dict[str, Tensor]) -> None:
    """Each table metric as CSV: `test/confusion` -> test_confusion.csv (rows: true, columns: predicted)."""
    for key, table in tables.items():
        path = run_dir / (key.replace("/", "_") + ".csv")
        rows = table.reshape(len(table), -1).tolist()
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        os.replace(tmp, path)


def train(cfg: DictConfig) -> float | None:
    """The whole run for a composed config; returns the optimized metric (for sweepers)."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from lightfit.best import BestScore
    from lightfit.checkpoint import load_checkpoint
    from lightfit.console import metrics_line
    from lightfit.resume import Resume, StopRequest, check_compatible, resolve_ckpt_path
    from lightfit.tasks import check_task_config

    _quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    mode = check_task_config(cfg.task, cfg.monitor)  # a wrong metric name stops here, before any data
    optimized = cfg.get("optimized_metric") or cfg.monitor
    if nprocs := distributed.processes_to_start(cfg.trainer):
        # DDP: this process starts the ranks (each runs this job's command) and waits for them.
        distributed.launch(nprocs, run_dir)
        return json.loads((run_dir / RESULTS).read_text()).get(optimized)  # written by rank 0
    distributed.exit_with_launcher()  # a rank started by distributed.launch dies with the job
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, task=cfg.task.name)
    datamodule.setup("fit")
    net, task = build_network_and_task(cfg, datamodule)
    # Training's randomness (dropout) starts from the seed in every loop and strategy:
    # Lightning's DDP strategy re-seeds this way when fit starts, Fabric and one device do not.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    resume = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    checkpoint = None
    if resume is not None:
        checkpoint = load_checkpoint(resume)  # weights only: a hostile pickle is refused, not run
        check_compatible(checkpoint, net, resume)
    run = train_explicit if cfg.loop.name == "explicit" else train_lightning
    best = BestScore(cfg.monitor, mode)
    with StopRequest() as stop:
        results = run(cfg, datamodule, net, task, best, run_dir, Resume(resume, checkpoint), stop)
    tables = results.pop("tables")
    results |= {"loop": cfg.loop.name, "task": task.name, "monitor": cfg.monitor, "mode": mode}
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        write_tables(run_dir, {k: v for k, v in tables.items() if k.startswith("test/")})
        write_json_atomic(run_dir / RESULTS, results)
        log.info(metrics_line("test: ", {k: v for k, v in results.items() if k.startswith("test/")}))
        log.info(f"run dir: {run_dir}")
    return results.get(optimized)


@hydra.main(config_path="pkg://lightfit.conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    with reported_in_job(PROG):
        return train(cfg)


def main() -> None:
    config.register()  # the typed schemas Hydra checks the composed config against
    run_hydra_entry(PROG, _hydra_main)


if __name__ == "__main__":
    main()

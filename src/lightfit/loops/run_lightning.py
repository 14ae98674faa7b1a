"""How loop=automatic and loop=manual run: a LightningModule, a Trainer, then validate and test.

The run's checkpoints (best and last), its epoch line and its stop on a signal are
callbacks (run/callbacks.py); the explicit loop does the same things in run_explicit.py.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightfit.loops.explicit import val_check_batches
from lightfit.run import slurm
from lightfit.run.callback_group import stopped_epoch
from lightfit.run.callbacks import RunCallback
from lightfit.run.checkpoint_io import BackgroundCheckpointIO, CheckpointWriteFailed
from lightfit.run.context import Run, built, checkpoint_config, load_net_weights
from lightfit.run.contract import TrainingModule, check
from lightfit.run.loggers import build_loggers
from lightfit.run.progress import progress_callbacks
from lightfit.run.schedule import Schedule, batches_per_epoch
from lightfit.run.signals import TrainingInterrupted

# What lightfit passes a module itself; the loop.module node's other keys are the module's own.
KNOBS = ("accumulate_grad_batches", "gradient_clip_val")  # to the module if it takes them, else the Trainer
MODULE_ARGS = ("net", "task", "optimizer", "scheduler", *KNOBS)


def trainer(cfg: DictConfig, run_dir: Path, callbacks: list, logger: Any, **loop_kwargs: Any) -> L.Trainer:
    """A Trainer with the config's settings; a progress bar only on a terminal."""
    interactive = sys.stdout.isatty()
    return L.Trainer(
        **trainer_settings(cfg.trainer),
        **loop_kwargs,
        callbacks=[*callbacks, *progress_callbacks(interactive)],  # bar and summary on a terminal
        logger=logger,
        # checkpoints are written in the background; lightfit requeues on SLURM, not Lightning
        plugins=[BackgroundCheckpointIO(), *slurm.lightning_plugins()],
        default_root_dir=run_dir,
        enable_progress_bar=interactive,  # CI logs get one line per epoch instead
        enable_model_summary=False,  # the terminal's bar prints it
        use_distributed_sampler=False,  # under DDP the data module shards itself, without padding
    )


def trainer_settings(node: DictConfig) -> dict[str, Any]:
    """Every key of the trainer node (cli/trainer_schema.py: TrainerSchema), less those an older
    Lightning lacks (at their defaults: config.check_trainer refused any other value)."""
    takes = inspect.signature(L.Trainer).parameters
    return {key: value for key, value in OmegaConf.to_container(node, resolve=True).items() if key in takes}


def build_module(run: Run) -> tuple[L.LightningModule, dict[str, Any]]:
    """`loop.module` built for this run, and the loop settings the Trainer applies instead.

    The module gets the network, the task and the optimizer and scheduler factories; a module
    whose signature takes `accumulate_grad_batches` / `gradient_clip_val` (manual optimization:
    Trainer flags would raise) gets those too, else the Trainer does. The node's other keys
    are the module's own constructor arguments.
    """
    cfg, loop = run.cfg, run.cfg.loop
    make = built(
        "loop.module", loop.module, lambda: instantiate(loop.module, _partial_=True, _convert_="all")
    )
    takes = inspect.signature(make).parameters
    knobs = {key: loop[key] for key in KNOBS}
    module = make(
        net=run.net,
        task=run.task,
        optimizer=instantiate(cfg.optimizer),
        scheduler=Schedule.from_config(cfg),  # the scheduler, its interval, frequency and monitor
        **{key: value for key, value in knobs.items() if key in takes},
    )
    check(module, TrainingModule, "loop.module")
    return module, {key: value for key, value in knobs.items() if key not in takes}


def train_lightning(run: Run) -> dict[str, Any]:
    """Fit, then validate and test the best weights; returns the metrics for results.json."""
    cfg = run.cfg
    module, trainer_knobs = build_module(run)
    if not cfg.trainer.fast_dev_run:  # a val_check_interval Lightning would refuse with a traceback
        batches = batches_per_epoch(len(run.datamodule.train_dataloader()), cfg.trainer)
        val_check_batches(cfg.trainer.val_check_interval, batches, cfg.trainer.check_val_every_n_epoch)
    callback = RunCallback(
        run.checkpoints,
        run.best,
        every_n_train_steps=cfg.checkpoint.every_n_train_steps,
        stop=run.stop,
        run_config=checkpoint_config(cfg, run.datamodule, run.task),
        keeps_best=run.resume.keeps_best,
    )
    if run.resume.mid_epoch:
        # The train loader skips the batches trained before the checkpoint (IndexBatchSampler),
        # so Lightning's warning that a mid-epoch resume replays data does not apply.
        run.datamodule.resume_train_at(*run.resume.mid_epoch)
        warnings.filterwarnings(
            "ignore", message=".*resuming from a checkpoint that ended before the epoch.*"
        )
    loggers = build_loggers(cfg)  # logger=csv, tensorboard, mlflow, none, or a list of them
    for logger in loggers:
        run.resume.keep_metrics(logger)
    # One callback of lightfit's, and the config's (callbacks=...): each costs its hook calls at every step.
    fitter = trainer(cfg, run.run_dir, [*run.callbacks, callback], loggers or False, **trainer_knobs)
    try:
        # Read with torch.load(weights_only=True): BackgroundCheckpointIO.load_checkpoint
        fitter.fit(module, datamodule=run.datamodule, ckpt_path=run.resume.path)
    except BaseException as exc:  # SIGTERMException and SystemExit included: Lightning raises those on a stop
        if run.stop.signum is None or isinstance(exc, CheckpointWriteFailed):  # nothing saved: say why
            raise
        raise TrainingInterrupted(run.stop.signum, callback.where, callback.saved, run.run_dir) from None
    # Rank 0 finished its checkpoint writes when fit ended (the writer's teardown); the other
    # ranks wait for that before they read best.ckpt.
    fitter.strategy.barrier("checkpoints written")
    best_path = callback.best_path  # None after fast_dev_run: test the current weights
    if best_path:
        load_net_weights(run.net, best_path)
    # A second Trainer without logger for the final evaluation: metrics.csv keeps one row
    # per epoch and stage, and results.json gets the numbers.
    evaluator = trainer(cfg, run.run_dir, [callback], False)  # the callback logs the metrics
    results: dict[str, Any] = {}
    for evaluate in (evaluator.validate, evaluator.test):
        metrics = evaluate(module, datamodule=run.datamodule, verbose=False)[0]
        results.update({k: float(v) for k, v in metrics.items()})
    results["tables"] = callback.tables
    results["best_checkpoint"] = str(best_path) if best_path else None
    results["epochs"] = fitter.current_epoch
    results |= stopped_epoch(run.callbacks)  # with early stopping: the epoch it stopped after, or None
    return results

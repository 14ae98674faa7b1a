"""`lightfit train [overrides]` (also `python -m lightfit.train`, `lightfit-train`).

Composes conf/train.yaml, seeds everything, trains with the loop chosen by `loop=` for the
task chosen by `task=`, tests the best checkpoint on the test split, and writes
`results.json` (and tables such as `test_confusion.csv`) into the run directory. Heavy
imports wait until the config is known, so `--help` and config errors answer at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightfit.cli import config, rerun
from lightfit.cli.entry import run_command
from lightfit.errors import LightfitError
from lightfit.run import distributed, slurm

log = logging.getLogger("lightfit")


def train(cfg: DictConfig) -> float | None:  # long: a run's steps in order, read top to bottom
    """The whole run for a composed config; returns the optimized metric (for sweepers)."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig

    from lightfit.loops.run_explicit import train_explicit
    from lightfit.loops.run_lightning import train_lightning
    from lightfit.run.best import BestScore
    from lightfit.run.callback_group import build_callbacks
    from lightfit.run.console import metrics_line, quiet_lightning
    from lightfit.run.context import Run, build_network_and_task, checkpoint_config
    from lightfit.run.finetune import init_weights
    from lightfit.run.results import RESULTS, write_json_atomic, write_tables
    from lightfit.run.resume import AUTO, load_resume
    from lightfit.run.schedule import Schedule
    from lightfit.run.signals import StopRequest, TrainingInterrupted
    from lightfit.run.sweep import is_fold_dir
    from lightfit.tasks import check_task_config

    quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config.check_counts(cfg)
    mode = check_task_config(cfg.task, cfg.monitor)  # a wrong metric name stops here, before any data
    check_loop(cfg.loop)  # the module or fit function exists, and its own keys fit its signature
    check_init_from(cfg)
    callbacks = build_callbacks(cfg)  # callbacks=[early_stopping,...]: built, and checked for the loop
    config.check_trainer(cfg)  # a Trainer key the loop does not take, or the installed Lightning lacks
    Schedule.from_config(cfg)  # scheduler.interval, and a ReduceLROnPlateau's monitor
    optimized = cfg.get("optimized_metric") or cfg.monitor
    if cfg.cv.folds is not None and cfg.cv.fold is None:  # k-fold cross-validation: each fold a run
        return cross_validated(cfg, run_dir).get(optimized)
    if nprocs := distributed.processes_to_start(cfg.trainer):
        # DDP: this process starts the ranks (each runs this job's command) and waits for them.
        distributed.launch(nprocs, run_dir)
        return json.loads((run_dir / RESULTS).read_text()).get(optimized)  # written by rank 0
    distributed.exit_with_launcher()  # a rank started by distributed.launch dies with the job
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = prepared_data(cfg, run_dir)
    net, task = build_network_and_task(cfg, datamodule)
    # Training's randomness (dropout) starts from the seed in every loop and strategy:
    # Lightning's DDP strategy re-seeds this way when fit starts, Fabric and one device do not.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # ckpt_path: a file, last, or auto (the newest readable one of this run dir, or a fresh start)
    resume = load_resume(cfg.ckpt_path, run_dir, net, OmegaConf.to_container(cfg, resolve=True))
    if cfg.init_from is not None:  # fine-tuning: another run's weights, this run's everything else
        if resume.checkpoint is None:
            init_weights(net, cfg.init_from, cfg.init_from_strict, checkpoint_config(cfg, datamodule))
        else:  # this run's own checkpoint already holds weights that started from init_from
            log.info(f"init_from={cfg.init_from} not loaded: resuming this run from {resume.path}")
    runner = train_explicit if cfg.loop.get("fit") is not None else train_lightning
    with StopRequest() as stop:
        try:
            best = BestScore(cfg.monitor, mode)
            results = runner(Run(cfg, run_dir, datamodule, net, task, best, resume, stop, callbacks))
        except TrainingInterrupted as stopped:  # saved: rank 0 may now requeue the SLURM job
            if cfg.cv.fold is not None and is_fold_dir(run_dir):
                stopped.resume_in(run_dir.parent)  # ckpt_path=auto there continues at this fold
            rank_zero = L.fabric.utilities.rank_zero.rank_zero_only.rank == 0
            if rank_zero and (note := slurm.requeue(stopped.signum, resumes=cfg.ckpt_path == AUTO)):
                stopped.instead_of_hint(note)
            raise
    tables = results.pop("tables")
    results |= {"loop": cfg.loop.name, "task": task.name, "monitor": cfg.monitor, "mode": mode}
    if classes := getattr(datamodule, "class_names", None):  # a table's label names
        results["classes"] = classes
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        write_tables(run_dir, {k: v for k, v in tables.items() if k.startswith("test/")}, classes)
        write_json_atomic(run_dir / RESULTS, results)
        log.info(metrics_line("test: ", {k: v for k, v in results.items() if k.startswith("test/")}))
        log.info(f"run dir: {run_dir}")
    return results.get(optimized)


def check_init_from(cfg: DictConfig) -> None:
    """`init_from` starts a run from weights, `ckpt_path=<file>` continues one: not both. With
    `auto` or `last` (this run directory's own checkpoints) a fine-tuning run continues."""
    from lightfit.run.resume import AUTO

    if cfg.init_from is not None and cfg.ckpt_path not in (None, AUTO, "last"):
        raise LightfitError(
            f"init_from={cfg.init_from} starts a new run from a checkpoint's weights, "
            f"ckpt_path={cfg.ckpt_path} continues the run that wrote one: give one of them"
        )


def cross_validated(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """`cv.folds=K`: the data checked for K folds before any is trained, then each fold a run
    (`train` with `cv.fold=k`) in `<run dir>/fold_k`; returns the means (run/cv.py)."""
    from hydra.utils import instantiate

    from lightfit.run.cv import cross_validate
    from lightfit.run.resume import AUTO

    folds = cfg.cv.folds
    if cfg.ckpt_path not in (None, AUTO):
        raise LightfitError(
            f"cv.folds={folds}: ckpt_path={cfg.ckpt_path} names one run's checkpoint; "
            "a cross-validation continues with ckpt_path=auto"
        )
    datamodule = instantiate(cfg.data, task=cfg.task.name)
    if not callable(getattr(datamodule, "use_fold", None)):
        raise LightfitError(
            f"cv.folds={folds}: {type(datamodule).__name__} has no use_fold(k, folds); "
            "cross-validation needs an ArrayDataModule (or a data module with that method)"
        )
    datamodule.use_fold(1, folds)
    datamodule.setup("fit")  # too few samples for K folds: one line now, before any fold is trained
    del datamodule
    return cross_validate(cfg, run_dir, train)


def prepared_data(cfg: DictConfig, run_dir: Path) -> Any:
    """The data module, set up and checked against the contract; rank 0 writes `splits.npz`,
    the rows of each split, for a baseline trained on the same rows (`lightfit.data.load_split`)."""
    import lightning as L
    from hydra.utils import instantiate

    from lightfit.data.saved_split import save_splits
    from lightfit.run.contract import DataModule, check

    datamodule = instantiate(cfg.data, task=cfg.task.name)
    if cfg.cv.fold is not None:  # one fold of a cross-validation (cross_validated)
        datamodule.use_fold(cfg.cv.fold, cfg.cv.folds)
    datamodule.setup("fit")
    check(datamodule, DataModule, "data")  # what lightfit needs of it, before the network is built
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        data = OmegaConf.to_container(cfg.data, resolve=True) | {"task": cfg.task.name}
        save_splits(datamodule, run_dir, data)
    return datamodule


def check_loop(loop: DictConfig) -> None:
    """`loop.module` (a LightningModule) or `loop.fit` (a fit function) names something that
    exists, and its own keys fit its signature: one line naming the key if not."""
    from lightfit.loops.run_explicit import FIT_ARGS
    from lightfit.loops.run_lightning import MODULE_ARGS

    key, supplied = ("fit", FIT_ARGS) if loop.get("fit") is not None else ("module", MODULE_ARGS)
    node = loop.get(key)
    if node is None or not node.get("_target_"):
        raise LightfitError(
            f"loop={loop.name}: set loop.module._target_ (a LightningModule) "
            "or loop.fit._target_ (a fit function)"
        )
    check_target_keys(node, f"loop.{key}", supplied)


def check_target_keys(node: DictConfig, where: str, supplied: tuple[str, ...]) -> None:
    """The keys of `node` besides `_target_` against its target's signature (types, unknown
    and missing keys); `supplied` are the arguments lightfit passes itself. Beyond
    cli/known_keys.py's check of every `_target_` (unknown keys), it checks types and required
    arguments of the loop's module or fit function."""
    from hydra.utils import get_object
    from omegaconf.errors import OmegaConfBaseException

    try:
        target = get_object(node._target_)
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, ... : one line
        raise LightfitError(f"{where}._target_={node._target_} cannot be imported: {exc}") from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(config.schema_of(target, skip=supplied)), node)
    except OmegaConfBaseException as exc:
        reason = str(exc).strip().splitlines()[0]
        raise LightfitError(f"{where} ({node._target_}): {reason}") from None
    if missing := sorted(OmegaConf.missing_keys(merged)):
        raise LightfitError(
            f"{where}: {node._target_} needs {', '.join(missing)} (no default in its signature)"
        )


def main(*, prog: str = "lightfit", config_module: str = "lightfit.conf") -> None:
    """`<prog> train [overrides]`: compose `config_module`'s train.yaml and train."""
    config.register()  # the typed schemas Hydra checks the composed config against
    # ckpt_path=auto hydra.run.dir=<run dir>: that run's overrides, under the command's own
    sys.argv = [sys.argv[0], *rerun.with_saved_overrides(sys.argv[1:])]
    run_command(train, label=f"{prog}-train", config_module=config_module, config_name="train")


if __name__ == "__main__":
    main()

"""`lightfit train [overrides]` (also `python -m lightfit.train`, `lightfit-train`).

Composes conf/train.yaml, seeds everything, trains with the loop chosen by `loop=` for the
task chosen by `task=`, tests the best checkpoint on the test split, and writes
`results.json` (and tables such as `test_confusion.csv`) into the run directory. Heavy
imports wait until the config is known, so `--help` and config errors answer at once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lightfit.cli import config
from lightfit.errors import reported_in_job, run_hydra_entry
from lightfit.run import distributed, slurm

log = logging.getLogger("lightfit")
PROG = "lightfit-train"


def train(cfg: DictConfig) -> float | None:
    """The whole run for a composed config; returns the optimized metric (for sweepers)."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from lightfit.data.saved_split import save_splits
    from lightfit.loops.run_explicit import train_explicit
    from lightfit.loops.run_lightning import train_lightning
    from lightfit.run.best import BestScore
    from lightfit.run.console import metrics_line, quiet_lightning
    from lightfit.run.context import Run, build_network_and_task
    from lightfit.run.results import RESULTS, write_json_atomic, write_tables
    from lightfit.run.resume import AUTO, load_resume
    from lightfit.run.signals import StopRequest, TrainingInterrupted
    from lightfit.tasks import check_task_config

    quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config.check_counts(cfg)
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
    if L.fabric.utilities.rank_zero.rank_zero_only.rank == 0:
        data = OmegaConf.to_container(cfg.data, resolve=True) | {"task": cfg.task.name}
        save_splits(datamodule, run_dir, data)  # the rows of each split, for a baseline on the same rows
    net, task = build_network_and_task(cfg, datamodule)
    # Training's randomness (dropout) starts from the seed in every loop and strategy:
    # Lightning's DDP strategy re-seeds this way when fit starts, Fabric and one device do not.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # ckpt_path: a file, last, or auto (the newest readable one of this run dir, or a fresh start)
    resume = load_resume(cfg.ckpt_path, run_dir, net, OmegaConf.to_container(cfg, resolve=True))
    runner = train_explicit if cfg.loop.name == "explicit" else train_lightning
    with StopRequest() as stop:
        try:
            results = runner(
                Run(cfg, run_dir, datamodule, net, task, BestScore(cfg.monitor, mode), resume, stop)
            )
        except TrainingInterrupted as stopped:  # saved: rank 0 may now requeue the SLURM job
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


@hydra.main(config_path="pkg://lightfit.conf", config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    with reported_in_job(PROG):
        return train(cfg)


def main() -> None:
    config.register()  # the typed schemas Hydra checks the composed config against
    run_hydra_entry(PROG, _hydra_main)


if __name__ == "__main__":
    main()

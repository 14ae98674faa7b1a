"""Train a classifier: `python -m lightfit.train [overrides]` (or `lightfit-train`).

Composes conf/train.yaml, seeds everything, trains with the loop chosen by `loop=`,
tests the best checkpoint on the test split, and writes `results.json` into the run
directory. Heavy imports wait until the config is known, so `--help` and config errors
answer at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightfit.errors import LightfitError, reported_in_job, run_hydra_entry

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


def _trainer(cfg: DictConfig, run_dir: Path, callbacks: list, logger: Any, **loop_kwargs: Any):
    import lightning as L

    interactive = sys.stdout.isatty()
    return L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        **loop_kwargs,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=run_dir,
        enable_progress_bar=interactive,  # CI logs get one line per epoch instead
        enable_model_summary=interactive,
    )


def train_lightning(cfg: DictConfig, datamodule: Any, net: Any, run_dir: Path) -> dict[str, float]:
    """loop=automatic or loop=manual: a LightningModule and a Trainer."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightfit.console import EpochLine
    from lightfit.loops import LIGHTNING_LOOPS

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
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = _trainer(
        cfg, run_dir, [checkpoints, EpochLine()], logger, **(knobs if loop.name == "automatic" else {})
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    best = checkpoints.best_model_path or None  # None after fast_dev_run: test the current weights
    results = {}
    for evaluate in (trainer.validate, trainer.test):
        results.update(
            {
                k: float(v)
                for k, v in evaluate(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0].items()
            }
        )
    results["best_checkpoint"] = best
    results["epochs"] = trainer.current_epoch
    return results


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

    from lightfit.console import metrics_line
    from lightfit.nets import build_network

    _quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
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
    results = train_lightning(cfg, datamodule, net, run_dir)
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
    run_hydra_entry(PROG, _hydra_main)


if __name__ == "__main__":
    main()

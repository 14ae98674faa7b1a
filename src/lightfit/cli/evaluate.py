"""Test metrics of a checkpoint: `lightfit evaluate ckpt_path=... [input=... | data=...]`.

The network comes from the checkpoint alone (`lightfit.run.checkpoint`). So do the data, unless
the command line says otherwise: the data config stored in the checkpoint, seed included,
gives the same test split the run was tested on. `input=` tests every sample of a labelled
file or folder instead, read as training read its data (cli/evaluate_input.py). The numbers
come from the code that tested the run, `Trainer.test` on the `AutomaticLoop`, so they match
its results.json.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightfit.errors import LightfitError

log = logging.getLogger("lightfit")
EVAL = "eval.json"


def data_config(cfg: DictConfig, stored: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's data config with what the command line composed (data=..., +data.x=...) on top."""
    trained = stored["config"]["data"]
    seed = trained.get("seed", 0) if cfg.seed is None else cfg.seed
    cfg.seed = seed  # a `data=...` chosen here has `seed: ${seed}`: the checkpoint's split seed
    ours = OmegaConf.to_container(cfg.data, resolve=True)
    data = OmegaConf.to_container(OmegaConf.merge(trained, ours))
    data["seed"] = seed
    if "num_classes" in stored:
        # Labels beyond the network's classes then fail in the data checks, with the file named.
        data["num_classes"] = int(stored["num_classes"])
    return data


def default_output(ckpt_path: Path) -> Path:
    """<run dir>/eval.json for <run dir>/checkpoints/best.ckpt."""
    return ckpt_path.resolve().parent.parent / EVAL


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint `cfg.ckpt_path`; writes and returns test/loss and the task's metrics."""
    from lightfit.run.checkpoint import (
        CHECKPOINT_KEY,
        check_targets,
        load_checkpoint,
        rebuild_network,
        rebuild_task,
    )

    ckpt_path = Path(cfg.ckpt_path).expanduser()
    checkpoint = load_checkpoint(ckpt_path)  # a bad file is reported before Lightning is imported
    stored = checkpoint[CHECKPOINT_KEY]
    net = rebuild_network(checkpoint)
    task = rebuild_task(checkpoint, net)
    if cfg.get("input"):  # every sample of a labelled file (cli/evaluate_input.py)
        from lightfit.cli.evaluate_input import input_loader

        test, tested = (
            {"dataloaders": input_loader(cfg, stored)},
            {"input": str(Path(cfg.input).expanduser().resolve())},
        )
    else:
        data = data_config(cfg, stored)
        check_targets(data, "data config")
        test, tested = {"datamodule": test_datamodule(data, stored, task.name)}, {"data": data}

    import lightning as L

    from lightfit.loops import AutomaticLoop
    from lightfit.loops.run_lightning import trainer_settings
    from lightfit.run.callbacks import RunCallback
    from lightfit.run.console import metrics_line, quiet_lightning
    from lightfit.run.results import write_json_atomic

    quiet_lightning()
    # The optimizer is never built: Trainer.test only runs test_step and the metrics.
    module = AutomaticLoop(net, task)
    trainer = L.Trainer(
        **trainer_settings(cfg.trainer),  # those the installed Lightning takes
        callbacks=[RunCallback()],  # without checkpoints: computes and logs the metrics only
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = {k: float(v) for k, v in trainer.test(module, **test, verbose=False)[0].items()}
    output = Path(cfg.output).expanduser() if cfg.output else default_output(ckpt_path)
    if trainer.is_global_zero:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, {**metrics, "checkpoint": str(ckpt_path.resolve()), **tested})
        log.info(metrics_line("test: ", metrics))
        log.info(f"wrote {output}")
    return metrics


def test_datamodule(data: dict[str, Any], stored: dict[str, Any], task: str) -> Any:
    """The data module of `data` (the checkpoint's data config, or the command line's), set up for
    testing with the checkpoint's table encoding or image classes."""
    from hydra.utils import instantiate

    # A table is encoded as in training (its columns, categories, class names), not anew.
    encoding = {"encoding": stored["table"]} if "table" in stored else {}
    if "images" in stored:  # labels by the trained class names; the size is the data config's
        encoding = {key: stored["images"][key] for key in ("classes", "channels")}
    datamodule = instantiate(data, task=task, **encoding)
    datamodule.setup("test")
    if tuple(datamodule.input_shape) != tuple(stored["input_shape"]):
        raise LightfitError(
            f"the data have samples of shape {tuple(datamodule.input_shape)} but the checkpoint's "
            f"network takes {tuple(stored['input_shape'])}"
        )
    return datamodule


def main(*, prog: str = "lightfit", config_module: str = "lightfit.conf") -> None:
    """`<prog> evaluate ckpt_path=...`: compose evaluate.yaml (the project's, else lightfit's)."""
    from lightfit.cli import config
    from lightfit.cli.entry import run_command

    config.register()  # the data/ and trainer/ groups extend the typed schemas
    run_command(evaluate, label=f"{prog}-evaluate", config_module=config_module, config_name="evaluate")


if __name__ == "__main__":
    main()

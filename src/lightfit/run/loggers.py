"""The loggers a run writes its metrics to: `logger=csv` (default), `tensorboard`, `mlflow`, `wandb`,
`none`, or several at once: `logger=[csv,mlflow]`.

Each file in conf/logger/ holds one logger under its own name (`csv:`, `mlflow:`), so a list
of options composes into one node with a key per logger, and `build_loggers` instantiates
them all. The Lightning loops hand the list to the Trainer; the explicit loop calls
`log_metrics`, `save` and `finalize` on each, as the Trainer does.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import secrets
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightfit.errors import LightfitError

BEST_CHECKPOINT = Path("checkpoints", "best.ckpt")  # where train.py keeps it, in every loop
HYDRA_FLAGS = ("_partial_", "_convert_")  # how to call a target, not a setting: left out of the params
WANDB_RUN_ID = "wandb_run_id"  # in the run directory: a resumed run logs into the same W&B run


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """The loggers under `cfg.logger`: none, one or several; all but CSV get the config as
    hyperparameters (MLflow's params, W&B's config, TensorBoard's hparams)."""
    node = cfg.get("logger")
    nodes = OmegaConf.to_container(node, resolve=True) if node else {}
    if "_target_" in nodes:  # one logger written without a name as its key (a config of your own)
        nodes = {"logger": nodes}
    log_model = nodes.pop("log_model", None)  # logger.log_model=true: the MLflow logger's setting
    if log_model is not None and "mlflow" in nodes:
        nodes["mlflow"]["log_model"] = bool(log_model)
    loggers = [instantiate(node) for node in nodes.values() if node]
    for logger in loggers:
        # metrics.csv sits beside .hydra/config.yaml already; the others are read apart from it.
        if not isinstance(logger, CSVLogger):
            logger.log_hyperparams(flat_params(cfg))
    return loggers


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config, one entry per value, named as an override would name it: `optimizer.lr`."""
    params: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key not in HYDRA_FLAGS:
                params[prefix + str(key)] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return params


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLFlowLogger, with the run named after its run directory and the best checkpoint
    logged the same way in every loop.

    `log_model=True` logs `checkpoints/best.ckpt`, and only that file, when training ends
    well. (Lightning's own `log_model` logs last.ckpt too, and only through a ModelCheckpoint
    callback, which `loop=explicit` does not have.) Other keyword arguments go to Lightning's
    logger unchanged: `artifact_location`, `run_id` (log into an existing run), `prefix`, ...
    """

    def __init__(
        self,
        run_dir: str,
        tracking_uri: str,
        experiment_name: str = "lightfit",
        tags: dict[str, str] | None = None,
        log_model: bool = False,
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise LightfitError("logger=mlflow needs MLflow: pip install 'lightfit[mlflow]'")
        run = Path(run_dir)
        with sqlite_store_lock(tracking_uri):  # the client opens the store here, on every rank
            super().__init__(
                experiment_name=experiment_name,
                run_name=run_name(run),
                tracking_uri=tracking_uri,
                tags={**(tags or {}), "run_dir": str(run)},
                **kwargs,
            )
        self.best_checkpoint = run / BEST_CHECKPOINT if log_model else None

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if self.best_checkpoint is not None and status == "success" and self.best_checkpoint.is_file():
            self.experiment.log_artifact(self.run_id, str(self.best_checkpoint), "checkpoints")
        super().finalize(status)


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger: offline unless W&B is set up, one W&B run per run directory.

    Offline (files under `<run dir>/wandb`, `wandb sync` uploads them later) unless the
    user set W&B up (`wandb_mode`), so that a run never waits on a network it was not told
    about. The W&B run's id is kept in `<run dir>/wandb_run_id`: a run continued with
    `ckpt_path=auto` logs into the same W&B run. Other keyword arguments go to `wandb.init`.
    """

    def __init__(
        self,
        run_dir: str,
        project: str = "lightfit",
        tags: list[str] | None = None,
        mode: str | None = None,
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise LightfitError('logger=wandb needs W&B: pip install -e ".[wandb]"')
        run = Path(run_dir)
        super().__init__(
            name=run_name(run),
            save_dir=str(run),
            id=wandb_run_id(run),
            project=project,
            tags=tags,
            mode=mode or wandb_mode(),
            **kwargs,
        )
        self._wandb_init.pop("anonymous", None)  # W&B warns that it has no effect, even as None

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        super().finalize(status)
        if self._experiment is not None:  # the run's files are complete; the next run starts its own
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def wandb_mode() -> str:
    """`WANDB_MODE` if set; online when W&B has a key (`WANDB_API_KEY`, or `wandb login`'s entry
    for the W&B host in ~/.netrc); else offline."""
    if mode := os.environ.get("WANDB_MODE"):
        return mode
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "online"
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return "online" if netrc.netrc(os.environ.get("NETRC")).authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc, or one that is not ours to read
        return "offline"


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory: the one saved there, or a new one, saved."""
    saved = run_dir / WANDB_RUN_ID
    if saved.is_file():
        return saved.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
    if rank_zero_only.rank == 0:  # the only rank that logs
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(run_id + "\n")
    return run_id


def run_name(run_dir: Path) -> str:
    """`outputs/2026-11-25/19-13-30`, `multirun/.../3`: the run directory as the command line shows it."""
    try:
        return run_dir.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:  # outside the current folder
        return str(run_dir)


@contextmanager
def sqlite_store_lock(tracking_uri: str) -> Iterator[None]:
    """One process at a time while MLflow opens a SQLite store.

    A client creates the tables of a new store, and two processes doing so at once (the
    ranks of a DDP run, the jobs of a parallel sweep) leave it broken ("table
    _alembic_tmp_latest_metrics already exists"). The lock is a file beside the store.
    """
    prefix = "sqlite:///"
    try:
        import fcntl
    except ImportError:  # Windows: no flock; start DDP or parallel jobs once the store exists
        fcntl = None
    if not tracking_uri.startswith(prefix) or fcntl is None:
        yield
        return
    lock = Path(tracking_uri[len(prefix) :] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield

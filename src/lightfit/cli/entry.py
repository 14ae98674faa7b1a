"""How a Hydra command (train, evaluate, predict) runs on a config module: lightfit's or a project's.

`@hydra.main(config_path=...)` fixes the configs when the module is imported; here the
decorator is applied at call time, so `affair_risk train` composes `affair_risk.conf` with
the same code. A project's `train.yaml` puts lightfit's configs on Hydra's search path
(`hydra.searchpath: [pkg://lightfit.conf]`): its own groups come first, lightfit's groups
(trainer, logger, optimizer, ...) after them. A command whose primary config the project
does not have (evaluate.yaml, predict.yaml) composes lightfit's, with the project's configs
after lightfit's on the search path (`data=<the project's data>` works there too).
"""

from __future__ import annotations

import functools
import importlib.resources
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from lightfit.cli import known_keys
from lightfit.errors import reported_in_job, run_hydra_entry
from lightfit.run import distributed

LIGHTFIT_CONF = "lightfit.conf"


def has_config(config_module: str, config_name: str) -> bool:
    try:
        return importlib.resources.files(config_module).joinpath(f"{config_name}.yaml").is_file()
    except ModuleNotFoundError:
        return False


def run_command(
    task: Callable[[DictConfig], Any], *, label: str, config_module: str, config_name: str
) -> None:
    """Compose `config_name` from `config_module` with the command line, then `task(cfg)`.

    `label` prefixes the one-line errors (`affair_risk-train: error: ...`).
    """

    @functools.wraps(task)  # Hydra names the job (and its <job>.log) after the task's module
    def job(cfg: DictConfig) -> Any:
        with reported_in_job(label):
            known_keys.check_keys(cfg)  # `+loop.l1=...`, a misspelt argument of a _target_: one line, now
            return task(cfg)

    main = config_module
    if config_module != LIGHTFIT_CONF and not has_config(config_module, config_name):
        # Hydra finds the primary config only in its main source (it caches the first miss), so
        # lightfit's configs are the main source here and the project's follow on the search path.
        main = LIGHTFIT_CONF
        if not any(arg.lstrip("+").startswith("hydra.searchpath=") for arg in sys.argv[1:]):
            sys.argv.append(f"hydra.searchpath=[pkg://{config_module}]")
    entry = hydra.main(config_path=f"pkg://{main}", config_name=config_name, version_base="1.3")
    hydra_job = entry(job)

    def job_then_end() -> None:
        hydra_job()
        distributed.end_process_group()  # under DDP, on every rank: before the interpreter's exit

    run_hydra_entry(label, job_then_end)

"""Every config option composes, and the pieces it names instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from lightfit.data import ArrayDataModule
from lightfit.run.checkpoint import network_config
from lightfit.run.schedule import Schedule

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {
    g: sorted(p.stem for p in (CONF / g).glob("*.yaml"))
    for g in ("data", "model", "loop", "optimizer", "scheduler", "trainer", "logger")
}


def test_defaults():
    cfg = compose_config()
    assert cfg.loop.name == "automatic"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data._target_ == "lightfit.data.digits"
    assert cfg.model._target_ == "lightfit.nets.MLP"
    assert cfg.seed == 0
    assert "scheduler" not in cfg or cfg.scheduler is None


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group: str, option: str):
    overrides = [f"{group}={option}"] + (["data.path=x.npz"] if option == "npz" else [])
    cfg = compose_config(*overrides)
    assert group in cfg


def test_model_options_build_networks():
    for option, shape in (("mlp", (8, 8)), ("cnn", (8, 8))):
        # network_config: the model node without lightfit's own key (model.compile)
        make = instantiate(network_config(compose_config(f"model={option}", "model.hidden=[32,16]").model))
        net = make(input_shape=shape, num_outputs=10)
        assert net(torch.zeros(3, *shape)).shape == (3, 10)


def test_layer_widths_override_as_list():
    make = instantiate(network_config(compose_config("model.hidden=[256,128]").model))
    widths = [
        m.out_features for m in make(input_shape=(64,), num_outputs=10) if isinstance(m, torch.nn.Linear)
    ]
    assert widths == [256, 128, 10]


def test_optimizer_and_scheduler_are_factories():
    cfg = compose_config("optimizer=sgd", "optimizer.lr=0.3", "scheduler=step")
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = instantiate(cfg.optimizer)(params)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.3
    schedule = Schedule.from_config(cfg)  # the factory, and Lightning's interval, frequency, monitor
    assert isinstance(schedule.build(optimizer, loader_batches=10), torch.optim.lr_scheduler.StepLR)
    assert (schedule.interval, schedule.frequency, schedule.monitor) == ("epoch", 1, "val/loss")


def test_data_overrides_reach_the_data_module():
    cfg = compose_config("data.batch_size=32", "data.val_fraction=0.25", "seed=7")
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ArrayDataModule)
    assert (datamodule.batch_size, datamodule.val_fraction, datamodule.seed) == (32, 0.25, 7)


def test_the_data_schema_read_from_source_is_the_data_modules_signature():
    import inspect

    import numpy as np

    from lightfit.cli.config import init_from_source

    stub = init_from_source("lightfit.data.datamodule", "ArrayDataModule", {"np": np})
    assert inspect.signature(stub) == inspect.signature(ArrayDataModule.__init__)


def test_config_mistakes_are_answered_before_lightning_is_imported():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lightfit.cli.train import main\n"
        "sys.argv = ['lightfit-train', 'trainer.max_epoch=3']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'lightning' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stderr

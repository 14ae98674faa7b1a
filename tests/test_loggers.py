"""build_loggers: the shapes `logger` can take, and logger=mlflow without MLflow installed."""

from __future__ import annotations

import pytest
from conftest import compose_config, require
from hydra.errors import InstantiationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import open_dict

from lightfit import errors
from lightfit.run import loggers


def test_none_one_several_and_a_logger_written_without_its_name(tmp_path):
    assert loggers.build_loggers(compose_config("logger=none", run_dir=tmp_path)) == []
    cfg = compose_config("logger=csv", run_dir=tmp_path)
    assert [type(logger) for logger in loggers.build_loggers(cfg)] == [CSVLogger]
    with open_dict(cfg):  # a conf/logger file of your own, written before loggers had names
        cfg.logger = cfg.logger.csv
    assert [type(logger) for logger in loggers.build_loggers(cfg)] == [CSVLogger]
    require("tensorboard")  # several: a second logger needs an extra
    cfg = compose_config("logger=[csv,tensorboard]", run_dir=tmp_path)
    assert [type(logger) for logger in loggers.build_loggers(cfg)] == [CSVLogger, TensorBoardLogger]


def test_mlflow_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InstantiationException) as raised:
        loggers.build_loggers(compose_config("logger=mlflow", run_dir=tmp_path))
    assert errors.one_line(raised.value) == "logger=mlflow needs MLflow: pip install 'lightfit[mlflow]'"

"""`lightfit export`: ONNX and TorchScript files that compute what `lightfit predict` writes.

Each exported model runs without lightfit (onnxruntime, torch.jit.load) on the run's test
split and must equal `predict`'s output within 1e-5. For a table, the raw rows are encoded
with nothing but the JSON written beside the model, as a service without lightfit would.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, cli, needs, predicted, run_train

from lightfit.data import load_split

# Each export runs the exporter and a check in a process of its own: `make test-all`.
pytestmark = pytest.mark.slow
ONNX = [pytest.param("onnx", marks=needs("export")), "torchscript"]


def export(run: Path, fmt: str, tmp_path: Path) -> tuple[Path, dict]:
    proc = cli(f"ckpt_path={run}/checkpoints/best.ckpt", f"format={fmt}", module="lightfit export")
    assert proc.returncode == 0, proc.stderr
    model = run / "export" / f"best{'.onnx' if fmt == 'onnx' else '.pt'}"
    assert model.is_file() and not list(model.parent.glob("*partial*"))
    return model, json.loads(model.with_name(model.name + ".json").read_text())


def run_exported(model: Path, x: np.ndarray) -> np.ndarray:
    if model.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x.astype(np.float32)})[0]
    loaded = torch.jit.load(str(model))
    with torch.no_grad():
        return loaded(torch.from_numpy(x.astype(np.float32))).numpy()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("digits") / "run"
    run_train(run, *FAST)
    return run


@pytest.mark.parametrize("fmt", ONNX)
def test_arrays_export_equals_predict_on_the_test_split(digits_run, fmt, tmp_path):
    x_test, _ = load_split(digits_run)["test"]
    np.save(tmp_path / "x_test.npy", x_test)
    model, about = export(digits_run, fmt, tmp_path)
    assert about["input"] == {"name": "x", "dtype": "float32", "shape": ["batch", 8, 8]}
    assert about["output"]["name"] == "probs" and about["output"]["classes"] == list(range(10))
    got = run_exported(model, x_test)  # 359 rows: another batch size than the export's example
    expected = predicted(digits_run, tmp_path / "x_test.npy", tmp_path)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ONNX)
def test_regression_gives_values_in_the_targets_units(fmt, tmp_path):
    run = tmp_path / "run"
    run_train(run, "data=diabetes", *FAST)
    x_test, y_test = load_split(run)["test"]
    np.save(tmp_path / "x.npy", x_test)
    model, about = export(run, fmt, tmp_path)
    assert about["output"]["name"] == "values" and about["task"] == "regression"
    got = run_exported(model, x_test)
    assert got.shape == y_test.shape and abs(got.mean() - y_test.mean()) < 100  # units of y: about 150
    np.testing.assert_allclose(got, predicted(run, tmp_path / "x.npy", tmp_path), atol=1e-5, rtol=1e-6)


def encode_with_the_json(rows: list[dict[str, str]], about: dict) -> np.ndarray:
    """Raw table rows -> x, following only the JSON beside the model (no lightfit)."""
    out = []
    for row in rows:
        values = []
        for column in about["table"]["columns"]:
            raw = row[column["name"]]
            if column["kind"] == "text":
                values += [1.0 if raw == c else 0.0 for c in column["categories"]]
            else:
                values.append(float(raw) if raw != "" else column["fill"])
        out.append(values)
    return np.asarray(out, np.float32)


@pytest.mark.slow
@needs("table")
@pytest.mark.parametrize("fmt", ONNX)
def test_a_table_with_text_columns_is_encoded_from_the_json(fmt, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_table import write_churn

    churn = write_churn(tmp_path / "churn.csv", n=300, missing=5)
    run = tmp_path / "run"
    data = ["data=table", f"data.path={churn}", "data.target=churn", "data.drop=[customer_id]"]
    run_train(run, *data, "data.missing=mean", *FAST)
    model, about = export(run, fmt, tmp_path)
    assert [c["name"] for c in about["table"]["columns"]] == ["age", "income", "city", "plan"]
    assert about["output"]["classes"] == ["no", "yes"]
    with churn.open() as f:
        rows = list(csv.DictReader(f))
    got = run_exported(model, encode_with_the_json(rows, about))
    np.testing.assert_allclose(got, predicted(run, churn, tmp_path), atol=1e-5, rtol=0)


@pytest.mark.slow
@needs("images")
@pytest.mark.parametrize("fmt", ONNX)
def test_images_export_equals_predict(fmt, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from PIL import Image
    from test_images import write_digits

    photos = write_digits(tmp_path / "digits", 200)
    run = tmp_path / "run"
    data = ["data=images", f"data.path={photos}", "data.channels=1", f"data.cache={tmp_path / 'cache'}"]
    run_train(run, *data, *FAST)
    model, about = export(run, fmt, tmp_path)
    assert about["images"] == {"size": [8, 8], "channels": 1}
    out = tmp_path / "predicted.csv"  # predict's table: the file, the class, each class's probability
    proc = cli(f"ckpt_path={run}/checkpoints/best.ckpt", f"input={photos}", f"output={out}",
               module="lightfit predict")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with out.open() as f:
        rows = list(csv.DictReader(f))
    expected = np.array([[float(r[f"prob_{c}"]) for c in about["output"]["classes"]] for r in rows])
    # decoded as the JSON says: L, 8x8 already, uint8 (C, H, W) as float32
    decoded = [np.asarray(Image.open(photos / r["file"]).convert("L"))[None] for r in rows]
    got = run_exported(model, np.stack(decoded).astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_bad_requests_get_one_line(digits_run, tmp_path):
    ckpt = f"ckpt_path={digits_run}/checkpoints/best.ckpt"
    for args, needle in (
        ([ckpt, "format=tflite"], "format=tflite is not one of onnx, torchscript"),
        (
            [ckpt, "format=torchscript", f"output={tmp_path / 'm.onnx'}"],
            "torchscript model is written to a .pt",
        ),
        ([f"ckpt_path={tmp_path / 'none.ckpt'}"], "checkpoint not found"),
    ):
        proc = cli(*args, module="lightfit export")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())

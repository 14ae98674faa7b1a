"""Bad input: one line that names the problem, a non-zero exit, no traceback, no results.json."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, require

from lightfit.data import ArrayDataModule
from lightfit.errors import LightfitError

X = np.random.default_rng(0).random((100, 6), dtype=np.float32)
Y = np.arange(100) % 3


def setup(**kwargs):
    ArrayDataModule(**kwargs).setup()


def npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": X, "y": Y[:90]}, r"data.npz: y has 90 labels but x has 100 samples; they must match"),
        ({"x": X[:0], "y": Y[:0]}, "x is empty"),
        (
            {"x": np.where(np.arange(6) == 2, np.nan, X), "y": Y},
            r"x has 100 samples with NaN or infinite values \(first at row 0\)",
        ),
        (
            {"x": np.where(np.arange(100)[:, None] == 7, np.inf, X), "y": Y},
            r"1 samples with NaN or infinite values \(first at row 7\)",
        ),
        ({"x": X, "y": Y + 0.5}, "y has 100 labels that are not integers"),
        ({"x": X, "y": Y - 1}, r"y has 34 negative labels \(min -1\)"),
        ({"x": X, "y": np.array(["a"] * 100)}, "y has dtype <U1; expected integer class labels"),
        ({"x": X.astype(str), "y": Y}, "x has dtype <U32; expected numbers"),
        ({"x": X[:, 0], "y": Y}, r"x has shape \(100,\); expected \(samples, features...\)"),
    ],
    ids=["lengths", "empty", "nan", "inf", "float-labels", "negative", "string-labels", "string-x", "rank"],
)
def test_bad_arrays_in_a_file(tmp_path, arrays, message):
    with pytest.raises(LightfitError, match=message):
        setup(path=npz(tmp_path, **arrays))


def test_labels_not_below_num_classes(tmp_path):
    with pytest.raises(LightfitError, match=r"y has 33 labels >= num_classes=2 \(max 2\)"):
        setup(path=npz(tmp_path, x=X, y=Y), num_classes=2)


def test_not_a_numpy_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3\n")
    with pytest.raises(LightfitError, match=r"data.csv is not a NumPy .npy or .npz file"):
        setup(path=str(path))


def test_truncated_npz(tmp_path):
    path = Path(npz(tmp_path, x=X, y=Y))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LightfitError, match="data.npz is truncated or corrupt"):
        setup(path=str(path))


def test_pickled_payload_in_npz_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Payload()] * 3, dtype=object), y=np.zeros(3))
    with pytest.raises(LightfitError, match="key 'x' holds Python objects; refusing to unpickle it"):
        setup(path=str(path))
    assert not marker.exists()


def test_pickled_payload_in_npy_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    np.save(tmp_path / "x.npy", np.array([Payload()] * 3, dtype=object), allow_pickle=True)
    np.save(tmp_path / "y.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(LightfitError, match="x.npy holds Python objects; refusing to unpickle it"):
        setup(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    assert not marker.exists()


def assert_one_line(proc, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightfit-train: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_cnn_given_flat_vectors(tmp_path):
    path = npz(tmp_path, x=X, y=Y)
    proc = cli("data=npz", f"data.path={path}", "model=cnn", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(proc, "model=cnn needs image-shaped samples", "got samples of shape (6,)")
    assert not (tmp_path / "run" / "results.json").exists()


def test_wrong_types_are_refused_before_training(tmp_path):
    proc = cli("seed=abc", "optimizer.lr=fast", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(proc, "seed=abc", "could not be converted to Integer")
    proc = cli("model.hidden=[64,big]", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(proc, "model.hidden=[64,big]", "'big'")
    assert not (tmp_path / "run").exists()  # refused while composing: no run directory at all


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("a,y\n1,2\n".encode("utf-16"), r"is UTF-16 text .*; save it as CSV UTF-8"),
        (b"name,y\nJos\xe9,1\n", r"column 'name' holds text that is not UTF-8 .*: iconv -f cp1252 -t utf-8 "),
        (
            b"PK\x03\x04\x14\x00\x00\x00",
            r"not a CSV table but a zip archive \(an Excel .xlsx\?\): save the sheet",
        ),
        (Path(sys.executable).resolve().read_bytes(), r"t.csv is not a CSV table but an executable program;"),
    ],
    ids=["utf-16", "latin-1", "xlsx", "program"],
)
def test_a_csv_that_is_not_utf8_text_says_what_it_is(tmp_path, data, message):
    """One printable line that says what the file is and what to do; pyarrow's own error quotes
    the bytes (the CLI: test_table.py::test_a_program_named_csv_is_one_line_in_train_and_predict)."""
    require("table")
    from lightfit.data import TableDataModule

    path = tmp_path / "t.csv"
    path.write_bytes(data)
    with pytest.raises(LightfitError, match=message) as error:
        TableDataModule(path=str(path), target="y").setup("fit")
    assert str(error.value).isprintable()  # no control characters, one line

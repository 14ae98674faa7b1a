"""data=table: a real CSV with mixed columns, trained, evaluated and predicted end to end.

Without pyarrow (the `table` extra) these tests are skipped.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, cli, require, run_train

require("table")

from lightfit.data import TableDataModule, load_split  # noqa: E402
from lightfit.errors import LightfitError  # noqa: E402

COLUMNS = ["customer_id", "age", "income", "city", "plan", "churn"]
CITIES = ["Berlin", "Lisbon", "Paris", "Rome"]


def write_churn(path: Path, n: int = 400, missing: int = 0, seed: int = 0) -> Path:
    """Customers: an id, numbers, two text columns, string labels; `missing` incomes left blank."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    income = np.round(rng.lognormal(10, 0.4, n), 2)
    city = rng.choice(CITIES, n)
    plan = rng.choice(["basic", "pro"], n)
    churn = np.where((age < 40) & (plan == "basic") | (city == "Rome"), "yes", "no")
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i in range(n):
            writer.writerow([f"C{i}", age[i], "" if i < missing else income[i], city[i], plan[i], churn[i]])
    return path


def table_module(path: Path, **kwargs) -> TableDataModule:
    kwargs = {"target": "churn", "drop": ["customer_id"], "batch_size": 16, **kwargs}
    module = TableDataModule(path=str(path), **kwargs)
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def churn(tmp_path_factory) -> Path:
    return write_churn(tmp_path_factory.mktemp("table") / "churn.csv", missing=7)


@pytest.fixture(scope="module")
def trained(churn, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    overrides = ["data=table", f"data.path={churn}", "data.target=churn", "data.drop=[customer_id]"]
    run_train(run, *overrides, "data.missing=mean", "task.metrics=[acc,confusion]", *FAST)
    return run


def test_columns_become_float32_features_and_one_hot_categories(churn):
    module = table_module(churn, missing="mean")
    enc = module.encoding
    assert enc.features == ["age", "income", "city", "plan"]
    assert enc.categories == {"city": CITIES, "plan": ["basic", "pro"]}
    assert enc.feature_names() == ["age", "income", *(f"city={c}" for c in CITIES), "plan=basic", "plan=pro"]
    assert enc.classes == ["no", "yes"] and module.num_classes == 2
    x, y = module.splits["train"].x.numpy(), module.splits["train"].y.numpy()
    assert x.dtype == np.float32 and x.shape == (400, 8) and y.dtype == np.int64
    rows = np.genfromtxt(churn, delimiter=",", dtype=str, skip_header=1)
    np.testing.assert_array_equal(x[:, 0], rows[:, 1].astype(np.float32))  # age, as it is
    np.testing.assert_array_equal(x[:, 2:6].argmax(1), [CITIES.index(c) for c in rows[:, 3]])
    assert (x[:, 2:6].sum(1) == 1).all() and (x[:, 6:].sum(1) == 1).all()
    np.testing.assert_array_equal(y, (rows[:, 5] == "yes").astype(np.int64))  # sorted: no=0, yes=1
    # missing=mean: the blank incomes (rows 0..6) are the training split's mean, not the file's.
    train = module.splits["train"].rows.numpy()
    known = np.setdiff1d(train, np.arange(7))
    assert enc.means["income"] == pytest.approx(rows[known, 2].astype(np.float64).mean(), rel=1e-6)
    np.testing.assert_allclose(x[:7, 1], enc.means["income"], rtol=1e-6)


def test_one_column_name_without_brackets_is_that_column(churn):
    """data.drop=customer_id (no brackets) was read letter by letter: "column 'c' is missing"."""
    assert table_module(churn, missing="mean", drop="customer_id").encoding.features == [
        "age", "income", "city", "plan"
    ]  # fmt: skip
    assert table_module(churn, missing="mean", features="age").encoding.features == ["age"]


def test_parquet_gives_the_same_arrays_as_csv(churn, tmp_path):
    import pyarrow.csv
    import pyarrow.parquet

    parquet = tmp_path / "churn.parquet"
    pyarrow.parquet.write_table(pyarrow.csv.read_csv(churn), parquet)
    a, b = table_module(churn, missing="drop"), table_module(parquet, missing="drop")
    torch.testing.assert_close(a.splits["train"].x, b.splits["train"].x, rtol=0, atol=0)
    assert torch.equal(a.splits["test"].y, b.splits["test"].y)


def test_missing_values_stop_unless_dropped(churn):
    with pytest.raises(LightfitError, match=r"churn.csv: 7 rows have missing values \(columns: income\)"):
        table_module(churn)
    module = table_module(churn, missing="drop")
    rows = module.split_rows_in_file()
    every = np.sort(np.concatenate(list(rows.values())))
    np.testing.assert_array_equal(every, np.arange(7, 400))  # file rows 0..6 left out, the rest kept


def test_train_writes_names_split_and_encoding(trained, churn):
    results = json.loads((trained / "results.json").read_text())
    assert results["classes"] == ["no", "yes"]
    confusion = list(csv.reader((trained / "test_confusion.csv").open()))
    assert confusion[0] == ["true/predicted", "no", "yes"] and [r[0] for r in confusion[1:]] == ["no", "yes"]
    assert sum(int(v) for r in confusion[1:] for v in r[1:]) == 80  # 20% of 400 rows
    stored = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=True)["lightfit"]["table"]
    assert stored["categories"]["city"] == CITIES and stored["classes"] == ["no", "yes"]
    split = load_split(trained)
    saved = np.load(trained / "splits.npz")
    assert [len(split[s][1]) for s in ("train", "val", "test")] == [280, 40, 80]
    module = table_module(churn, missing="mean")
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(saved[name], module.splits[name].rows.numpy())
        x, y = split[name]
        np.testing.assert_array_equal(x, module.splits[name].x.numpy()[saved[name]])
        np.testing.assert_array_equal(y, module.splits[name].y.numpy()[saved[name]])


def test_plot_names_the_classes(trained):
    pytest.importorskip("matplotlib", reason="lightfit plot needs matplotlib: pip install 'lightfit[plot]'")
    from lightfit.cli.plot import plot_confusion

    png = plot_confusion(trained / "test_confusion.csv")
    assert png.stat().st_size > 1000


def test_predict_takes_raw_rows_and_writes_a_table(trained, churn, tmp_path):
    # The new rows: other column order, no label, an extra column, a missing income (mean).
    new = tmp_path / "new.csv"
    with new.open("w", newline="") as f:
        f.write("note,plan,city,income,age,customer_id\nx,basic,Rome,,30,N1\ny,pro,Paris,25000,65,N2\n")
    out = tmp_path / "pred.csv"
    proc = cli(f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={new}", f"output={out}",
               "keep=[customer_id]", module="lightfit predict")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["customer_id", "predicted_churn", "prob_no", "prob_yes"]
    assert [r[0] for r in rows[1:]] == ["N1", "N2"]
    for row in rows[1:]:
        probs = [float(p) for p in row[2:]]
        assert row[1] == ["no", "yes"][int(np.argmax(probs))] and sum(probs) == pytest.approx(1, abs=1e-5)
    labels = tmp_path / "labels.npy"
    proc = cli(f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={new}", f"output={labels}",
               "kind=labels", module="lightfit predict")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert np.load(labels).tolist() == [r[1] for r in rows[1:]]  # the names, as in the table


def test_evaluate_reproduces_the_test_metrics(trained):
    from test_evaluate_predict import compose_entry

    from lightfit.cli.evaluate import evaluate

    metrics = evaluate(compose_entry("evaluate", f"ckpt_path={trained}/checkpoints/best.ckpt"))
    results = json.loads((trained / "results.json").read_text())
    assert metrics["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)


def test_regression_on_several_target_columns(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    path = tmp_path / "houses.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "c", "price", "rent"])
        for row in x:
            writer.writerow([*row, 100 + 10 * row[0], 5 - row[1]])
    module = table_module(path, target=["price", "rent"], drop=[], task="regression")
    assert module.target_shape == (2,) and module.num_outputs == 2
    np.testing.assert_allclose(module.splits["train"].y.numpy()[:2], [[100 + 10 * x[0, 0], 5 - x[0, 1]],
                               [100 + 10 * x[1, 0], 5 - x[1, 1]]], rtol=1e-5)  # fmt: skip


def test_true_false_columns_are_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("member,score,label\n" + "true,1.5,a\nfalse,,b\n" * 20)
    module = table_module(path, target="label", drop=[], missing="mean")
    x = module.splits["train"].x.numpy()
    assert module.encoding.categories == {} and module.input_shape == (2,)  # no one-hot: numbers
    assert sorted(set(x[:, 0].tolist())) == [0.0, 1.0] and np.isfinite(x).all()


def write_cars(path: Path, n: int = 200) -> Path:
    """Cars: an id, a name nearly every car has alone, a date (one blank), a timestamp with time
    zones (pyarrow reads it as UTC), a timestamp without, a number; mpg to predict."""
    rng = np.random.default_rng(3)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "Name", "built", "sold", "checked", "hp", "mpg"])
        for i in range(n):
            hp, year = rng.normal(100, 20), 1970 + i % 13
            sold = f"2024-03-{1 + i % 28:02d}T{i % 24:02d}:30:00" + ("+02:00" if i % 2 else "Z")
            built = "" if i == 5 else f"{year}-{1 + i % 12:02d}-01"
            mpg = 40 - 0.1 * hp + 0.5 * (year - 1970)
            checked = f"2024-01-02 {i % 24:02d}:00:00"
            writer.writerow([1000 + i, f"car {i % 150}", built, sold, checked, f"{hp:.1f}", f"{mpg:.2f}"])
    return path


def test_dates_and_timestamps_are_days_since_1970(tmp_path):
    path = tmp_path / "t.csv"
    rows = (
        "1970-01-02,2024-01-02T12:00:00+02:00,a\n2024-01-31,2024-01-02T06:00:00Z,b\n,1970-01-01T00:00:00Z,a\n"
    )
    path.write_text("day,seen,label\n" + rows * 10)
    module = table_module(path, target="label", drop=[], missing="mean")
    enc = module.encoding
    assert enc.dates == ["day", "seen"] and enc.categories == {} and module.input_shape == (2,)
    x = module.splits["train"].x.numpy()
    assert x[:2, 0].tolist() == [1.0, 19753.0]  # days since 1970-01-01
    np.testing.assert_allclose(x[:3, 1], [19724 + 10 / 24, 19724 + 6 / 24, 0], atol=2e-3)  # UTC, to float32
    train = module.splits["train"].rows.numpy()
    known = train[train % 3 != 2]
    assert x[2, 0] == pytest.approx(x[known, 0].mean())  # missing: the training mean, as for numbers
    with pytest.raises(
        LightfitError, match=r"10 rows have missing values \(columns: day\); set data.missing"
    ):
        table_module(path, target="label", drop=[])


def test_a_run_with_dates_predicts_its_own_rows_as_it_saw_them(tmp_path, caplog):
    from lightfit.cli.predict_table import read_table_inputs
    from lightfit.data.table import TableEncoding

    cars, run = write_cars(tmp_path / "cars.csv"), tmp_path / "run"
    with caplog.at_level("WARNING", logger="lightfit"):
        data = [f"data.path={cars}", "data.target=mpg", "data.missing=mean", "data.drop=[checked]"]
        run_train(run, "data=table", *data, "task=regression", "trainer.max_epochs=1", "logger=none")
    # The id and the name are named, with the override that drops them (and what is dropped already).
    warned = [r.getMessage() for r in caplog.records if "the model can only memorise it" in r.getMessage()]
    assert [w.split("'")[1] for w in warned] == ["id", "Name"]
    assert "holds a different whole number in every row (1000 to 1199), like an id" in warned[0]
    assert "has 113 categories in 140 training rows" in warned[1]
    assert all(w.endswith("data.drop=[checked,id,Name] leaves it out") for w in warned)
    # predict encodes the training file exactly as the run did, dates and the blank one included.
    stored = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["lightfit"]
    assert stored["table"]["dates"] == ["built", "sold"] and "built" in stored["table"]["means"]
    x, _ = read_table_inputs(cars, stored, [], unknown="ignore")  # names only val/test rows have: zeros
    saved = np.load(run / "splits.npz")
    for name, (seen, _) in load_split(run).items():
        np.testing.assert_array_equal(x[saved[name]], seen)
    # Row 1: built 1971-02-01, sold 2024-03-02 01:30 at +02:00 (23:30 UTC the day before).
    built = TableEncoding.from_dict(stored["table"]).feature_names().index("built")  # after id, Name=...
    assert x[1, built] == 396.0 and x[1, built + 1] == pytest.approx(19783 + 23.5 / 24, abs=1e-3)


def test_id_like_columns_need_whole_numbers_or_text():
    import pyarrow as pa

    from lightfit.data.table_columns import many_categories, whole_number_id
    from lightfit.data.table_read import drop_override

    assert whole_number_id(pa.chunked_array([np.arange(50, dtype=np.float32)])) is not None
    measured = np.random.default_rng(0).normal(size=50).astype(np.float32)  # all different too
    assert whole_number_id(pa.chunked_array([measured])) is None
    spread = np.arange(50, dtype=np.float32) * 1000  # incomes in whole dollars: not an id
    assert whole_number_id(pa.chunked_array([spread])) is None
    assert whole_number_id(pa.chunked_array([np.arange(10, dtype=np.float32)])) is None  # too few rows
    assert many_categories(4, 280) is None and many_categories(5, 8) is None
    assert drop_override(["id", "Car Name"]) == """'data.drop=[id,"Car Name"]'"""  # for Hydra and the shell


def test_missing_targets_point_to_drop(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("x,label\n" + "".join(f"{i},{'' if i % 10 == 0 else 'ab'[i % 2]}\n" for i in range(40)))
    for missing in ("error", "mean"):
        with pytest.raises(LightfitError, match=r"4 rows have missing values \(columns: label\)") as error:
            table_module(path, target="label", drop=[], missing=missing)
        assert "data.missing=drop" in str(error.value) and "data.missing=mean (" not in str(error.value)
    assert len(table_module(path, target="label", drop=[], missing="drop").file_rows) == 36


def test_integer_labels_map_to_sorted_ids(tmp_path):
    path = tmp_path / "grades.csv"
    path.write_text("score,grade\n" + "".join(f"{i},{[3, 5, 9][i % 3]}\n" for i in range(60)))
    module = table_module(path, target="grade", drop=[])
    assert module.encoding.classes == [3, 5, 9] and module.num_classes == 3
    assert set(module.splits["train"].y.tolist()) == {0, 1, 2}


def test_a_target_that_looks_real_valued_is_refused_for_classification(tmp_path):
    # A CSV's measurement written as decimals (diabetes progression: 151.0, 75.0, ...) would
    # otherwise train a classifier with a class per value; 0.0/1.0 labels still pass.
    path = tmp_path / "t.csv"
    rows = [f"{i % 7},{float(25 + 3 * (i % 40))}" for i in range(120)]
    path.write_text("x,progression\n" + "\n".join(rows) + "\n")
    decimals = r"target 'progression' holds 40 different numbers written as decimals \(25.0, 28.0, 31.0, "
    with pytest.raises(LightfitError, match=decimals + r".*use task=regression"):
        table_module(path, target="progression", drop=[])
    assert table_module(path, target="progression", drop=[], task="regression").num_outputs == 1
    path.write_text("x,label\n" + "".join(f"{i},{float(i % 2)}\n" for i in range(40)))
    assert table_module(path, target="label", drop=[]).encoding.classes == [0, 1]
    path.write_text("x,id\n" + "".join(f"{i % 3},{i}\n" for i in range(40)))
    with pytest.raises(LightfitError, match=r"target 'id' has 40 different values in 40 rows, fewer than"):
        table_module(path, target="id", drop=[])


def test_many_whole_number_classes_are_a_warning(tmp_path, caplog):
    # The same measurement written as whole numbers (151, 75): a class per value, 2.4 rows each.
    path = tmp_path / "t.csv"
    path.write_text("x,progression\n" + "".join(f"{i % 7},{25 + 3 * (i % 50)}\n" for i in range(120)))
    with caplog.at_level("WARNING", logger="lightfit"):
        assert table_module(path, target="progression", drop=[]).num_classes == 50  # the run goes on
    assert "target 'progression' has 50 classes in 120 rows, fewer than 5 rows a class; for a real-valued " \
        "target use task=regression" in caplog.text  # fmt: skip


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        ("", {}, r"is empty; expected a header"),
        ("1.5,2,0\n2.5,3,1\n", {"target": "0"}, r"has no header: its first line \(1.5, 2, 0, \.\.\.\)"),
        ("age,churn\n", {"drop": []}, r"has a header \(2 columns\) but no rows"),
        ("age,churn\n3,no\n", {"target": "chrun", "drop": []}, r"target column 'chrun' .*mean 'churn'"),
        ("age,churn\n3,no\n", {"features": ["agee"], "drop": []}, r"feature column 'agee' .*mean 'age'"),
    ],
)
def test_bad_tables_get_one_line(tmp_path, text, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LightfitError, match=message):
        table_module(path, **kwargs)


def test_too_many_categories_and_unseen_ones(churn, tmp_path):
    too_many = r"'customer_id' has 280 categories, more than data.max_categories=100; drop it \(data.drop"
    with pytest.raises(LightfitError, match=too_many):
        table_module(churn, drop=[], missing="mean", max_categories=100)
    rows = tmp_path / "new.csv"
    rows.write_text("age,income,city,plan\n30,20000,Oslo,basic\n")
    from lightfit.cli.predict_table import read_table_inputs

    stored = {"table": table_module(churn, missing="mean").encoding.to_dict()}
    with pytest.raises(LightfitError, match=r"column 'city' has the category 'Oslo' \(row 0\), never seen"):
        read_table_inputs(rows, stored, [])
    x, _ = read_table_inputs(rows, stored, [], unknown="ignore")  # predict's unknown=ignore
    assert x[0, 2:6].tolist() == [0, 0, 0, 0] and x[0, 6:].tolist() == [1, 0]


def test_cli_errors_are_one_line_and_write_nothing(churn, tmp_path):
    run = tmp_path / "run"
    proc = cli("data=table", f"data.path={churn}", "data.target=churn", "data.drop=[customer_id]",
               f"hydra.run.dir={run}", *FAST)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lightfit-train: error: {churn}: 7 rows have missing values (columns: income); "
        "set data.missing=drop (leave those rows out) or data.missing=mean (training means)"
    ]
    assert not (run / "checkpoints").exists() and not (run / "splits.npz").exists()


def test_predict_refuses_a_table_without_a_training_column(trained, tmp_path):
    rows = tmp_path / "new.csv"
    rows.write_text("age,city,plan\n30,Rome,basic\n")
    out = tmp_path / "pred.csv"
    proc = cli(f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={rows}", f"output={out}",
               module="lightfit predict")  # fmt: skip
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == (
        f"lightfit-predict: error: {rows}: training's feature column 'income' is missing "
        "(columns: age, city, plan)"
    )


@pytest.mark.slow
def test_a_program_named_csv_is_one_line_in_train_and_predict(trained, tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(Path(sys.executable).resolve().read_bytes())  # an executable, renamed
    what = f"{path} is not a CSV table but an executable program; expected text: a header line"
    what += " naming the columns, then rows"
    proc = cli("data=table", f"data.path={path}", "data.target=y", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and proc.stdout.strip() == ""
    assert proc.stderr.splitlines() == [f"lightfit-train: error: {what}"]
    out = tmp_path / "pred.csv"
    proc = cli(f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={path}", f"output={out}",
               module="lightfit predict")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"lightfit-predict: error: {what}"]
    assert not out.exists()


def test_the_bench_case_reads_both_ways(tmp_path):
    from bench.table_read import case_table_read, table_read_markdown, table_read_rows

    result = case_table_read(3000, tmp_path, repeats=1)
    assert result["lightfit"]["array_bytes"] == 3000 * 20 * 4 and result["lightfit"]["dtype"] == "float32"
    assert result["pyarrow"]["seconds"] > 0 and result["time_ratio"] > 0 and result["peak_over_array"] > 0
    assert "Reading a 3,000-row, 20-feature CSV" in "\n".join(table_read_markdown(result))
    assert [row[0][:23] for row in table_read_rows(result)] == ["data=table reads a 3,00"] * 2


def test_load_predicts_raw_rows_as_the_command_does(trained, tmp_path):
    """`lightfit.load(ckpt)` on a CSV path, a pyarrow Table and a pandas DataFrame (text columns,
    a missing income, other columns): the numbers of `lightfit predict`."""
    import pyarrow.csv
    from test_evaluate_predict import compose_entry

    import lightfit
    from lightfit.cli.predict import predict

    new = write_churn(tmp_path / "new.csv", n=30, missing=3, seed=1)
    ckpt = trained / "checkpoints" / "best.ckpt"

    def command(kind: str) -> np.ndarray:
        out = f"output={tmp_path / kind}.npy"
        return np.load(
            predict(compose_entry("predict", f"ckpt_path={ckpt}", f"input={new}", out, f"kind={kind}"))
        )

    labels, probs = command("labels"), command("probs")
    assert set(labels.tolist()) <= {"no", "yes"}  # the class names, not ids
    model = lightfit.load(ckpt)
    inputs = [new, str(new), pyarrow.csv.read_csv(new)]  # the Table: int64 and float64 columns
    if importlib.util.find_spec("pandas") is not None:
        import pandas as pd

        inputs.append(pd.read_csv(new).drop(columns=["churn"]).iloc[:, ::-1])  # any column order
    for rows in inputs:
        np.testing.assert_array_equal(model.predict(rows), labels)
        np.testing.assert_array_equal(model.predict_proba(rows), probs)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    missing = r"the Table: training's feature column 'plan' is missing \(columns: "
    with pytest.raises(LightfitError, match=missing):
        model.predict(pyarrow.csv.read_csv(new).drop_columns(["plan"]))

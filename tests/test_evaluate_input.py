"""`lightfit evaluate input=...`: every sample of a labelled file, read as the run read its data.

Each test builds a file holding exactly a real run's test samples (from its splits.npz or
`load_split`) and checks that evaluate gives the run's own test metrics back.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, cli, run_train
from test_evaluate_predict import compose_entry

from lightfit.cli.evaluate import evaluate
from lightfit.data import load_split
from lightfit.errors import LightfitError


def evaluate_input(run: Path, path: Path, *overrides: str) -> dict[str, float]:
    ckpt = run / "checkpoints" / "best.ckpt"
    return evaluate(compose_entry("evaluate", f"ckpt_path={ckpt}", f"input={path}", *overrides))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("arrays") / "run"
    run_train(run, *FAST)
    return run


def test_an_npz_of_the_test_split_gives_the_runs_metrics(digits_run, tmp_path):
    x, y = load_split(digits_run)["test"]
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, x=x, y=y)
    out = tmp_path / "holdout.json"
    metrics = evaluate_input(digits_run, holdout, f"output={out}")
    results = json.loads((digits_run / "results.json").read_text())
    assert metrics["test/acc"] == results["test/acc"]  # the same samples, in the same order
    assert metrics["test/loss"] == results["test/loss"]
    written = json.loads(out.read_text())
    assert written["test/acc"] == results["test/acc"] and written["input"] == str(holdout)

    np.savez(holdout, x_test=x[:100], y_test=y[:100])  # the Keras names; any number of samples
    assert 0 < evaluate_input(digits_run, holdout, f"output={out}", "+data.batch_size=7")["test/acc"] <= 1


def test_inputs_without_labels_or_with_data_get_one_line(digits_run, tmp_path):
    x, y = load_split(digits_run)["test"]
    out = tmp_path / "out.json"
    features = tmp_path / "x.npy"
    np.save(features, x)
    only_x = tmp_path / "only_x.npz"
    np.savez(only_x, x=x)
    for path, why in (
        (features, "a .npy holds features only; save x and y in one file with np.savez"),
        (only_x, "keys x: no y"),
    ):
        with pytest.raises(LightfitError) as error:
            evaluate_input(digits_run, path, f"output={out}")
        assert str(error.value) == f"{path} has no labels ({why}); to get predictions use lightfit predict"
    table, folder = tmp_path / "x.csv", tmp_path / "photos"
    table.write_text("a,b\n1,2\n")
    (folder / "cat").mkdir(parents=True)
    for path, kind, flag in ((table, "a table", "table"), (folder, "images", "images")):
        with pytest.raises(LightfitError) as error:
            evaluate_input(digits_run, path, f"output={out}")
        assert str(error.value) == (
            f"{path} is {kind}, but the checkpoint was not trained with data={flag}; give a .npz with x and y"
        )
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=x, y=y + 10)
    with pytest.raises(LightfitError, match=r"wrong.npz: y has \d+ labels >= num_classes=10 \(max 19\)$"):
        evaluate_input(digits_run, wrong, f"output={out}")
    np.savez(wrong, x=x[:, :4], y=y)  # digits are (8, 8)
    with pytest.raises(LightfitError, match=r"samples of shape \(4, 8\) .*takes samples of shape \(8, 8\)$"):
        evaluate_input(digits_run, wrong, f"output={out}")
    with pytest.raises(
        LightfitError,
        match=r"^input=.*only_x.npz and data=... or \+data.path=... both say what to test; choose one",
    ):
        evaluate_input(digits_run, only_x, f"output={out}", f"+data.path={wrong}")
    assert not out.exists()


@pytest.mark.slow
def test_cli_no_labels_is_one_line_exit_2_nothing_written(digits_run, tmp_path):
    features = tmp_path / "x.npy"
    np.save(features, load_split(digits_run)["test"][0])
    out = tmp_path / "out.json"
    proc = cli(f"ckpt_path={digits_run}/checkpoints/best.ckpt", f"input={features}", f"output={out}",
               module="lightfit evaluate")  # fmt: skip
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == (
        f"lightfit-evaluate: error: {features} has no labels (a .npy holds features only; save x and y "
        "in one file with np.savez); to get predictions use lightfit predict"
    )


def write_rows(source: Path, rows: np.ndarray, path: Path, rename: dict[str, str] | None = None) -> Path:
    """The header and the given data rows (0: the first after the header) of a CSV, in that order."""
    with source.open(newline="") as f:
        header, *lines = list(csv.reader(f))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([(rename or {}).get(name, name) for name in header])
        writer.writerows(lines[i] for i in rows)
    return path


@pytest.fixture(scope="module")
def churn_run(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import require

    require("table")
    from test_table import write_churn

    folder = tmp_path_factory.mktemp("table")
    churn = write_churn(folder / "churn.csv", missing=7)
    data = ["data=table", f"data.path={churn}", "data.target=churn", "data.drop=[customer_id]"]
    run_train(folder / "run", *data, "data.missing=mean", *FAST)
    return folder / "run", churn


def test_a_table_of_the_test_rows_gives_the_runs_metrics(churn_run, tmp_path):
    run, churn = churn_run
    with np.load(run / "splits.npz") as splits:
        test = splits["test"]  # rows of the file
    holdout = write_rows(churn, test, tmp_path / "holdout.csv")
    metrics = evaluate_input(run, holdout, f"output={tmp_path / 'eval.json'}")
    results = json.loads((run / "results.json").read_text())
    assert metrics["test/acc"] == results["test/acc"]
    assert metrics["test/loss"] == results["test/loss"]


def test_bad_tables_get_one_line(churn_run, tmp_path):
    run, churn = churn_run
    out = f"output={tmp_path / 'eval.json'}"
    renamed = write_rows(churn, np.arange(20), tmp_path / "renamed.csv", {"churn": "Churn"})
    with pytest.raises(LightfitError) as error:
        evaluate_input(run, renamed, out)
    assert str(error.value) == (
        f"{renamed} has no labels (no target column 'churn'; did you mean 'Churn'?); "
        "to get predictions use lightfit predict"
    )
    no_age = write_rows(churn, np.arange(20), tmp_path / "no_age.csv", {"age": "years"})
    with pytest.raises(LightfitError, match=r"training's feature column 'age' is missing"):
        evaluate_input(run, no_age, out)
    new_label = tmp_path / "new_label.csv"
    new_label.write_text(
        "customer_id,age,income,city,plan,churn\nC1,30,1000,Rome,basic,yes\nC2,40,2000,Paris,pro,maybe\n"
    )
    with pytest.raises(LightfitError) as error:
        evaluate_input(run, new_label, out)
    assert str(error.value) == (
        f"{new_label}: target 'churn' has the label 'maybe' (row 1; 1 rows), "
        "not one of the 2 classes of training"
    )
    assert not (tmp_path / "eval.json").exists()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> tuple[Path, Path]:
    from conftest import require

    require("images")
    from test_images import write_digits

    folder = tmp_path_factory.mktemp("images")
    photos = write_digits(folder / "digits", 300)
    data = ["data=images", f"data.path={photos}", "data.channels=1", f"data.cache={folder / 'cache'}"]
    run_train(folder / "run", *data, "data.batch_size=16", *FAST)
    return folder / "run", photos


def test_a_folder_of_the_test_images_gives_the_runs_metrics(image_run, tmp_path):
    import shutil

    from lightfit.data.images import scan_classes

    run, photos = image_run
    with np.load(run / "splits.npz") as splits:
        test = splits["test"]  # rows of the folder's listing
    files = scan_classes(photos).files
    for row in test:
        (tmp_path / "holdout" / Path(files[row]).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(photos / files[row], tmp_path / "holdout" / files[row])
    metrics = evaluate_input(run, tmp_path / "holdout", f"output={tmp_path / 'eval.json'}")
    results = json.loads((run / "results.json").read_text())
    assert metrics["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)
    # Another order of the same samples: the mean loss is equal up to float32 rounding.
    assert metrics["test/loss"] == pytest.approx(results["test/loss"], rel=1e-5)

    shutil.copytree(photos / "seven", tmp_path / "flat")
    with pytest.raises(LightfitError, match=r"flat has no labels \(no class subfolders, only images\); to"):
        evaluate_input(run, tmp_path / "flat", f"output={tmp_path / 'x.json'}")
    (tmp_path / "holdout" / "eleven").mkdir()
    with pytest.raises(LightfitError, match=r"class folder 'eleven' is not one of the trained classes"):
        evaluate_input(run, tmp_path / "holdout", f"output={tmp_path / 'x.json'}")
    assert not (tmp_path / "x.json").exists()


def test_a_regression_npz_gives_the_runs_metrics(tmp_path):
    run = tmp_path / "run"
    results = run_train(run, "data=diabetes", *FAST)
    x, y = load_split(run)["test"]
    np.savez(tmp_path / "holdout.npz", x=x, y=y)
    metrics = evaluate_input(run, tmp_path / "holdout.npz", f"output={tmp_path / 'eval.json'}")
    assert metrics == {k: v for k, v in results.items() if k.startswith("test/")}
    np.savez(tmp_path / "two.npz", x=x, y=np.stack([y, y], axis=1))
    with pytest.raises(
        LightfitError, match=r"two.npz has targets of shape \(2,\) per sample; the checkpoint predicts \(\)$"
    ):
        evaluate_input(run, tmp_path / "two.npz", f"output={tmp_path / 'two.json'}")

"""data=images: a real folder of PNG files (the bundled digits, one subfolder per class), decoded
into the cache, trained, evaluated and predicted end to end.

Without Pillow (the `images` extra; matplotlib, of `make test`, pulls it in) these tests are skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, require, run_train

require("images")

from PIL import Image  # noqa: E402

from lightfit.data import ImageDataModule, digits_path  # noqa: E402
from lightfit.errors import LightfitError  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CLASSES = sorted(NAMES)  # what the labels 0..9 mean: the folders' names, sorted


def write_digits(folder: Path, n: int) -> Path:
    """The first `n` bundled digits as 8x8 grayscale PNGs (0..16 scaled to 0..255), in
    folder/<digit as a word>/<row>.png."""
    digits = np.load(digits_path())
    for i, (x, y) in enumerate(zip(digits["x"][:n], digits["y"][:n], strict=True)):
        (folder / NAMES[y]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels_of(x), "L").save(folder / NAMES[y] / f"{i:04d}.png")
    return folder


def pixels_of(x: np.ndarray) -> np.ndarray:
    return (x * 255 / 16).round().astype(np.uint8)


def image_module(path: Path, cache: Path, **kwargs) -> ImageDataModule:
    kwargs = {"channels": 1, "batch_size": 32, **kwargs}
    module = ImageDataModule(path=str(path), cache=str(cache), **kwargs)
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_digits(tmp_path_factory.mktemp("images") / "digits", 400)


@pytest.fixture(scope="module")
def trained(photos, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    cache = run.parent / "cache"
    data = [
        "data=images",
        f"data.path={photos}",
        "data.channels=1",
        f"data.cache={cache}",
        "data.batch_size=16",
    ]
    run_train(run, *data, "task.metrics=[acc,confusion]", "trainer.max_epochs=4", "logger=none")
    return run


def test_the_folder_becomes_uint8_pixels_with_the_folder_names_as_classes(photos, tmp_path):
    module = image_module(photos, tmp_path)
    assert module.class_names == CLASSES and module.num_classes == 10
    x, y = module.splits["train"].x, module.splits["train"].y.numpy()
    assert isinstance(x, np.memmap) and x.dtype == np.uint8 and x.shape == (400, 1, 8, 8)
    digits = np.load(digits_path())
    for row in (0, 57, 399):  # files are sorted by class, then name: row <-> file <-> digit
        index = int(Path(module.listing.files[row]).stem)
        np.testing.assert_array_equal(x[row, 0], pixels_of(digits["x"][index]))
        assert CLASSES[y[row]] == NAMES[digits["y"][index]]
    xb, yb = next(iter(module.train_dataloader()))  # uint8 on disk, float32 in the batch
    assert xb.dtype.is_floating_point and tuple(xb.shape) == (32, 1, 8, 8) and float(xb.max()) > 16


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(photos, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightfit")
    image_module(photos, tmp_path)
    assert "decoding 400 images into" in caplog.text
    (pixels,) = tmp_path.glob("digits-*/pixels.npy")
    built = pixels.stat().st_mtime_ns
    caplog.clear()
    image_module(photos, tmp_path)
    assert "400 images from the cache" in caplog.text and pixels.stat().st_mtime_ns == built
    extra = write_digits(photos.parent / "more", 12)
    assert len(image_module(extra, tmp_path, batch_size=4).listing.files) == 12
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(extra / "nine" / "blank.png")  # a file added
    caplog.clear()
    assert (
        len(image_module(extra, tmp_path, batch_size=4).listing.files) == 13
        and "decoding 13 images" in caplog.text
    )
    os.utime(extra / "nine" / "blank.png", ns=(1, 1))  # a file changed: another modification time
    caplog.clear()
    image_module(extra, tmp_path, batch_size=4)
    assert "decoding 13 images" in caplog.text


def test_size_and_channels_resize_and_convert(tmp_path):
    for name, color, wh in (("red", (255, 0, 0), (30, 20)), ("blue", (0, 0, 255), (12, 40))):
        (tmp_path / "p" / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", wh, color).save(tmp_path / "p" / name / f"{i}.JPG")  # any case of suffix
    module = ImageDataModule(path=str(tmp_path / "p"), cache=str(tmp_path), size=[6, 4], batch_size=2)
    module.setup("fit")
    x = module.splits["train"].x
    assert x.shape == (10, 3, 6, 4) and module.class_names == ["blue", "red"]
    assert abs(int(x[0, 2].mean()) - 255) <= 2 and int(x[9, 0].mean()) >= 250  # blue, then red
    wide = tmp_path / "wide"  # 16-bit grayscale, and a JPEG whose EXIF tag says "turn 90 degrees"
    wide.mkdir()
    Image.fromarray(np.array([[0, 4096, 65535, 32768]], np.uint16)).save(wide / "16bit.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.new("L", (1, 4), 200).save(wide / "turned.jpg", exif=exif)  # 1 wide, 4 high as stored
    from lightfit.data.images import decode

    assert decode(wide / "16bit.png", None, 1).tolist() == [[[0, 16, 255, 128]]]
    assert decode(wide / "turned.jpg", None, 1).shape == (1, 1, 4)  # upright: 4 wide, 1 high
    mixed = r"red/0.JPG is 20x30 \(height x width\) but .*blue/0.JPG is 40x12; set data.size=\[40,12\] to"
    with pytest.raises(LightfitError, match=mixed):
        ImageDataModule(path=str(tmp_path / "p"), cache=str(tmp_path), batch_size=2).setup("fit")


def test_train_keeps_the_class_names_and_learns(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["classes"] == CLASSES
    assert results["test/acc"] > 0.6  # 4 epochs on 280 training images; chance is 0.1
    confusion = list(csv.reader((trained / "test_confusion.csv").open()))
    assert confusion[0] == ["true/predicted", *CLASSES]
    import torch

    stored = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=True)["lightfit"]
    assert stored["images"] == {"classes": CLASSES, "size": [8, 8], "channels": 1}


def test_predict_writes_the_file_the_class_and_probabilities(trained, photos, tmp_path):
    from test_evaluate_predict import compose_entry

    from lightfit.cli.predict import predict

    ckpt = trained / "checkpoints" / "best.ckpt"
    out = predict(
        compose_entry("predict", f"ckpt_path={ckpt}", f"input={photos}", f"output={tmp_path}/p.csv")
    )
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["file", "predicted", *(f"prob_{c}" for c in CLASSES)] and len(rows) == 401
    for row in rows[1:]:
        probs = [float(p) for p in row[2:]]
        assert row[1] == CLASSES[int(np.argmax(probs))] and sum(probs) == pytest.approx(1, abs=1e-5)
    right = np.mean([row[0].split("/")[0] == row[1] for row in rows[1:]])
    assert right > 0.6  # the class folder in the path is the truth
    one = predict(compose_entry("predict", f"ckpt_path={ckpt}", f"input={photos}/{rows[1][0]}",
                                f"output={tmp_path}/one.csv"))  # fmt: skip
    alone = list(csv.reader(one.open()))[1]
    assert alone[:2] == [Path(rows[1][0]).name, rows[1][1]]  # one image: its name, the same class
    np.testing.assert_allclose(np.float32(alone[2:]), np.float32(rows[1][2:]), rtol=1e-5)


def test_evaluate_reproduces_the_test_metrics(trained):
    from test_evaluate_predict import compose_entry

    from lightfit.cli.evaluate import evaluate

    metrics = evaluate(compose_entry("evaluate", f"ckpt_path={trained}/checkpoints/best.ckpt"))
    results = json.loads((trained / "results.json").read_text())
    assert metrics["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)


def test_a_checkpoints_classes_label_a_folder_with_fewer(photos, tmp_path):
    fewer = tmp_path / "fewer"
    for name in ("one", "seven"):
        shutil.copytree(photos / name, fewer / name)
    module = image_module(fewer, tmp_path, classes=CLASSES, num_classes=10, batch_size=4)
    labels = module.listing.labels
    assert sorted(set(labels.tolist())) == [CLASSES.index("one"), CLASSES.index("seven")]
    (fewer / "eleven").mkdir()
    with pytest.raises(LightfitError, match=r"class folder 'eleven' is not one of the trained classes"):
        image_module(fewer, tmp_path, classes=CLASSES)


def test_a_given_test_folder_is_the_test_split(photos, tmp_path):
    split = tmp_path / "split"
    for name in NAMES:
        files = sorted((photos / name).iterdir())
        for part, chosen in (("train", files[5:]), ("test", files[:5])):
            (split / part / name).mkdir(parents=True)
            for f in chosen:
                shutil.copy(f, split / part / name / f.name)
    advice = rf"split has the subfolders test, train: splits, not classes; set data.path={split}/train \(and"
    with pytest.raises(LightfitError, match=advice):
        image_module(split, tmp_path)
    shutil.rmtree(split / "test" / "zero")  # a class the test set lacks keeps its label
    module = image_module(split / "train", tmp_path, test_path=str(split / "test"))
    test = module.splits["test"]
    assert len(test.rows) == 45 and len(module.splits["train"].rows) + len(module.splits["val"].rows) == 350
    assert set(test.y.tolist()) == {CLASSES.index(n) for n in NAMES if n != "zero"}
    assert test.x.shape == (45, 1, 8, 8)


def test_bad_folders_and_files_get_one_line(photos, tmp_path):
    with pytest.raises(LightfitError, match=r"missing is not a folder; data=images reads a folder"):
        image_module(tmp_path / "missing", tmp_path)
    flat = photos / "seven"
    with pytest.raises(LightfitError, match=r"seven has no class subfolders; put each class's images"):
        image_module(flat, tmp_path)
    bad = tmp_path / "bad"
    (bad / "cat").mkdir(parents=True)
    Image.new("L", (4, 4)).save(bad / "cat" / "1.png")
    with pytest.raises(
        LightfitError, match=r"bad has one class folder \(cat\); a classifier needs at least two"
    ):
        image_module(bad, tmp_path)
    (bad / "dog").mkdir()
    (bad / "dog" / "notes.txt").write_text("not a photo")
    with pytest.raises(LightfitError, match=r"bad: class folder 'dog' has no images \(.png, .jpg"):
        image_module(bad, tmp_path)
    (bad / "dog" / "2.png").write_text("not a photo either")
    with pytest.raises(
        LightfitError, match=r"dog/2.png is not an image Pillow can read \(cannot identify image file\)$"
    ):
        image_module(bad, tmp_path)
    assert not list(tmp_path.glob("bad-*/*.npy*")) and not list(tmp_path.glob("bad-*/manifest*"))


def test_without_pillow_one_line_says_how_to_install_it(photos, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now fails as if missing
    with pytest.raises(LightfitError, match=r"^needs Pillow: pip install 'lightfit\[images\]'$"):
        image_module(photos, tmp_path)


def test_cli_errors_are_one_line_and_write_nothing(trained, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    out = tmp_path / "pred.csv"
    proc = cli(f"ckpt_path={trained}/checkpoints/best.ckpt", f"input={text}", f"output={out}",
               module="lightfit predict")  # fmt: skip
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == (
        f"lightfit-predict: error: {text} is not an image "
        "(.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif, .tiff) or a folder of images"
    )


@pytest.mark.slow
def test_ddp_ranks_decode_the_folder_once(photos, tmp_path):
    cache = tmp_path / "cache"
    data = ["data=images", f"data.path={photos}", "data.channels=1", f"data.cache={cache}"]
    proc = cli(
        *data, "trainer=ddp_cpu", "trainer.max_epochs=1", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("decoding 400 images") == 1  # by whichever rank took the lock first
    files = sorted(p.name for p in cache.glob("*/*") if not p.name.startswith("."))
    assert files == ["labels.npy", "manifest.json", "pixels.npy"]  # one cache, no partial files left


def test_load_predicts_image_paths_as_the_command_does(trained, photos, tmp_path):
    from test_evaluate_predict import compose_entry

    import lightfit
    from lightfit.cli.predict import predict
    from lightfit.data.images import scan_inputs

    ckpt = trained / "checkpoints" / "best.ckpt"
    out = predict(
        compose_entry("predict", f"ckpt_path={ckpt}", f"input={photos}", f"output={tmp_path}/p.npy")
    )
    probs = np.load(out)
    paths = [photos / name for name in scan_inputs(photos).files]  # the command's order
    model = lightfit.load(ckpt)
    np.testing.assert_array_equal(model.predict_proba(paths), probs)
    labels = model.predict([str(p) for p in paths])
    assert labels.tolist() == [CLASSES[i] for i in probs.argmax(axis=1)]  # the class folders' names
    np.testing.assert_array_equal(model.predict(photos), labels)  # the folder, as the command takes it

"""The data module: NumPy in, tensors out, no needless copies, deterministic splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lightfit.data import (
    ArrayDataModule,
    ArrayDataset,
    EpochShuffleSampler,
    IndexBatchSampler,
    digits,
    digits_path,
)
from lightfit.errors import LightfitError


def arrays(n=200, shape=(5,), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def test_digits_ships_with_the_package():
    with np.load(digits_path()) as f:
        assert f["x"].shape == (1797, 8, 8) and f["x"].dtype == np.float32
        assert f["y"].shape == (1797,) and set(np.unique(f["y"])) == set(range(10))


def test_digits_splits_shapes_and_dtypes():
    dm = digits(batch_size=64, seed=0)
    dm.setup("fit")
    sizes = {k: len(s.rows) for k, s in dm.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(1797 * 0.2) and sizes["val"] == round(1797 * 0.1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 8, 8) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert dm.input_shape == (8, 8) and dm.num_classes == 10


def test_splits_are_disjoint_cover_everything_and_depend_on_the_seed():
    x, y = arrays()
    split = {}
    for seed in (0, 0, 1):
        dm = ArrayDataModule(x, y, seed=seed)
        dm.setup()
        rows = [dm.splits[k].rows for k in ("train", "val", "test")]
        assert sorted(torch.cat(rows).tolist()) == list(range(200))
        split.setdefault(seed, []).append(rows[0].tolist())
    assert split[0][0] == split[0][1]
    assert split[0][0] != split[1][0]


def test_training_tensor_shares_memory_with_the_numpy_array():
    x, y = arrays()
    dm = ArrayDataModule(x, y)
    dm.setup()
    train = dm.splits["train"]
    assert train.x.data_ptr() == x.ctypes.data  # torch.from_numpy, no copy
    assert train.y.data_ptr() == y.ctypes.data  # int64 labels are not converted either
    x[3, 0] = 123.0
    assert train.x[3, 0].item() == 123.0


def test_other_dtypes_are_converted_once():
    x, y = arrays()
    dm = ArrayDataModule(x.astype(np.float64), y.astype(np.int32))
    dm.setup()
    assert dm.splits["train"].x.dtype == torch.float32 and dm.splits["train"].y.dtype == torch.int64


def test_scaling_statistics_come_from_the_training_split_only():
    x, y = arrays()
    x[:, 0] += np.arange(200)  # a trend, so any split's mean differs from the others'
    dm = ArrayDataModule(x, y, seed=3)
    dm.setup()
    train = x[dm.splits["train"].rows.numpy()]
    np.testing.assert_allclose(dm.mean.numpy(), train.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dm.std.numpy(), train.std(0), rtol=1e-4)
    assert not np.allclose(dm.mean.numpy(), x.mean(0), atol=1e-3)


def test_keras_layout_npz(tmp_path):
    x, y = arrays(100)
    xt, yt = arrays(40, seed=1)
    path = tmp_path / "k.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    dm = ArrayDataModule(path=str(path), val_fraction=0.2)
    dm.setup()
    assert len(dm.splits["test"].rows) == 40 and len(dm.splits["val"].rows) == 20
    assert len(dm.splits["train"].rows) == 80
    np.testing.assert_array_equal(dm.splits["test"].x.numpy(), xt)


def test_batches_cover_the_split_once_per_epoch_in_a_new_order():
    x, y = arrays()
    dm = ArrayDataModule(x, y, batch_size=16)
    dm.setup()
    loader = dm.train_dataloader()
    orders = []
    for epoch in range(2):
        loader.batch_sampler.sampler.set_epoch(epoch)
        orders.append(torch.cat([xb[:, 1] for xb, _ in loader]))
    expected = torch.from_numpy(x[dm.splits["train"].rows.numpy(), 1])
    for order in orders:
        assert sorted(order.tolist()) == sorted(expected.tolist())
    assert not torch.equal(orders[0], orders[1])


@pytest.mark.parametrize("n", [203, 128, 129, 130, 5])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_distinct_shards_covering_the_epoch_in_equal_batch_counts(n, world_size):
    dataset = ArrayDataset(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long), torch.arange(n))
    sampler = EpochShuffleSampler(dataset, seed=3)
    shards = [list(IndexBatchSampler(sampler, 16, False, rank, world_size)) for rank in range(world_size)]
    counts = {len(batches) for batches in shards}
    assert counts == {len(IndexBatchSampler(sampler, 16, False, 0, world_size))}  # len() tells the truth
    assert all(0 < len(b) <= 17 for batches in shards for b in batches)  # none empty; a tail of < ranks joins
    seen = [i for batches in shards for b in batches for i in b.tolist()]
    assert sorted(seen) == list(range(n))  # each sample once: distinct shards, all of them, no padding


def test_one_process_gets_the_batches_of_the_epoch_order():
    dataset = ArrayDataset(torch.zeros(40, 1), torch.zeros(40, dtype=torch.long), torch.arange(40))
    sampler = EpochShuffleSampler(dataset, seed=1)
    batches = list(IndexBatchSampler(sampler, 16, False))
    assert [len(b) for b in batches] == [16, 16, 8]
    assert torch.equal(torch.cat(batches), sampler.permutation())


def test_distribute_shards_every_split_and_keeps_cpu_data_on_the_host():
    x, y = arrays(207)
    dm = ArrayDataModule(x, y, batch_size=16)
    dm.setup()
    for name in ("train", "val", "test"):
        seen = []
        for rank in range(2):
            dm.distribute(rank, 2, "cpu")
            loader = getattr(dm, f"{name}_dataloader")()
            assert not loader.pin_memory  # nothing to pin for: no GPU
            seen += [row for xb, _ in loader for row in xb[:, 0].tolist()]
        expected = x[dm.splits[name].rows.numpy(), 0].tolist()
        assert sorted(seen) == sorted(expected)
    assert dm.splits["train"].x.data_ptr() == x.ctypes.data  # still the NumPy memory


def test_every_process_needs_a_sample():
    x, y = arrays(30)
    dm = ArrayDataModule(x, y, batch_size=4)
    dm.setup()
    with pytest.raises(LightfitError, match="the val split has 3 samples, fewer than the 4 processes"):
        dm.distribute(0, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_device": "yes"}, "data.on_device=yes must be true, false or auto"),
        ({"pin_memory": 2}, "data.pin_memory=2 must be true, false or auto"),
        ({"on_device": True, "num_workers": 2}, "set data.num_workers=0"),
    ],
)
def test_device_options_are_checked(kwargs, message):
    x, y = arrays()
    with pytest.raises(LightfitError, match=message):
        ArrayDataModule(x, y, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("on_device", [True, False])
def test_batches_on_cuda_are_gathered_there_or_pinned(on_device):
    x, y = arrays(300)
    dm = ArrayDataModule(x, y, batch_size=32, on_device=on_device)
    dm.setup()
    dm.distribute(1, 2, "cuda")
    loader = dm.train_dataloader()
    xb, yb = next(iter(loader))
    if on_device:  # the data moved once; index tensors and batches live on the GPU
        assert dm.splits["train"].x.is_cuda and xb.is_cuda and yb.is_cuda
        assert next(iter(loader.batch_sampler)).is_cuda
    else:  # host data, gathered into page-locked memory for non-blocking copies
        assert loader.pin_memory and xb.is_pinned() and not xb.is_cuda
    assert len(xb) == 32  # rank 1 gets its 32 of each global batch of 2 x 32


def test_memory_mapped_npy_is_read_batch_by_batch(tmp_path):
    x, y = arrays(300)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    dm = ArrayDataModule(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), batch_size=32)
    dm.setup()
    assert isinstance(dm.splits["train"].x, np.memmap)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (32, 5) and xb.dtype == torch.float32 and yb.dtype == torch.int64


def _resident_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux /proc")
def test_scanning_a_memory_mapped_file_does_not_keep_it_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16384, 1024), dtype=np.float32)  # 64 MiB: several scan chunks
    y = rng.integers(0, 3, len(x))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    before = _resident_file_bytes()
    dm = ArrayDataModule(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), seed=1)
    dm.setup()  # checks every value and computes the statistics: reads the whole file twice
    assert _resident_file_bytes() - before < x.nbytes / 4
    in_memory = ArrayDataModule(x, y, seed=1)
    in_memory.setup()
    torch.testing.assert_close(dm.mean, in_memory.mean)
    torch.testing.assert_close(dm.std, in_memory.std)


def _resident_bytes_of(path: Path) -> int:
    """This process's resident bytes of the mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ")[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux /proc")
def test_batches_of_a_memory_mapped_file_are_read_without_the_map(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16384, 1024), dtype=np.float32)  # 64 MiB
    y = rng.integers(0, 3, len(x))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    dm = ArrayDataModule(path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"), batch_size=64)
    dm.setup()
    loader = dm.train_dataloader()
    for i, positions in enumerate(loader.batch_sampler):  # shuffled: rows from all over the file
        xb, yb = loader.dataset.__getitems__(positions)
        rows = loader.dataset.rows[positions].numpy()  # in the batch's order
        assert np.array_equal(xb.numpy(), x[rows]) and np.array_equal(yb.numpy(), y[rows])
        if i == 100:
            break
    xb, yb = next(iter(dm.val_dataloader()))  # in order: one read for the whole batch
    rows = dm.splits["val"].rows[:64].numpy()
    assert np.array_equal(xb.numpy(), x[rows]) and np.array_equal(yb.numpy(), y[rows])
    # Pages read through a map stay in the process's RSS while the map is open; none here.
    assert _resident_bytes_of(tmp_path / "x.npy") == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.5}, "data.val_fraction=1.5 must be between 0 and 1"),
        ({"val_fraction": 0}, "data.val_fraction=0 must be between 0 and 1"),
        ({"batch_size": 10_000}, "data.batch_size=10000 is larger than the training split"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    x, y = arrays()
    with pytest.raises(LightfitError, match=message):
        ArrayDataModule(x, y, **kwargs).setup()


def test_missing_keys_are_named(tmp_path):
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)))
    with pytest.raises(LightfitError, match=r"has keys \[features\]; expected 'x' and 'y'"):
        ArrayDataModule(path=str(tmp_path / "bad.npz")).setup()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(LightfitError, match="data file not found: .*nope.npz"):
        ArrayDataModule(path=str(tmp_path / "nope.npz")).setup()


def test_a_resumed_epoch_skips_the_global_batches_already_trained():
    """Under DDP every rank skips the same global batches; only in the epoch resumed, and len() stays."""
    from lightfit.data.batches import EpochShuffleSampler, IndexBatchSampler

    data = torch.arange(50)
    for rank in (0, 1):
        sampler = EpochShuffleSampler(data, seed=3)
        whole = IndexBatchSampler(sampler, 4, rank=rank, world_size=2)
        resumed = IndexBatchSampler(
            EpochShuffleSampler(data, seed=3), 4, rank=rank, world_size=2, resume_at=(1, 2)
        )
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            resumed.sampler.set_epoch(epoch)
            skip = 2 if epoch == 1 else 0
            assert [b.tolist() for b in resumed] == [b.tolist() for b in whole][skip:]
            assert len(resumed) == len(whole) == 7

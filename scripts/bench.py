"""How fast lightfit trains, next to the compute floor, naive Lightning and Keras `fit()`.

    make bench                          # the full run: writes bench/results.md and bench/results.json
    make bench ARGS="--quick"           # small data, no 4 GB file: a minute or two
    python scripts/bench.py --help

All cases of a workload train the same network (lightfit's `build_network`: Standardize +
MLP) on the same training rows, with the same batch size, optimizer and seed:

    floor                forward, backward and step over batches sliced before timing; nothing else
    plain-loop           the floor's loop fed by lightfit's train loader (shuffle + gather per batch)
    explicit, manual,    real `python -m lightfit.train loop=...` runs, as `make train` runs them:
      automatic            metrics, logging, checkpoints, validation, and the progress display of a
                           terminal (the run gets a pseudo-terminal)
    lightning-barebones  a minimal LightningModule, lightfit's loader, Trainer(barebones=True):
                           what Lightning itself costs per step
    naive-lightning      the minimal LightningModule fed by TensorDataset + DataLoader(shuffle=True),
                           logger, checkpoints and progress bar off (the cheapest a naive Trainer gets)
    keras                Keras 3 `fit()`, torch backend (the `bench` extra), metrics=["accuracy"]
    loader               no training: lightfit's loader vs TensorDataset + DataLoader, samples/s

An epoch time is the median over the epochs after the first (a warm-up). For floor and
plain-loop it is the training pass alone. For the others it is the wall time from one
epoch's end to the next one's, so it holds all that a run does once per epoch; for
lightfit that is also the validation pass and two checkpoint writes (the synthetic
workloads keep 1% of the rows for validation and 1% for test, so training dominates).
lightfit's epoch ends are the millisecond timestamps of the epoch lines in its train.log.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import platform
import pty
import re
import select
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightfit.data import ArrayDataModule, digits
from lightfit.nets import MLP, build_network

LOOPS = ("explicit", "manual", "automatic")
STEP_CHECKPOINTS = 200  # the step-checkpoint cases: last.ckpt every 200 optimizer steps
CASES = ("floor", "plain-loop", *LOOPS, "lightning-barebones", "naive-lightning", "keras", "loader")
CASES += tuple(f"{loop}+ckpt{STEP_CHECKPOINTS}" for loop in ("explicit", "automatic"))
EPOCH_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[lightfit\]\[INFO\] - epoch \d+/\d+")
# Packages a training run has no use for. What the frameworks import is not lightfit's choice.
UNUSED = {"keras", "tensorflow", "jax", "tensorboard", "tensorboardX", "matplotlib", "pandas", "sklearn",
          "scipy", "torchvision", "wandb", "mlflow", "IPython", "rich", "sympy"}  # fmt: skip
FRAMEWORKS = {"lightning", "torch", "torchmetrics", "hydra"}


# -- workloads -------------------------------------------------------------------------------


@dataclass
class Workload:
    """One data set, network and batch size; every case of the workload trains exactly this."""

    name: str
    title: str
    datamodule: ArrayDataModule  # set up: its train split is the training data of every case
    batch_size: int
    hidden: list[int]
    dropout: float
    optimizer: str  # "sgd" or "adam", with lightfit's conf/optimizer settings
    epochs: int  # in all, the first one a warm-up
    overrides: list[str] = field(default_factory=list)  # the same workload for python -m lightfit.train


def make_synthetic_npz(path: Path, rows: int, features: int = 784, classes: int = 10) -> None:
    """Random features, labels from a fixed random linear map (so that there is something to learn)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    y = (x @ rng.standard_normal((features, classes), dtype=np.float32)).argmax(1)
    np.savez(path, x=x, y=y.astype(np.int64))


def workloads(args: argparse.Namespace, tmp: Path) -> list[Workload]:
    chosen = []
    if "a" in args.workloads:  # `make train` as it is: digits, MLP [128], dropout 0.1, Adam, batch 64
        dm = digits(batch_size=64, seed=0)
        chosen.append(
            Workload("a", "digits, the default run", dm, 64, [128], 0.1, "adam", args.digits_epochs)
        )
    for name, batch in (("b", 128), ("c", 1024)):
        if name not in args.workloads:
            continue
        path = tmp / "synthetic.npz"
        if not path.exists():
            make_synthetic_npz(path, args.rows)
        dm = ArrayDataModule(path=str(path), batch_size=batch, seed=0, val_fraction=0.01, test_fraction=0.01)
        overrides = [
            *("data=npz", f"data.path={path}", f"data.batch_size={batch}"),
            *("data.val_fraction=0.01", "data.test_fraction=0.01"),
            *("model.hidden=[256]", "model.dropout=0", "optimizer=sgd"),
        ]
        title = f"synthetic {args.rows} x 784, 10 classes, MLP 784-256-10, SGD, batch {batch}"
        chosen.append(Workload(name, title, dm, batch, [256], 0.0, "sgd", args.epochs + 1, overrides))
    for w in chosen:
        w.datamodule.setup("fit")
    return chosen


def train_tensors(w: Workload) -> tuple[Tensor, Tensor]:
    """The training rows of the workload gathered into two tensors, (N, *input_shape) and (N,)."""
    train = w.datamodule.splits["train"]
    return train.dataset().__getitems__(torch.arange(len(train.rows)))


def network(w: Workload) -> nn.Module:
    dm = w.datamodule
    make = partial(MLP, hidden=w.hidden, dropout=w.dropout)
    return build_network(make, dm.input_shape, dm.num_classes, dm.mean, dm.std)


def optimizer(w: Workload, params: Iterable[Tensor]) -> torch.optim.Optimizer:
    if w.optimizer == "sgd":  # conf/optimizer/sgd.yaml
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-3)  # conf/optimizer/adam.yaml


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()  # CUDA runs asynchronously: wait for it before reading the clock


def summary(seconds: list[float], samples: int, **extra: Any) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {"epoch_seconds": median, "samples_per_second": samples / median, "epochs": seconds, **extra}


# -- plain PyTorch ---------------------------------------------------------------------------


def timed_epochs(w: Workload, batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]]) -> list[float]:
    """Seconds per epoch of forward, loss, backward, step over `batches(epoch)`, warm-up dropped."""
    torch.manual_seed(0)
    dev = device()
    net = network(w).to(dev)
    opt = optimizer(w, net.parameters())
    net.train()
    seconds = []
    for epoch in range(w.epochs):
        start = time.perf_counter()
        for x, y in batches(epoch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)  # no-op when already there
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(dev)
        seconds.append(time.perf_counter() - start)
    return seconds[1:]


def case_floor(w: Workload) -> dict[str, Any]:
    """What the training itself costs: batches sliced once, in order, already on the device."""
    x, y = (t.to(device()) for t in train_tensors(w))
    batches = [(x[i : i + w.batch_size], y[i : i + w.batch_size]) for i in range(0, len(y), w.batch_size)]
    return summary(timed_epochs(w, lambda epoch: batches), len(y))


def case_plain_loop(w: Workload) -> dict[str, Any]:
    """The floor's loop over lightfit's train loader: a new order each epoch, one gather per batch."""
    loader = w.datamodule.train_dataloader()

    def batches(epoch: int) -> DataLoader:
        loader.batch_sampler.sampler.set_epoch(epoch)  # what Lightning does before each epoch
        return loader

    return summary(timed_epochs(w, batches), len(w.datamodule.splits["train"].rows))


def case_loader(w: Workload) -> dict[str, Any]:
    """Batches alone, no training: lightfit's train loader vs TensorDataset + DataLoader(shuffle=True)."""
    torch.manual_seed(0)
    ours = w.datamodule.train_dataloader()
    stock = DataLoader(TensorDataset(*train_tensors(w)), batch_size=w.batch_size, shuffle=True)
    samples = len(w.datamodule.splits["train"].rows)
    speed = {}
    for name, loader in (("lightfit", ours), ("tensordataset", stock)):
        seconds = []
        for epoch in range(w.epochs):
            ours.batch_sampler.sampler.set_epoch(epoch)
            start = time.perf_counter()
            for _ in loader:
                pass
            seconds.append(time.perf_counter() - start)
        speed[name] = samples / statistics.median(seconds[1:])
    return {
        "lightfit_samples_per_second": speed["lightfit"],
        "tensordataset_samples_per_second": speed["tensordataset"],
        "speedup": speed["lightfit"] / speed["tensordataset"],
    }


# -- lightfit, as `make train` runs it -------------------------------------------------------


def loop_exists(loop: str) -> bool:
    return resources.files("lightfit.conf").joinpath("loop", f"{loop}.yaml").is_file()


def run_in_terminal(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run `cmd` with a pseudo-terminal as stdout and stderr, as if typed in a shell: (exit code, output)."""
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    output, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main_fd], [], [], 1.0)[0]:
                try:
                    data = os.read(main_fd, 1 << 16)
                except OSError:  # EIO: the child has closed the terminal
                    break
                if not data:
                    break
                output += data
        else:
            proc.kill()
    finally:
        os.close(main_fd)
    return proc.wait(), output.decode(errors="replace")


def epoch_ends(log_file: Path) -> list[float]:
    """The times of the epoch lines in a run's train.log (Python logging: millisecond resolution)."""
    ends = []
    for line in log_file.read_text().splitlines():
        if match := EPOCH_LINE.match(line):
            ends.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return ends


def case_lightfit(w: Workload, loop: str, tmp: Path, extra: list[str], tag: str = "") -> dict[str, Any]:
    """A real `python -m lightfit.train loop=...` run on the workload; seconds between epoch lines."""
    if not loop_exists(loop):
        return {"skipped": f"loop={loop} is not in this version of lightfit"}
    run_dir = tmp / f"run-{w.name}-{loop}{tag}"
    trainer = ["trainer=auto"] if device().type == "cuda" else []
    args = ["-m", "lightfit.train", f"loop={loop}", f"trainer.max_epochs={w.epochs}", *w.overrides]
    args += [*trainer, *extra, f"hydra.run.dir={run_dir}"]
    rc, output = run_in_terminal([sys.executable, *args], timeout=1800)
    command = shlex.join(["python", *args[:-1]])
    if rc != 0:
        return {"failed": f"exit {rc}: " + " | ".join(output.strip().splitlines()[-2:]), "command": command}
    ends = epoch_ends(run_dir / "train.log")
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    if not seconds:
        return {"failed": f"{len(ends)} epoch line(s) in train.log; need 2 or more", "command": command}
    val_acc = json.loads((run_dir / "results.json").read_text()).get("val/acc")
    return summary(seconds, len(w.datamodule.splits["train"].rows), command=command, val_acc=val_acc)


# -- Lightning without lightfit --------------------------------------------------------------


class MinimalModule(L.LightningModule):
    """The least a LightningModule can be: a network, a loss, an optimizer."""

    def __init__(self, net: nn.Module, make_optimizer: Callable[..., torch.optim.Optimizer]) -> None:
        super().__init__()
        self.net, self.make_optimizer = net, make_optimizer

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


class EpochClock(L.Callback):
    """The wall-clock time at the end of each training epoch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sync(module.device)
        self.ends.append(time.perf_counter())


def lightning_fit(w: Workload, loader: DataLoader, **trainer_flags: Any) -> dict[str, Any]:
    L.seed_everything(0, verbose=False)
    clock = EpochClock()
    trainer = L.Trainer(
        max_epochs=w.epochs, accelerator="auto", devices=1, callbacks=[clock], **trainer_flags
    )
    trainer.fit(MinimalModule(network(w), partial(optimizer, w)), loader)
    seconds = [b - a for a, b in zip(clock.ends, clock.ends[1:], strict=False)]
    return summary(seconds, len(loader.dataset))


def case_lightning_barebones(w: Workload) -> dict[str, Any]:
    """Lightning's own cost per step: lightfit's loader, a minimal module, Trainer(barebones=True)."""
    return lightning_fit(w, w.datamodule.train_dataloader(), barebones=True)


def case_naive_lightning(w: Workload) -> dict[str, Any]:
    """A minimal LightningModule fed the usual way: TensorDataset + DataLoader(shuffle=True)."""
    loader = DataLoader(TensorDataset(*train_tensors(w)), batch_size=w.batch_size, shuffle=True)
    off = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return lightning_fit(w, loader, enable_model_summary=False, **off)


# -- Keras ----------------------------------------------------------------------------------


def case_keras(w: Workload) -> dict[str, Any]:
    """Keras 3 `fit()` on NumPy arrays, torch backend: the same layers, shuffled each epoch."""
    os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
    try:
        import keras
    except ImportError:
        return {"skipped": "Keras 3 is not installed (pip install -e '.[bench]')"}
    if keras.backend.backend() != "torch":
        return {"skipped": f"Keras was imported with the {keras.backend.backend()} backend"}
    keras.utils.set_random_seed(0)
    dm = w.datamodule
    x, y = (t.numpy() for t in train_tensors(w))
    mean, std = dm.mean.flatten().numpy(), dm.std.flatten().numpy()
    layers = [
        keras.Input(dm.input_shape),
        keras.layers.Flatten(),
        keras.layers.Normalization(mean=mean, variance=std**2),
    ]
    for width in w.hidden:
        layers.append(keras.layers.Dense(width, activation="relu"))
        layers += [keras.layers.Dropout(w.dropout)] if w.dropout else []
    model = keras.Sequential([*layers, keras.layers.Dense(dm.num_classes)])
    opt = keras.optimizers.SGD(0.05, momentum=0.9) if w.optimizer == "sgd" else keras.optimizers.Adam(1e-3)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    ends = []
    clock = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
    model.fit(x, y, batch_size=w.batch_size, epochs=w.epochs, shuffle=True, verbose=0, callbacks=[clock])
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return summary(seconds, len(y), version=keras.__version__)


# -- start-up and memory ---------------------------------------------------------------------


def import_times(stderr: str) -> tuple[dict[str, float], dict[str, str]]:
    """From `-X importtime` output: seconds spent in each package's modules, {unused package: by whom}.

    Each line reads `import time: self | cumulative | name`, the name indented two spaces
    per level of nesting, and a module comes after the modules it imports: read backwards,
    each line's ancestors are the last lines seen at each smaller indentation.
    """
    seconds: dict[str, float] = {}
    unused: dict[str, str] = {}
    ancestors: list[str] = []
    for line in reversed(stderr.splitlines()):
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:") or not parts[1].strip().isdigit():
            continue
        name = parts[2][1:]
        depth = (len(name) - len(name.lstrip())) // 2
        root = name.strip().split(".")[0]
        ancestors = [*ancestors[:depth], root]
        seconds[root] = seconds.get(root, 0.0) + int(parts[0].split(":")[1]) / 1e6  # self time
        if root in UNUSED and root not in unused:
            # Blame the first framework on the way down, else whatever imported it at the top.
            unused[root] = next((a for a in ancestors[:-1] if a in FRAMEWORKS), ancestors[0])
    return seconds, unused


def startup(runs: int, tmp: Path) -> dict[str, Any]:
    """Seconds from `python -m lightfit.train trainer.fast_dev_run=true` start to exit; its imports."""
    args = ["-m", "lightfit.train", "trainer.fast_dev_run=true"]
    seconds = []
    for i in range(runs):
        start = time.perf_counter()
        rc, output = run_in_terminal(
            [sys.executable, *args, f"hydra.run.dir={tmp / f'fdr-{i}'}"], timeout=300
        )
        seconds.append(time.perf_counter() - start)
        if rc != 0:
            return {"failed": f"exit {rc}: " + " | ".join(output.strip().splitlines()[-2:])}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args, f"hydra.run.dir={tmp / 'fdr-imports'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        return {"failed": f"exit {proc.returncode} under -X importtime"}
    packages, unused = import_times(proc.stderr)
    return {
        "seconds": statistics.median(seconds),
        "runs": seconds,
        "import_seconds_by_package": dict(sorted(packages.items(), key=lambda kv: -kv[1])[:8]),
        "unused_packages_imported": unused,
    }


def write_features_npy(path: Path, gigabytes: float, features: int = 784) -> None:
    """A float32 features .npy of about `gigabytes` GB, written in chunks, and labels.npy beside it."""
    rows = int(gigabytes * 1e9) // (features * 4)
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    for start in range(0, rows, 65536):
        stop = min(start + 65536, rows)
        x[start:stop] = rng.random((stop - start, features), dtype=np.float32)
    x.flush()
    del x
    np.save(path.with_name("labels.npy"), rng.integers(0, 10, rows))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (under DDP, Lightning starts one process per further rank)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return pids


def memory(pid: int) -> dict[str, int]:
    """Bytes of VmHWM (peak resident), RssAnon (private memory), RssFile (mapped file pages)."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) * 1024
    return found


def mmap_memory(gigabytes: float, tmp: Path, devices: int, batches: int = 50) -> dict[str, Any]:
    """Peak memory of each process of a short run on a memory-mapped features .npy."""
    path = tmp / "features.npy"
    if not path.exists():
        free = shutil.disk_usage(tmp).free
        if free < 1.5 * gigabytes * 1e9:
            return {"skipped": f"{free / 1e9:.1f} GB free in {tmp}: too little for a {gigabytes} GB file"}
        write_features_npy(path, gigabytes)
    args = [
        "-m",
        "lightfit.train",
        "data=npz",
        f"data.path={path}",
        f"data.labels={path.with_name('labels.npy')}",
    ]
    args += ["data.batch_size=128", "model.hidden=[256]", "model.dropout=0", "optimizer=sgd", "logger=none"]
    args += ["trainer.max_epochs=1", f"trainer.limit_train_batches={batches}", "trainer.limit_val_batches=5"]
    args += ["trainer.limit_test_batches=5", f"trainer.devices={devices}"]
    args += ["trainer.strategy=ddp"] if devices > 1 else []
    proc = subprocess.Popen(
        [sys.executable, *args, f"hydra.run.dir={tmp / f'mmap-{devices}'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks: dict[int, dict[str, int]] = {}
    start = time.perf_counter()
    while proc.poll() is None:  # sample every 50 ms; VmHWM itself is exact
        for pid in process_tree(proc.pid):
            for key, value in memory(pid).items():
                peaks.setdefault(pid, {})[key] = max(peaks.get(pid, {}).get(key, 0), value)
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {
            "failed": f"exit {proc.returncode}: " + " | ".join(proc.stderr.read().strip().splitlines()[-2:])
        }
    ranks = [p for p in peaks.values() if p.get("VmHWM", 0) > 100e6]  # not a short-lived helper process
    return {
        "file_bytes": path.stat().st_size,
        "devices": devices,
        "train_batches": batches,
        "seconds": seconds,
        "command": shlex.join(["python", *args]),
        "peak_rss_bytes": [p["VmHWM"] for p in ranks],
        "peak_private_bytes": [p.get("RssAnon", 0) for p in ranks],
        "peak_file_pages_bytes": [p.get("RssFile", 0) for p in ranks],
    }


# -- report ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "load_average_at_start": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the issue's targets that this run measured."""
    rows = []
    cases = {w["name"]: w["cases"] for w in report["workloads"]}

    def secs(w: str, case: str) -> float | None:
        return cases.get(w, {}).get(case, {}).get("epoch_seconds")

    if "speedup" in cases.get("b", {}).get("loader", {}):
        speedup = cases["b"]["loader"]["speedup"]
        rows.append(("(b) loader >= 5x TensorDataset + DataLoader", f"{speedup:.1f}x", speedup >= 5))
    if secs("b", "explicit") and secs("b", "floor"):
        ratio = secs("b", "explicit") / secs("b", "floor")
        rows.append(("(b) loop=explicit <= 1.15x floor", f"{ratio:.2f}x", ratio <= 1.15))
    for w, limit in (("b", 1.3), ("c", 1.1)):
        for loop in ("automatic", "manual"):
            if secs(w, loop) and secs(w, "explicit"):
                ratio = secs(w, loop) / secs(w, "explicit")
                rows.append((f"({w}) loop={loop} <= {limit}x loop=explicit", f"{ratio:.2f}x", ratio <= limit))
            for other in ("naive-lightning", "keras"):
                if secs(w, loop) and secs(w, other):
                    ratio = secs(w, loop) / secs(w, other)
                    rows.append(
                        (f"({w}) loop={loop} faster than {other}", f"{ratio:.2f}x its time", ratio < 1)
                    )
    for loop in ("explicit", "automatic"):
        with_steps = secs("b", f"{loop}+ckpt{STEP_CHECKPOINTS}")
        if with_steps and secs("b", loop):
            cost = with_steps / secs("b", loop) - 1
            target = f"(b) loop={loop}, last.ckpt every {STEP_CHECKPOINTS} steps: <= 2% of epoch time"
            rows.append((target, f"{cost:+.1%}", cost <= 0.02))
    s = report.get("startup", {})
    if "seconds" in s:
        rows.append(("fast_dev_run, start to exit < 8 s", f"{s['seconds']:.1f} s", s["seconds"] < 8))
        ours = [p for p, by in s["unused_packages_imported"].items() if by not in FRAMEWORKS]
        measured = unused_text(s["unused_packages_imported"])
        # Judged on lightfit's own imports: what Lightning and torch import is listed, not ours to fix.
        target = "nothing imported at start-up that the run does not use (by lightfit itself)"
        rows.append((target, measured, not ours))
    for m in report.get("mmap", []):
        if "peak_rss_bytes" in m:
            peak, size = max(m["peak_rss_bytes"]), m["file_bytes"]
            target = f"memmap .npy, {m['devices']} process(es): peak RSS well under the file size"
            rows.append((target, f"{gb(peak)} of {gb(size)} GB", peak < size / 2))
    return rows


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def unused_text(unused: dict[str, str]) -> str:
    return ", ".join(f"{package} (by {by})" for package, by in sorted(unused.items())) or "none"


def workload_markdown(w: dict[str, Any]) -> list[str]:
    lines = [
        f"## ({w['name']}) {w['title']}",
        "",
        f"{w['train_samples']} training and {w['val_samples']} validation samples; "
        f"{w['epochs']} epochs per case, the first one not counted.",
        "",
        "| case | s/epoch | samples/s | x floor |",
        "|---|---:|---:|---:|",
    ]
    floor = w["cases"].get("floor", {}).get("epoch_seconds")
    for name, case in w["cases"].items():
        if name == "loader":
            continue
        if "epoch_seconds" not in case:
            lines.append(f"| {name} | | | {case.get('skipped') or case.get('failed')} |")
            continue
        ratio = f"{case['epoch_seconds'] / floor:.2f}" if floor else ""
        lines.append(
            f"| {name} | {case['epoch_seconds']:.3f} | {case['samples_per_second']:,.0f} | {ratio} |"
        )
    if loader := w["cases"].get("loader"):
        lines += [
            "",
            f"Loader alone (batch {w['batch_size']}, shuffled, no training): lightfit "
            f"{loader['lightfit_samples_per_second']:,.0f} samples/s, TensorDataset + DataLoader "
            f"{loader['tensordataset_samples_per_second']:,.0f} samples/s, {loader['speedup']:.1f}x.",
        ]
    return lines


def startup_markdown(s: dict[str, Any]) -> list[str]:
    if "seconds" not in s:
        return ["## Start-up", "", s["failed"]]
    by_package = list(s["import_seconds_by_package"].items())[:6]
    slowest = ", ".join(f"{name} {sec:.2f} s" for name, sec in by_package)
    return [
        "## Start-up",
        "",
        f"`python -m lightfit.train trainer.fast_dev_run=true`, start to exit: {s['seconds']:.2f} s "
        f"(median of {len(s['runs'])}). Import time by package (its own modules): {slowest}. "
        f"Imported although the run does not use them: {unused_text(s['unused_packages_imported'])}.",
    ]


def mmap_markdown(m: dict[str, Any]) -> list[str]:
    if "peak_rss_bytes" not in m:
        return [
            f"## Memory-mapped features, {m.get('devices', '?')} process(es)",
            "",
            m.get("skipped") or m["failed"],
        ]

    def each(key: str) -> str:
        return " and ".join(gb(v) for v in m[key])

    return [
        f"## Memory-mapped features, {m['devices']} process(es)",
        "",
        f"A {gb(m['file_bytes'])} GB float32 features `.npy`, a run of {m['train_batches']} training "
        f"batches of 128 ({m['seconds']:.0f} s). Peak resident memory per process: "
        f"{each('peak_rss_bytes')} GB; of it private memory at most {each('peak_private_bytes')} GB "
        "and pages of mapped files (the data file and the libraries: page cache, shared, not a "
        f"copy) at most {each('peak_file_pages_bytes')} GB.",
    ]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"{m['torch_threads']} torch threads"
    lines = [
        "# lightfit benchmark",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['device']} ({where}); "
        f"torch {m['torch']}, lightning {m['lightning']}, Python {m['python']}. Load average "
        f"{m['load_average_at_start']:.2f} at the start, {m['load_average_at_end']:.2f} at the end. "
        f"{report['date']}, `{report['command']}`.",
        "",
        "s/epoch: the median epoch after a warm-up epoch; x floor: that over the compute floor's.",
    ]
    for w in report["workloads"]:
        lines += ["", *workload_markdown(w)]
    if "startup" in report:
        lines += ["", *startup_markdown(report["startup"])]
    for m in report.get("mmap", []):
        lines += ["", *mmap_markdown(m)]
    if rows := targets(report):
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {target} | {measured} | {'yes' if met else 'no'} |" for target, measured, met in rows]
    return "\n".join(lines) + "\n"


# -- entry point -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench"), help="folder for results.md and results.json")
    p.add_argument("--workloads", default="abc", help="a: digits, b: synthetic batch 128, c: batch 1024")
    p.add_argument("--cases", default=",".join(CASES), help="a comma-separated subset of the cases")
    p.add_argument("--epochs", type=int, default=5, help="measured epochs for b and c, after one warm-up")
    p.add_argument("--digits-epochs", type=int, default=20, help="epochs in all for a (default run: 20)")
    p.add_argument("--rows", type=int, default=60000, help="synthetic samples for b and c")
    p.add_argument("--startup-runs", type=int, default=3, help="fast_dev_run timings (0: skip)")
    p.add_argument("--mmap-gb", type=float, default=4.0, help="size of the memory-mapped .npy (0: skip)")
    p.add_argument("--mmap-devices", default="1,2", help="processes of the memory-mapped runs (2: DDP)")
    p.add_argument("--lightfit-args", default="", help="more overrides for each lightfit run, e.g. "
                   "'trainer.precision=bf16-mixed'")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="6000 rows, 3 epochs, 1 start-up run, no memmap run")
    if p.parse_known_args(argv)[0].quick:  # smaller defaults; options given still win
        p.set_defaults(rows=6000, epochs=3, digits_epochs=4, startup_runs=1, mmap_gb=0)
    args = p.parse_args(argv)
    if args.epochs < 3 or args.digits_epochs < 4:
        p.error("measure at least 3 epochs after the warm-up (--epochs 3, --digits-epochs 4)")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(args.cases) - set(CASES):
        p.error(f"unknown cases {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    return args


def quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: ..." per fit
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch 2.13 vs Lightning's pytree use


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    report: dict[str, Any] = {
        "command": shlex.join(["scripts/bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "workloads": [],
    }
    if report["machine"]["load_average_at_start"] > 0.5:
        print(f"note: load average {os.getloadavg()[0]:.2f}: other work on this machine skews the timings")
    with tempfile.TemporaryDirectory(prefix="lightfit-bench-") as tmp_name:
        tmp = Path(tmp_name)
        extra = shlex.split(args.lightfit_args)
        run = {
            "floor": case_floor,
            "plain-loop": case_plain_loop,
            **{loop: partial(case_lightfit, loop=loop, tmp=tmp, extra=extra) for loop in LOOPS},
            **{
                f"{loop}+ckpt{STEP_CHECKPOINTS}": partial(
                    case_lightfit,
                    loop=loop,
                    tmp=tmp,
                    extra=[*extra, f"checkpoint.every_n_train_steps={STEP_CHECKPOINTS}"],
                    tag=f"+ckpt{STEP_CHECKPOINTS}",
                )
                for loop in ("explicit", "automatic")
            },  # fmt: skip
            "lightning-barebones": case_lightning_barebones,
            "naive-lightning": case_naive_lightning,
            "keras": case_keras,
            "loader": case_loader,
        }
        for w in workloads(args, tmp):
            splits = w.datamodule.splits
            entry = {"name": w.name, "title": w.title, "batch_size": w.batch_size, "epochs": w.epochs}
            entry |= {"train_samples": len(splits["train"].rows), "val_samples": len(splits["val"].rows)}
            entry["cases"] = {}
            report["workloads"].append(entry)
            for case in args.cases:
                print(f"({w.name}) {case}: ", end="", flush=True)
                result = entry["cases"][case] = run[case](w)
                shown = result.get("epoch_seconds") or result.get("speedup")
                print(f"{shown:.3f}" if shown else result.get("skipped") or result.get("failed"), flush=True)
        if args.startup_runs:
            print("start-up", flush=True)
            report["startup"] = startup(args.startup_runs, tmp)
        if args.mmap_gb:
            print(f"memory-mapped {args.mmap_gb} GB features", flush=True)
            report["mmap"] = [mmap_memory(args.mmap_gb, tmp, int(n)) for n in args.mmap_devices.split(",")]
    report["machine"]["load_average_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

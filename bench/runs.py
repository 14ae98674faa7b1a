"""The cases that start `python -m lightfit.train` as `make train` does: the three loops, start-up, memory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from bench.workloads import Workload, device, summary

LOOPS = ("explicit", "manual", "automatic")
# lightfit runs with more than a loop chosen: case -> (loop, overrides). Early stopping's patience
# outlasts the bench's epochs, as lightning-full's does (its reference, bench/cases.py).
VARIANTS = {
    "automatic+callbacks": (
        "automatic",
        ["callbacks=[early_stopping,lr_monitor]", "callbacks.early_stopping.patience=1000"],
    ),
}


def lightfit_case(case: str) -> tuple[str, list[str]] | None:
    """(loop, overrides) for a case that is a real lightfit run, None for any other case."""
    return (case, []) if case in LOOPS else VARIANTS.get(case)


STEP_CHECKPOINTS = 200  # issue 13: what last.ckpt every 200 optimizer steps costs, on (b)
STEP_CHECKPOINT_CASES = {f"{loop}+ckpt{STEP_CHECKPOINTS}": loop for loop in ("explicit", "automatic")}
# model.compile=true against the eager runs of the same loops; the first epoch (compilation) is not counted
COMPILE_CASES = {f"{loop}+compile": loop for loop in ("explicit", "automatic")}
# the line BackgroundCheckpointIO writes to train.log at the end: what the saves cost
SAVE_COSTS = re.compile(r"checkpoints: (\d+) written; ([\d.]+) ms per save on the training thread, "
                        r"([\d.]+) ms per write in the background, ([\d.]+) ms of it CPU")  # fmt: skip
EPOCH_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[lightfit\]\[INFO\] - epoch \d+/\d+")
# Packages a training run has no use for. What the frameworks import is not lightfit's choice.
UNUSED = {"keras", "tensorflow", "jax", "tensorboard", "tensorboardX", "matplotlib", "pandas", "sklearn",
          "scipy", "torchvision", "wandb", "mlflow", "IPython", "rich", "sympy"}  # fmt: skip
FRAMEWORKS = {"lightning", "torch", "torchmetrics", "hydra"}


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


def failure(rc: int, output: str) -> str:
    return f"exit {rc}: " + " | ".join(output.strip().splitlines()[-2:])


def epoch_ends(log_text: str) -> list[float]:
    """The times of the epoch lines in a run's train.log (Python logging: millisecond resolution)."""
    ends = []
    for line in log_text.splitlines():
        if match := EPOCH_LINE.match(line):
            ends.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return ends


def new_run_dir(tmp: Path, prefix: str) -> Path:
    return tmp / f"{prefix}-{len(list(tmp.glob(f'{prefix}-*')))}"


def lightfit_overrides(w: Workload, case: str, run_dir: Path, extra: list[str]) -> list[str]:
    """The command-line overrides that train the workload as `case` (a loop, or one of VARIANTS),
    the run directory last."""
    loop, chosen = lightfit_case(case) or (case, [])
    trainer = ["trainer=auto"] if device().type == "cuda" else []
    args = [f"loop={loop}", f"trainer.max_epochs={w.epochs}", *w.overrides, *chosen]
    return [*args, *trainer, *extra, f"hydra.run.dir={run_dir}"]


def case_lightfit(w: Workload, loop: str, tmp: Path, extra: list[str]) -> dict[str, Any]:
    """A real `python -m lightfit.train loop=...` run on the workload; seconds between epoch lines."""
    if not loop_exists(loop):
        return {"skipped": f"loop={loop} is not in this version of lightfit"}
    run_dir = new_run_dir(tmp, f"run-{w.name}-{loop}")
    args = ["-m", "lightfit.train", *lightfit_overrides(w, loop, run_dir, extra)]
    rc, output = run_in_terminal([sys.executable, *args], timeout=1800)
    command = shlex.join(["python", *args[:-1]])
    if rc != 0:
        return {"failed": failure(rc, output), "command": command}
    log_text = (run_dir / "train.log").read_text()
    ends = epoch_ends(log_text)
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    if not seconds:
        return {"failed": f"{len(ends)} epoch line(s) in train.log; need 2 or more", "command": command}
    val_acc = json.loads((run_dir / "results.json").read_text()).get("val/acc")
    return summary(seconds, w.train_samples, command=command, val_acc=val_acc, **save_costs(log_text))


def case_step_checkpoints(w: Workload, loop: str, tmp: Path, extra: list[str]) -> dict[str, Any]:
    """`case_lightfit` with last.ckpt written every STEP_CHECKPOINTS optimizer steps; on (b) only.

    As for every lightfit case, the result has what each save cost (`save_costs`): the
    training thread's time, and the writer thread's time and CPU time, from train.log.
    """
    if w.name != "b":
        return {"skipped": "the step-checkpoint target is for workload (b)"}
    return case_lightfit(w, loop, tmp, [*extra, f"checkpoint.every_n_train_steps={STEP_CHECKPOINTS}"])


def save_costs(log_text: str) -> dict[str, Any]:
    """What the run's checkpoint saves cost, from its train.log: {"save_costs": [one entry]}, or {}."""
    if not (found := SAVE_COSTS.search(log_text)):
        return {}
    saves, blocked, write, cpu = int(found[1]), *map(float, found.groups()[1:])
    # a list: bench.__main__.merge puts the rounds' entries together
    return {
        "save_costs": [
            {"saves": saves, "training_thread_ms": blocked, "write_ms": write, "write_cpu_ms": cpu}
        ]
    }


# -- start-up ---------------------------------------------------------------------------------


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
            return {"failed": failure(rc, output)}
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


# -- memory of a memory-mapped run -------------------------------------------------------------


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


def memory(pid: int, data_file: Path | None = None) -> dict[str, int]:
    """Bytes of a process's memory, from /proc: VmHWM (peak resident), and what is resident now:
    RssAnon (private: allocations, tensors), RssFile (pages of mapped files: libraries, and a
    data file read through a map), RssShmem (shared memory); `data_file`: its pages alone."""
    found = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                found[key] = int(value.split()[0]) * 1024
    if data_file is not None:
        with contextlib.suppress(OSError):
            found["data_file"] = mapped_bytes(Path(f"/proc/{pid}/smaps").read_text(), str(data_file))
    return found


def mapped_bytes(smaps: str, path: str) -> int:
    """Resident bytes of the mappings of `path` in a /proc/<pid>/smaps text."""
    total, inside = 0, False
    for line in smaps.splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's header: range, perms, ..., path
            inside = line.rstrip().endswith(" " + path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def peak_memory(proc: subprocess.Popen, data_file: Path) -> dict[int, dict[str, int]]:
    """Until `proc` exits: the peak of each memory figure of each of its processes."""
    peaks: dict[int, dict[str, int]] = {}
    while proc.poll() is None:  # sample every 50 ms; VmHWM itself is exact
        for pid in process_tree(proc.pid):
            for key, value in memory(pid, data_file).items():
                peaks.setdefault(pid, {})[key] = max(peaks.get(pid, {}).get(key, 0), value)
        time.sleep(0.05)
    return peaks


def mmap_memory(gigabytes: float, tmp: Path, devices: int, batches: int = 50) -> dict[str, Any]:
    """Peak memory of each process of a short run on a memory-mapped features .npy."""
    path = tmp / "features.npy"
    if not path.exists():
        free = shutil.disk_usage(tmp).free
        if free < 1.5 * gigabytes * 1e9:
            return {"skipped": f"{free / 1e9:.1f} GB free in {tmp}: too little for a {gigabytes} GB file"}
        write_features_npy(path, gigabytes)
    labels = path.with_name("labels.npy")
    args = ["-m", "lightfit.train", "data=npz", f"data.path={path}", f"data.labels={labels}"]
    args += ["data.batch_size=128", "model.hidden=[256]", "model.dropout=0", "optimizer=sgd", "logger=none"]
    args += ["trainer.max_epochs=1", f"trainer.limit_train_batches={batches}", "trainer.limit_val_batches=5"]
    args += ["trainer.limit_test_batches=5", f"trainer.devices={devices}"]
    args += ["trainer.strategy=ddp"] if devices > 1 else []
    run = [sys.executable, *args, f"hydra.run.dir={tmp / f'mmap-{devices}'}"]
    start = time.perf_counter()
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = peak_memory(proc, path)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"failed": failure(proc.returncode, proc.stderr.read())}
    ranks = [p for p in peaks.values() if p.get("VmHWM", 0) > 100e6]  # not a short-lived helper process
    return {
        "file_bytes": path.stat().st_size,
        "devices": devices,
        "train_batches": batches,
        "seconds": seconds,
        "command": shlex.join(["python", *args]),
        "peak_rss_bytes": [p["VmHWM"] for p in ranks],
        "peak_private_bytes": [p.get("RssAnon", 0) for p in ranks],
        "peak_file_pages_bytes": [p.get("RssFile", 0) for p in ranks],  # libraries + the data file
        "peak_data_file_bytes": [p.get("data_file", 0) for p in ranks],  # the data file's pages alone
        "peak_shared_bytes": [p.get("RssShmem", 0) for p in ranks],
    }

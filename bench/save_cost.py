"""What a background checkpoint write takes from training, measured in one process.

The difference of two runs' epoch times cannot show 2% here: on this shared machine the same
command's epoch times differ by 25% from one run to the next. So this case trains the
floor's loop in blocks of BLOCK steps, taking turns: a block that starts with a save of the
network and its optimizer (lightfit's BackgroundCheckpointIO, to a real file, fsync and
rename), and a block without. The median difference of the pairs, less the save call's own
time, is what the writer thread costs the training threads while it runs; the time a save
holds the training thread in each loop comes from that loop's own run (its train.log).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.cases import sliced_batches, train_step
from bench.runs import STEP_CHECKPOINT_CASES
from bench.workloads import Workload, device, network, optimizer, sync
from lightfit.loops.explicit import checkpoint_state
from lightfit.run.checkpoint_io import BackgroundCheckpointIO
from lightfit.run.resume import rng_states

BLOCK = 40  # steps per block: longer than a background write takes (about 15 ms, ~12 steps)
PAIRS = 60


def case_save_cost(w: Workload, tmp: Path) -> dict[str, Any]:
    if w.name != "b":
        return {"skipped": "the step-checkpoint target is for workload (b)"}
    torch.manual_seed(0)
    dev = device()
    net = network(w).to(dev)
    opt = optimizer(w, net.parameters())
    batches = sliced_batches(w)
    io, path = BackgroundCheckpointIO(), tmp / "save-cost" / "last.ckpt"
    position = 0

    def block(save: bool) -> tuple[float, float]:
        """Seconds of one block, and of its save call (0 without)."""
        nonlocal position
        start = time.perf_counter()
        if save:  # what the explicit loop's step checkpoint holds: the weights, the optimizer, the RNGs
            io.save_checkpoint(checkpoint_state(net, opt, None, 0, position, {"ranks": [rng_states()]}), path)
        called = time.perf_counter() - start if save else 0.0
        for _ in range(BLOCK):
            train_step(net, opt, *batches[position % len(batches)])
            position += 1
        sync(dev)
        return time.perf_counter() - start, called

    for turn in range(6):  # warm-up: allocations, the first file
        block(turn % 2 == 0)
    pairs = []
    for turn in range(PAIRS):  # which block comes first alternates: a drift hits both alike
        if turn % 2:
            saved, plain = block(True), block(False)
        else:
            plain, saved = block(False), block(True)
        pairs.append((saved[0] - plain[0], saved[1], plain[0]))
    io.teardown()
    extra = statistics.median(p[0] for p in pairs)  # what a block with a save took more
    call = statistics.median(p[1] for p in pairs)
    step = statistics.median(p[2] for p in pairs) / BLOCK
    return {
        "save_extra_ms": 1000 * extra,
        "save_call_ms": 1000 * call,
        "background_ms": 1000 * max(extra - call, 0.0),  # the writer thread's effect on training
        "step_ms": 1000 * step,
        "pairs": PAIRS,
        "block_steps": BLOCK,
        "file_bytes": path.stat().st_size,
    }


def save_cost_markdown(w: dict[str, Any]) -> list[str]:
    """What a checkpoint save cost: each step-checkpoint run's train.log, and the interleaved blocks."""
    parts = []
    for case in STEP_CHECKPOINT_CASES:
        if costs := w["cases"].get(case, {}).get("save_costs"):
            ms = {k: statistics.median(c[k] for c in costs) for k in costs[0] if k != "saves"}
            parts.append(
                f"{case}: {ms['training_thread_ms']:.1f} ms on the training thread per save, then "
                f"{ms['write_ms']:.1f} ms in the background thread, {ms['write_cpu_ms']:.1f} ms of it CPU"
            )
    lines = ["", "Checkpoint saves (from each run's train.log): " + "; ".join(parts) + "."] if parts else []
    if "background_ms" in (c := w["cases"].get("save-cost", {})):
        lines += [
            "",
            f"What a background write takes from training (bench/save_cost.py: {c['pairs']} pairs of "
            f"{c['block_steps']}-step blocks of the floor's loop, one block of each pair starting with "
            f"a save of {c['file_bytes'] / 1e6:.1f} MB): a block with a save took "
            f"{c['save_extra_ms']:.1f} ms more (median of the pairs), of which the save call "
            f"{c['save_call_ms']:.1f} ms; so "
            f"{c['background_ms']:.1f} ms is the writer thread's, next to a {c['step_ms']:.2f} ms step.",
        ]
    return lines

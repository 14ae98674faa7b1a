"""`python -m bench [options]`, from the repository root: run the cases, write results.json and .md."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import tempfile
import warnings
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import bench
from bench import cases, report, runs
from bench.metrics import case_metrics
from bench.progress import Progress, headline
from bench.save_cost import case_save_cost
from bench.serve import case_serve
from bench.table_read import case_table_read
from bench.turns import case_turns, merge_turns
from bench.workloads import Workload, summary, workloads

CASES = ("floor", "plain-loop", "fabric-loop", *runs.LOOPS, "lightning-barebones", "lightning-trainer",
         "lightning-validated", "lightning-full",
         "naive-lightning", "keras", "loader", "metrics", *runs.STEP_CHECKPOINT_CASES, "save-cost",
         *runs.COMPILE_CASES, "turns")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__, formatter_class=raw)
    p.add_argument("--out", type=Path, default=Path("bench"), help="folder for results.md and results.json")
    p.add_argument("--workloads", default="abc", help="a: digits, b: synthetic batch 128, c: batch 1024")
    p.add_argument("--cases", default=",".join(CASES), help="a comma-separated subset of the cases")
    p.add_argument("--epochs", type=int, default=5, help="measured epochs for b and c, after one warm-up")
    p.add_argument("--rounds", type=int, default=1, help="run the cases this many times, taking turns; "
                   "medians over all rounds (a shared machine's slow spells hit every case)")  # fmt: skip
    p.add_argument("--turns", type=int, default=15, help="epochs per case in the turns case, after one "
                   "warm-up")  # fmt: skip
    p.add_argument("--digits-epochs", type=int, default=20, help="epochs in all for a (default run: 20)")
    p.add_argument("--rows", type=int, default=60000, help="synthetic samples for b and c")
    p.add_argument("--startup-runs", type=int, default=3, help="fast_dev_run timings (0: skip)")
    p.add_argument("--mmap-gb", type=float, default=4.0, help="size of the memory-mapped .npy (0: skip)")
    p.add_argument("--table-rows", type=int, default=1_000_000, help="rows of the CSV that data=table "
                   "reads against pyarrow's own read (0: skip)")  # fmt: skip
    p.add_argument("--serve-seconds", type=float, default=10.0, help="seconds of load per setting and "
                   "concurrency on lightfit serve (the serve extra; 0: skip)")  # fmt: skip
    p.add_argument("--mmap-devices", default="1,2", help="processes of the memory-mapped runs (2: DDP)")
    p.add_argument("--lightfit-args", default="", help="more overrides for each lightfit run, e.g. "
                   "'trainer.precision=bf16-mixed'")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="6000 rows, 3 epochs, 1 start-up run, no memmap run")
    if p.parse_known_args(argv)[0].quick:  # smaller defaults; options given still win
        p.set_defaults(rows=6000, epochs=3, digits_epochs=4, turns=3, startup_runs=1, mmap_gb=0,
                       table_rows=50_000, serve_seconds=2)  # fmt: skip
    args = p.parse_args(argv)
    if args.epochs < 3 or args.digits_epochs < 4 or args.turns < 3:
        p.error("measure at least 3 epochs after the warm-up (--epochs 3, --digits-epochs 4, --turns 3)")
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


def case_runners(args: argparse.Namespace, tmp: Path) -> dict[str, Callable[[Workload], dict[str, Any]]]:
    extra = shlex.split(args.lightfit_args)
    return {
        "floor": cases.case_floor,
        "plain-loop": cases.case_plain_loop,
        "fabric-loop": cases.case_fabric_loop,
        **{loop: partial(runs.case_lightfit, loop=loop, tmp=tmp, extra=extra) for loop in runs.LOOPS},
        **{  # the same runs with last.ckpt every STEP_CHECKPOINTS optimizer steps
            case: partial(runs.case_step_checkpoints, loop=loop, tmp=tmp, extra=extra)
            for case, loop in runs.STEP_CHECKPOINT_CASES.items()
        },
        **{  # the same runs with model.compile=true (torch.compile); compilation is in the first epoch
            case: partial(runs.case_lightfit, loop=loop, tmp=tmp, extra=[*extra, "model.compile=true"])
            for case, loop in runs.COMPILE_CASES.items()
        },
        "lightning-barebones": cases.case_lightning_barebones,
        "lightning-trainer": cases.case_lightning_trainer,
        "lightning-validated": cases.case_lightning_validated,
        "lightning-full": partial(cases.case_lightning_full, tmp=tmp),
        "naive-lightning": cases.case_naive_lightning,
        "keras": cases.case_keras,
        "loader": cases.case_loader,
        "metrics": case_metrics,
        "save-cost": partial(case_save_cost, tmp=tmp),
        "turns": lambda w: case_turns(dataclasses.replace(w, epochs=args.turns + 1), tmp, extra),
    }


def run_workloads(args: argparse.Namespace, tmp: Path, progress: Progress) -> list[dict[str, Any]]:
    """Every chosen case of every chosen workload, in order; one entry of results.json per workload."""
    run, entries = case_runners(args, tmp), []
    for w in workloads(args, tmp):
        val_samples = len(w.datamodule.splits["val"].rows)
        entry = {"name": w.name, "title": w.title, "batch_size": w.batch_size, "epochs": w.epochs}
        entry |= {"train_samples": w.train_samples, "val_samples": val_samples, "rounds": args.rounds}
        entry["cases"] = {}
        entries.append(entry)
        for turn in range(args.rounds):
            for case in args.cases:
                name = f"({w.name}) {case}" + (f", round {turn + 1}/{args.rounds}" if args.rounds > 1 else "")
                progress.start(name)
                result = entry["cases"][case] = merge(entry["cases"].get(case), run[case](w), w.train_samples)
                progress.done(f"{name}: {headline(result)}")
    return entries


def merge(before: dict[str, Any] | None, result: dict[str, Any], samples: int) -> dict[str, Any]:
    """A case's result over the rounds so far: its epoch times pooled, the median over all of them."""
    if before and "turn_seconds" in before and "turn_seconds" in result:
        return merge_turns(before, result)
    if not before or "epochs" not in before or "epochs" not in result or "epoch_seconds" not in result:
        return result  # the first round, or a case without epoch times (loader, metrics)
    epochs = before["epochs"] + result["epochs"]
    costs = {}  # a list per round: what each run's checkpoint saves cost
    if "save_costs" in result:
        costs["save_costs"] = before.get("save_costs", []) + result["save_costs"]
    return {**result, **summary(epochs, samples), **costs, "rounds": before.get("rounds", 1) + 1}


def run_extras(args: argparse.Namespace, tmp: Path, progress: Progress, results: dict[str, Any]) -> None:
    """Start-up time and the memory of memory-mapped runs, into `results`."""
    if args.startup_runs:
        progress.start("start-up")
        results["startup"] = runs.startup(args.startup_runs, tmp)
        progress.done(f"start-up: {headline(results['startup'])}")
    if args.table_rows:
        item = f"reading a {args.table_rows:,}-row CSV: data=table vs pyarrow"
        progress.start(item)
        results["table_read"] = case_table_read(args.table_rows, tmp)
        progress.done(item)
    if args.serve_seconds:
        item = "lightfit serve, batched and not, at concurrency 1 and 32"
        progress.start(item)
        results["serve"] = case_serve(tmp, args.serve_seconds)
        progress.done(item)
    if args.mmap_gb:
        results["mmap"] = []
        for n in args.mmap_devices.split(","):
            item = f"memory-mapped {args.mmap_gb} GB features, {n} process(es)"
            progress.start(item)
            results["mmap"].append(runs.mmap_memory(args.mmap_gb, tmp, int(n)))
            progress.done(f"{item}: {headline(results['mmap'][-1])}")


def items(args: argparse.Namespace) -> int:
    """How many items the progress bar counts."""
    chosen = sum(name in args.workloads for name in "abc")
    mmap = len(args.mmap_devices.split(",")) if args.mmap_gb else 0
    extras = bool(args.startup_runs) + bool(args.table_rows) + bool(args.serve_seconds) + mmap
    return chosen * len(args.cases) * args.rounds + extras


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    results: dict[str, Any] = {
        "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": report.machine(),
    }
    if results["machine"]["load_average_at_start"] > 0.5:
        print(f"note: load average {os.getloadavg()[0]:.2f}: other work on this machine skews the timings")
    with tempfile.TemporaryDirectory(prefix="lightfit-bench-") as tmp_name, Progress(items(args)) as progress:
        results["workloads"] = run_workloads(args, Path(tmp_name), progress)
        run_extras(args, Path(tmp_name), progress, results)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report.markdown(results)
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

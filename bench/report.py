"""The report: the machine, results.md (tables per workload, start-up, memory, targets) from results.json."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from typing import Any

import lightning as L
import torch

from bench.metrics import REFERENCE, VARIANTS
from bench.runs import FRAMEWORKS, STEP_CHECKPOINT_CASES, STEP_CHECKPOINTS
from bench.save_cost import save_cost_markdown
from bench.serve import serve_markdown, serve_rows
from bench.table_read import table_read_markdown, table_read_rows
from bench.turns import turns_markdown, turns_rows
from bench.workloads import device

DEFAULT_METRICS = next(iter(VARIANTS))  # the classification default, [acc]
NOT_TIMED = ("loader", "metrics", "save-cost", "turns")  # cases without an epoch time of training


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


def step_microseconds(workload: dict[str, Any], case: str) -> float | None:
    """A case's epoch time per training step, in microseconds (None if it was not measured)."""
    seconds = workload["cases"].get(case, {}).get("epoch_seconds")
    steps = -(-workload["train_samples"] // workload["batch_size"])
    return seconds / steps * 1e6 if seconds else None


def ratio_rows(secs: Any, turns: bool) -> list[tuple[str, str, bool]]:
    """The targets that compare two cases' epoch times; with `turns`, issue 12's ratios are the
    turns case's (turns_rows), not these of cases run one after the other."""
    rows = []
    if secs("b", "explicit") and secs("b", "floor"):
        ratio = secs("b", "explicit") / secs("b", "floor")
        rows.append(("(b) loop=explicit <= 1.15x floor", f"{ratio:.2f}x", ratio <= 1.15))
    if secs("b", "explicit") and secs("b", "plain-loop") and not turns:
        ratio = secs("b", "explicit") / secs("b", "plain-loop")
        rows.append(("(b) loop=explicit <= 1.10x plain-loop (same run)", f"{ratio:.2f}x", ratio <= 1.10))
    for loop in ("automatic", "manual"):
        if secs("b", loop) and secs("b", "lightning-barebones") and not turns:
            ratio = secs("b", loop) / secs("b", "lightning-barebones")
            rows.append((f"(b) loop={loop} <= 1.10x lightning-barebones", f"{ratio:.2f}x", ratio <= 1.10))
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
    return rows


def step_checkpoint_rows(workload: dict[str, Any] | None, secs: Any) -> list[tuple[str, str, bool]]:
    """(b): what last.ckpt every STEP_CHECKPOINTS steps costs, part by part (see bench/save_cost.py).

    Each part is set against time measured in the same process, since the machine's speed
    drifts between runs: the time a save holds the training thread, from the loop's own run,
    against that run's epoch; what the background write takes from training, from the
    interleaved blocks, against STEP_CHECKPOINTS of their steps (floor steps: a loop's steps
    are longer, so this share is an upper bound).
    """
    cases = (workload or {}).get("cases", {})
    cost = cases.get("save-cost", {})
    rows = []
    for case, loop in STEP_CHECKPOINT_CASES.items():
        costs, epoch = cases.get(case, {}).get("save_costs"), secs("b", case)
        if not costs or not epoch or "background_ms" not in cost:
            continue
        held = statistics.median(c["training_thread_ms"] for c in costs)
        saves = -(-workload["train_samples"] // workload["batch_size"]) / STEP_CHECKPOINTS
        on_thread = saves * held / 1000 / (epoch - saves * held / 1000)
        writer = cost["background_ms"] / (STEP_CHECKPOINTS * cost["step_ms"])
        measured = (
            f"{on_thread + writer:+.1%}: {on_thread:.1%} on the training thread ({saves:.1f} saves x "
            f"{held:.1f} ms of a {epoch:.3f} s epoch) + {writer:.1%} taken by the writer ("
            f"{cost['background_ms']:.1f} ms of {STEP_CHECKPOINTS} steps of {cost['step_ms']:.2f} ms)"
        )
        target = f"(b) loop={loop}, last.ckpt every {STEP_CHECKPOINTS} steps: <= 2% of epoch time"
        rows.append((target, measured, on_thread + writer <= 0.02))
    return rows


def metrics_rows(workload: dict[str, Any] | None) -> list[tuple[str, str, bool]]:
    """(b): what the default classification metrics add per step over the hand-written sums."""
    metrics = (workload or {}).get("cases", {}).get("metrics", {})
    step = step_microseconds(workload, "explicit") if workload else None
    if "us_per_step" not in metrics or not step:
        return []
    us = metrics["us_per_step"]
    added = us[DEFAULT_METRICS] - us[REFERENCE]
    measured = f"{100 * added / step:+.1f}% ({added:+.1f} us of a {step:.0f} us step)"
    return [("(b) default classification metrics add <= 3% of epoch time over hand-written sums",
             measured, added <= 0.03 * step)]  # fmt: skip


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of the issues' targets that this run measured."""
    by_name = {w["name"]: w for w in report["workloads"]}

    def secs(w: str, case: str) -> float | None:
        return by_name.get(w, {}).get("cases", {}).get(case, {}).get("epoch_seconds")

    rows = []
    if "speedup" in by_name.get("b", {}).get("cases", {}).get("loader", {}):
        speedup = by_name["b"]["cases"]["loader"]["speedup"]
        rows.append(("(b) loader >= 5x TensorDataset + DataLoader", f"{speedup:.1f}x", speedup >= 5))
    turns = turns_rows(by_name.get("b"))
    rows += turns + ratio_rows(secs, bool(turns)) + metrics_rows(by_name.get("b"))
    rows += step_checkpoint_rows(by_name.get("b"), secs) + table_read_rows(report.get("table_read", {}))
    rows += serve_rows(report.get("serve", {}))
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
            size, who = m["file_bytes"], f"memmap .npy, {m['devices']} process(es)"
            private, peak = max(m["peak_private_bytes"]), max(m["peak_rss_bytes"])
            resident = max(m.get("peak_data_file_bytes", [0]))
            rows += [
                (f"{who}: private memory well under the file size", f"{gb(private)} of {gb(size)} GB",
                 private < size / 4),
                (f"{who}: peak RSS well under the file size", f"{gb(peak)} of {gb(size)} GB",
                 peak < size / 2),
                (f"{who}: the data file's pages in its RSS", f"{gb(resident)} GB", resident < size / 100),
            ]  # fmt: skip
    return rows


def gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def unused_text(unused: dict[str, str]) -> str:
    return ", ".join(f"{package} (by {by})" for package, by in sorted(unused.items())) or "none"


def metrics_markdown(w: dict[str, Any]) -> list[str]:
    m = w["cases"]["metrics"]
    if "us_per_step" not in m:
        return ["", f"Metrics per step: {m.get('skipped') or m.get('failed')}"]
    step = step_microseconds(w, "explicit")
    ref = m["us_per_step"][m["reference"]]
    lines = [
        "",
        f"Metrics per training step (batch {m['batch_size']}, {m['num_classes']} classes, "
        f"{m['steps_per_epoch']} steps per epoch; the folds and the epoch's compute included)"
        + (f", next to the explicit loop's {step:.0f} us per step:" if step else ":"),
        "",
        "| metrics | us/step | over the sums | of an explicit step |",
        "|---|---:|---:|---:|",
    ]
    for name, us in m["us_per_step"].items():
        over = f"{us - ref:+.1f}" if name != m["reference"] else ""
        share = f"{100 * us / step:.1f}%" if step else ""
        lines.append(f"| {name} | {us:.1f} | {over} | {share} |")
    return lines


def rounds_note(rounds: int) -> str:
    return f"; {rounds} rounds, the cases taking turns, medians over all rounds." if rounds > 1 else "."


def workload_markdown(w: dict[str, Any]) -> list[str]:
    timed = {name: case for name, case in w["cases"].items() if name not in NOT_TIMED}
    samples = f"{w['train_samples']} training and {w['val_samples']} validation samples"
    lines = [f"## ({w['name']}) {w['title']}", "", samples + ("; " if timed else ".")]
    if timed:
        lines[-1] += f"{w['epochs']} epochs per case, the first one not counted"
        lines[-1] += rounds_note(w.get("rounds", 1))
        lines += ["", "| case | s/epoch | samples/s | x floor |", "|---|---:|---:|---:|"]
    floor = w["cases"].get("floor", {}).get("epoch_seconds")
    for name, case in timed.items():
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
    metrics = metrics_markdown(w) if "metrics" in w["cases"] else []
    return lines + metrics + save_cost_markdown(w) + turns_markdown(w)


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
    title = f"## Memory-mapped features, {m.get('devices', '?')} process(es)"
    if "peak_rss_bytes" not in m:
        return [title, "", m.get("skipped") or m["failed"]]

    def each(key: str) -> str:
        return " and ".join(gb(v) for v in m.get(key, [0]))

    return [
        title,
        "",
        f"A {gb(m['file_bytes'])} GB float32 features `.npy`, a run of {m['train_batches']} training "
        f"batches of 128 ({m['seconds']:.0f} s). Per process, from /proc (sampled every 50 ms): "
        f"peak resident memory (VmHWM) {each('peak_rss_bytes')} GB. Of the resident memory, at "
        f"most {each('peak_private_bytes')} GB private (RssAnon: the process's own allocations), "
        f"at most {each('peak_file_pages_bytes')} GB pages of mapped files (RssFile: the libraries, "
        "and the data file if rows were read through its map), of which the data file's own "
        f"pages {each('peak_data_file_bytes')} GB; shared memory (RssShmem) at most "
        f"{each('peak_shared_bytes')} GB. RssFile pages are the kernel's page cache, shared and "
        "reclaimable, but RSS-based limits count them.",
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
    lines += table_read_markdown(report.get("table_read", {}))
    lines += serve_markdown(report.get("serve", {}))
    if rows := targets(report):
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {target} | {measured} | {'yes' if met else 'no'} |" for target, measured, met in rows]
    return "\n".join(lines) + "\n"

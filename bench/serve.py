"""`lightfit serve` under load: one-row requests at concurrency 1 and 32, batched and not.

Issue 30's target: with requests batched on the server (`max_batch_size=16`, the default
`batch_timeout`), at least 2x the requests per second of `max_batch_size=1` at concurrency
32. Each server is a real `lightfit serve` process on a checkpoint trained on digits, for
each model of MODELS (the default MLP, and a wide one whose forward pass costs more than
the HTTP around it, where batching pays); the client is threads with keep-alive connections
(http.client), one per concurrent user, each sending one row at a time for `seconds` after a
short warm-up. Latency is per request, from send to the
whole answer read.

Requests per second are wall-clock, and the client shares the machine with the server: on a
busy machine they say little. The CPU time each process spent per request (Linux, /proc)
says where the time goes whatever the load: the API server (HTTP, FastAPI, JSON), LitServe's
queue manager (every request crosses its queues twice), the model's worker, and the client.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

SETTINGS = {"batched": ["max_batch_size=16"], "unbatched": ["max_batch_size=1"]}
CONCURRENCY = (1, 32)
# The digits MLP, whose forward pass (~50 us a row) is a small part of what a request costs,
# and a wide one, whose pass (~1.8 ms a row, ~0.4 ms a row in a batch of 16 on one thread)
# is most of it: batching can only share the model's part.
MODELS = {"digits MLP (hidden 128)": [], "wide MLP (hidden 2048 x 3)": ["model.hidden=[2048,2048,2048]"]}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lightfit serve exited {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().read() == b"ok":
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("lightfit serve did not answer /health")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces and brackets):
    [0] state, [1] ppid, [11] utime, [12] stime, [19] start time."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def server_processes(pid: int) -> dict[int, str]:
    """`lightfit serve`'s processes (Linux: /proc) by role. LitServe starts its queue manager
    (forked), then the model's worker (spawned), then the API server (forked): a forked child
    started before the worker is the manager, one started after it an API server."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat(int(entry.name))[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    started = {}
    for child in children.get(pid, []):
        started[child] = int(_stat(child)[19])
    cmdline = {child: Path(f"/proc/{child}/cmdline").read_bytes() for child in started}
    workers = [child for child in started if b"spawn_main" in cmdline[child]]
    first_worker = min((started[w] for w in workers), default=0)
    roles = {pid: "lightfit serve"}
    for child in started:
        if b"resource_tracker" in cmdline[child]:
            roles[child] = "resource tracker"
        elif child in workers:
            roles[child] = "model worker"
        else:
            roles[child] = "queue manager" if started[child] <= first_worker else "API server"
    return roles


def load(
    port: int, body: bytes, concurrency: int, seconds: float, server_pid: int | None = None
) -> dict[str, Any]:
    """`concurrency` users, each one request at a time on its own connection, for `seconds`;
    with `server_pid`, also the CPU time each of its processes and the client spent per request."""
    latencies: list[float] = []
    lock, errors = threading.Lock(), []
    start_at = time.monotonic() + 0.5  # everyone starts together
    stop_at = start_at + seconds

    def user() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while (now := time.monotonic()) < stop_at:
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                errors.append(answer.status)
            mine.append(time.monotonic() - now)
        with lock:
            latencies.extend(mine)

    roles = server_processes(server_pid) if server_pid and Path("/proc").is_dir() else {}  # Linux
    cpu_before = {pid: _cpu_seconds(pid) for pid in roles}
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=user) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {pid: _cpu_seconds(pid) - before for pid, before in cpu_before.items()}
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: HTTP {sorted(set(errors))}")
    latencies.sort()
    result: dict[str, Any] = {
        "requests": len(latencies),
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }
    if roles:  # CPU microseconds per request, by process
        per_request: dict[str, float] = {}
        for pid, seconds_used in cpu.items():
            per_request[roles[pid]] = per_request.get(roles[pid], 0) + 1e6 * seconds_used / len(latencies)
        client = sum(getattr(client_after, f) - getattr(client_before, f) for f in ("ru_utime", "ru_stime"))
        per_request["client"] = 1e6 * client / len(latencies)
        result["cpu_us_per_request"] = per_request
    return result


def case_serve(tmp: Path, seconds: float = 10.0) -> dict[str, Any]:
    """Each model of MODELS trained on digits and served both ways, each at each concurrency."""
    try:
        import litserve  # noqa: F401
    except ImportError:
        return {"skipped": "LitServe is not installed (pip install -e '.[serve]')"}
    import numpy as np

    x = np.load(Path(__file__).resolve().parents[1] / "src/lightfit/data/digits.npz")["x"][0]
    body = json.dumps({"x": x.tolist()}).encode()  # one row
    results: dict[str, Any] = {"seconds": seconds, "models": {}}
    for number, (model, overrides) in enumerate(MODELS.items()):
        run = tmp / f"serve-run-{number}"
        train = [sys.executable, "-m", "lightfit", "train", "trainer.max_epochs=2", "logger=none",
                 f"hydra.run.dir={run}", *overrides]  # fmt: skip
        subprocess.run(train, check=True, capture_output=True, timeout=600)
        results["models"][model] = served = serve_both_ways(run / "checkpoints/best.ckpt", body, seconds)
        batched, unbatched = (served[n][str(CONCURRENCY[-1])]["requests_per_second"] for n in SETTINGS)
        served["speedup_at_32"] = batched / unbatched
    return results


def serve_both_ways(ckpt: Path, body: bytes, seconds: float) -> dict[str, Any]:
    """`lightfit serve` on `ckpt` with each of SETTINGS, loaded at each concurrency."""
    results: dict[str, Any] = {}
    for name, settings in SETTINGS.items():
        port = _free_port()
        command = [sys.executable, "-m", "lightfit", "serve", f"ckpt_path={ckpt}", f"port={port}", *settings]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_healthy(port, proc)
            load(port, body, 8, 1.0)  # warm-up
            results[name] = {str(c): load(port, body, c, seconds, proc.pid) for c in CONCURRENCY}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return results


def serve_rows(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [
        (f"lightfit serve, {model}: batched vs max_batch_size=1 at concurrency 32, >= 2x requests/s",
         f"{served['speedup_at_32']:.2f}x", served["speedup_at_32"] >= 2)
        for model, served in result.get("models", {}).items()
    ]  # fmt: skip


def serve_markdown(result: dict[str, Any]) -> list[str]:
    if not result or "skipped" in result:
        return [f"Serving: skipped ({result.get('skipped', 'not run')})."] if result else []
    lines = [
        "",
        f"## lightfit serve: one-row requests, {result['seconds']:.0f} s each",
        "",
        "| model | server | concurrency | requests/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, served in result["models"].items():
        for name, settings in SETTINGS.items():
            for c, r in served[name].items():
                numbers = f"{r['requests_per_second']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f}"
                lines.append(f"| {model} | {name} ({' '.join(settings)}) | {c} | {numbers} |")
    lines.append("")
    for model, served in result["models"].items():
        lines.append(
            f"{model}: batched / unbatched at concurrency 32, {served['speedup_at_32']:.2f}x (target >= 2x)."
        )
    lines += cpu_markdown(result["models"])
    return lines


def cpu_markdown(models: dict[str, Any]) -> list[str]:
    """The CPU time per request of each process, where /proc said (Linux)."""
    roles = ["API server", "queue manager", "model worker", "client"]
    rows = []
    for model, served in models.items():
        for name in SETTINGS:
            for c, r in served[name].items():
                if cpu := r.get("cpu_us_per_request"):
                    cells = " | ".join(f"{cpu.get(role, float('nan')):.0f}" for role in roles)
                    rows.append(f"| {model} | {name} | {c} | {cells} | {sum(cpu.values()):.0f} |")
    if not rows:
        return []
    return ["", "CPU microseconds per request, by process:", "",
            f"| model | server | concurrency | {' | '.join(roles)} | all |",
            "|---|---|---:|" + "---:|" * (len(roles) + 1), *rows]  # fmt: skip


if __name__ == "__main__":  # python -m bench.serve [SECONDS]: the case alone
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = case_serve(Path(tmp), float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
    print(json.dumps(result, indent=2))
    print("\n".join(serve_markdown(result)))

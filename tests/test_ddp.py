"""DDP on CPU with 2 processes (gloo): single runs, sweeps, shards, metrics, failures, signals.

Every DDP run is a real command in its own process group: Lightning's DDP would re-run the
pytest command line in its child processes if training ran inside pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, compose_config, require, state_dict
from hydra.utils import instantiate

from lightfit.errors import LightfitError
from lightfit.loops.automatic import AutomaticLoop
from lightfit.loops.explicit import evaluate_epoch
from lightfit.run.checkpoint import load_checkpoint, rebuild_network
from lightfit.run.distributed import processes_to_start, rank_command
from lightfit.tasks import StageMetrics, build_task

DDP = ["trainer=ddp_cpu", "trainer.max_epochs=1"]
RUN_FILES = {".hydra", "checkpoints", "metrics.csv", "results.json", "splits.npz", "train.log"}


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a run directory): leftovers."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # ended meanwhile
            if text in cmdline:
                found.append(cmdline)
    return found


def evaluate_in_one_process(overrides: list[str], checkpoint: Path, stage: str) -> dict[str, float]:
    """`stage` metrics of a checkpoint with one process: the reference for the DDP numbers."""
    cfg = compose_config(*overrides, "trainer=cpu")
    dm = instantiate(cfg.data, task=cfg.task.name)
    dm.setup()
    net = rebuild_network(load_checkpoint(checkpoint))
    task = build_task(cfg.task, dm.num_outputs, net)
    loader = dm.val_dataloader() if stage == "val" else dm.test_dataloader()
    metrics = evaluate_epoch(net, loader, task, task.stage_metrics(stage))
    return {k: v.item() for k, v in metrics.items()}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], 0),
        (["trainer=ddp_cpu"], 2),
        (["trainer=ddp_cpu", "trainer.devices=3"], 3),
        (["trainer=ddp_cpu", "trainer.devices=1"], 0),
    ],
)
def test_the_job_starts_as_many_processes_as_lightning_would(overrides, expected, monkeypatch):
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert processes_to_start(compose_config(*overrides).trainer) == expected
    monkeypatch.setenv("LOCAL_RANK", "0")  # a launcher made the processes already (torchrun sets it)
    assert processes_to_start(compose_config(*overrides).trainer) == 0


def test_device_settings_that_cannot_work_here_are_one_line():
    with pytest.raises(
        LightfitError, match="num_nodes=2: start lightfit on every node with torchrun or SLURM"
    ):
        processes_to_start(compose_config("trainer=ddp_cpu", "trainer.num_nodes=2").trainer)
    if not torch.cuda.is_available():
        with pytest.raises(LightfitError, match="trainer.accelerator=gpu devices=-1: "):
            processes_to_start(compose_config("trainer=ddp").trainer)


def test_each_rank_runs_the_jobs_overrides_in_the_jobs_directory(tmp_path):
    cfg = compose_config("trainer=ddp_cpu", "optimizer.lr=0.01", "hydra.job.chdir=false", hydra=True)
    run_dir = tmp_path / "a b,c=d"  # spaces, commas and '=' must survive the override grammar
    command = rank_command(cfg.hydra, run_dir)
    assert command[:3] == ["-m", "lightfit.cli.train", "--config-name=train"]
    assert command[3:6] == ["trainer=ddp_cpu", "optimizer.lr=0.01", "hydra.job.chdir=false"]
    assert f"hydra.run.dir='{run_dir}'" in command and "hydra.output_subdir=null" in command
    parsed = compose_config(*command[3:], hydra=True)  # what a rank composes
    assert parsed.hydra.run.dir == str(run_dir) and parsed.optimizer.lr == 0.01


def test_loss_is_the_mean_over_samples_whatever_the_batches():
    logits, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    metrics = StageMetrics("val")
    for part in (slice(0, 8), slice(8, 10)):  # a short last batch, as under DDP shards
        metrics.update(logits[part], y[part], torch.nn.functional.cross_entropy(logits[part], y[part]))
    expected = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(metrics.compute()["val/loss"], expected)


TASKS = {
    # digits: 359 test and 162 val samples, which do not split evenly in two
    "classification": ["task.metrics=[acc,f1,auroc]"],
    # diabetes: 93 test and 35 val samples, odd too
    "regression": ["data=diabetes", "data.test_fraction=0.21"],
}


@pytest.mark.core
# `make test` keeps one DDP run; regression under DDP runs in `make test-all`.
@pytest.mark.parametrize("task", ["classification", pytest.param("regression", marks=pytest.mark.slow)])
def test_single_run_writes_one_run_and_metrics_equal_one_process(tmp_path, task):
    run = tmp_path / "run"
    overrides = [*DDP, "trainer.max_epochs=2", *TASKS[task]]
    proc = cli(*overrides, "data.batch_size=64", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in run.iterdir()} == RUN_FILES  # no second .hydra, log or results per rank
    assert len(list(tmp_path.rglob(".hydra"))) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert proc.stdout.count("epoch 2/2") == 1 and proc.stdout.count("test: ") == 1  # rank 0 speaks
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2, rows  # header, then train and val rows of 2 epochs, written once
    assert not processes_mentioning(str(run))

    # 2 processes x batch 64 give the numbers of 1 process x batch 128 on the same checkpoint:
    # no sample counted twice or lost where the split is odd, no mean of per-rank means.
    results = json.loads((run / "results.json").read_text())
    names = ("loss", "acc", "f1", "auroc") if task == "classification" else ("loss", "mae", "rmse", "r2")
    assert results["task"] == task
    for stage in ("val", "test"):
        single = evaluate_in_one_process(
            [*overrides, "data.batch_size=128"], Path(results["best_checkpoint"]), stage
        )
        for name in names:
            assert results[f"{stage}/{name}"] == pytest.approx(single[f"{stage}/{name}"], rel=1e-6), name
    if task == "classification":
        assert 0 < results["test/acc"] < 1  # a test that a duplicated or lost sample would change
        assert results["test/acc"] == single["test/acc"]  # a count: exact


@pytest.mark.slow
def test_sweep_runs_every_job_once_each_in_its_own_directory(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m", "optimizer.lr=0.01,0.001", *DDP, "loop=manual", "logger=none", f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Launching 2 jobs") == 1  # the ranks did not re-run the sweep
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml", "summary.csv"]
    results = [json.loads((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert results[0]["test/acc"] != results[1]["test/acc"]  # two learning rates, two outcomes
    assert all(r["loop"] == "manual" for r in results)
    assert len(list(sweep.rglob(".hydra"))) == 2
    assert len((sweep / "summary.csv").read_text().splitlines()) == 3  # a header and a row per job
    assert not processes_mentioning(str(sweep))


@pytest.mark.slow
def test_torchrun_ranks_get_distinct_shards_and_end_with_the_same_weights(tmp_path):
    """Under torchrun: the manual loop (Trainer) and the explicit loop (Fabric), accumulating."""
    probe = Path(__file__).with_name("ddp_probe.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run([*command, str(probe), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    expected = {"train/0": 145, "train/1": 145, "val/0": 21, "val/1": 21, "test": 41}  # split sizes
    for key, size in expected.items():
        batches = [r["seen"][key] for r in ranks]
        ids = [[i for batch in b for i in batch] for b in batches]
        assert not set(ids[0]) & set(ids[1]), key  # distinct shards, nothing padded ...
        assert len(ids[0]) + len(ids[1]) == len(set(ids[0]) | set(ids[1])) == size, key  # ... covering all
        assert len(batches[0]) == len(batches[1]), key  # as many steps on each rank
    first, second = (ranks[0]["seen"][f"train/{e}"] for e in (0, 1))
    assert first != second  # a new order each epoch
    for loop in ("manual", "explicit"):
        weights = [{k: torch.tensor(v) for k, v in r[loop].items()} for r in ranks]
        for key in weights[0]:
            torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
        trained = {k: torch.tensor(v) for k, v in ranks[0]["initial"].items()}
        assert not torch.equal(weights[0]["1.1.weight"], trained["1.1.weight"])  # they did train
    assert ranks[0]["explicit_history"]["val/acc"] == ranks[1]["explicit_history"]["val/acc"]


@pytest.mark.slow
def test_explicit_loop_under_submitit_local_launcher(tmp_path):
    require("slurm")
    sweep = tmp_path / "sweep"
    proc = cli(
        "-m", "hydra/launcher=submitit_local", *DDP, "loop=explicit", f"hydra.sweep.dir={sweep}"
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["loop"] == "explicit" and 0 < results["test/acc"] <= 1
    assert {p.name for p in (sweep / "0").iterdir()} == RUN_FILES
    weights = state_dict(sweep / "0" / "checkpoints" / "last.ckpt")
    assert "net.1.1.weight" in weights
    assert not processes_mentioning(str(sweep))


def test_slurm_launcher_asks_one_task_per_device():
    require("slurm")
    overrides = ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra/launcher=slurm"]
    cfg = compose_config(
        *overrides, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=240", hydra=True
    )
    launcher = instantiate(cfg.hydra.launcher)  # the plugin's SlurmLauncher, as Hydra builds it
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert (params["partition"], params["timeout_min"]) == ("gpu", 240)


@pytest.mark.slow
def test_finished_runs_exit_0_every_time(tmp_path):
    """LIGHTFIT_DDP_RUNS tiny runs in a row (5 unless set; .ci/lowest runs 20 at the lowest
    versions). Before each rank ended its process group (distributed.end_process_group), gloo's
    threads died with the interpreter, and now and then a rank that had finished its work was
    aborted there (`terminate called without an active exception`): the run failed."""
    runs = int(os.environ.get("LIGHTFIT_DDP_RUNS", "5"))
    tiny = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
    for i in range(1, runs + 1):
        run = tmp_path / f"run{i}"
        proc = cli(*DDP, *tiny, "logger=none", f"hydra.run.dir={run}")
        assert proc.returncode == 0, f"run {i} of {runs}: {proc.stderr[-3000:]}"
        assert "terminate called" not in proc.stderr, f"run {i} of {runs}: {proc.stderr[-3000:]}"
        assert (run / "results.json").is_file()
        assert not processes_mentioning(str(run))


class FailingOnRankOne(AutomaticLoop):
    """loop=automatic, but rank 1 stops at its second batch with a user's error; rank 0 goes on
    into the next gradient all-reduce, where it waits for rank 1."""

    def training_step(self, batch, batch_idx):
        if self.global_rank == 1 and batch_idx == 1:
            Path(self.trainer.default_root_dir, "failed_at").write_text(str(time.time()))
            raise LightfitError("rank 1 met bad data at batch 1")
        return super().training_step(batch, batch_idx)


@pytest.mark.slow
def test_one_failing_rank_stops_the_other_at_once_with_its_line(tmp_path, monkeypatch):
    # the ranks import this module (loop.module._target_=test_ddp.FailingOnRankOne)
    pythonpath = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    run = tmp_path / "run"
    proc = cli(
        *DDP, "loop.module._target_=test_ddp.FailingOnRankOne", f"hydra.run.dir={run}", timeout=480
    )  # a run took 206 s on 2 shared cores at load 18
    ended = time.time()
    assert proc.returncode == 2, proc.stderr
    # rank 0's gloo error (the peer closed its connection) is not shown: rank 1's line is the news
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["lightfit-train: error: rank 1 met bad data at batch 1"], proc.stderr
    assert not (run / "results.json").exists()
    assert not processes_mentioning(str(run))
    # rank 0 was not left waiting in the all-reduce, nor the launcher polling (every 30 s at torch 2.2)
    assert ended - float((run / "failed_at").read_text()) < 30


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_one_line(tmp_path):
    run = tmp_path / "run"
    proc = cli(*DDP, "data=npz", f"data.path={tmp_path / 'missing.npz'}", f"hydra.run.dir={run}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"lightfit-train: error: data file not found: {tmp_path / 'missing.npz'}"], proc.stderr
    assert not (run / "results.json").exists()
    assert not processes_mentioning(str(run))


# loop=automatic: tests/test_kill.py sends SIGTERM to a ddp_cpu launcher and resumes the run.
@pytest.mark.slow
@pytest.mark.parametrize("loop", ["explicit"])
def test_sigterm_stops_every_rank_at_one_batch_and_saves(tmp_path, loop):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["trainer=ddp_cpu", f"loop={loop}", "trainer.max_epochs=1000", "logger=none"]
    args.append(f"hydra.run.dir={run}")
    job = subprocess.Popen(
        [sys.executable, "-m", "lightfit.cli.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        for line in job.stdout:  # wait until the ranks train
            if line.startswith("epoch 1/"):
                break
        job.send_signal(signal.SIGTERM)  # the launcher passes it on to both ranks
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 128 + signal.SIGTERM, stderr
    # The ranks agreed on the batch and saved together; a rank left waiting would have been
    # killed by the launcher after its grace period, and nothing would have been saved.
    saved = run / "checkpoints" / "interrupted.ckpt"
    assert "stopped by SIGTERM at epoch" in stderr and f"saved {saved}" in stderr, stderr
    assert torch.load(saved, map_location="cpu", weights_only=True)
    assert not (run / "results.json").exists()
    # The ranks end after their launcher; wait for that state (the bound only stops a hang).
    deadline = time.monotonic() + 120
    while processes_mentioning(str(run)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(run))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_on_gpus(tmp_path):
    run = tmp_path / "run"
    proc = cli("trainer=ddp", "trainer.devices=2", "trainer.max_epochs=2", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert not processes_mentioning(str(run))

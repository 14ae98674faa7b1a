"""Killed at random moments, resumed each time: the same weights, results.json and metrics.csv.

The short version of `make kill-test` (scripts/kill_test.py): real training processes, killed
with SIGKILL and SIGTERM in the middle of epochs, resumed from the newest checkpoint
(a step checkpoint, interrupted.ckpt or an epoch-end last.ckpt), compared with a run that
was never stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # many training processes: `make test-all`
SCRIPT = Path(__file__).parents[1] / "scripts" / "kill_test.py"


def kill_test(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "outcome.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--keep", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "identical" in proc.stdout  # the table
    return json.loads(out.read_text())


def test_killed_and_resumed_runs_end_as_if_never_stopped(tmp_path):
    outcomes = kill_test(tmp_path, "--quick", "--loops", "automatic", "explicit")
    for outcome in outcomes:
        assert sorted(outcome["kills"]) == ["KILL", "TERM"], outcome  # the kills landed in training
        assert outcome["same"] == {"weights": True, "results.json": True, "metrics.csv": True}, outcome
        assert any(r.startswith("mid-epoch") for r in outcome["resumed_from"]), outcome
        # No bound in steps: how many steps a SIGKILL loses depends on when it lands (the step
        # checkpoint of every 7 steps may still be in its background write). What holds: a stop
        # (SIGTERM) loses nothing, and a SIGKILL no more than its own start trained.
        lost_at_most = sum(a["steps"] for a in outcome["attempts"] if a["signal"] == "KILL")
        assert 0 <= outcome["steps_redone"] <= lost_at_most, outcome


@pytest.mark.parametrize("loop", ["automatic"])
def test_ddp_sigterm_to_the_launcher_mid_epoch_then_resume(tmp_path, loop):
    """trainer=ddp_cpu: rank 1's RNGs and training metrics travel through rank 0's checkpoint."""
    args = ["--ddp", "--loops", loop, "--kills", "1", "--signals", "TERM", "--epochs", "2"]
    (outcome,) = kill_test(tmp_path, *args)
    assert outcome["kills"] == ["TERM"]
    assert outcome["resumed_from"][1].startswith("mid-epoch"), outcome
    assert outcome["same"] == {"weights": True, "results.json": True, "metrics.csv": True}, outcome

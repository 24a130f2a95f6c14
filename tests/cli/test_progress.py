"""Long work says what it is doing, also when no terminal is attached."""

import logging
import subprocess
import sys

import torch

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.training import train


def test_training_logs_progress_lines_without_a_terminal(monkeypatch, caplog):
    monkeypatch.setenv("BOLTZFLOW_PROGRESS_INTERVAL", "0")
    flow = spline_coupling_flow((2,), num_layers=2, hidden=8, seed=0)
    stage = {"loss": "reverse_kl", "steps": 20, "batch_size": 64, "lr": 1e-3}
    with caplog.at_level(logging.INFO, logger="boltzflow.progress"):
        train(flow, DoubleWell2D(), [stage])
    lines = [r.getMessage() for r in caplog.records if r.name == "boltzflow.progress"]
    assert len(lines) >= 5, lines
    assert lines[-1].startswith("training: 20/20 (100%), loss=")
    assert all("<" in line and "]" in line for line in lines)  # elapsed<remaining
    caplog.clear()  # negative control: progress=False says nothing
    with caplog.at_level(logging.INFO, logger="boltzflow.progress"):
        train(flow, DoubleWell2D(), [stage], progress=False)
    assert not caplog.records
    assert torch.get_default_dtype() == torch.float32


def test_cli_run_without_a_terminal_reports_stages_and_progress(tiny_recipe, tmp_path):
    """``boltzflow run`` with output redirected (no TTY) logs each stage and progress lines."""
    env = {"BOLTZFLOW_PROGRESS_INTERVAL": "0", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "boltzflow.cli", "run", str(tiny_recipe), "--budget", "smoke"]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr
    for stage in ("building the target", "training:", "sampling:", "writing the report"):
        assert stage in err, (stage, err[-2000:])
    assert "training: 40/40 (100%), loss=" in err

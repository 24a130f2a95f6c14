"""Every shipped system runs end to end at ``--budget smoke`` and honours the run contract."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from boltzflow.cli import main
from boltzflow.idata import read_samples
from boltzflow.recipes import list_systems

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT.parent / "shared" / "tools" / "check_run.py"
SYSTEMS = sorted(list_systems())


def _contract_problems(out: Path) -> list[str]:
    """Problems reported by the project's run-contract checker (when it is available)."""
    if not CHECKER.is_file():
        return []
    spec = importlib.util.spec_from_file_location("check_run", CHECKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.check(str(out))


@pytest.mark.parametrize("system", SYSTEMS)
def test_smoke_run_writes_the_run_contract(system, tmp_path):
    out = tmp_path / system
    assert main(["run", system, "--budget", "smoke", "--seed", "0", "--out", str(out)]) == 0
    assert _contract_problems(out) == []
    s = json.loads((out / "summary.json").read_text())
    assert s["system"] == system and s["budget"] == "smoke"
    rw = s["reweighting"]
    assert 0.0 <= rw["ess_fraction"] <= 1.0 and math.isfinite(rw["log_z"]["mean"])
    assert s["training"]["energy_evaluations"] >= 0 and s["sampling"]["n_samples"] > 0
    for name in ("summary.json", "samples.nc", "flow.pt", "flow.json", "report.md"):
        assert (out / name).is_file(), name
    idata = read_samples(out / "samples.nc")
    assert "log_weight" in idata.sample_stats and "energy" in idata.sample_stats
    if s["sampling"]["acceptance_rate"] is not None:
        assert "accepted" in idata.sample_stats
    report = (out / "report.md").read_text()
    for png in out.glob("*.png"):
        assert png.name in report

"""Every shipped system runs end to end at ``--budget smoke`` and honours the run contract."""

import pytest
from run_contract import contract_problems

from boltzflow.cli import main
from boltzflow.runs.recipes import list_systems, load_recipe

SYSTEMS = sorted(list_systems())


@pytest.mark.parametrize("system", SYSTEMS)
def test_smoke_run_writes_the_run_contract(system, tmp_path):
    out = tmp_path / system
    assert main(["run", system, "--budget", "smoke", "--seed", "0", "--out", str(out)]) == 0
    assert contract_problems(out, load_recipe(system, "smoke"), seed=0) == []

"""The run-contract checker accepts a run directory that honours the contract and reports each
kind of breach (so the smoke test's ``contract_problems(...) == []`` can fail)."""

import json

import pytest
import torch
from run_contract import asked_samples, contract_problems

import boltzflow
from boltzflow.reporting.idata import to_inference_data, write_samples
from boltzflow.runs.recipes import load_recipe
from boltzflow.sampling.runners import SamplingResult

RECIPE = load_recipe("double-well", "smoke")  # reverse KL 2 x 100 steps, flow IMH 8 x 500
CHAINS, DRAWS = 8, 500


def summary():
    n = CHAINS * DRAWS
    return {
        "system": "double-well",
        "boltzflow_version": boltzflow.__version__,
        "seed": 3,
        "budget": "smoke",
        "training": {"loss": "reverse_kl", "steps": 200, "energy_evaluations": 51200,
                     "wall_seconds": 2.5},
        "sampling": {"method": "imh", "n_samples": n, "energy_evaluations": 8000,
                     "acceptance_rate": 0.6, "wall_seconds": 0.7},
        "reweighting": {"n": n, "ess": 0.8 * n, "ess_fraction": 0.8,
                        "log_z": {"mean": -1.2, "stderr": 0.01}, "pareto_k": 0.2,
                        "n_nonfinite": 0},
        "observables": {"x0": {"mean": 0.9, "stderr": 0.02, "unit": "1"}},
        "free_energies": {"right-left": {"mean": -2.0, "stderr": 0.05, "unit": "kT"}},
    }  # fmt: skip


def write_run(out, s=None, accepted=True, draws=DRAWS):
    """A run directory that honours the contract for RECIPE at seed 3 (unless changed)."""
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary() if s is None else s))
    shape = (CHAINS, draws)
    result = SamplingResult(
        torch.zeros(*shape, 2), torch.zeros(shape), torch.ones(shape),
        torch.ones(shape, dtype=torch.bool) if accepted else None, "imh", 8000, 0.7, {},
    )  # fmt: skip
    write_samples(to_inference_data(result, {"x0": torch.zeros(shape)}), out / "samples.nc")
    (out / "flow.pt").write_bytes(b"")
    (out / "flow.json").write_text(json.dumps({"builder": RECIPE.flow["kind"]}))
    (out / "training.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (out / "report.md").write_text("# double-well\n\n![Training curve](training.png)\n")
    return out


def test_a_run_that_honours_the_contract_has_no_problems(tmp_path):
    assert contract_problems(write_run(tmp_path / "run"), RECIPE, seed=3) == []


def _set(path, value):
    def corrupt(s):
        *head, last = path.split(".")
        for key in head:
            s = s[key]
        if value is KeyError:
            del s[last]
        else:
            s[last] = value

    return corrupt


SUMMARY_BREACHES = {
    "missing key": (_set("reweighting.ess", KeyError), "reweighting lacks 'ess'"),
    "missing section": (_set("free_energies", KeyError), "summary lacks 'free_energies'"),
    "ESS fraction 1.5": (_set("reweighting.ess_fraction", 1.5), "reweighting.ess_fraction"),
    "ESS above n": (_set("reweighting.ess", 4001.0), "reweighting.ess"),
    "wrong version": (_set("boltzflow_version", "0.0.0"), "summary.boltzflow_version"),
    "wrong seed": (_set("seed", 0), "summary.seed"),
    "wrong system": (_set("system", "funnel"), "summary.system"),
    "steps not the recipe's": (_set("training.steps", 150), "training.steps"),
    "no sampling evaluations": (_set("sampling.energy_evaluations", 0), "sampling.energy_ev"),
    "no training evaluations": (_set("training.energy_evaluations", 0), "training evaluates"),
    "zero wall time": (_set("sampling.wall_seconds", 0.0), "sampling.wall_seconds"),
    "n_samples not asked": (_set("sampling.n_samples", 3992), "sampling.n_samples"),
    "non-finite log Z": (_set("reweighting.log_z.mean", float("nan")), "log_z.mean"),
    "negative stderr": (_set("reweighting.log_z.stderr", -0.1), "log_z.stderr"),
    "float n_nonfinite": (_set("reweighting.n_nonfinite", 1.0), "reweighting.n_nonfinite"),
    "no unit": (_set("observables.x0.unit", KeyError), "observables.x0 lacks 'unit'"),
    "acceptance above 1": (_set("sampling.acceptance_rate", 1.2), "sampling.acceptance_rate"),
}  # fmt: skip


@pytest.mark.parametrize("breach", list(SUMMARY_BREACHES))
def test_a_corrupted_summary_is_reported(tmp_path, breach):
    corrupt, expected = SUMMARY_BREACHES[breach]
    s = summary()
    corrupt(s)
    problems = contract_problems(write_run(tmp_path / "run", s), RECIPE, seed=3)
    assert any(expected in p for p in problems), problems


def test_samples_that_break_the_contract_are_reported(tmp_path):
    short = contract_problems(write_run(tmp_path / "short", draws=400), RECIPE, seed=3)
    assert any("sample_stats.log_weight holds 3200 draws" in p for p in short), short
    no_acc = contract_problems(write_run(tmp_path / "no_acc", accepted=False), RECIPE, seed=3)
    assert no_acc == ["samples.nc lacks sample_stats.accepted"]


def test_files_figures_and_flow_metadata_are_checked(tmp_path):
    out = write_run(tmp_path / "run")
    (out / "extra.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (out / "flow.json").write_text(json.dumps({"builder_kwargs": {}}))
    (out / "flow.pt").unlink()
    problems = contract_problems(out, RECIPE, seed=3)
    assert sorted(problems) == sorted(
        [
            "no flow.pt",
            "report.md does not reference extra.png",
            f"flow.json does not name the recipe's builder {RECIPE.flow['kind']!r}",
        ]
    )
    (out / "summary.json").write_text("{not json")
    assert any("summary.json does not parse" in p for p in contract_problems(out, RECIPE, 3))


def test_asked_samples_round_up_to_whole_draws_per_chain():
    assert asked_samples(RECIPE) == 4000  # 8 chains x 500
    assert asked_samples(load_recipe("phi4-L8", "smoke")) == 4032  # 64 chains x ceil(62.5)
    assert asked_samples(load_recipe("gmm40", "smoke")) == 5000  # i.i.d. flow draws

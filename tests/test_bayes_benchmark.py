"""The cost accounting of `benchmarks/bayes.py`: gradients at their measured cost in plain
evaluations, gradient evaluations counted as they happen, and the SMC islands' ESS."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bayes = pytest.importorskip("bayes")

from boltzflow.energies.astro_pta import PTAPosterior  # noqa: E402


@pytest.fixture(scope="module")
def small_pta():
    return PTAPosterior(seed=0, n_pulsars=3, n_toas=40, n_freq=4)


def test_gradients_count_at_their_cost():
    theta = np.random.default_rng(0).normal(size=(4, 500, 2))
    run = {"theta": theta, "evaluations": 1000, "gradient_evaluations": 600, "wall_seconds": 1.0}
    q = bayes.efficiency(run, gradient_ratio=5.0)
    assert q["plain_equivalents"] == 400 + 600 * 5.0
    assert q["cost_per_ess"] == pytest.approx(3400 / q["min_bulk_ess"])
    # the old accounting (a gradient counted as one evaluation) is what a ratio of 1 gives
    assert bayes.efficiency(run)["cost_per_ess"] == pytest.approx(1000 / q["min_bulk_ess"])


def test_gradient_evaluations_are_counted_and_priced(small_pta):
    x = small_pta.sample_prior(6, torch.Generator().manual_seed(1)).double()
    with bayes.count_gradients(small_pta) as grads:
        with torch.no_grad():
            small_pta.energy(x)
        small_pta.force(x[:4])
    assert grads["n"] == 4
    assert "energy" not in vars(small_pta)  # the counter is removed afterwards
    cost = bayes.gradient_cost(small_pta, batch=8, repeats=3)
    assert cost["ratio"] > 1.0 and cost["plain_cpu_seconds"] > 0


def test_island_ess_sees_copies():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(64, 256, 2))
    assert bayes.island_ess(iid) == pytest.approx(64 * 256, rel=3 * np.sqrt(2 / 63))
    # every particle copied 4 times (a resampling that no move decorrelated): a quarter
    copies = np.repeat(iid[:, :64], 4, axis=1)
    assert bayes.island_ess(copies) == pytest.approx(64 * 64, rel=3 * np.sqrt(2 / 63))

"""The standard posteriors of the benchmark suite: their references, and the suite at smoke size.

The mixture's closed-form moments and evidence are checked against a grid over the posterior
and its nested-sampling form (prior transform, likelihood) against a grid over the unit cube;
a mutant likelihood (one component's weight dropped) misses both. The slow test runs
`benchmarks/posteriors.py --budget smoke` and checks its JSON and the regression's exact log Z.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from boltzflow.energies.standard_posteriors import STANDARD_POSTERIORS, standard_posterior

ROOT = Path(__file__).resolve().parents[2]


def _grid(lo=-20.0, hi=20.0, n=301):
    g = np.linspace(lo, hi, n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], -1), (g[1] - g[0]) ** 2


def test_mixture_reference_matches_a_grid(float64):
    sp = standard_posterior("mixture")
    post = sp.post

    pts, h2 = _grid()
    with torch.no_grad():
        log_p = -post.energy(torch.as_tensor(pts)).numpy()
    log_z = float(logsumexp(log_p) + math.log(h2))
    w = np.exp(log_p - logsumexp(log_p))
    assert abs(log_z - sp.log_z) < 1e-6
    mean = w @ pts
    assert np.allclose(mean, sp.mean, atol=1e-6)
    assert np.allclose(np.sqrt(w @ (pts - mean) ** 2), sp.sd, atol=1e-6)
    # the nested form: the unit cube's integral of L(T(u)) is Z (midpoint rule, ppf tails)
    n = 60
    u = (np.arange(n) + 0.5) / n
    uu = np.stack(np.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    ll = np.array([sp.nested_log_likelihood(sp.prior_transform(ui)) for ui in uu])
    log_z_nested = float(logsumexp(ll) - math.log(ll.size))
    assert abs(log_z_nested - sp.log_z) < 0.05, (log_z_nested, sp.log_z)

    # mutant: the 0.3-weight mode dropped; the closed form no longer matches
    log_z_m = float(logsumexp(log_p + np.where(pts[:, 0] < 0, -50.0, 0.0)) + math.log(h2))
    assert abs(log_z_m - sp.log_z) > 0.1


def test_suite_names_and_shapes(float64):
    sp = standard_posterior("regression")
    assert sp.post.dim == 4 and sp.mean.shape == (4,) and sp.post.log_z == sp.log_z
    assert set(STANDARD_POSTERIORS) == {"eight_schools", "garch", "arma", "regression", "mixture"}
    with pytest.raises(KeyError, match="one of"):
        standard_posterior("funnel")


@pytest.mark.slow
@pytest.mark.long  # 5.6 min on one core: `python -m pytest -m slow`
def test_benchmark_smoke_run(tmp_path):
    out = tmp_path / "posteriors.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "posteriors.py"), "--budget", "smoke"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["posteriors"]) == set(STANDARD_POSTERIORS)
    for entry in res["posteriors"].values():
        assert set(entry["samplers"]) == {"emcee", "hmc", "hybrid", "smc", "dynesty"}
        assert entry["grad_cost"]["grad_cost"] > 0
        for kind in ("emcee", "hmc", "hybrid", "smc"):
            row = entry["samplers"][kind]
            for key in ("rhat_max", "ess_bulk_min", "evaluations_per_ess", "wall_seconds"):
                assert np.isfinite(row[key]), (kind, key, row)
            assert np.isfinite(row["max_abs_z_mean"]) and np.isfinite(row["max_abs_z_sd"])
        assert "log_z" in entry["samplers"]["smc"] and "log_z" in entry["samplers"]["hybrid"]
    # the regression's evidence is exact: SMC's log Z within 4 of its own errors
    lz = res["posteriors"]["regression"]["samplers"]["smc"]["log_z"]
    assert abs(lz["z"]) < 4, lz

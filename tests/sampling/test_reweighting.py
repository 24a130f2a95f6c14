"""Reweighting estimators against exact answers, each with a negative control."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from boltzflow.energies import CallableEnergy
from boltzflow.sampling.reweighting import (
    expectation,
    free_energy_difference,
    kish_ess,
    log_weights,
    pareto_k,
    reweight,
)

N = 20000
SHIFT = 0.5  # target N(SHIFT, 1) unnormalized: log Z = 0.5 log 2π
EXACT_LOG_Z = 0.5 * math.log(2 * math.pi)


def _gaussian_draws(seed, n=N):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    log_q = -0.5 * x[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    return x, log_q


TARGET = CallableEnergy(lambda x: 0.5 * (x[:, 0] - SHIFT) ** 2, event_shape=1)


def test_log_weights_match_formula_and_map_nonfinite_to_minus_inf():
    x, log_q = _gaussian_draws(0, 5)
    lw = log_weights(TARGET, x, log_q)
    assert torch.allclose(lw, -0.5 * (x[:, 0] - SHIFT) ** 2 - log_q)
    bad = CallableEnergy(lambda x: torch.full((x.shape[0],), math.nan, dtype=x.dtype), 1)
    lw_bad = log_weights(bad, x, log_q)
    assert torch.all(lw_bad == -math.inf)


def test_log_z_z_score_and_wrong_normalizer_is_detected():
    x, log_q = _gaussian_draws(1)
    r = reweight(log_weights(TARGET, x, log_q), seed=0)
    assert abs(r.log_z.mean - EXACT_LOG_Z) / r.log_z.stderr < 3.0
    # Negative control: a flow whose log q is off by 0.05 nats biases log Z by 0.05.
    r_bad = reweight(log_weights(TARGET, x, log_q + 0.05), seed=0)
    assert abs(r_bad.log_z.mean - EXACT_LOG_Z) / r_bad.log_z.stderr > 5.0


def test_bootstrap_stderr_is_calibrated_over_replicates():
    """Across independent replicates, z-scores of log Z have unit spread."""
    zs = []
    for seed in range(30):
        x, log_q = _gaussian_draws(100 + seed, 4000)
        r = reweight(log_weights(TARGET, x, log_q), seed=seed, n_bootstrap=100)
        zs.append((r.log_z.mean - EXACT_LOG_Z) / r.log_z.stderr)
    zs = np.array(zs)
    assert 0.6 < zs.std() < 1.5
    assert abs(zs.mean()) < 3 * 1.0 / math.sqrt(len(zs)) + 0.1


def test_ess_exact_values():
    assert kish_ess(np.zeros(100)) == pytest.approx(100.0)
    lw = np.full(100, -np.inf)
    lw[7] = 0.0
    assert kish_ess(lw) == pytest.approx(1.0)
    # Analytic ESS fraction for q=N(0,1), p=N(s,1): exp(-s^2).
    x, log_q = _gaussian_draws(2)
    r = reweight(log_weights(TARGET, x, log_q))
    assert r.ess_fraction == pytest.approx(math.exp(-(SHIFT**2)), abs=0.02)


def test_expectation_z_score_and_negative_control():
    x, log_q = _gaussian_draws(3)
    lw = log_weights(TARGET, x, log_q)
    est = expectation(x[:, 0], lw)
    assert abs(est.mean - SHIFT) / est.stderr < 3.0
    wrong = expectation(x[:, 0], torch.zeros_like(lw))  # unweighted: mean 0, not SHIFT
    assert abs(wrong.mean - SHIFT) / wrong.stderr > 5.0


def test_free_energy_difference_against_exact_and_negative_control():
    x, log_q = _gaussian_draws(4)
    lw = log_weights(TARGET, x, log_q)
    in_a, in_b = x[:, 0] < 0, x[:, 0] >= 0
    exact = -math.log(norm.cdf(-SHIFT) / norm.sf(-SHIFT))
    est = free_energy_difference(in_a, in_b, lw, seed=1)
    assert abs(est.mean - exact) / est.stderr < 3.0
    wrong = free_energy_difference(in_a, in_b, torch.zeros_like(lw), seed=1)
    assert abs(wrong.mean - exact) / wrong.stderr > 5.0


def test_nonfinite_counted_never_nan():
    lw = np.zeros(1000)
    lw[:10] = np.nan
    lw[10:15] = np.inf
    lw[15:20] = -np.inf
    r = reweight(lw)
    assert r.n_nonfinite == 20  # NaN, +inf and -inf (u = +inf) are all counted
    assert r.pareto_k == 0.0  # the remaining weights are uniform
    assert r.ess == pytest.approx(980.0)
    assert math.isfinite(r.log_z.mean) and math.isfinite(r.log_z.stderr)
    assert math.isfinite(expectation(np.arange(1000.0), lw).mean)


def test_pareto_k_flags_heavy_tails():
    rng = np.random.default_rng(0)
    assert pareto_k(rng.normal(size=5000) * 0.1) < 0.5
    # q = N(0,1) proposing for p = N(0, 5^2): P(w > t) ~ t^(-1/0.96), so k = 0.96.
    x = rng.normal(size=20000)
    heavy = -(x**2) / 50 + x**2 / 2
    assert pareto_k(heavy) > 0.7


def test_all_zero_weights():
    r = reweight(np.full(10, -np.inf))
    assert r.ess == 0.0 and r.log_z.mean == -math.inf and r.n_nonfinite == 10


def test_free_energy_from_correlated_chains_is_calibrated_and_negative_control():
    """AR(1) chains in N(SHIFT, 1): the MCSE-based ΔF error accounts for autocorrelation."""
    from boltzflow.sampling.reweighting import free_energy_difference_chains

    rng = np.random.default_rng(5)
    rho, chains, draws = 0.9, 8, 5000
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * rng.normal(size=chains)
    x += SHIFT
    exact = -math.log(norm.cdf(-SHIFT) / norm.sf(-SHIFT))
    est = free_energy_difference_chains(x < 0, x >= 0)
    assert abs(est.mean - exact) / est.stderr < 3.0
    # Treating the draws as independent underestimates the error by ~sqrt(tau) = sqrt(19).
    naive = free_energy_difference(x.ravel() < 0, x.ravel() >= 0, np.zeros(x.size))
    assert est.stderr > 3 * naive.stderr
    wrong = free_energy_difference_chains(x < 0.3, x >= 0.3)
    assert abs(wrong.mean - exact) / wrong.stderr > 5.0

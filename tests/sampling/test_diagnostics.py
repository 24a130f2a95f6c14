"""Diagnostics against exact answers: AR(1) autocorrelation time, ESS, MCSE, R-hat, z-scores."""

import math

import numpy as np
import pytest
import torch
from scipy import signal, stats

from boltzflow import arviz_compat
from boltzflow.sampling import diagnostics as diag


def ar1(rho: float, chains: int, draws: int, seed: int, dim: int = 1) -> np.ndarray:
    """Stationary unit-variance AR(1) ``x_t = ρ x_{t-1} + sqrt(1-ρ²) ε_t``, [chains, draws, dim]."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((chains, draws, dim))
    eps[:, 0] /= math.sqrt(1 - rho**2)  # x_0 ~ N(0, 1): stationary start
    x = signal.lfilter([math.sqrt(1 - rho**2)], [1.0, -rho], eps, axis=1)
    return x


def tau_ar1(rho: float) -> float:
    return (1 + rho) / (1 - rho)


def tau_rel_sd(tau: float, n: int, c: float = 5.0) -> float:
    """Madras–Sokal relative error of τ̂ with window M = cτ: sqrt(2(2M+1)/N)."""
    return math.sqrt(2 * (2 * c * tau + 1) / n)


CHAINS, DRAWS = 4, 50_000


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_integrated_time_matches_ar1(rho):
    x = ar1(rho, CHAINS, DRAWS, seed=0)
    tau = diag.integrated_time(x)
    assert tau.shape == (1,)
    exact = tau_ar1(rho)
    sd = exact * tau_rel_sd(exact, CHAINS * DRAWS)
    assert abs(tau[0] - exact) < 4 * sd
    # negative control: the τ of a process with a different ρ is rejected
    wrong = tau_ar1(rho - 0.05)
    assert abs(tau[0] - wrong) > 4 * sd


def test_integrated_time_per_coordinate_and_event_shape():
    rhos = np.array([0.0, 0.5, 0.8, 0.9, 0.3, 0.6])
    x = np.concatenate([ar1(r, 2, 40_000, seed=i) for i, r in enumerate(rhos)], axis=-1)
    tau = diag.integrated_time(torch.from_numpy(x.reshape(2, 40_000, 2, 3)))
    assert tau.shape == (2, 3)
    exact = (1 + rhos) / (1 - rhos)
    sd = exact * np.array([tau_rel_sd(t, 80_000) for t in exact])
    assert np.all(np.abs(tau.ravel() - exact) < 4 * sd)


def test_ess_and_mcse_match_ar1():
    rho = 0.8
    x = ar1(rho, CHAINS, DRAWS, seed=1)
    n = CHAINS * DRAWS
    exact_tau = tau_ar1(rho)
    rel = tau_rel_sd(exact_tau, n)
    for method in ("mean", "bulk"):
        ess = diag.ess(x, method=method)
        assert ess.shape == (1,)
        assert abs(ess[0] * exact_tau / n - 1) < 4 * rel, method
    # the error of the mean of a unit-variance AR(1) chain is sqrt(τ/N)
    exact_mcse = math.sqrt(exact_tau / n)
    assert abs(diag.mcse(x)[0] / exact_mcse - 1) < 4 * rel
    # MCSE agrees with arviz's own estimator of the same quantity (arviz 0.x and 1.x)
    np.testing.assert_allclose(diag.mcse(x), arviz_compat.mcse(x, method="mean"), rtol=1e-10)
    # tail ESS is defined and smaller than the number of draws for a correlated chain
    assert 0 < diag.ess(x, method="tail")[0] < n


def test_calibrated_z_with_negative_control():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5000, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 1.0, -1.0])
    truth = np.array([0.0, 1.0, -1.0])
    thr = stats.norm.isf(0.001 / (2 * 3))
    z = diag.calibrated_z(x, truth)
    assert z.shape == (3,)
    assert np.all(z < thr)
    # a 0.1-sd shift is 0.1 * sqrt(20000) ≈ 14 standard errors away
    z_bad = diag.calibrated_z(x, truth + 0.1 * np.array([1.0, 2.0, 0.5]))
    assert np.all(z_bad > thr)
    # torch input and torch truth work the same way
    np.testing.assert_allclose(diag.calibrated_z(torch.from_numpy(x), torch.tensor(truth)), z)


def test_rhat_detects_unmixed_chains():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2000, 2))
    assert np.all(diag.rhat(x) < 1.01)
    x_bad = x + np.array([0.0, 0.0, 0.0, 2.0])[:, None, None]
    assert np.all(diag.rhat(x_bad) > 1.1)


def test_one_dimensional_input_is_one_chain_and_summary():
    x = ar1(0.5, 1, 20_000, seed=4)[0, :, 0]
    assert diag.as_chains(x).shape == (1, 20_000)
    s = diag.summarize(ar1(0.5, 2, 10_000, seed=5, dim=2))
    for field in s:
        assert field.shape == (2,)
    assert np.all(np.abs(s.tau_int - 3.0) < 4 * 3.0 * tau_rel_sd(3.0, 20_000))
    assert np.all(np.abs(s.mean) < 4 * s.mcse)

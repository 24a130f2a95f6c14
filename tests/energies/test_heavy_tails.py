"""Heavy-tailed targets: exact densities, quantiles and samplers; the regression reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from boltzflow.energies.heavy_tails import ProductStudentT, StudentTRegression
from boltzflow.sampling.reweighting import expectation, reweight

Z_CRIT = 4.0


def test_product_energy_is_the_normalized_density():
    target = ProductStudentT(5, df=[0.5, 1.0, 2.0], n_heavy=3, scale=1.5)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    logp = sum(stats.t(nu, scale=1.5).logpdf(x[:, j]) for j, nu in enumerate([0.5, 1.0, 2.0]))
    logp = logp + stats.norm(scale=1.5).logpdf(x[:, 3:]).sum(1)
    np.testing.assert_allclose(-target.energy(x).numpy(), logp, rtol=1e-12)
    assert target.log_z == 0.0


def test_product_sampler_and_quantiles_agree():
    """Exceedances of the exact 99% and 99.9% quantiles: binomial z-tests per dimension."""
    target = ProductStudentT(5, df=[0.5, 1.0, 2.0], n_heavy=3)
    n = 200_000
    x = target.sample(n, torch.Generator().manual_seed(1)).numpy()
    for p in (0.99, 0.999):
        frac = (x > target.quantile(p)).mean(0)
        z = (frac - (1 - p)) / math.sqrt(p * (1 - p) / n)
        assert np.all(np.abs(z) < Z_CRIT), z
    for name in target.observables():
        assert target.exact_observable(name) in (0.01, 0.001)


@pytest.fixture(scope="module")
def regression():
    return StudentTRegression(grid=80)


def _is_draws(target, n, seed):
    """Importance draws from a Cauchy fitted to the reference median and deciles."""
    ref_lo, ref_mid, ref_hi = (target.quantile(p) for p in (0.1, 0.5, 0.9))
    scale = (ref_hi - ref_lo) / (2 * stats.t(1).ppf(0.9))
    prop = stats.t(1, loc=ref_mid, scale=scale)
    y = prop.rvs(size=(n, 3), random_state=np.random.default_rng(seed))
    log_w = -target.energy(torch.from_numpy(y)).numpy() - prop.logpdf(y).sum(1)
    return y, log_w


@pytest.fixture(scope="module")
def draws(regression):
    return _is_draws(regression, 100_000, seed=0)


def test_regression_reference_matches_importance_sampling(regression, draws):
    y, log_w = draws
    rw = reweight(log_w, n_bootstrap=100)
    assert rw.pareto_k < 0.7
    assert abs(rw.log_z.mean - regression.log_z) < Z_CRIT * rw.log_z.stderr
    for k in range(3):
        q99 = regression.quantile(0.99)[k]
        est = expectation((y[:, k] > q99).astype(float), log_w)
        assert abs(est.mean - 0.01) < Z_CRIT * est.stderr, (k, est)


class _NoJacobian(StudentTRegression):
    """Mutant quadrature: the tangent map's 1/cos² Jacobian dropped."""

    def _grid(self, centre, width, m):
        axes, lw = super()._grid(centre, width, m)
        phi = (np.arange(m) + 0.5) / m * np.pi - np.pi / 2
        drop = 2 * np.log(np.cos(phi))
        return axes, lw + drop[:, None, None] + drop[None, :, None] + drop[None, None, :]


def test_mutant_quadrature_is_detected(draws):
    mutant = _NoJacobian(grid=80)
    _, log_w = draws
    rw = reweight(log_w, n_bootstrap=100)
    assert abs(rw.log_z.mean - mutant.log_z) > Z_CRIT * rw.log_z.stderr

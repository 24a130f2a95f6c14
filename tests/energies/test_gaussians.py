"""GaussianMixture/gmm40, Funnel and CorrelatedGaussian against formulas, quadrature and MC.

Statistical tests are seeded and calibrated (KS / chi-square p > 1e-3, |z| < 4 or 5 where
many entries are tested at once); every check has a negative control that must fail.
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from boltzflow.energies import CorrelatedGaussian, Funnel, GaussianMixture, gmm40

torch.set_num_threads(1)
F64 = torch.float64


def grid_log_z(energy, lim, h, center=(0.0, 0.0), moments=False):
    """Trapezoid rule on a 2-D grid (spectrally accurate for Gaussian-like integrands)."""
    a = torch.arange(-lim, lim + h / 2, h, dtype=F64)
    g1, g2 = torch.meshgrid(a + center[0], a + center[1], indexing="ij")
    x = torch.stack([g1.reshape(-1), g2.reshape(-1)], -1)
    u = torch.cat([energy.energy(c) for c in x.split(50000)])
    log_z = (torch.logsumexp(-u, 0) + 2 * math.log(h)).item()
    if not moments:
        return log_z
    w = torch.softmax(-u, 0)
    return log_z, (w[:, None] * x).sum(0)


# --------------------------------------------------------------------------- mixtures
def test_gmm_energy_matches_formula():
    means = np.array([[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]])
    scales = np.array([[0.5, 1.0], [1.0, 1.0], [2.0, 0.3]])
    weights = np.array([1.0, 2.0, 3.0])
    e = GaussianMixture(means, scales, weights)
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    pdf = sum(
        w / 6 * stats.norm.pdf(x[:, 0], m[0], s[0]) * stats.norm.pdf(x[:, 1], m[1], s[1])
        for w, m, s in zip(weights, means, scales, strict=True)
    )
    torch.testing.assert_close(e.energy(x), torch.from_numpy(-np.log(pdf)), rtol=1e-13, atol=1e-13)


def test_gmm40_construction_is_documented_exactly():
    e = gmm40()
    g = torch.Generator().manual_seed(0)
    expected = ((torch.rand((40, 2), generator=g) - 0.5) * 2 * 40.0).to(F64)
    assert torch.equal(e.means, expected) and e.n_modes == 40
    assert e.means.abs().max() <= 40.0 and torch.allclose(
        e.weights, torch.full((40,), 1 / 40.0, dtype=F64)
    )
    assert not torch.equal(gmm40(seed=1).means, e.means)
    assert gmm40(dim=3, n_modes=5).means.shape == (5, 3)


def test_gmm40_log_z_and_mean_match_grid_quadrature():
    e = gmm40()
    log_z, mean = grid_log_z(e, lim=48.0, h=0.2, moments=True)
    assert e.log_z == 0.0 and abs(log_z) < 1e-10
    torch.testing.assert_close(mean, e.exact_mean(), rtol=0, atol=1e-9)
    # negative control: a 0.1% normalization error is 1e6 times the tolerance
    off = GaussianMixture(e.means, 1.001)
    assert abs(grid_log_z(off, lim=48.0, h=0.2) - 0.0) < 1e-10  # still normalized
    wrong_means = GaussianMixture(e.means[:39], 1.0)
    assert abs(wrong_means.exact_mean() - mean).max() > 1e-2


def test_gmm_sampler_marginals_and_modes():
    e = gmm40()
    n = 40000
    x = e.sample(n, torch.Generator().manual_seed(11))
    mu, s = e.means.numpy(), e.scales.numpy()

    def cdf(j):
        return lambda t: stats.norm.cdf((t[:, None] - mu[:, j]) / s[:, j]).mean(-1)

    for j in range(2):
        assert stats.kstest(x[:, j].numpy(), cdf(j)).pvalue > 1e-3
    z = (x.mean(0) - e.exact_mean()) / (x.std(0) / math.sqrt(n))
    assert z.abs().max() < 4
    counts = np.bincount(e.mode_assignment(x).numpy(), minlength=40)
    expected = _nearest_mean_probabilities(e)
    assert stats.chisquare(counts, n * expected).pvalue > 1e-3
    # negative control: unequal weights are detected by the same mode-count test
    w = torch.linspace(1.0, 1.5, 40, dtype=F64)
    y = GaussianMixture(e.means, 1.0, w).sample(n, torch.Generator().manual_seed(11))
    counts = np.bincount(e.mode_assignment(y).numpy(), minlength=40)
    assert stats.chisquare(counts, n * expected).pvalue < 1e-3


def _nearest_mean_probabilities(e, h=0.2):
    """P(nearest mean = k) on a grid (overlapping modes make it differ from 1/40 by ~1%)."""
    a = torch.arange(-48.0, 48.0 + h / 2, h, dtype=F64)
    g1, g2 = torch.meshgrid(a, a, indexing="ij")
    x = torch.stack([g1.reshape(-1), g2.reshape(-1)], -1)
    p = torch.exp(-e.energy(x)) * h * h
    return torch.bincount(e.mode_assignment(x), weights=p, minlength=40).numpy() / p.sum().item()


def test_gmm_mode_assignment_and_temperature():
    e = gmm40()
    assert e.mode_assignment(e.means).tolist() == list(range(40))
    hot = e.at_temperature(2.0)
    assert hot.log_z is None and e.log_z == 0.0
    with pytest.raises(NotImplementedError, match="T_ref"):
        hot.sample(3)
    with pytest.raises(NotImplementedError, match="T_ref"):
        hot.exact_mean()
    assert e.exact_observable("x2") == pytest.approx(float(e.exact_mean()[1]), abs=0)


def test_gmm_invalid_parameters_raise():
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture([0.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], 1.0, [1.0, -1.0])
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture([[0.0], [1.0]], [1.0, 0.0])


# ----------------------------------------------------------------------------- funnel
def test_funnel_energy_matches_formula():
    e = Funnel(dim=5, sigma=2.0)
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    v = x[:, 0].numpy()
    logp = stats.norm.logpdf(v, 0, 2.0) + stats.norm.logpdf(
        x[:, 1:].numpy(), 0, np.exp(v / 2)[:, None]
    ).sum(-1)
    torch.testing.assert_close(e.energy(x), torch.from_numpy(-logp), rtol=1e-13, atol=1e-12)


def _funnel2_quadrature(e, lim_y=14.0, n=1601):
    """log Z, E[v], P(v<0) for dim = 2: Simpson in (v, y) with x = y e^{v/2}, split at v=0."""
    s = math.sqrt(e.v_var)
    y = torch.linspace(-lim_y, lim_y, n, dtype=F64) * math.sqrt(e.temperature_scale)
    parts = []
    for lo, hi in [(min(e.v_mean - 12 * s, -1.0), 0.0), (0.0, max(e.v_mean + 12 * s, 1.0))]:
        v = torch.linspace(lo, hi, n, dtype=F64)
        gv, gy = torch.meshgrid(v, y, indexing="ij")
        x = torch.stack([gv.reshape(-1), (gy * torch.exp(gv / 2)).reshape(-1)], -1)
        logf = (-e.energy(x)).reshape(n, n) + gv / 2  # Jacobian dx/dy = e^{v/2}
        fv = integrate.simpson(torch.exp(logf).numpy(), x=y.numpy(), axis=1)
        vs = v.numpy()
        parts.append((integrate.simpson(fv, x=vs), integrate.simpson(vs * fv, x=vs)))
    (z_neck, m_neck), (z_mouth, m_mouth) = parts
    z = z_neck + z_mouth
    return math.log(z), (m_neck + m_mouth) / z, z_neck / z


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_funnel_exact_log_z_against_quadrature(temperature):
    e = Funnel(dim=2, sigma=3.0).at_temperature(temperature)
    log_z, mean_v, p_neck = _funnel2_quadrature(e)
    assert abs(e.log_z - log_z) < 1e-10
    assert abs(e.exact_observable("v") - mean_v) < 1e-9
    dF = e.exact_free_energy("neck_vs_mouth")
    assert abs(1 / (1 + math.exp(dF)) - p_neck) < 1e-10  # P(A) = 1/(1+e^{ΔF})


def test_funnel_log_z_by_importance_sampling():
    """dim 10: Z = E_q[exp(-u)/q] with a wider proposal; |z| < 4, and a 0.05 shift is caught."""
    e = Funnel(dim=10, sigma=3.0)
    g = torch.Generator().manual_seed(3)
    n = 100000
    v = 3.6 * torch.randn(n, generator=g, dtype=F64)
    x = math.sqrt(1.5) * torch.exp(v / 2)[:, None] * torch.randn(n, 9, generator=g, dtype=F64)
    log_q = torch.distributions.Normal(0.0, 3.6).log_prob(v) + torch.distributions.Normal(
        0.0, math.sqrt(1.5) * torch.exp(v / 2)[:, None]
    ).log_prob(x).sum(-1)
    w = torch.exp(-e.energy(torch.cat([v[:, None], x], -1)) - log_q)
    mean, se = w.mean().item(), (w.std() / math.sqrt(n)).item()
    assert abs(mean - math.exp(e.log_z)) / se < 4
    assert abs(mean - math.exp(e.log_z + 0.05)) / se > 4  # negative control


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_funnel_sampler(temperature):
    e = Funnel(dim=6, sigma=3.0).at_temperature(temperature)
    x = e.sample(20000, torch.Generator().manual_seed(8))
    v = x[:, 0]
    m, s = e.v_mean, math.sqrt(e.v_var)
    # standardised by hand: scipy 1.18.1's kstest fails on "norm" with loc/scale args
    assert stats.kstest((v.numpy() - m) / s, "norm").pvalue > 1e-3
    y = (x[:, 1:] * torch.exp(-v / 2)[:, None] / math.sqrt(temperature)).reshape(-1)
    assert stats.kstest(y.numpy(), "norm").pvalue > 1e-3
    assert e.v_marginal().mean.item() == m
    # negative control: a 10% wrong sigma is rejected
    assert stats.kstest((v.numpy() - m) / (0.9 * s), "norm").pvalue < 1e-3


def test_funnel_defaults():
    e = Funnel()
    assert e.dim == 10 and abs(e.log_z) < 1e-14 and e.exact_free_energy("neck_vs_mouth") == 0.0
    with pytest.raises(ValueError, match="dim >= 2"):
        Funnel(dim=1)


# ------------------------------------------------------------------ correlated Gaussian
def test_correlated_gaussian_energy_and_log_z():
    mean = [1.0, -2.0, 0.5]
    cov = [[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]]
    e = CorrelatedGaussian(mean, cov)
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    r = x.numpy() - np.array(mean)
    expected = 0.5 * np.einsum("bi,ij,bj->b", r, np.linalg.inv(cov), r)
    torch.testing.assert_close(e.energy(x), torch.from_numpy(expected), rtol=1e-12, atol=1e-13)
    assert e.log_z == pytest.approx(
        0.5 * np.linalg.slogdet(2 * np.pi * np.array(cov))[1], rel=1e-13
    )
    assert e.at_temperature(3.0).log_z == pytest.approx(
        0.5 * np.linalg.slogdet(6 * np.pi * np.array(cov))[1], rel=1e-13
    )


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_correlated_gaussian_log_z_against_grid(temperature):
    e = CorrelatedGaussian([0.5, -0.25], dim=2, condition_number=100.0, seed=4)
    e = e.at_temperature(temperature)
    log_z, mean = grid_log_z(e, lim=25.0, h=0.05, center=(0.5, -0.25), moments=True)
    assert abs(e.log_z - log_z) < 1e-10
    torch.testing.assert_close(mean, e.mean, rtol=0, atol=1e-10)
    # negative control: a 0.1% error in the covariance scale is 1e6 times the tolerance
    assert abs(e.at_temperature(1.001 * temperature).log_z - log_z) > 1e-4


def test_random_covariance_spectrum():
    e = CorrelatedGaussian(dim=6, condition_number=1000.0, seed=2)
    ev = torch.linalg.eigvalsh(e.cov)
    torch.testing.assert_close(ev, torch.logspace(-1.5, 1.5, 6, dtype=F64), rtol=1e-12, atol=0)
    assert abs(e.log_z - 3 * math.log(2 * math.pi)) < 1e-12
    assert torch.equal(CorrelatedGaussian(dim=6, condition_number=1000.0, seed=2).cov, e.cov)
    assert not torch.allclose(CorrelatedGaussian(dim=6, condition_number=1000.0, seed=3).cov, e.cov)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_correlated_gaussian_sampler(temperature):
    e = CorrelatedGaussian(dim=5, condition_number=50.0, seed=1).at_temperature(temperature)
    n = 20000
    x = e.sample(n, torch.Generator().manual_seed(9))
    maha = 2 * e.energy(x).numpy()  # (x-μ)ᵀ(τΣ)⁻¹(x-μ) ~ χ²_5
    assert stats.kstest(maha, "chi2", args=(5,)).pvalue > 1e-3
    cov = temperature * e.cov
    se = torch.sqrt((torch.outer(cov.diagonal(), cov.diagonal()) + cov**2) / n)
    assert ((torch.cov(x.T) - cov) / se).abs().max() < 5
    # negative control: the χ² test rejects samples whose covariance is 5% too large
    assert stats.kstest(maha * 1.05, "chi2", args=(5,)).pvalue < 1e-3


def test_correlated_gaussian_invalid_input():
    with pytest.raises(ValueError, match="positive definite"):
        CorrelatedGaussian(cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="symmetric"):
        CorrelatedGaussian(cov=[[1.0, 0.1], [0.0, 1.0]])
    with pytest.raises(ValueError, match="need mean"):
        CorrelatedGaussian([0.0, 0.0, 0.0], [[1.0, 0.0], [0.0, 1.0]])

"""HMC with a dense metric: momentum law, exact oscillation, hand-checked acceptance and a
calibrated z-test on an ill-conditioned Gaussian with a negative control."""

import functools
import math

import pytest
import torch

from boltzflow.energies.gaussians import CorrelatedGaussian
from boltzflow.rng import generator_from_state
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.diagnostics import calibrated_z
from boltzflow.sampling.kernels import (
    HMC,
    DenseMetric,
    energy_and_grad,
    kinetic_energy,
    leapfrog,
)

D = torch.float64
Z_MAX = 4.0  # |N(0,1)| beyond 4 has probability 6e-5 per coordinate


@pytest.fixture(scope="module")
def gaussian():
    return CorrelatedGaussian(dim=4, condition_number=400.0, seed=3)


def test_momenta_have_covariance_m_and_kinetic_energy_is_half_the_noise_norm(gaussian):
    metric = DenseMetric(gaussian.cov)
    noise = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    p = metric.momentum(noise)
    torch.testing.assert_close(metric.kinetic(p), 0.5 * (noise * noise).sum(-1))
    torch.testing.assert_close(kinetic_energy(p, metric), 0.5 * (noise * noise).sum(-1))
    m = torch.linalg.inv(gaussian.cov)  # Cov(p) = M = Σ^-1, checked in whitened form
    white = p @ torch.linalg.cholesky(gaussian.cov)
    torch.testing.assert_close(torch.cov(white.T), torch.eye(4, dtype=D), rtol=0, atol=0.02)
    torch.testing.assert_close(metric.velocity(p), p @ torch.linalg.inv(m))


def test_dense_leapfrog_oscillates_with_unit_period_on_its_own_gaussian(gaussian):
    """With M^-1 = Σ every mode of u = ½xᵀΣ⁻¹x has angular frequency 1: period 2π."""
    metric = DenseMetric(gaussian.cov)
    grad_fn = functools.partial(energy_and_grad, gaussian)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 4, generator=g, dtype=D)
    p0 = metric.momentum(torch.randn(8, 4, generator=g, dtype=D))
    u0, g0 = grad_fn(x0)
    n = 4000
    end = leapfrog(x0, p0, g0, 2 * math.pi / n, n, grad_fn, inv_mass=metric)
    torch.testing.assert_close(end.x, x0, rtol=0, atol=1e-4)
    h0, h1 = u0 + kinetic_energy(p0, metric), end.energy + kinetic_energy(end.p, metric)
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=0)
    back = leapfrog(end.x, -end.p, end.grad, 2 * math.pi / n, 7, grad_fn, inv_mass=metric)
    fwd = leapfrog(back.x, -back.p, back.grad, 2 * math.pi / n, 7, grad_fn, inv_mass=metric)
    torch.testing.assert_close(fwd.x, end.x, rtol=0, atol=1e-10)


def test_dense_acceptance_matches_hand_computed_hamiltonian(gaussian):
    sigma = gaussian.cov
    metric = DenseMetric(sigma)
    eps, n_lf = 0.7, 5
    kernel = HMC(gaussian, eps, n_lf, mass=metric)
    x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=D)
    state = kernel.init(x0, seed=5)
    chol = torch.linalg.cholesky(sigma)
    for _ in range(3):
        g = generator_from_state(state.rng_state)
        xi = torch.randn(state.x.shape, generator=g, dtype=D)
        p = torch.linalg.solve(chol.T, xi.T).T  # p = L^-T xi
        x = state.x.clone()
        h0 = gaussian.energy(x) + 0.5 * torch.einsum("ci,ij,cj->c", p, sigma, p)
        for _ in range(n_lf):
            p = p + 0.5 * eps * gaussian.force(x)
            x = x + eps * p @ sigma
            p = p + 0.5 * eps * gaussian.force(x)
        h1 = gaussian.energy(x) + 0.5 * torch.einsum("ci,ij,cj->c", p, sigma, p)
        prob = torch.clamp(torch.exp(h0 - h1), max=1.0)
        new_state, info = kernel.step(state)
        torch.testing.assert_close(info.acceptance_prob, prob, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(new_state.x[info.accepted], x[info.accepted])
        state = new_state


@pytest.fixture(scope="module")
def dense_chain(gaussian):
    x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(4), dtype=D)
    kernel = HMC(gaussian, 0.9, 3, mass=DenseMetric(gaussian.cov))
    return run_chain(kernel, x0, 400, seed=0, n_warmup=20)


def test_dense_hmc_is_calibrated_on_an_ill_conditioned_gaussian(gaussian, dense_chain):
    z = calibrated_z(dense_chain.x.numpy(), gaussian.mean, method="bulk")
    assert bool((z < Z_MAX).all()), z
    zv = calibrated_z(
        ((dense_chain.x - gaussian.mean) ** 2).numpy(), torch.diagonal(gaussian.cov), "bulk"
    )
    assert bool((zv < Z_MAX).all()), zv
    assert 0.5 < dense_chain.acceptance_rate < 1.0


def test_dense_hmc_negative_control_shifted_truth_fails(gaussian, dense_chain):
    """The same statistic has power: a truth shifted by 0.2 sd is rejected."""
    shifted = gaussian.mean + 0.2 * torch.diagonal(gaussian.cov).sqrt()
    assert bool((calibrated_z(dense_chain.x.numpy(), shifted, "bulk") > Z_MAX).any())


def test_dense_metric_rejects_bad_matrices():
    with pytest.raises(ValueError):
        DenseMetric(torch.ones(3, dtype=D))
    with pytest.raises(ValueError):
        DenseMetric(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=D))
    assert (
        DenseMetric(torch.eye(2, dtype=D)).to(torch.zeros(1, dtype=torch.float32)).chol.dtype
        == torch.float32
    )
    with pytest.raises(ValueError):
        HMC(gaussian_free_target(), 0.1, 3, jitter=1.0)


def gaussian_free_target():
    return CorrelatedGaussian(dim=2, condition_number=2.0, seed=0)

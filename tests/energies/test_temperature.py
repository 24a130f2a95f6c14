r"""Temperature acts in one place: ``u_s = u_phys / s - log m`` (energies/base.py).

The measure (a coordinate Jacobian, a posterior's prior and Jacobian) is never tempered.
Checked against energies written out by hand; the alanine-dipeptide case is in
tests/molecular/test_target.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from boltzflow.energies.base import Energy, EnergyTerms
from boltzflow.energies.posterior import Parameter, Posterior
from boltzflow.energies.priors import HalfNormal, Normal

DATA = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.1], dtype=torch.float64)


class PolarGaussian(Energy):
    r"""A 2-D standard Gaussian sampled in polar coordinates ``(log r, φ)``: the Cartesian
    energy :math:`r^2/2` is tempered, the Jacobian :math:`r^2` of :math:`y \mapsto x` is not."""

    def __init__(self):
        super().__init__(2)

    def _energy_terms(self, y):
        log_r = y[:, 0]
        return EnergyTerms(0.5 * torch.exp(2 * log_r), (2 * log_r,), y[:, 1].abs() > math.pi)


def _gaussian_log_likelihood(theta):
    mu, sigma = theta[:, :1], theta[:, 1:2]
    z = (DATA - mu) / sigma
    return (-0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.fixture
def posterior():
    params = [Parameter("mu", Normal(1.0, 2.0)), Parameter("sigma", HalfNormal(1.5))]
    return Posterior(params, _gaussian_log_likelihood)


def _points():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 2, generator=g, dtype=torch.float64)


def _by_hand(y, s):
    """Posterior energy at temperature ``s``, written out: mu = y0, sigma = exp(y1)."""
    mu, sigma = y[:, 0], torch.exp(y[:, 1])
    z = (DATA[None, :] - mu[:, None]) / sigma[:, None]
    log_l = (-0.5 * z**2 - torch.log(sigma[:, None]) - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prior = -0.5 * ((mu - 1.0) / 2.0) ** 2 - math.log(2.0) - 0.5 * math.log(2 * math.pi)
    log_prior = log_prior + math.log(2.0) - 0.5 * (sigma / 1.5) ** 2 - math.log(1.5)
    log_prior = log_prior - 0.5 * math.log(2 * math.pi)
    log_jacobian = y[:, 1]  # d sigma / d y1 = exp(y1)
    return -log_l / s - log_prior - log_jacobian


@pytest.mark.parametrize("s", [1.0, 0.5, 2.0, 10.0])
def test_posterior_tempers_its_likelihood_only(posterior, s, float64):
    y = _points()
    torch.testing.assert_close(posterior.at_temperature(s).energy(y), _by_hand(y, s))


def test_posterior_temperature_is_the_annealing_power(posterior, float64):
    r"""At ``s = 1/β`` the energy is :math:`u_0 - \beta \log L`, the :math:`p_\beta` of annealing
    (prior part :math:`u_0`, log-likelihood :math:`\log L = u_0 - u`)."""
    y = _points()
    u1 = posterior.energy(y)
    theta, ladj = posterior.constrain(y)
    u0 = -(posterior.log_prior(theta) + ladj)
    log_l = u0 - u1
    for beta in (1e-3, 0.1, 0.7):
        torch.testing.assert_close(posterior.at_temperature(1 / beta).energy(y), u0 - beta * log_l)


def test_posterior_energy_at_reference_temperature_is_unchanged(posterior, float64):
    """Bit for bit the sum the posterior computed before the measure was split off."""
    y = _points()
    theta, ladj = posterior.constrain(y)
    before = -(posterior.log_prior(theta) + posterior.log_likelihood(theta) + ladj)
    assert torch.equal(posterior.energy(y), before)


def test_tempered_posterior_still_counts_and_blocks_bad_points(float64):
    def bad_likelihood(theta):
        return torch.where(theta[:, 0] > 0, torch.nan, -0.5 * theta[:, 0] ** 2)

    post = Posterior({"a": Normal(), "b": HalfNormal()}, bad_likelihood).at_temperature(3.0)
    y = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [-0.5, 800.0]], dtype=torch.float64)
    u = post.energy(y)
    assert math.isfinite(u[0]) and u[1] == math.inf and u[2] == math.inf
    assert post.n_nonfinite == 2


@pytest.mark.parametrize("s", [1.0, 3.0])
def test_a_coordinate_jacobian_is_not_tempered(s, float64):
    """Polar coordinates: ``u_s(y) = r²/(2s) - 2 log r``, whose marginal of ``r`` is the
    Rayleigh law of a Gaussian at variance ``s`` (the tempered Cartesian density)."""
    target = PolarGaussian().at_temperature(s)
    y = torch.tensor([[0.0, 0.0], [0.5, 1.0], [-1.0, 3.0], [0.2, 4.0]], dtype=torch.float64)
    r = torch.exp(y[:, 0])
    expected = r**2 / (2 * s) - 2 * torch.log(r)
    u = target.energy(y)
    torch.testing.assert_close(u[:3], expected[:3])
    assert u[3] == math.inf  # outside the support
    # log Z = log ∫∫ e^{-u} d(log r) dφ = log(2π s), the tempered Cartesian normalizer
    grid = torch.linspace(-12, 6, 200001, dtype=torch.float64)
    ly = torch.stack([grid, torch.zeros_like(grid)], -1)
    log_z = torch.logsumexp(-target.energy(ly), 0) + math.log(grid[1] - grid[0])
    assert float(log_z) + math.log(2 * math.pi) == pytest.approx(math.log(2 * math.pi * s), 1e-6)

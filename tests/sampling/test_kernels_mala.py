"""MALA: the asymmetric proposal correction, checked against independently computed densities."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.rng import generator_from_state
from boltzflow.sampling.kernels import MALA, GradientState

D = torch.float64


def _replay(target, state, tau):
    """Redo one MALA step by hand: proposal, and log α from scipy's Gaussian densities."""
    g = generator_from_state(state.rng_state)
    noise = torch.randn(state.x.shape, generator=g, dtype=D)
    x = state.x.numpy()
    grad = -target.force(state.x).numpy()
    x_new = x - tau * grad + math.sqrt(2 * tau) * noise.numpy()
    xn = torch.from_numpy(x_new)
    grad_new = -target.force(xn).numpy()
    sd = math.sqrt(2 * tau)
    log_fwd = stats.norm.logpdf(x_new, loc=x - tau * grad, scale=sd).sum(-1)
    log_bwd = stats.norm.logpdf(x, loc=x_new - tau * grad_new, scale=sd).sum(-1)
    du = target.energy(xn).numpy() - target.energy(state.x).numpy()
    return x_new, -du + log_bwd - log_fwd, -du


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_acceptance_matches_hand_computed_langevin_densities(tau):
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    kernel = MALA(target, tau)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=D)
    state = kernel.init(x0, seed=1)
    for _ in range(3):
        x_new, log_alpha, log_alpha_uncorrected = _replay(target, state, tau)
        new_state, info = kernel.step(state)
        prob = np.minimum(1.0, np.exp(log_alpha))
        np.testing.assert_allclose(info.acceptance_prob.numpy(), prob, rtol=1e-9, atol=1e-12)
        # negative control: dropping the q-ratio changes the acceptance probabilities
        assert not np.allclose(np.minimum(1.0, np.exp(log_alpha_uncorrected)), prob, atol=1e-3)
        acc = info.accepted.numpy()
        np.testing.assert_allclose(new_state.x.numpy()[acc], x_new[acc], rtol=1e-12)
        assert torch.equal(new_state.x[~info.accepted], state.x[~info.accepted])
        state = new_state


def test_state_caches_energy_and_gradient():
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    kernel = MALA(target, 0.2)
    state = kernel.init(torch.zeros(8, 2, dtype=D), seed=0)
    for _ in range(5):
        state, _ = kernel.step(state)
    assert isinstance(state, GradientState)
    torch.testing.assert_close(state.energy, target.energy(state.x))
    torch.testing.assert_close(state.grad, -target.force(state.x))


def test_per_chain_step_sizes():
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    taus = torch.tensor([0.01, 2.0], dtype=D).reshape(2, 1).repeat_interleave(32, 0)
    kernel = MALA(target, taus)
    state = kernel.init(torch.zeros(64, 2, dtype=D), seed=0)
    probs = []
    for _ in range(20):
        state, info = kernel.step(state)
        probs.append(info.acceptance_prob)
    p = torch.stack(probs).mean(0)
    assert p[:32].mean() > 0.95 and p[32:].mean() < 0.5


def test_invalid_step_size():
    with pytest.raises(ValueError):
        MALA(DoubleWell2D(), 0.0)

"""HMC: leapfrog reversibility and O(ε²) energy error, hand-checked acceptance, torus wrapping."""

import functools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from boltzflow.energies.base import CallableEnergy
from boltzflow.energies.double_well import DoubleWell2D
from boltzflow.rng import generator_from_state
from boltzflow.sampling.chains import run_chain
from boltzflow.sampling.diagnostics import calibrated_z
from boltzflow.sampling.kernels import HMC, energy_and_grad, kinetic_energy, leapfrog, torus_wrap

D = torch.float64


def _start(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=D), torch.randn(n, 2, generator=g, dtype=D)


def test_leapfrog_is_reversible():
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    grad_fn = functools.partial(energy_and_grad, target)
    x0, p0 = _start()
    _, g0 = grad_fn(x0)
    fwd = leapfrog(x0, p0, g0, 0.05, 40, grad_fn)
    back = leapfrog(fwd.x, -fwd.p, fwd.grad, 0.05, 40, grad_fn)
    torch.testing.assert_close(back.x, x0, rtol=0, atol=1e-11)
    torch.testing.assert_close(-back.p, p0, rtol=0, atol=1e-11)
    assert fwd.x.sub(x0).abs().max() > 0.1  # it did move


def test_leapfrog_energy_error_is_second_order():
    """|ΔH| over a fixed trajectory length T = 1 shrinks 4× per halving of ε."""
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    grad_fn = functools.partial(energy_and_grad, target)
    x0, p0 = _start(64)
    u0, g0 = grad_fn(x0)
    h0 = u0 + kinetic_energy(p0)
    errs = []
    for eps in (0.02, 0.01, 0.005):
        end = leapfrog(x0, p0, g0, eps, round(1.0 / eps), grad_fn)
        errs.append((end.energy + kinetic_energy(end.p) - h0).abs().mean().item())
    slopes = np.diff(np.log(errs)) / np.diff(np.log([0.02, 0.01, 0.005]))
    np.testing.assert_allclose(slopes, 2.0, atol=0.05)


def test_leapfrog_with_mass_conserves_energy_of_a_harmonic_oscillator():
    k = torch.tensor([1.0, 25.0], dtype=D)
    target = CallableEnergy(lambda x: 0.5 * (k * x * x).sum(-1), 2)
    grad_fn = functools.partial(energy_and_grad, target)
    x0, p0 = _start(8)
    mass = k  # ω = sqrt(k/m) = 1 in both coordinates: one period is T = 2π
    u0, g0 = grad_fn(x0)
    n = 2000
    end = leapfrog(x0, p0, g0, 2 * math.pi / n, n, grad_fn, inv_mass=1 / mass)
    torch.testing.assert_close(end.x, x0, rtol=0, atol=1e-4)
    h0 = u0 + kinetic_energy(p0, 1 / mass)
    torch.testing.assert_close(end.energy + kinetic_energy(end.p, 1 / mass), h0, rtol=1e-5, atol=0)


def test_acceptance_matches_hand_computed_hamiltonian():
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    eps, n_lf = 0.3, 7
    kernel = HMC(target, eps, n_lf)
    state = kernel.init(_start(32)[0], seed=3)
    for _ in range(3):
        g = generator_from_state(state.rng_state)
        p = torch.randn(state.x.shape, generator=g, dtype=D)
        x = state.x.clone()
        h0 = target.energy(x) + 0.5 * (p * p).sum(-1)
        for _ in range(n_lf):  # an independent leapfrog loop using Energy.force
            p = p + 0.5 * eps * target.force(x)
            x = x + eps * p
            p = p + 0.5 * eps * target.force(x)
        h1 = target.energy(x) + 0.5 * (p * p).sum(-1)
        prob = torch.clamp(torch.exp(h0 - h1), max=1.0)
        new_state, info = kernel.step(state)
        torch.testing.assert_close(info.acceptance_prob, prob, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(new_state.x[info.accepted], x[info.accepted])
        state = new_state


def _von_mises(kappa, mu):
    return CallableEnergy(lambda x: -kappa * torch.cos(x[:, 0] - mu), 1)


def _circular_truth(kappa, mu):
    """E[x], E[cos x], E[sin x] for p(x) ∝ exp(κ cos(x - μ)) on [-π, π), by quadrature."""

    def moment(f):
        return integrate.quad(
            lambda t: math.exp(kappa * math.cos(t - mu)) * f(t), -math.pi, math.pi, limit=200
        )[0]

    z = moment(lambda t: 1.0)
    return np.array([moment(lambda t: t), moment(math.cos), moment(math.sin)]) / z


def _observables(x):
    return torch.stack([x[..., 0], torch.cos(x[..., 0]), torch.sin(x[..., 0])], -1)


def test_torus_wrap_range():
    x = torch.tensor([-7.0, -math.pi, 0.0, math.pi, 10.0], dtype=D)
    y = torus_wrap(x)
    assert torch.all(y >= -math.pi) and torch.all(y < math.pi)
    torch.testing.assert_close(torch.cos(y), torch.cos(x))
    torch.testing.assert_close(torus_wrap(torch.tensor([2.5]), 2.0), torch.tensor([0.5]))


def test_hmc_on_the_circle_is_calibrated():
    """Von Mises on [-π, π) with its mode near the seam: wrapped HMC matches quadrature."""
    kappa, mu = 2.0, 2.8
    truth = _circular_truth(kappa, mu)
    thr = stats.norm.isf(0.001 / (2 * 3))
    x0 = torch.zeros(32, 1, dtype=D)
    res = run_chain(
        HMC(_von_mises(kappa, mu), 0.4, 4, wrap=2 * math.pi), x0, 1500, seed=0, n_warmup=100
    )
    assert torch.all(res.x >= -math.pi) and torch.all(res.x < math.pi)
    assert 0.5 < res.acceptance_rate < 1.0
    z = calibrated_z(_observables(res.x), truth)
    assert np.all(z < thr), z
    # negative control: a shifted target is detected
    bad = run_chain(
        HMC(_von_mises(kappa, mu - 0.15), 0.4, 4, wrap=2 * math.pi), x0, 1500, seed=0, n_warmup=100
    )
    z_bad = calibrated_z(_observables(bad.x), truth)
    assert np.any(z_bad > thr), z_bad


def test_wrapped_leapfrog_is_reversible_across_the_seam():
    target = _von_mises(1.0, 3.0)
    wrap = functools.partial(torus_wrap, period=2 * math.pi)
    grad_fn = functools.partial(energy_and_grad, target)
    x0 = torch.full((4, 1), 3.0, dtype=D)
    p0 = torch.tensor([[3.0], [-3.0], [6.0], [0.5]], dtype=D)
    _, g0 = grad_fn(x0)
    fwd = leapfrog(x0, p0, g0, 0.1, 30, grad_fn, wrap=wrap)
    assert torch.all(fwd.x.abs() < math.pi)
    back = leapfrog(fwd.x, -fwd.p, fwd.grad, 0.1, 30, grad_fn, wrap=wrap)
    torch.testing.assert_close(back.x, x0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("bad", [dict(step_size=0.0), dict(n_leapfrog=0), dict(wrap=-1.0)])
def test_invalid_hyperparameters(bad):
    kw = dict(step_size=0.1, n_leapfrog=3) | bad
    with pytest.raises(ValueError):
        HMC(DoubleWell2D(), **kw)


def test_tensor_hyperparameters_follow_the_chain_dtype():
    target = DoubleWell2D(a=-0.5, b=-2.0, c=1.0)
    kernel = HMC(target, torch.tensor(0.1, dtype=D), 3, mass=torch.tensor([1.0, 2.0], dtype=D))
    state = kernel.init(torch.zeros(4, 2, dtype=torch.float32), seed=0)
    state, info = kernel.step(state)
    assert state.x.dtype == torch.float32 and info.acceptance_prob.dtype == torch.float32
    with pytest.raises(ValueError):
        HMC(target, 0.1, 3, mass=torch.tensor([1.0, -1.0]))

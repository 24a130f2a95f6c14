"""MD integrators: velocity Verlet against the exact harmonic solution, time reversibility,
bounded energy error for smooth potentials vs drift for a kinked one (the drift estimator's
negative control), BAOAB's exact harmonic configurational variance (calibrated, with a wrong-
temperature control), periodic wrapping, and the flow potential ``-log q``."""

from __future__ import annotations

import math

import torch

from boltzflow.dynamics import (
    FlowPotential,
    Trajectory,
    energy_drift,
    langevin,
    maxwell_boltzmann,
    velocity_verlet,
)
from boltzflow.energies.base import CallableEnergy
from boltzflow.flows.affine import ElementwiseAffine
from boltzflow.flows.base import Compose, Flow
from boltzflow.flows.distributions import StandardNormal

D = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _harmonic(k=2.0, dim=1):
    return CallableEnergy(lambda x: 0.5 * k * (x * x).sum(-1), event_shape=dim)


def test_verlet_follows_the_exact_harmonic_solution():
    k, dt, n = 2.0, 0.01, 1000
    x0, v0 = torch.tensor([[1.0]], dtype=D), torch.tensor([[0.5]], dtype=D)
    traj = velocity_verlet(_harmonic(k), x0, v0, dt, n, record_every=100)
    w = math.sqrt(k)
    t = traj.steps.to(D) * dt
    exact = x0[0, 0] * torch.cos(w * t) + v0[0, 0] / w * torch.sin(w * t)
    assert traj.x.shape == (11, 1, 1) and traj.potential.shape == (11, 1)
    assert (traj.x[:, 0, 0] - exact).abs().max() < 5 * (w * dt) ** 2  # global error O(dt²)
    assert (traj.total - traj.total[0]).abs().max() < (w * dt) ** 2


def test_verlet_is_time_reversible():
    energy = CallableEnergy(lambda x: (x**4 - 2 * x**2).sum(-1) + 0.3 * x[:, 0] * x[:, 1], 2)
    x0 = torch.randn(5, 2, generator=_gen(1), dtype=D)
    v0 = maxwell_boltzmann(x0, generator=_gen(2))
    fwd = velocity_verlet(energy, x0, v0, 0.01, 300, record_every=300)
    back = velocity_verlet(energy, fwd.x[-1], -fwd.v[-1], 0.01, 300, record_every=300)
    assert (back.x[-1] - x0).abs().max() < 1e-10


def test_drift_estimator_recovers_a_planted_slope():
    steps = torch.arange(0, 1001, 10)
    slope = torch.tensor([0.002, -0.001, 0.0005], dtype=D)
    total = 3.0 + steps.to(D)[:, None] * slope + 0.01 * torch.sin(steps.to(D))[:, None]
    traj = Trajectory(total, total, total, torch.zeros_like(total), steps)
    drift = energy_drift(traj, per_steps=10_000)
    ls = 10_000 * slope
    assert abs(drift.mean - float(ls.mean())) < 0.05 and drift.n_trajectories == 3
    assert abs(drift.rms - float(ls.pow(2).mean().sqrt())) < 0.05
    traj = traj._replace(potential=total.clone().index_fill_(1, torch.tensor([1]), math.nan))
    assert energy_drift(traj).n_nonfinite == 1


def test_kinked_potential_drifts_and_smooth_one_does_not():
    # A force jump at x = 0 (a C⁰ potential, like a spline flow's kinks) breaks symplecticity.
    x0 = torch.randn(64, 1, generator=_gen(3), dtype=D)
    v0 = maxwell_boltzmann(x0, generator=_gen(4))
    smooth = _harmonic(1.0)
    kinked = CallableEnergy(lambda x: 0.5 * (x * x).sum(-1) + 0.5 * x.abs().sum(-1), 1)
    args = dict(dt=0.1, n_steps=2000, record_every=10)
    d_smooth = energy_drift(velocity_verlet(smooth, x0, v0, **args))
    d_kinked = energy_drift(velocity_verlet(kinked, x0, v0, **args))
    assert d_kinked.rms > 10 * d_smooth.rms


def _langevin_variance(kT_run, seed):
    k, n = 2.0, 4000
    x0 = torch.zeros(n, 1, dtype=D)
    traj = langevin(
        _harmonic(k),
        x0,
        dt=0.2,
        n_steps=60,
        friction=2.0,
        kT=kT_run,
        generator=_gen(seed),
        record_every=60,
    )
    x = traj.x[-1, :, 0]
    # Independent chains: var(x²) = 2σ⁴ for a Gaussian, so the standard error is σ²√(2/n).
    sigma2 = 1.0 / k
    return float((x * x).mean()), sigma2, sigma2 * math.sqrt(2.0 / n)


def test_baoab_samples_the_exact_harmonic_variance_and_a_wrong_temperature_fails():
    est, exact, err = _langevin_variance(1.0, seed=5)
    assert abs(est - exact) / err < 4.0
    est, exact, err = _langevin_variance(1.3, seed=6)
    assert abs(est - exact) / err > 4.0


def test_periodic_coordinates_are_wrapped():
    energy = CallableEnergy(lambda x: -torch.cos(x).sum(-1), 2)
    x0 = torch.full((3, 2), 3.0, dtype=D)
    v0 = torch.full((3, 2), 5.0, dtype=D)
    traj = velocity_verlet(energy, x0, v0, 0.05, 100, periodic=[True, False])
    assert traj.x[:, :, 0].abs().max() <= math.pi and traj.x[:, :, 1].max() > 10


def test_flow_potential_is_minus_log_q_with_its_forces():
    layer = ElementwiseAffine(2, loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([0.5, 2.0]))
    flow = Flow(StandardNormal(2), Compose(layer)).double()
    u = FlowPotential(flow)
    x = torch.randn(6, 2, generator=_gen(7), dtype=D)
    mu, sd = torch.tensor([1.0, -1.0], dtype=D), torch.tensor([0.5, 2.0], dtype=D)
    exact = 0.5 * (((x - mu) / sd) ** 2).sum(-1) + torch.log(sd).sum() + math.log(2 * math.pi)
    torch.testing.assert_close(u.energy(x), exact)
    torch.testing.assert_close(u.force(x), -(x - mu) / sd**2)
    assert u.n_evaluations == 2 * 6 and u.log_z == 0.0

"""Lattice samplers against exact answers: flow NIS (log Z, observables), HMC on the torus,
flow IMH and flow-HMC, and τ_int for observables that freeze. Every estimator has a negative
control that must fail."""

import contextlib
import functools
import math

import numpy as np
import pytest
import torch

from boltzflow.energies.lattice import Phi4, U1Wilson, wrap_angle
from boltzflow.flows.lattice import phi4_flow
from boltzflow.flows.lattice_gauge import u1_gauge_flow
from boltzflow.sampling.diagnostics import calibrated_z
from boltzflow.sampling.kernels import energy_and_grad, kinetic_energy, leapfrog, torus_wrap
from boltzflow.sampling.lattice_hmc import flow_hmc, hmc, pooled_integrated_time
from boltzflow.sampling.reweighting import expectation, log_weights, reweight
from boltzflow.sampling.runners import SamplingResult, flow_imh
from boltzflow.training.trainer import Stage, Trainer

DT = torch.float64
Z_MAX = 3.0  # the 3σ criterion for NIS estimates against exact values


def _train(flow, target, steps, batch, lr):
    stage = Stage(loss="reverse_kl", steps=steps, batch_size=batch, lr=lr)
    Trainer(flow, target, [stage], seed=0, progress=False).fit()
    flow.eval()
    return flow


@contextlib.contextmanager
def _float32_init():
    """Initialise flows in float32 whatever default another test module left behind, so that
    the seeded parameters (and the trained fixtures) do not depend on test order."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def u1_small():
    torch.set_num_threads(1)
    target = U1Wilson(4, 1.0)
    with _float32_init():
        flow = u1_gauge_flow(target, num_layers=8, num_bins=6, hidden=[8], positional=True, seed=0)
    return target, _train(flow.double(), target, steps=100, batch=128, lr=5e-3)


@pytest.fixture(scope="module")
def free_field():
    torch.set_num_threads(1)
    target = Phi4(4, 1.25, 0.0)
    with _float32_init():
        flow = phi4_flow(target, num_layers=4, coupling="affine", hidden=[8], seed=0)
    return target, _train(flow.double(), target, steps=100, batch=128, lr=5e-3)


def _nis(flow, target, n, seed, drop_ladj=False):
    with torch.no_grad():
        s = flow.sample(n, generator=torch.Generator().manual_seed(seed))
        log_q = flow.base.log_prob(s.z) if drop_ladj else s.log_q
        return s.x, log_weights(target, s.x, log_q)


def _z(est, truth):
    return abs(est.mean - truth) / est.stderr


def _u1_estimates_match_exact(target, x, lw, rw) -> dict:
    """NIS log Z, ⟨cos P⟩ and ⟨Q²⟩ within 3σ of the exact values; returns the estimates."""
    obs = target.observables()
    ests = {
        "log_z": (rw.log_z, target.log_z),
        "plaquette": (expectation(obs["plaquette"].fn(x), lw), target.exact.mean_plaquette),
        "q2": (expectation(obs["topological_charge_sq"].fn(x), lw), target.exact.q2),
    }
    for name, (est, truth) in ests.items():
        assert _z(est, truth) < Z_MAX, (name, est, truth)
    return ests


def test_free_field_nis_log_z(free_field):
    target, flow = free_field
    _, lw = _nis(flow, target, 5000, seed=1)
    rw = reweight(lw, seed=0)
    assert rw.ess_fraction > 0.3
    assert _z(rw.log_z, target.log_z) < Z_MAX, (rw.log_z, target.log_z)
    # negative control: the same estimator with a wrong flow density (log-det dropped)
    _, bad = _nis(flow, target, 5000, seed=1, drop_ladj=True)
    assert _z(reweight(bad, seed=0).log_z, target.log_z) > Z_MAX


def test_u1_nis_log_z_plaquette_and_q2(u1_small):
    target, flow = u1_small
    x, lw = _nis(flow, target, 5000, seed=2)
    rw = reweight(lw, seed=0)
    assert rw.ess_fraction > 0.3
    ests = _u1_estimates_match_exact(target, x, lw, rw)
    # negative controls: a wrong flow density, and the exact values of a different coupling
    xb, bad = _nis(flow, target, 5000, seed=2, drop_ladj=True)
    assert _z(reweight(bad, seed=0).log_z, target.log_z) > Z_MAX
    other = U1Wilson(4, 1.3)
    assert _z(ests["plaquette"][0], other.exact.mean_plaquette) > Z_MAX


def test_u1_leapfrog_on_the_torus_reversible_and_second_order():
    target = U1Wilson(4, 2.0)
    g = torch.Generator().manual_seed(3)
    x0 = wrap_angle(torch.randn((4, 2, 4, 4), generator=g, dtype=DT) * 2)
    p0 = torch.randn(x0.shape, generator=g, dtype=DT)
    grad_fn = functools.partial(energy_and_grad, target)
    wrap = functools.partial(torus_wrap, period=2 * math.pi)
    u0, g0 = grad_fn(x0)
    errors = []
    for eps in (0.04, 0.02, 0.01):
        n = int(round(0.8 / eps))
        end = leapfrog(x0, p0, g0, eps, n, grad_fn, wrap=wrap)
        assert end.x.abs().max() <= math.pi
        h0, h1 = u0 + kinetic_energy(p0), end.energy + kinetic_energy(end.p)
        errors.append((h1 - h0).abs().max().item())
        back = leapfrog(end.x, -end.p, end.grad, eps, n, grad_fn, wrap=wrap)
        assert wrap_angle(back.x - x0).abs().max() < 1e-9
        torch.testing.assert_close(-back.p, p0)
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3.0) & (ratios < 5.0)), errors  # ΔH = O(ε²)


def test_u1_hmc_against_exact(u1_small):
    target, flow = u1_small
    res = hmc(flow, target, n_samples=2400, chains=16, step_size=0.2, n_leapfrog=5, seed=4)
    _check_chain(res, target, "hmc")


def test_u1_flow_imh_and_flow_hmc_against_exact(u1_small):
    target, flow = u1_small
    imh = flow_imh(flow, target, n_samples=3000, chains=30, seed=5)
    assert imh.info["acceptance_rate"] > 0.3
    _check_chain(imh, target, "imh")
    fh = flow_hmc(
        flow, target, n_samples=480, chains=16, step_size=0.1, n_leapfrog=4, n_warmup=5, seed=6
    )
    _check_chain(fh, target, "flow-hmc")


def _check_chain(res, target, method):
    assert isinstance(res, SamplingResult) and res.method == method
    assert res.x.shape[:2] == res.energy.shape == res.accepted.shape
    assert 0.2 < res.accepted.double().mean() < 1.0
    x = res.x.reshape(-1, *res.x.shape[2:])
    plaq = target.observables()["plaquette"].fn(x).reshape(res.x.shape[:2])
    assert calibrated_z(plaq, target.exact.mean_plaquette) < 4.0
    assert calibrated_z(plaq, U1Wilson(4, 1.3).exact.mean_plaquette) > 4.0  # negative control
    if method != "imh":
        assert "tau_int_topological_charge" in res.info


def test_phi4_flow_hmc_free_field(free_field):
    target, flow = free_field
    res = flow_hmc(
        flow, target, n_samples=1600, chains=16, step_size=0.4, n_leapfrog=3, n_warmup=10, seed=7
    )
    obs = target.observables()["action_density"]
    s = obs.fn(res.x.reshape(-1, 4, 4)).reshape(16, -1)
    assert calibrated_z(s, target.exact_observable("action_density")) < 4.0
    assert calibrated_z(s, 1.15 * target.exact_observable("action_density")) > 4.0
    assert np.isfinite(res.info["tau_int_magnetization"])


def test_pooled_integrated_time_ar1_and_frozen_chains():
    rho, n, chains = 0.8, 5000, 4
    g = np.random.default_rng(0)
    x = np.zeros((chains, n))
    noise = g.normal(size=(chains, n)) * math.sqrt(1 - rho**2)
    x[:, 0] = g.normal(size=chains)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    est = pooled_integrated_time(x)
    assert not est.lower_bound and est.tau == pytest.approx((1 + rho) / (1 - rho), rel=0.15)
    frozen = np.repeat(np.array([[-1.0], [0.0], [1.0], [0.0]]), 500, axis=1)
    est = pooled_integrated_time(frozen)
    assert est.lower_bound and est.tau > 100
    assert math.isnan(pooled_integrated_time(np.ones((2, 50))).tau)


def test_u1_fitted_tree_flow_at_weak_coupling():
    """At β = 6 the plaquette-tree flow, fitted to e^{β cos P} with no lattice training, gives
    NIS estimates of log Z, ⟨cos P⟩ and ⟨Q²⟩ within 3σ of the exact values; the same flow
    unfitted (identity tree, uniform links) is the negative control."""
    torch.set_num_threads(1)
    target = U1Wilson(8, 6.0)
    flow = u1_gauge_flow(target, num_layers=0, seed=0).double()
    x, lw = _nis(flow, target, 4000, seed=3)
    rw = reweight(lw, seed=0)
    assert rw.ess_fraction > 0.5
    _u1_estimates_match_exact(target, x, lw, rw)
    unfitted = u1_gauge_flow(target, num_layers=0, fit_tree=False, seed=0).double()
    _, bad = _nis(unfitted, target, 4000, seed=3)
    assert reweight(bad, seed=0).ess_fraction < 0.01


def test_flow_hmc_leaves_the_fitted_tree_layers_frozen():
    """Regression: flow-HMC used to set requires_grad on every parameter when it finished,
    which unfroze the fitted plaquette-tree and sink splines."""
    target = U1Wilson(4, 1.0)
    flow = u1_gauge_flow(target, num_layers=2, num_bins=4, hidden=[4], seed=0).double()
    flags = {name: p.requires_grad for name, p in flow.named_parameters()}
    assert not all(flags.values()) and any(flags.values())  # tree frozen, couplings trainable
    flow.train()
    flow_hmc(flow, target, n_samples=8, chains=2, step_size=0.05, n_leapfrog=2, n_warmup=1)
    assert {name: p.requires_grad for name, p in flow.named_parameters()} == flags
    assert flow.training  # the caller's mode is restored too

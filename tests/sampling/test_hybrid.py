"""Hybrid local+global flow MCMC and NeuTra-HMC: calibrated tests against exact answers."""

import numpy as np
import pytest
import torch

from boltzflow.energies.gaussians import CorrelatedGaussian, Funnel
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.sampling import diagnostics
from boltzflow.sampling.hybrid import GlobalMoves, LocalMoves, Schedule, hybrid
from boltzflow.sampling.neutra import neutra
from boltzflow.training.losses import reverse_kl

pytestmark = pytest.mark.usefixtures("float64_module")
Z_MAX = 4.0  # |N(0,1)| beyond 4 has probability 6e-5 per coordinate


def small_flow(target, seed=0):
    return spline_coupling_flow(target, num_layers=2, hidden=16, seed=seed).double()


def fit_reverse_kl(flow, target, steps=250, batch=128, lr=5e-3):
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        loss = reverse_kl(flow, target, batch, generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flow


def z_scores(x, truth):
    return diagnostics.calibrated_z(x.numpy(), np.asarray(truth), method="bulk")


@pytest.fixture(scope="module")
def gaussian(float64_module):
    return CorrelatedGaussian(dim=3, condition_number=30.0, seed=1)


@pytest.fixture(scope="module")
def gaussian_hybrid(gaussian):
    return hybrid(
        small_flow(gaussian), gaussian, n_samples=2400, seed=0,
        schedule=Schedule(chains=8, init="flow", warmup_rounds=3, repeats=(1, 2)),
        local=LocalMoves(steps=20),
        global_moves=GlobalMoves(steps=5, train_steps=80, batch_size=256, lr=5e-3),
    )  # fmt: skip


def test_hybrid_mala_correlated_gaussian_calibrated(gaussian, gaussian_hybrid):
    res = gaussian_hybrid
    assert res.x.shape == (8, 300, 3) and res.accepted.shape == (8, 300)
    assert bool((res.log_weight == 0).all())
    z = z_scores(res.x, gaussian.mean)
    assert bool((z < Z_MAX).all()), z
    # second moments: E[(x - mu)^2] = diag(Sigma)
    zv = z_scores((res.x - gaussian.mean) ** 2, torch.diagonal(gaussian.cov))
    assert bool((zv < Z_MAX).all()), zv


def test_hybrid_reports_local_and_global_acceptance(gaussian_hybrid):
    info = gaussian_hybrid.info
    assert 0 < info["local_acceptance"] < 1 and 0 < info["global_acceptance"] <= 1
    assert info["warmup_evaluations"] < gaussian_hybrid.energy_evaluations
    assert {"rhat_max", "ess_bulk_min", "ess_tail_min"} <= set(info)
    assert info["ess_bulk_min"] > 20


def test_hybrid_negative_control_wrong_truth_fails(gaussian, gaussian_hybrid):
    """The same test has power: a truth shifted by 0.3 sd is rejected."""
    shifted = gaussian.mean + 0.3 * torch.diagonal(gaussian.cov).sqrt()
    assert bool((z_scores(gaussian_hybrid.x, shifted) > Z_MAX).any())


@pytest.mark.slow
def test_hybrid_hmc_funnel_calibrated():
    funnel = Funnel(dim=3, sigma=1.5)
    res = hybrid(
        small_flow(funnel), funnel, n_samples=3000, seed=1,
        schedule=Schedule(chains=8, init="flow", warmup_rounds=4, repeats=(1, 2)),
        local=LocalMoves(kind="hmc", n_leapfrog=5, step_size=0.2, steps=15),
        global_moves=GlobalMoves(steps=5, train_steps=80, batch_size=256, lr=5e-3),
    )  # fmt: skip
    z = z_scores(res.x, np.zeros(3))
    assert bool((z < Z_MAX).all()), z
    zv = z_scores(res.x[..., :1] ** 2, [funnel.sigma**2])
    assert float(zv[0]) < Z_MAX, zv
    assert res.info["local"] == "hmc"


def test_neutra_correlated_gaussian_calibrated(gaussian):
    flow = fit_reverse_kl(small_flow(gaussian, seed=2), gaussian)
    res = neutra(
        flow,
        gaussian,
        n_samples=2000,
        seed=0,
        chains=8,
        n_leapfrog=4,
        warmup_rounds=5,
        warmup_steps=10,
    )
    assert res.method == "neutra" and res.accepted.shape == (8, 250)
    z = z_scores(res.x, gaussian.mean)
    assert bool((z < Z_MAX).all()), z
    assert 0.3 < res.info["acceptance_rate"] < 1.0
    # frozen while sampling (tests/flows/test_frozen.py), handed back as it came
    assert all(p.requires_grad for p in flow.parameters())


@pytest.mark.slow
def test_neutra_funnel_calibrated():
    funnel = Funnel(dim=3, sigma=1.5)
    flow = fit_reverse_kl(small_flow(funnel, seed=3), funnel)
    res = neutra(
        flow,
        funnel,
        n_samples=2000,
        seed=1,
        chains=8,
        n_leapfrog=4,
        warmup_rounds=5,
        warmup_steps=10,
    )
    z = z_scores(res.x, np.zeros(3))
    assert bool((z < Z_MAX).all()), z
    zv = z_scores(res.x[..., :1] ** 2, [funnel.sigma**2])
    assert float(zv[0]) < Z_MAX, zv

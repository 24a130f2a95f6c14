"""Posteriors users bring with `from_log_prob`: every runner starts, adaptation ends at its
target, stuck chains are restarted, dtypes match, and an evidence whose proposal misses mass is
flagged. Small posteriors of the shapes users bring (regression with an exact evidence, a
two-mode mixture, a trap that freezes a chain)."""

import logging
import math

import numpy as np
import pytest
import torch

from boltzflow.energies.posterior import from_log_prob
from boltzflow.energies.standard_posteriors import regression
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.sampling.bayes_anneal import annealed_flow
from boltzflow.sampling.coverage import coverage_check
from boltzflow.sampling.emcee_move import emcee_sampler, flow_emcee
from boltzflow.sampling.hybrid import hybrid_sampler
from boltzflow.sampling.reweighting import reweight
from boltzflow.sampling.starts import initial_points, laplace_approximation

pytestmark = pytest.mark.usefixtures("float64_module")


def small_flow(target, seed=0):
    return spline_coupling_flow(target, num_layers=2, hidden=16, seed=seed).double()


# ----------------------------------------------------------------------------- 1. starts
def test_every_runner_starts_on_a_from_log_prob_target():
    post, mean, cov, _ = regression()
    r = hybrid_sampler(
        small_flow(post), post, n_samples=64, chains=8, warmup_rounds=2, local_steps=10,
        train_steps=10, global_steps=2,
    )  # fmt: skip
    assert r.x.shape == (8, 8, 4) and torch.isfinite(r.energy).all()
    assert "theta_rhat_max" in r.info  # diagnostics in the constrained parameters too
    r = emcee_sampler(None, post, n_samples=64)
    assert torch.isfinite(r.energy).all()
    r = flow_emcee(
        small_flow(post), post, n_samples=64, burn_steps=20, rounds=1, round_steps=10,
        train_steps=10,
    )  # fmt: skip
    assert torch.isfinite(r.energy).all()
    r = annealed_flow(
        small_flow(post), post, n_samples=64, chains=8, n_per_stage=128, train_steps=5,
        prior_samples=200, prior_steps=5, final_rounds=1, max_stages=2,
    )  # fmt: skip
    assert torch.isfinite(r.energy).all()


@pytest.mark.slow
def test_annealed_flow_from_the_laplace_reference_gets_the_exact_evidence():
    post, *_ = regression()
    r = annealed_flow(
        small_flow(post), post, n_samples=128, chains=16, n_per_stage=256, train_steps=20,
        prior_samples=500, prior_steps=20, final_rounds=1, max_stages=15,
    )  # fmt: skip
    ev = r.info["evidence"]  # annealed from the Laplace reference: log Z still right
    assert abs(ev["log_z"]["mean"] - post.log_z) < 4 * ev["log_z"]["stderr"], ev


def test_start_errors_say_what_to_do():
    post, *_ = regression()
    with pytest.raises(ValueError, match="init='auto'"):
        emcee_sampler(None, post, n_samples=64, init="flow")
    with pytest.raises(ValueError, match="no sampleable prior"):
        emcee_sampler(None, post, n_samples=64, init="prior")
    with pytest.raises(ValueError, match=r"shape \[32, 4\]"):
        emcee_sampler(None, post, n_samples=64, init=torch.zeros(3, 4))
    r = emcee_sampler(None, post, n_samples=64, init=torch.zeros(32, 4) + 0.01 * torch.randn(32, 4))
    assert torch.isfinite(r.energy).all()


@pytest.mark.parametrize("numpy_lik", [False, True])
def test_laplace_start_is_the_exact_gaussian(numpy_lik):
    """For a Gaussian posterior the Laplace approximation is exact: mode and covariance to
    optimiser / finite-difference precision (autograd, or central differences for numpy)."""
    post, mean, cov, _ = regression(numpy=numpy_lik)
    lap = laplace_approximation(post, generator=torch.Generator().manual_seed(0))
    sd = np.sqrt(np.diag(cov))
    assert np.abs((lap.mode.numpy() - mean) / sd).max() < 1e-3
    assert np.abs(lap.cov.numpy() / np.outer(sd, sd) - cov / np.outer(sd, sd)).max() < 1e-3
    x = initial_points(post, 2000, generator=torch.Generator().manual_seed(1))
    # overdispersed by 2: the standardized spread is 2 per coordinate
    spread = x.std(0).numpy() / sd
    assert np.all(np.abs(spread - 2.0) < 0.15), spread


# --------------------------------------------- 2., 3. adaptation that ends right; evidence
PTA_LIKE = dict(
    local="hmc", metric="dense", n_leapfrog=8, jitter=0.5, chains=8, warmup_rounds=4,
    local_steps=30, init_steps=100, global_steps=0, train_steps=0, repeats=[1, 0],
    evidence_samples=4000, evidence_train_steps=300, lr=3e-4,
)  # fmt: skip
"""The dense-HMC settings of `benchmarks/pta_sim_hmc.toml` (shorter trajectories)."""


@pytest.fixture(scope="module")
def regression_run(float64_module):
    post, mean, cov, log_z = regression()
    flow = small_flow(post)
    return post, mean, cov, log_z, hybrid_sampler(flow, post, n_samples=1600, **PTA_LIKE)


@pytest.mark.slow
def test_hmc_production_acceptance_at_its_target(regression_run):
    """The step size is re-adapted after the last metric update: production acceptance near
    the 0.75 target (0.91 before; on a 1000-point, 8-coefficient regression 0.97)."""
    *_, r = regression_run
    assert 0.6 < r.info["local_acceptance"] < 0.87, r.info["local_acceptance"]
    assert r.info["rhat_max"] < 1.05 and r.info["warmup_restarts"] == [0, 0, 0, 0]


@pytest.mark.slow
def test_regression_means_and_evidence_exact(regression_run):
    post, mean, cov, log_z, r = regression_run
    x = r.x.reshape(-1, 4).numpy()
    z = (x.mean(0) - mean) / np.sqrt(np.diag(cov) / r.info["ess_bulk_min"])
    assert np.all(np.abs(z) < 4), z
    ev = r.info["evidence"]
    zl = (ev["log_z"]["mean"] - log_z) / ev["log_z"]["stderr"]
    assert abs(zl) < 4, (ev, log_z)
    assert ev["coverage_ok"] and not ev["flagged"], ev


def trap(depth=40.0):
    """A 2-d standard normal plus a needle at (6, 6) of width 1e-3 whose energy sits `depth` kT
    above the main mode's minimum: a chain started in it collapses its step and stays."""
    c = torch.tensor([6.0, 6.0])
    w = 1e-3

    def log_prob(t):
        main = -0.5 * (t**2).sum(-1)
        needle = -depth - 0.5 * (((t - c) / w) ** 2).sum(-1) + 10.0
        return torch.logaddexp(main, needle)

    return from_log_prob(log_prob, 2)


def test_stuck_chain_is_restarted_and_reported():
    post = trap()
    x0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    x0[0] = torch.tensor([6.0, 6.0])
    r = hybrid_sampler(
        small_flow(post), post, n_samples=2400, local="hmc", chains=8, warmup_rounds=3,
        local_steps=30,
        global_steps=0, train_steps=0, repeats=[1, 0], init=x0, n_leapfrog=4,
    )  # fmt: skip
    assert sum(r.info["warmup_restarts"]) >= 1, r.info
    assert r.info["production_stuck_chains"] == 0
    assert r.info["rhat_max"] < 1.05, r.info


def test_float32_flow_on_a_float64_posterior_is_cast(caplog):
    post, *_ = regression()
    flow = small_flow(post).float()
    with caplog.at_level(logging.WARNING):
        r = hybrid_sampler(flow, post, n_samples=32, chains=4, warmup_rounds=1, local_steps=5,
                           train_steps=5, global_steps=2)  # fmt: skip
    assert r.x.dtype == torch.float64 and next(flow.parameters()).dtype == torch.float64
    assert any("cast to torch.float64" in m for m in caplog.messages)


# ------------------------------------------------------------- coverage: negative control
def _mixture_case(seed=0, n_chain=8, draws=500, n_is=4000):
    """Target: equal mixture of N(±3, 1) in 1-d (log Z = 0). Chains: exact draws."""
    g = torch.Generator().manual_seed(seed)

    def u(x):
        a = -0.5 * (x - 3) ** 2
        b = -0.5 * (x + 3) ** 2
        return -(torch.logaddexp(a, b) - math.log(2) - 0.5 * math.log(2 * math.pi))

    side = torch.where(torch.rand(n_chain, draws, generator=g) < 0.5, 3.0, -3.0)
    chains = side + torch.randn(n_chain, draws, generator=g)
    return g, u, chains, n_is


def _normal_logq(x, m, s):
    return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)


@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_flags_a_proposal_that_misses_a_mode(seed):
    g, u, chains, n = _mixture_case(seed)
    # proposal on one mode only, no mass below 0 (a truncated normal): clean k̂, log Z low by
    # log 2
    xq = 3 + 1.1 * torch.randn(3 * n, generator=g)
    xq = xq[xq > 0][:n]

    def lq_one(x):
        log_norm = math.log(0.5 * math.erfc(-3 / 1.1 / math.sqrt(2)))
        inside = _normal_logq(x, 3, 1.1) - log_norm
        return torch.where(x > 0, inside, torch.full_like(x, -math.inf))

    lq = lq_one(xq)
    rw = reweight(-u(xq) - lq, seed=seed)
    assert rw.pareto_k < 0.7 and rw.ess_fraction > 0.5  # the weights look clean ...
    assert rw.log_z.mean < -0.6  # ... while log Z is low by log 2
    cov = coverage_check(lq_one(chains), u(chains), rw.log_z.mean,
                         rw.log_z.stderr, lq)  # fmt: skip
    assert not cov["coverage_ok"]  # ... but the coverage check is not
    assert abs(cov["coverage"] - 0.5) < 0.1 and cov["low_density_fraction"] > 0.3
    # a proposal that covers both modes passes
    mix = torch.where(torch.rand(n, generator=g) < 0.5, 3.0, -3.0)
    xq = mix + 1.1 * torch.randn(n, generator=g)

    def lq_mix(x):
        return torch.logaddexp(_normal_logq(x, 3, 1.1), _normal_logq(x, -3, 1.1)) - math.log(2)

    rw = reweight(-u(xq) - lq_mix(xq), seed=seed)
    assert abs(rw.log_z.mean) < 4 * rw.log_z.stderr
    good = coverage_check(lq_mix(chains), u(chains), rw.log_z.mean, rw.log_z.stderr, lq_mix(xq))
    assert good["coverage_ok"], good
    # mutant: the forward ratio with the energy's sign flipped no longer recognises it
    mutant = coverage_check(lq_mix(chains), -u(chains), rw.log_z.mean, rw.log_z.stderr, lq_mix(xq))
    assert not mutant["coverage_ok"]
    # chains far from the proposal's normalizer: a coverage beyond float64 is inf, not a crash
    far = coverage_check(lq_mix(chains), u(chains) + 1e4, rw.log_z.mean, rw.log_z.stderr)
    assert far["coverage"] == math.inf and not far["coverage_ok"]

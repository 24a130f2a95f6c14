"""Flow-preconditioned SMC against exact answers: calibrated z-scores with the islands' errors.

One statistic serves every check: the largest `|estimate - exact| / error` over the posterior
means (island MCSE), the mode weights and log Z (island standard error). A correct sampler keeps
it below 3.5; each mutant of the algorithm (the flow's log-det dropped from the latent-space
target, half the temperature step in the incremental weight, particles moved with a flow fitted
to those same particles) must push it above 5 with the same settings.
"""

import math

import numpy as np
import pytest
import torch

import boltzflow.sampling.smc as smc_module
import boltzflow.sampling.smc_crossfit as crossfit_module
import boltzflow.sampling.smc_moves as moves_module
import boltzflow.sampling.smc_production as production_module
from boltzflow import arviz_compat
from boltzflow.energies.gaussians import Funnel, GaussianMixture
from boltzflow.energies.posterior import Parameter, from_log_prob
from boltzflow.energies.priors import Normal
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.reporting.idata import posterior_inference_data
from boltzflow.sampling.diagnostics import calibrated_z
from boltzflow.sampling.smc import (
    conditional_ess,
    island_mcse,
    next_beta,
    smc,
    systematic_resample,
)
from boltzflow.sampling.smc_reference import GaussianReference

pytestmark = pytest.mark.usefixtures("float64")
Z_PASS, Z_FAIL = 3.5, 5.0
PRIOR_SD, NOISE, DATA = 3.0, 0.5, (1.0, -0.5)
FAST = dict(train_steps=20, prior_steps=60, batch_size=128, islands=16, max_steps=20)


def conjugate():
    """Prior N(0, 3²) per coordinate, one observation N(theta_i, 0.5²) each: exact answers."""
    d = torch.tensor(DATA)

    def log_lik(theta):
        r = (theta - d) / NOISE
        return (-0.5 * r * r - math.log(NOISE) - 0.5 * math.log(2 * math.pi)).sum(-1)

    post = from_log_prob(
        log_lik, [Parameter("a", Normal(0, PRIOR_SD)), Parameter("b", Normal(0, PRIOR_SD))]
    )
    dd = np.array(DATA)
    var = 1 / (1 / PRIOR_SD**2 + 1 / NOISE**2)
    s2 = PRIOR_SD**2 + NOISE**2
    log_z = float(np.sum(-0.5 * dd**2 / s2 - 0.5 * np.log(2 * np.pi * s2)))
    return post, var * dd / NOISE**2, log_z


def flow_for(target, seed=0):
    return spline_coupling_flow(target, num_layers=2, hidden=16, seed=seed).double()


def z_max(res, values, exact, log_z) -> float:
    """Largest calibrated z over `values [islands, n, k]` against `exact [k]` and log Z."""
    mean, se = island_mcse(values)
    z = np.abs(mean - np.asarray(exact)) / se
    lz = res.info["log_z"]
    return float(max(z.max(), abs(lz["mean"] - log_z) / lz["stderr"]))


def mixture():
    return GaussianMixture([[-2.5, 0.0], [2.5, 0.0]], scales=0.6, weights=[0.3, 0.7])


def mixture_z(res, target) -> float:
    modes = target.mode_assignment(res.x.reshape(-1, 2)).reshape(res.x.shape[:2])
    vals = torch.stack([res.x[..., 0], res.x[..., 1], (modes == 0).double()], -1)
    exact_x = float(target.exact_mean()[0])
    return z_max(res, vals, [exact_x, 0.0, 0.3], 0.0)


def run_mixture(seed=0, **kw):
    target = mixture()
    ref = GaussianReference(0.0, 4.0, dim=2)
    res = smc(
        flow_for(target, seed), target, n_samples=1024, seed=seed, reference=ref, **FAST, **kw
    )
    return res, target


# ----------------------------------------------------------------------------- pieces
def test_systematic_resampling_counts_are_floor_or_ceil_of_n_w():
    g = torch.Generator().manual_seed(0)
    w = torch.softmax(torch.randn(64, generator=g, dtype=torch.float64), 0)
    for _ in range(20):
        counts = torch.bincount(systematic_resample(torch.log(w), g), minlength=64)
        assert bool((counts >= torch.floor(64 * w)).all() & (counts <= torch.ceil(64 * w)).all())
        assert int(counts.sum()) == 64


def test_next_beta_hits_the_conditional_ess_target():
    g = torch.Generator().manual_seed(1)
    log_l = -5 * torch.randn(500, generator=g, dtype=torch.float64).square()
    log_w = torch.full((500,), -math.log(500), dtype=torch.float64)
    b = next_beta(log_w, log_l, 0.0, 0.9)
    valid = torch.isfinite(log_l)
    assert 0 < b < 1
    assert conditional_ess(log_w, b * log_l, valid) == pytest.approx(0.9, abs=1e-3)
    # particles with log L = -inf are excluded from the criterion (weight 0, no stall)
    log_l[:100] = -math.inf
    b2 = next_beta(log_w, log_l, 0.0, 0.9)
    assert 0 < b2 < 1


# ----------------------------------------------------------------- exact answers
def test_conjugate_gaussian_means_and_evidence():
    post, mean, log_z = conjugate()
    res = smc(flow_for(post), post, n_samples=1024, seed=0, **FAST)
    assert res.info["final_beta"] == 1.0 and res.info["betas"][0] == 0.0
    assert res.x.shape == (16, 64, 2)
    with torch.no_grad():
        theta = post.constrain(res.x.reshape(-1, 2)).theta.reshape(res.x.shape)
    assert z_max(res, theta, mean, log_z) < Z_PASS
    assert res.energy_evaluations == post.n_evaluations
    assert res.info["rhat_max"] < 1.05
    assert 0 < res.info["acceptance_rate"] <= 1


@pytest.mark.slow
def test_funnel_means_and_log_z():
    target = Funnel(dim=3, sigma=1.5)
    ref = GaussianReference(0.0, [2.0, 3.0, 3.0])
    res = smc(flow_for(target), target, n_samples=1024, seed=0, reference=ref, **FAST)
    assert z_max(res, res.x, [0.0, 0.0, 0.0], 0.0) < Z_PASS


def test_two_mode_mixture_weights_means_and_log_z():
    res, target = run_mixture()
    assert mixture_z(res, target) < Z_PASS


def imh_mixture_z(**kw) -> float:
    """Largest calibrated z (chains' MCSE) of x, y and the mode-0 indicator after SMC with
    independence-MH production on the two-mode mixture (exact mean, 0, weight 0.3)."""
    res, target = run_mixture(imh_draws=4096, **kw)
    modes = target.mode_assignment(res.x.reshape(-1, 2)).reshape(res.x.shape[:2])
    vals = torch.stack([res.x[..., 0], res.x[..., 1], (modes == 0).double()], -1)
    assert res.x.shape == (16, 256, 2) and res.info["smc"]["evaluations"] < res.energy_evaluations
    exact = [float(target.exact_mean()[0]), 0.0, 0.3]
    return float(calibrated_z(vals, exact).max())


def test_imh_production_after_smc_keeps_the_mode_weights():
    assert imh_mixture_z() < Z_PASS


def test_imh_production_without_the_flow_density_ratio_is_detected(monkeypatch):
    """Mutant: the production chains accept on the target ratio alone (the q-ratio dropped);
    they then sample p q, not p, which squares the mode weights (0.3 -> 0.16)."""
    monkeypatch.setattr(production_module, "importance_log_weights", lambda u, log_q: -u)
    real = production_module.draw_with_log_weights

    def dropped(flow, target, n, g, batch_size=8192):
        d = real(flow, target, n, g, batch_size)
        return d._replace(log_weight=-d.energy)

    monkeypatch.setattr(production_module, "draw_with_log_weights", dropped)
    assert imh_mixture_z() > Z_FAIL


def test_production_with_a_flow_that_misses_the_target_warns(caplog):
    """Chains whose proposals are never accepted are exact but useless: the user is told."""
    from boltzflow.sampling.runners import RunCost

    target = GaussianMixture([[6.0] * 8], scales=0.05)  # far from the flow's N(0, I)
    flow = flow_for(target)
    g = torch.Generator().manual_seed(0)
    x = target.sample(64, generator=g).reshape(4, 16, 8)
    with torch.no_grad():
        u = target.energy(x.reshape(-1, 8)).reshape(4, 16)
    with caplog.at_level("WARNING"):
        res = production_module.imh_production(flow, RunCost(target), x, u, [1], 400, g, {})
    info = res.info
    assert res.x.shape == (4, 100, 8) and info["imh_acceptance"] < production_module.LOW_ACCEPTANCE
    assert info["flow_holdout_islands"] == [0, 1, 2, 3] and "barely move" in caplog.text


# --------------------------------------------------------------- negative controls
def test_missing_latent_jacobian_is_detected(monkeypatch):
    monkeypatch.setattr(moves_module, "latent_energy", lambda u_beta, ladj: u_beta)
    res, target = run_mixture()
    assert mixture_z(res, target) > Z_FAIL


def test_wrong_incremental_weight_is_detected(monkeypatch):
    def wrong(log_l, beta, beta_new):  # a factor 1/2 lost from the temperature step
        return smc_module.clean_log_weights(0.5 * (float(beta_new) - float(beta)) * log_l)

    monkeypatch.setattr(smc_module, "incremental_log_weights", wrong)
    res, target = run_mixture()
    assert mixture_z(res, target) > Z_FAIL


def flat_likelihood_population(seed, early_stopping=False):
    """SMC on a likelihood that is 0 everywhere: the target is the prior N(0, I_6), so the
    final particles are prior draws moved by the kernel; without early stopping a flow fitted to
    256 particles per half overfits them. Returns the z-score of the mean variance against 1
    (sd sqrt(2 / (n d)))."""
    d = 6
    prior = [Parameter(f"a{i}", Normal(0, 1)) for i in range(d)]
    post = from_log_prob(lambda t: torch.zeros(t.shape[0], dtype=t.dtype), prior)
    flow = spline_coupling_flow(post, num_layers=2, hidden=32, seed=seed).double()
    res = smc(flow, post, n_samples=512, seed=seed, islands=8, prior_steps=200, train_steps=20,
              max_steps=5, early_stopping=early_stopping)  # fmt: skip
    x = res.x.reshape(-1, d)
    return float((x.var(0).mean() - 1) / math.sqrt(2 / (x.shape[0] * d)))


def test_moves_leave_the_target_invariant_when_the_flow_overfits():
    assert abs(flat_likelihood_population(0)) < Z_PASS


def test_moves_leave_the_target_invariant_with_early_stopping():
    assert abs(flat_likelihood_population(0, early_stopping=True)) < Z_PASS


def test_moving_particles_with_a_flow_fitted_to_them_is_detected(monkeypatch):
    """Mutant: each half moved by its own flow (no cross-fitting); the overfitted flow's
    independence-type proposals pull the particles off their own points and the population
    shrinks (z about -6)."""
    monkeypatch.setattr(crossfit_module, "mover_of", lambda half: half)
    assert flat_likelihood_population(0) < -Z_FAIL


# ------------------------------------------------------------- a numpy likelihood
def test_numpy_likelihood_that_raises_or_returns_nan_gets_weight_zero():
    calls = {"n": 0}

    def log_lik(theta):  # numpy, no gradient; NaN for theta_0 > 2, raises on theta_1 < -5
        calls["n"] += 1
        if np.any(theta[:, 1] < -5):
            raise ValueError("outside the model's domain")
        out = -0.5 * ((theta - 0.5) ** 2).sum(-1)
        return np.where(theta[:, 0] > 2, np.nan, out)

    post = from_log_prob(
        log_lik, [Parameter("a", Normal(0, 2)), Parameter("b", Normal(0, 2))], numpy=True
    )
    res = smc(flow_for(post), post, n_samples=512, seed=1, **FAST)
    assert res.info["final_beta"] == 1.0
    assert res.info["n_nonfinite"] > 0
    with torch.no_grad():
        theta = post.constrain(res.x.reshape(-1, 2)).theta
    assert bool((theta[:, 0] <= 2).all()) and bool((theta[:, 1] >= -5).all())
    assert math.isfinite(res.info["log_z"]["mean"])
    # the run as arviz data: constrained parameters with islands as chains, log Z in the attrs
    lz = res.info["log_z"]
    attrs = {"log_z": lz["mean"], "log_z_stderr": lz["stderr"], "betas": res.info["betas"]}
    idata = posterior_inference_data(post, res, attrs=attrs)
    posterior = arviz_compat.group(idata, "posterior")
    assert posterior["a"].shape == (16, 32) and posterior.attrs["log_z"] == lz["mean"]


def test_a_likelihood_that_is_nowhere_finite_is_refused_with_a_message():
    post = from_log_prob(lambda t: np.full(len(t), np.nan), {"a": Normal(0, 2)}, numpy=True)
    with pytest.raises(ValueError, match="not finite at any"):
        smc(flow_for(post), post, n_samples=64, islands=4, train_steps=1, prior_steps=1)


def test_flat_prior_numpy_target_starts_from_a_laplace_reference():
    """`from_log_prob` with flat priors has no prior to start from: the default reference is
    the Laplace approximation at the mode, widened; the evidence of a normalized correlated
    Gaussian times e^3 is 3."""
    mu = np.array([1.0, -2.0])
    cov = np.array([[1.0, 0.8], [0.8, 2.0]])
    prec, logdet = np.linalg.inv(cov), np.linalg.slogdet(cov)[1]

    def log_prob(theta):  # numpy, vectorised
        d = theta - mu
        return (
            3.0 - 0.5 * np.einsum("ni,ij,nj->n", d, prec, d) - 0.5 * logdet - math.log(2 * math.pi)
        )

    post = from_log_prob(log_prob, 2, numpy=True)
    res = smc(flow_for(post), post, n_samples=512, seed=0, **FAST)
    assert res.info["reference"] == "laplace"
    assert z_max(res, res.x, mu, 3.0) < Z_PASS


@pytest.mark.slow
def test_latent_hmc_moves_on_a_differentiable_posterior():
    post, mean, log_z = conjugate()
    res = smc(flow_for(post), post, n_samples=1024, seed=0, move="hmc", **FAST)
    with torch.no_grad():
        theta = post.constrain(res.x.reshape(-1, 2)).theta.reshape(res.x.shape)
    assert z_max(res, theta, mean, log_z) < Z_PASS
    assert 0.3 < res.info["acceptance_rate"] <= 1


def test_a_single_island_is_refused_before_any_work():
    post, _, _ = conjugate()
    with pytest.raises(ValueError, match="islands must be at least 2"):
        smc(flow_for(post), post, n_samples=64, islands=1)
    assert post.n_evaluations == 0


def test_hmc_moves_refuse_a_numpy_likelihood():
    post = from_log_prob(lambda t: -0.5 * (t**2).sum(-1), {"a": Normal(0, 2)}, numpy=True)
    with pytest.raises(ValueError, match="differentiable"):
        smc(flow_for(post), post, n_samples=64, islands=4, move="hmc")


# ------------------------------------------------------------------ error calibration
@pytest.mark.slow
def test_island_errors_are_calibrated_over_independent_runs():
    """Over 10 seeds, the log Z and mean z-scores of the conjugate posterior behave like
    N(0, 1): sum of z² inside the central 99.8% of chi²(10) (with Student-t islands, a little
    wider than normal), and the reported error within a factor 2 of the runs' spread."""
    post, mean, log_z = conjugate()
    lz, se, m0, mse = [], [], [], []
    for seed in range(10):
        res = smc(flow_for(post, seed), post, n_samples=1024, seed=seed, **FAST)
        with torch.no_grad():
            theta = post.constrain(res.x.reshape(-1, 2)).theta.reshape(res.x.shape)
        m, s = island_mcse(theta)
        lz.append(res.info["log_z"]["mean"])
        se.append(res.info["log_z"]["stderr"])
        m0.append(m[0])
        mse.append(s[0])
    lz, se, m0, mse = map(np.array, (lz, se, m0, mse))
    for est, err, exact in ((lz, se, log_z), (m0, mse, mean[0])):
        chi2 = float((((est - exact) / err) ** 2).sum())
        assert 1.5 < chi2 < 32.0, chi2
        assert 0.5 < est.std(ddof=1) / np.sqrt((err**2).mean()) < 2.0


def test_island_log_z_spread_flags_an_unreliable_evidence(caplog):
    """Islands whose log Z spread by more than ISLAND_LOG_Z_SD_MAX are flagged with a warning
    (the mean of skewed island evidences is biased low); a narrow spread is not."""
    g = torch.Generator().manual_seed(0)
    narrow = -10 + 0.1 * torch.randn(16, generator=g, dtype=torch.float64)
    wide = -10 + 2.0 * torch.randn(16, generator=g, dtype=torch.float64)
    assert not smc_module._log_z(narrow)["flagged"]
    with caplog.at_level("WARNING", logger="boltzflow.sampling.smc"):
        out = smc_module._log_z(wide)
    assert out["flagged"] and out["islands_sd"] > smc_module.ISLAND_LOG_Z_SD_MAX
    assert "unreliable" in caplog.text
    assert len(out["islands"]) == 16

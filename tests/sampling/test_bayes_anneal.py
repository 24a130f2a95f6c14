"""Annealed importance-weighted flow training, flow IMH and IS: against exact conjugate answers."""

import math

import numpy as np
import pytest
import torch

from boltzflow.energies.posterior import Parameter, Posterior
from boltzflow.energies.priors import Normal, Uniform
from boltzflow.flows.builders import spline_coupling_flow
from boltzflow.sampling import diagnostics
from boltzflow.sampling.bayes_anneal import annealed_flow, next_beta
from boltzflow.sampling.kernels.imh import imh_sweep
from boltzflow.sampling.proposals import prior_energy
from boltzflow.sampling.reweighting import kish_ess

pytestmark = pytest.mark.usefixtures("float64")
Z_MAX = 4.0
PRIOR_SD, NOISE, DATA = 3.0, 0.3, (1.0, -0.5)


def conjugate_posterior():
    """Prior N(0, 3²) per coordinate, one observation d_i ~ N(theta_i, 0.3²) each."""
    d = torch.tensor(DATA)

    def log_lik(theta):
        r = (theta - d) / NOISE
        return (-0.5 * r * r - math.log(NOISE) - 0.5 * math.log(2 * math.pi)).sum(-1)

    params = [Parameter("a", Normal(0.0, PRIOR_SD)), Parameter("b", Normal(0.0, PRIOR_SD))]
    return Posterior(params, log_lik)


def exact():
    """Posterior means, sds and log Z of the conjugate model."""
    d = np.array(DATA)
    var = 1 / (1 / PRIOR_SD**2 + 1 / NOISE**2)
    mean = var * d / NOISE**2
    s2 = PRIOR_SD**2 + NOISE**2
    log_z = float(np.sum(-0.5 * d**2 / s2 - 0.5 * np.log(2 * np.pi * s2)))
    return mean, math.sqrt(var), log_z


def run(sampler, seed=0, chains=64, **kw):
    post = conjugate_posterior()
    flow = spline_coupling_flow(post, num_layers=2, hidden=16, seed=seed).double()
    settings = dict(
        n_per_stage=512,
        train_steps=60,
        prior_samples=2000,
        prior_steps=100,
        final_rounds=2,
        n_final=1024,
        batch_size=256,
        lr=1e-3,
    )
    settings.update(kw)
    res = annealed_flow(
        flow, post, n_samples=4000, seed=seed, sampler=sampler, chains=chains, **settings
    )
    return post, res


def test_next_beta_keeps_the_target_ess():
    g = torch.Generator().manual_seed(0)
    log_l = -50 * torch.rand(4000, generator=g)
    lw0 = torch.zeros(4000)
    b = next_beta(lw0, log_l, 0.0, 0.5)
    assert 0 < b < 1
    assert kish_ess(lw0 + b * log_l) / 4000 == pytest.approx(0.5, abs=0.01)
    assert kish_ess(lw0 + 1.05 * b * log_l) / 4000 < 0.5
    assert next_beta(lw0, torch.zeros(4000), 0.0, 0.5) == 1.0  # flat likelihood: done
    assert next_beta(lw0, log_l, b, 0.9) == b  # below target already: no step


def test_prior_energy_is_the_normalized_prior():
    post = Posterior([Parameter("u", Uniform(-1.0, 3.0)), Parameter("n", Normal(1.0, 2.0))])
    y = post.sample_prior(5, generator=torch.Generator().manual_seed(0))
    # probit-linked uniform is N(0,1) in y; the normal prior is N(1, 2²) in y
    expected = 0.5 * y[:, 0] ** 2 + 0.5 * math.log(2 * math.pi)
    expected = expected + 0.5 * ((y[:, 1] - 1) / 2) ** 2 + math.log(2) + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(prior_energy(post, y), expected)
    with pytest.raises(TypeError):
        prior_energy(object(), y)


def test_imh_sweep_accepts_equal_weights_and_is_calibrated():
    idx, acc = imh_sweep(torch.zeros(11, 3), 0, torch.Generator().manual_seed(0))
    assert acc.all() and idx[:, -1].tolist() == [30, 31, 32]
    # proposal N(0, 1.5²), target N(0, 1): log w = log N(x;0,1) - log N(x;0,1.5²)
    g = torch.Generator().manual_seed(1)
    x = 1.5 * torch.randn(2001, 16, generator=g)
    lw = -0.5 * x**2 + 0.5 * (x / 1.5) ** 2
    idx, _ = imh_sweep(lw, 50, g)
    chain = x.reshape(-1)[idx]
    z = diagnostics.calibrated_z((chain**2).numpy()[..., None], np.array([1.0]), method="mean")
    assert abs(z[0]) < Z_MAX
    z_bad = diagnostics.calibrated_z((chain**2).numpy()[..., None], np.array([2.25]))
    assert abs(z_bad[0]) > Z_MAX  # negative control: the proposal's own variance


def test_annealed_importance_matches_conjugate_posterior_and_evidence():
    mean, sd, log_z = exact()
    post, res = run("importance")
    info = res.info
    assert info["training"]["final_beta"] == 1.0 and info["training"]["betas"][0] == 0.0
    assert res.energy_evaluations == info["training"]["evaluations"] + 4000
    theta = post.constrain(res.x[0]).theta
    lw = res.log_weight[0]
    w = torch.softmax(lw, 0)
    n_eff = kish_ess(lw)
    for i in range(2):
        est = float((w * theta[:, i]).sum())
        assert abs(est - mean[i]) / (sd / math.sqrt(n_eff)) < Z_MAX
    ev = info["evidence"]
    assert abs(ev["log_z"]["mean"] - log_z) / ev["log_z"]["stderr"] < Z_MAX
    assert ev["ess_fraction"] > 0.3
    # negative control: the flow draws without their weights are not the posterior
    # (training stopped after one stage, so the flow is still close to the prior)
    post2, res2 = run("importance", max_stages=1, final_rounds=0)
    x = post2.constrain(res2.x[0]).theta
    assert float(((x[:, 0].mean() - mean[0]) / (sd / math.sqrt(len(x)))).abs()) > 10


def test_annealed_imh_chains_are_exact():
    mean, sd, _ = exact()
    post, res = run("imh", seed=1, chains=16)
    assert res.accepted is not None and res.x.shape[:2] == (16, 250)
    assert bool((res.log_weight == 0).all()) and 0.3 < res.info["acceptance_rate"] <= 1.0
    theta = post.constrain(res.x.reshape(-1, 2)).theta.reshape(16, 250, 2).numpy()
    z = diagnostics.calibrated_z(theta, mean, method="mean")
    assert np.abs(z).max() < Z_MAX
    z_bad = diagnostics.calibrated_z(theta, mean + 0.5 * sd, method="mean")
    assert np.abs(z_bad).max() > Z_MAX  # negative control: a shifted truth is rejected


def test_bad_sampler_name():
    post = conjugate_posterior()
    flow = spline_coupling_flow(post, num_layers=2, hidden=8, seed=0).double()
    with pytest.raises(ValueError):
        annealed_flow(flow, post, n_samples=10, sampler="hmc")


def test_prior_defensive_density_matches_its_draws():
    from boltzflow.sampling.proposals import defensive_proposal

    post = conjugate_posterior()
    flow = spline_coupling_flow(post, num_layers=2, hidden=8, seed=0).double()
    q = defensive_proposal(flow, 0.2, 2.0, post, prior_weight=0.3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s = q.sample(20000, generator=g)
        # E_q[pi / q] = 1 for the normalized prior pi = exp(-u0)
        r = torch.exp(-prior_energy(post, s.x) - s.log_q)
        other = defensive_proposal(flow, 0.2, 2.0, post, prior_weight=0.05)
        wrong = torch.exp(-prior_energy(post, s.x) - other.log_prob(s.x))
    se = float(r.std() / math.sqrt(len(r)))
    assert abs(float(r.mean()) - 1.0) / se < Z_MAX
    assert abs(float(wrong.mean()) - 1.0) / float(wrong.std() / math.sqrt(len(r))) > Z_MAX

"""Priors, constraining bijections and the posterior energy (float64)."""

import math

import emcee
import numpy as np
import pytest
import torch
from scipy import integrate

from boltzflow.energies.bijections import CircleLift, Identity, Interval, Positive, UnitDisk
from boltzflow.energies.posterior import Parameter, Posterior, from_log_prob
from boltzflow.energies.priors import (
    Flat,
    HalfCauchy,
    HalfNormal,
    LogUniform,
    Normal,
    Uniform,
    UniformDisk,
)
from boltzflow.sampling.emcee_move import EmceeLogProb

pytestmark = pytest.mark.usefixtures("float64")

SCALAR_BIJECTIONS = [
    Identity(),
    Interval(-2.0, 3.0),
    Interval(1e-3, 1e2, log_scale=True),
    Interval(-2.0, 3.0, link="probit"),
    Interval(1e-3, 1e2, log_scale=True, link="probit"),
    Positive(),
    Positive(0.5),
]


@pytest.mark.parametrize("bij", SCALAR_BIJECTIONS, ids=repr)
def test_scalar_log_jacobian_matches_autograd(bij):
    y = torch.linspace(-6, 6, 41)[:, None].requires_grad_(True)
    theta, ladj = bij.forward(y)
    (dtheta,) = torch.autograd.grad(theta.sum(), y)
    torch.testing.assert_close(ladj, torch.log(dtheta.abs())[:, 0])
    torch.testing.assert_close(bij.inverse(theta.detach()), y.detach())


def test_unit_disk_log_jacobian_matches_autograd_and_round_trips():
    bij = UnitDisk()
    g = torch.Generator().manual_seed(0)
    ys = torch.cat([torch.randn(20, 2, generator=g) * 1.5, torch.tensor([[1e-6, -2e-6]])])
    for y in ys:
        jac = torch.autograd.functional.jacobian(lambda v: bij.forward(v[None]).theta[0], y)
        ladj = bij.forward(y[None]).ladj[0]
        torch.testing.assert_close(ladj, torch.linalg.slogdet(jac).logabsdet)
    theta = bij.forward(ys).theta
    assert bool((theta.norm(dim=-1) < 1).all())
    torch.testing.assert_close(bij.inverse(theta), ys)


@pytest.mark.parametrize("low,high", [(-math.pi, math.pi), (0.0, 2 * math.pi), (2.0, 5.0)])
def test_circle_lift_preserves_integrals_and_has_no_cut(low, high):
    """∫ f(θ(y)) e^{ladj(y)} dy over R² = ∫_low^high f(θ) dθ, by polar quadrature."""
    bij = CircleLift(low, high)
    period = high - low

    def f(t):
        return torch.exp(torch.cos(2 * math.pi * (t - 1.0) / period)) * (
            1 + 0.3 * torch.sin(2 * math.pi * t / period)
        )

    r, wr = np.polynomial.laguerre.laggauss(40)  # ∫_0^∞ e^{-s} g(s) ds, with s = r²/2
    r = torch.as_tensor(np.sqrt(2 * r))
    phi = torch.arange(256) * (2 * math.pi / 256)
    R, P = torch.meshgrid(r, phi, indexing="ij")
    y = torch.stack([R * torch.cos(P), R * torch.sin(P)], -1).reshape(-1, 2)
    theta, ladj = bij.forward(y)
    assert bool(((theta >= low) & (theta < high)).all())
    # the e^{-r²/2} r dr factor is the Laguerre weight in s = r²/2
    integrand = (f(theta[:, 0]) * torch.exp(ladj + 0.5 * (y * y).sum(-1))).reshape(R.shape)
    lifted = float((integrand.mean(1) * 2 * math.pi * torch.as_tensor(wr)).sum())
    exact = integrate.quad(lambda t: float(f(torch.tensor(t))), low, high)[0]
    assert lifted == pytest.approx(exact, rel=1e-10)
    # continuity across θ = low ≡ high: points either side of the cut have equal density
    eps = 1e-7
    a = torch.tensor(
        [[math.cos(2 * math.pi * low / period + eps), math.sin(2 * math.pi * low / period + eps)]]
    )
    b = torch.tensor(
        [[math.cos(2 * math.pi * low / period - eps), math.sin(2 * math.pi * low / period - eps)]]
    )
    assert float(f(bij.forward(a).theta[:, 0]) - f(bij.forward(b).theta[:, 0])) == pytest.approx(
        0, abs=1e-5
    )
    torch.testing.assert_close(bij.forward(bij.inverse(theta)).theta, theta)


PRIORS_1D = [
    Uniform(-1.0, 2.0),
    Normal(0.5, 2.0),
    LogUniform(1e-2, 1e1),
    HalfNormal(1.5),
    HalfCauchy(0.7),
    Uniform(0.0, 2 * math.pi, periodic=True),
]


@pytest.mark.parametrize("prior", PRIORS_1D, ids=repr)
def test_prior_only_posterior_has_unit_evidence(prior):
    """With no likelihood ∫ e^{-u(y)} dy = 1 in the unconstrained space (priors + Jacobians)."""
    post = Posterior([Parameter("a", prior)])

    def density(*y):
        return math.exp(-float(post.energy(torch.tensor([y]))[0]))

    if post.dim == 1:
        z = integrate.quad(density, -np.inf, np.inf, limit=200)[0]
    else:
        z = integrate.dblquad(lambda b, a: density(a, b), -9, 9, -9, 9, epsabs=1e-9)[0]
    assert z == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("prior", [*PRIORS_1D, UniformDisk()], ids=repr)
def test_prior_samples_match_sample_prior(prior):
    """sample_prior pushes forward to the prior: the prior CDF of the draws is uniform (KS)."""
    from scipy import stats

    post = Posterior([Parameter("a" if prior.size == 1 else ("h", "k"), prior)])
    y = post.sample_prior(4000, torch.Generator().manual_seed(1))
    theta = post.constrain(y).theta
    assert bool(torch.isfinite(post.energy(y)).all())
    if prior.size == 2:
        rho2 = (theta**2).sum(-1).numpy()  # uniform on the disk <=> |h|² ~ U(0, 1)
        assert stats.kstest(rho2, "uniform").pvalue > 1e-3
        return
    grid = torch.linspace(-30, 30, 200001)[:, None]
    if isinstance(prior, Uniform) and prior.periodic:
        grid = torch.linspace(prior.low, prior.high, 200001)[:, None]
    dens = torch.exp(prior.log_prob(grid)).numpy()
    cdf = np.concatenate(
        [[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid[:, 0].numpy()))]
    )
    u = np.interp(theta[:, 0].numpy(), grid[:, 0].numpy(), cdf)
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_bad_parameters_give_infinite_energy_counted_never_raise():
    def loglike(theta):
        if bool((theta[:, 0] > 5).any()):
            raise RuntimeError("solver failed")
        return torch.where(
            theta[:, 0] < -5, torch.full_like(theta[:, 0], math.nan), -(theta[:, 0] ** 2)
        )

    post = Posterior([Parameter("a", Normal(0, 10))], loglike)
    y = torch.tensor([[0.0], [6.0], [-6.0], [1.0], [math.nan]])
    u = post.energy(y)
    assert bool(torch.isfinite(u[[0, 3]]).all())
    assert bool((u[[1, 2, 4]] == math.inf).all())
    assert post.n_nonfinite == 3
    lp = EmceeLogProb(post)(y.numpy())
    assert lp[1] == -np.inf and np.isfinite(lp[0])
    assert EmceeLogProb(post)(np.array([6.0])) == -np.inf


def test_out_of_support_prior_gives_minus_inf():
    for prior, bad in [
        (Uniform(0, 1), 1.5),
        (LogUniform(1, 10), 0.5),
        (HalfNormal(), -1.0),
        (HalfCauchy(), -1.0),
    ]:
        assert prior.log_prob(torch.tensor([[bad]]))[0] == -math.inf
        assert prior.log_prob(torch.tensor([[math.nan]]))[0] == -math.inf
    assert UniformDisk().log_prob(torch.tensor([[0.8, 0.8]]))[0] == -math.inf


def test_numpy_and_torch_log_prob_agree_and_numpy_has_no_force():
    params = [Parameter("m", Flat()), Parameter("s", Flat(0.0)), Parameter("f", Flat(0, 1))]

    def lp_np(t):
        return -0.5 * (t[:, 0] / t[:, 1]) ** 2 - np.log(t[:, 1]) + np.log(t[:, 2])

    def lp_t(t):
        return -0.5 * (t[:, 0] / t[:, 1]) ** 2 - torch.log(t[:, 1]) + torch.log(t[:, 2])

    y = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    a, b = from_log_prob(lp_np, params, numpy=True), from_log_prob(lp_t, params)
    torch.testing.assert_close(a.energy(y), b.energy(y))
    assert b.force(y).shape == y.shape
    with pytest.raises(NotImplementedError):
        a.force(y)
    assert a.names == ["m", "s", "f"] and a.unconstrained_names == ["m", "s", "f"]


def test_names_of_lifted_and_joint_parameters():
    post = Posterior(
        [
            Parameter("phase", Uniform(0, 2 * math.pi, periodic=True)),
            Parameter(("h", "k"), UniformDisk()),
            Parameter("logP", Normal()),
        ]
    )
    assert post.dim == 5 and post.n_theta == 4
    assert post.unconstrained_names == ["phase_cos", "phase_sin", "h", "k", "logP"]
    assert set(post.observables()) == {"phase", "h", "k", "logP"}


def test_emcee_runs_on_posterior_and_recovers_gaussian_mean():
    """emcee through the adapter on a 2-D posterior with a positive parameter."""
    post = from_log_prob(
        lambda t: -0.5 * ((t[:, 0] - 1.0) ** 2 + (t[:, 1] - 2.0) ** 2 / 0.25),
        [Parameter("a", Flat()), Parameter("b", Flat(0.0))],
    )
    rs = np.random.RandomState(0)
    sampler = emcee.EnsembleSampler(16, 2, EmceeLogProb(post), vectorize=True)
    sampler.random_state = rs.get_state()
    p0 = post.unconstrain(torch.tensor([[1.0, 2.0]])).numpy() + 1e-3 * rs.randn(16, 2)
    sampler.run_mcmc(p0, 3000)
    y = torch.as_tensor(sampler.get_chain(discard=500, flat=True))
    theta = post.constrain(y).theta
    tau = sampler.get_autocorr_time(discard=500, quiet=True).max()
    ess = len(y) / tau
    err = (theta.mean(0) - torch.tensor([1.0, 2.0])) / (torch.tensor([1.0, 0.5]) / math.sqrt(ess))
    assert bool((err.abs() < 4).all()), err
    assert post.n_evaluations >= 16 * 3000


def test_inference_data_round_trip_through_netcdf(tmp_path):
    import arviz as az

    from boltzflow import arviz_compat
    from boltzflow.reporting.idata import posterior_inference_data, write_samples
    from boltzflow.sampling.runners import SamplingResult

    post = Posterior(
        [Parameter("phase", Uniform(0, 2 * math.pi, periodic=True)), Parameter("s", HalfNormal())]
    )
    y = post.sample_prior(2 * 50, torch.Generator().manual_seed(0)).reshape(2, 50, 3)
    result = SamplingResult(
        x=y,
        log_weight=torch.zeros(2, 50),
        energy=post.energy(y.reshape(100, 3)).reshape(2, 50),
        accepted=torch.rand(2, 50, generator=torch.Generator().manual_seed(1)) < 0.5,
        method="hybrid",
        energy_evaluations=100,
        wall_seconds=0.0,
        info={},
    )
    idata = posterior_inference_data(post, result, attrs={"system": "test"})
    write_samples(idata, tmp_path / "samples.nc")
    back = az.from_netcdf(str(tmp_path / "samples.nc"))  # the installed arviz reads the file
    posterior = arviz_compat.group(back, "posterior")
    stats = arviz_compat.group(back, "sample_stats")
    assert dict(posterior.sizes) == {"chain": 2, "draw": 50}
    theta = post.constrain(y.reshape(100, 3)).theta.reshape(2, 50, 2)
    np.testing.assert_allclose(posterior["phase"].values, theta[..., 0].numpy())
    np.testing.assert_allclose(posterior["s"].values, theta[..., 1].numpy())
    np.testing.assert_array_equal(stats["accepted"].values, result.accepted.numpy())
    np.testing.assert_allclose(stats["energy"].values, result.energy.numpy())
    assert posterior.attrs["system"] == "test"
    # arviz diagnostics read it directly (0.x: a Dataset, 1.x: the posterior DataTree node)
    rhat = float(az.rhat(back)["s"])
    assert rhat == pytest.approx(float(arviz_compat.rhat(theta[..., 1:].numpy())[0]), rel=1e-12)

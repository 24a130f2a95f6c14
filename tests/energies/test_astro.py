"""Astrophysical posteriors: PTA Woodbury likelihood and Keplerian radial velocities (float64)."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from boltzflow.energies.astro_pta import PTAPosterior, hellings_downs, power_law_log_psd
from boltzflow.energies.astro_rv import (
    RVPosterior,
    kepler_solve,
    linear_marginal_log_likelihood,
    reference_period_marginal,
    true_anomaly,
)

pytestmark = pytest.mark.usefixtures("float64")


def small_pta():
    return PTAPosterior(seed=1, n_pulsars=3, n_toas=25, n_freq=4)


def dense_pta_log_likelihood(post, theta):
    """The same likelihood without Woodbury: r ~ N(0, N + F Φ F^T) over all TOAs."""
    d = post.data
    freqs = torch.arange(1, d.n_freq + 1) / d.span
    gamma = hellings_downs(d.positions)
    n = [len(r) for r in d.residuals]
    off = np.cumsum([0, *n])
    cov = np.zeros((off[-1], off[-1]))
    phi_gw = torch.exp(power_law_log_psd(theta[-2], theta[-1], freqs, d.span)).numpy()
    for a in range(d.n_pulsars):
        for b in range(d.n_pulsars):
            phi = phi_gw * gamma[a, b]
            if a == b:
                phi = (
                    phi
                    + torch.exp(
                        power_law_log_psd(theta[2 * a], theta[2 * a + 1], freqs, d.span)
                    ).numpy()
                )
            block = d.design(a) @ np.diag(np.repeat(phi, 2)) @ d.design(b).T
            cov[off[a] : off[a + 1], off[b] : off[b + 1]] = block
        cov[off[a] : off[a + 1], off[a] : off[a + 1]] += np.eye(n[a]) * d.sigma[a] ** 2
    return stats.multivariate_normal(np.zeros(off[-1]), cov).logpdf(np.concatenate(d.residuals))


def test_pta_woodbury_matches_dense_gaussian():
    post = small_pta()
    g = torch.Generator().manual_seed(0)
    theta = post.constrain(post.sample_prior(4, g)).theta
    theta[0] = torch.tensor([post.injected[n] for n in post.names])
    ll = post.log_likelihood(theta)
    for i in range(4):
        assert float(ll[i]) == pytest.approx(
            dense_pta_log_likelihood(post, theta[i]), rel=1e-9, abs=1e-6
        )


def test_pta_default_has_22_parameters_and_is_deterministic():
    a, b = PTAPosterior(0), PTAPosterior(0)
    assert a.dim == 22 and a.n_theta == 22
    assert a.names[-2:] == ["log10_A_gw", "gamma_gw"]
    assert set(a.injected) == set(a.names)
    np.testing.assert_array_equal(a.data.residuals[3], b.data.residuals[3])
    assert not np.array_equal(a.data.residuals[3], PTAPosterior(1).data.residuals[3])


def test_pta_batched_equals_single_and_gradient_is_finite():
    post = small_pta()
    y = post.sample_prior(5, torch.Generator().manual_seed(2))
    u = post.energy(y)
    single = torch.cat([post.energy(y[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(u, single)
    post.chunk_size = 2  # evaluated in chunks 2 + 2 + 1, forces included
    torch.testing.assert_close(post.energy(y), u)
    f = post.force(y)
    post.chunk_size = 256
    torch.testing.assert_close(f, post.force(y))
    assert bool(torch.isfinite(f).all())


def test_hellings_downs_curve():
    z = np.array([[0, 0, 1.0], [0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0]])
    gamma = hellings_downs(z)
    assert gamma[0, 0] == 1.0
    assert gamma[0, 1] == pytest.approx(0.5)  # coincident, distinct pulsars
    assert gamma[0, 2] == pytest.approx(0.25)  # antipodal
    x = 0.5  # 90 degrees
    assert gamma[0, 3] == pytest.approx(1.5 * x * math.log(x) - 0.25 * x + 0.5)


def test_kepler_solution_and_implicit_gradients():
    m = torch.linspace(-10, 10, 101).requires_grad_(True)
    e = torch.full_like(m, 0.7).requires_grad_(True)
    ecc = kepler_solve(m, e)
    torch.testing.assert_close(
        ecc - e * torch.sin(ecc), torch.remainder(m, 2 * math.pi), atol=1e-12, rtol=0
    )
    dm, de = torch.autograd.grad(ecc.sum(), (m, e))
    torch.testing.assert_close(dm, 1 / (1 - e * torch.cos(ecc)).detach())
    torch.testing.assert_close(de, (torch.sin(ecc) / (1 - e * torch.cos(ecc))).detach())
    # circular orbit: the true anomaly is the mean anomaly
    mm = torch.linspace(0, 6, 7)
    torch.testing.assert_close(
        torch.remainder(
            true_anomaly(kepler_solve(mm, torch.zeros(7)), torch.zeros(7)), 2 * math.pi
        ),
        mm,
    )


def test_rv_linear_marginal_matches_the_posterior_energy():
    """The closed-form (A, B, γ) marginal used by the reference equals the integral of the
    Posterior's own likelihood times its priors. The integrand is exactly Gaussian in (A, B, γ),
    so one Newton step and the Hessian determinant (Laplace) integrate it exactly."""
    post = RVPosterior()
    per, e, m0, s = 11.65, 0.3, 2.2, 0.7

    def log_joint(beta):
        theta = torch.cat([torch.tensor([per, e, m0]), beta, torch.tensor([s])])[None]
        log_prior = sum(
            p.prior.log_prob(beta[i : i + 1][None])[0] for i, p in enumerate(post.parameters[3:6])
        )
        return post.log_likelihood(theta)[0] + log_prior

    beta0 = torch.zeros(3)
    grad = torch.autograd.functional.jacobian(log_joint, beta0)
    hess = -torch.autograd.functional.hessian(log_joint, beta0)
    beta = torch.linalg.solve(hess, grad)
    laplace = float(log_joint(beta)) + 1.5 * math.log(2 * math.pi) - 0.5 * float(torch.logdet(hess))
    closed = linear_marginal_log_likelihood(post, *(torch.tensor([[v]]) for v in (per, e, m0, s)))
    assert float(closed[0]) == pytest.approx(laplace, abs=1e-9)


def rv_dense_marginal_log_likelihood(post, period, e, m0, s):
    """``log N(v; 0, D + X Λ Xᵀ)`` by scipy's dense multivariate normal (no Woodbury), with
    Kepler's equation solved by bisection: ``(A, B, γ) ~ N(0, Λ)`` integrated out exactly."""
    d = post.data
    mean_anomaly = np.remainder(2 * np.pi * (d.t - d.t0) / period + m0, 2 * np.pi)
    kepler = lambda x, m: x - e * np.sin(x) - m  # noqa: E731
    ecc = np.array([optimize.brentq(kepler, 0, 2 * np.pi, (m,), xtol=1e-14) for m in mean_anomaly])
    nu = 2 * np.arctan2(np.sqrt(1 + e) * np.sin(ecc / 2), np.sqrt(1 - e) * np.cos(ecc / 2))
    x = np.stack([np.cos(nu - m0) + e * np.cos(m0), np.sin(nu - m0) - e * np.sin(m0)], 1)
    x = np.concatenate([x, np.ones((len(d.t), 1))], 1)
    lam = np.diag([post.sigma_k**2, post.sigma_k**2, post.sigma_gamma**2])
    cov = np.diag(d.sigma**2 + s**2) + x @ lam @ x.T
    return stats.multivariate_normal(np.zeros(len(d.t)), cov).logpdf(d.v)


def test_rv_linear_marginal_is_the_dense_gaussian_evidence():
    """The marginalized posterior's likelihood is ``log N(v; 0, D + X Λ Xᵀ)`` at prior draws and
    at the injected orbit. Negative control: amplitude priors 1.5x wider change it."""
    post = RVPosterior(marginalize_linear=True)
    theta = post.constrain(post.sample_prior(8, torch.Generator().manual_seed(2))).theta
    theta = torch.cat([theta, torch.tensor([[post.injected[n] for n in post.names]])])
    dense = np.array([rv_dense_marginal_log_likelihood(post, *row) for row in theta.tolist()])
    np.testing.assert_allclose(post.log_likelihood(theta).numpy(), dense, rtol=0, atol=1e-8)
    wide = RVPosterior(marginalize_linear=True, sigma_k=1.5 * post.sigma_k)
    assert np.min(np.abs(wide.log_likelihood(theta).numpy() - dense)) > 0.1


def test_rv_reference_quadrature_matches_monte_carlo_over_the_prior():
    """The quadrature's log evidence and mode masses agree with plain Monte Carlo over the prior
    (100k draws; the marginal likelihood is checked above) within 4 combined errors: the
    bootstrap error and the coarse grid's error (0.03 in log Z, 0.01 in mode mass, measured
    against a 3000 x 12 x 24 x 8 grid). A narrow period range keeps both cheap. Negative
    control: the quadrature with a 1.5x wider amplitude prior misses the evidence."""
    from boltzflow.sampling.reweighting import expectation, reweight

    post = RVPosterior(marginalize_linear=True, period_range=(11.0, 12.5))
    grid = dict(n_period=300, n_e=7, n_m0=14, n_s=6)
    per, dens, log_z = reference_period_marginal(post, **grid)
    theta = post.constrain(post.sample_prior(100_000, torch.Generator().manual_seed(0))).theta
    ll = post.log_likelihood(theta)
    mc = reweight(ll, seed=0, n_bootstrap=100).log_z
    assert abs(log_z - mc.mean) < 4 * math.hypot(mc.stderr, 0.03), (log_z, mc)
    grid_mode, mc_mode = post.mode_index(per), post.mode_index(theta[:, 0])
    for j in range(len(post.mode_edges) + 1):
        mass = float(torch.trapezoid(dens * (grid_mode == j), torch.log(per)))
        e = expectation((mc_mode == j).double(), ll)
        assert abs(mass - e.mean) < 4 * math.hypot(e.stderr, 0.01), (j, mass, e)
    wide = RVPosterior(marginalize_linear=True, period_range=(11.0, 12.5), sigma_k=15.0)
    log_z_wide = reference_period_marginal(wide, **grid)[2]
    assert abs(log_z_wide - mc.mean) > 4 * math.hypot(mc.stderr, 0.03), (log_z_wide, mc)


def test_rv_posterior_mode_observables_and_lifted_phase():
    post = RVPosterior()
    assert post.dim == 8 and post.names == ["P", "e", "M0", "A", "B", "gamma", "s"]
    y = post.sample_prior(200, torch.Generator().manual_seed(0))
    obs = post.observables()
    total = sum(obs[f"mode_{j}"].fn(y) for j in range(len(post.mode_edges) + 1))
    torch.testing.assert_close(total, torch.ones(200))
    assert bool(torch.isfinite(post.force(y)).all())
    # the phase is continuous across M0 = 0 ≡ 2π in the lifted coordinates
    theta = torch.tensor([[post.injected[n] for n in post.names]] * 2)
    theta[0, 2], theta[1, 2] = 1e-9, 2 * math.pi - 1e-9
    u = post.energy(post.unconstrain(theta))
    assert float(u[0] - u[1]) == pytest.approx(0.0, abs=1e-6)


def test_shipped_rv_data_and_reference_match_the_simulation():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "systems" / "rv-kepler"
    data = np.loadtxt(folder / "data.csv", delimiter=",", comments="#")
    post = RVPosterior()
    np.testing.assert_allclose(
        data, np.stack([post.data.t, post.data.v, post.data.sigma], 1), atol=2e-6
    )
    ref = json.loads((folder / "reference.json").read_text())
    assert tuple(ref["mode_edges_days"]) == post.mode_edges
    assert sum(ref["mode_weights"]) == pytest.approx(1.0, abs=1e-6)


def test_rv_mean_longitude_amplitudes_give_the_keplerian_curve():
    """``A (cos(ν-M0) + e cos M0) + B (sin(ν-M0) - e sin M0)`` with ``A = K cos λ``,
    ``B = -K sin λ``, ``λ = ω + M0`` is ``K [cos(ν+ω) + e cos ω]`` (the textbook form)."""
    from boltzflow.energies.astro_rv import _basis

    t = torch.linspace(0.0, 400.0, 50)
    per, e, m0, k, omega = (torch.tensor(v) for v in (11.7, 0.4, 2.0, 5.5, 1.2))
    c, s = _basis(t, 200.0, per, e, m0)
    lam = omega + m0
    v = k * torch.cos(lam) * c - k * torch.sin(lam) * s
    nu = true_anomaly(kepler_solve(2 * math.pi * (t - 200.0) / per + m0, e), e)
    torch.testing.assert_close(v, k * (torch.cos(nu + omega) + e * torch.cos(omega)))
    post = RVPosterior()
    assert post.injected["A"] == pytest.approx(5.5 * math.cos(3.2))


def test_rv_marginal_posterior_importance_sampling_from_the_prior():
    """``marginalize_linear=True``: 5 coordinates, the closed-form marginal likelihood, and
    self-normalized importance sampling from the prior (weights bounded by max L) recovers
    the quadrature mode weights and log Z within 4 delta-method / bootstrap errors. Negative
    control: the full 8-coordinate likelihood is not the marginal one."""
    from boltzflow.sampling.reweighting import expectation, reweight

    post = RVPosterior(marginalize_linear=True)
    assert post.dim == 5 and post.names == ["P", "e", "M0", "s"]
    g = torch.Generator().manual_seed(0)
    y = post.sample_prior(200_000, generator=g)
    theta = post.constrain(y).theta
    ll = post.log_likelihood(theta)
    full = RVPosterior()
    y_full = full.sample_prior(5, g)
    assert not torch.allclose(full.log_likelihood(full.constrain(y_full).theta), ll[:5])
    import json
    from pathlib import Path

    ref = json.loads(
        (Path(__file__).resolve().parents[2] / "systems/rv-kepler/reference.json").read_text()
    )
    # prior draws: log w = log L exactly (u = u0 - log L and q = e^{-u0})
    est = reweight(ll, seed=0, n_bootstrap=100)
    z_logz = (est.log_z.mean - ref["log_z"]) / math.hypot(est.log_z.stderr, 0.008)
    assert abs(z_logz) < 4, z_logz
    idx = post.mode_index(theta[:, 0])
    for j, w_ref in enumerate(ref["mode_weights"]):
        e = expectation((idx == j).double(), ll)
        assert abs(e.mean - w_ref) < 4 * math.hypot(e.stderr, 0.003), (j, e.mean, e.stderr)
    # negative control: the same estimator with the likelihood tempered (L^0.5) misses
    e_wrong = expectation((idx == 2).double(), 0.5 * ll)
    assert abs(e_wrong.mean - ref["mode_weights"][2]) > 10 * e_wrong.stderr


def test_rv_sample_linear_is_the_exact_conditional_posterior():
    """Conditional draws of (A, B, γ) have the mean and covariance of the full model's
    conditional posterior (its Newton step and inverse Hessian, exact for a Gaussian); a
    wrong covariance (the prior's) fails the same check."""
    marg, full = RVPosterior(marginalize_linear=True), RVPosterior()
    fixed = torch.tensor([[11.65, 0.3, 2.2, 0.7]])
    draws = marg.sample_linear(fixed.expand(40_000, -1), torch.Generator().manual_seed(0))
    assert draws.shape == (40_000, 7)
    torch.testing.assert_close(draws[:, [0, 1, 2, 6]], fixed.expand(40_000, -1))

    def log_joint(beta):
        theta = torch.cat([fixed[0, :3], beta, fixed[0, 3:]])[None]
        prior = sum(
            p.prior.log_prob(beta[i : i + 1][None])[0] for i, p in enumerate(full.parameters[3:6])
        )
        return full.log_likelihood(theta)[0] + prior

    beta0 = torch.zeros(3)
    hess = -torch.autograd.functional.hessian(log_joint, beta0)
    mean = torch.linalg.solve(hess, torch.autograd.functional.jacobian(log_joint, beta0))
    cov = torch.linalg.inv(hess)
    sd = cov.diagonal().sqrt()
    z = (draws[:, 3:6].mean(0) - mean) / (sd / math.sqrt(40_000))
    assert bool((z.abs() < 4).all()), z
    emp = torch.cov(draws[:, 3:6].T)
    assert bool(((emp.diagonal() / cov.diagonal()).log().abs() < 0.03).all())  # 4 sd of 40k
    prior_var = torch.tensor([100.0, 100.0, 100.0])
    assert bool(((emp.diagonal() / prior_var).log().abs() > 0.5).all())  # negative control
    with pytest.raises(ValueError):
        marg.sample_linear(torch.zeros(3, 7))

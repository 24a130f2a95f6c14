r"""Standard posteriors of different shapes, written as users write them, with references.

Each model is a torch `log_prob` (or log-likelihood with named priors) wrapped in one line with
[`from_log_prob`][boltzflow.energies.posterior.from_log_prob]. They are the benchmark suite of
`benchmarks/posteriors.py` and the small posteriors of the sampler tests:

* `eight_schools`: hierarchical, non-centred, a funnel in $(\tau, \eta)$; 10 parameters;
  reference by 2-d quadrature over $(\mu, \log\tau)$, the rest in closed form;
* `garch`: GARCH(1,1) volatility of 500 returns, a stationarity boundary $\alpha + \beta < 1$;
  3 parameters; reference by quadrature (`benchmarks/_posteriors_reference.py`);
* `arma`: ARMA(1,1) with mean, 200 points, conditional likelihood, correlated; 4 parameters;
  reference by quadrature;
* `regression`: linear regression, 200 points, Flat priors with the prior inside `log_prob`;
  4 parameters; closed form;
* `mixture`: two separated 2-d Gaussian modes, weights 0.3 / 0.7, Normal priors; closed form.

A model is a [`StandardPosterior`][boltzflow.energies.standard_posteriors.StandardPosterior]:
the posterior, its exact moments and $\log Z$ where they are known in closed form, and the same
model as a nested sampler takes it (a prior transform of the unit cube and a log-likelihood).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import logsumexp, ndtri

from boltzflow.energies.posterior import Posterior, from_log_prob
from boltzflow.energies.priors import HalfCauchy, HalfNormal, Normal, Prior, Uniform

__all__ = ["StandardPosterior", "STANDARD_POSTERIORS", "standard_posterior", "regression"]

LOG_2PI = math.log(2 * math.pi)


class StandardPosterior(NamedTuple):
    """One model of the suite.

    Attributes:
        name: the suite's name for it.
        post: the [`Posterior`][boltzflow.energies.posterior.Posterior] (torch, differentiable).
        mean, sd: exact posterior means and standard deviations of the named parameters
            `[n_theta]`, or `None` where only quadrature gives them.
        log_z: the exact $\\log Z$, or `None`.
        prior_transform: unit cube `u [d]` -> `theta [d]` for a nested sampler.
        nested_log_likelihood: `theta [d]` -> float, so that the nested sampler's evidence is the
            posterior's $Z$.
    """

    name: str
    post: Posterior
    mean: np.ndarray | None
    sd: np.ndarray | None
    log_z: float | None
    prior_transform: Callable
    nested_log_likelihood: Callable


def _ppf(prior: Prior, u: np.ndarray) -> np.ndarray:
    """Inverse CDF of one of the package's scalar priors."""
    if isinstance(prior, Normal):
        return prior.loc + prior.scale * ndtri(u)
    if isinstance(prior, HalfNormal):
        return prior.scale * ndtri(0.5 + 0.5 * u)
    if isinstance(prior, HalfCauchy):
        return prior.scale * np.tan(0.5 * math.pi * u)
    if isinstance(prior, Uniform):
        return prior.low + (prior.high - prior.low) * u
    raise TypeError(f"no inverse CDF for {prior!r}")


def _nested(post: Posterior, priors: dict[str, Prior]):
    """Prior transform and log-likelihood of a posterior with proper scalar priors."""
    ps = list(priors.values())

    def transform(u):
        return np.array([_ppf(p, ui) for p, ui in zip(ps, u, strict=True)])

    def log_lik(theta):
        t = torch.as_tensor(np.asarray(theta, dtype=np.float64)[None])
        with torch.no_grad():
            return float(post.log_likelihood(t)[0])

    return transform, log_lik


# ------------------------------------------------------------------ linear regression
def regression(n=200, p=4, sigma=0.5, tau=2.0, seed=0, numpy=False):
    r"""Bayesian linear regression $y = X\beta + \sigma\epsilon$, prior $\mathcal N(0, \tau^2)$
    per coefficient written inside `log_prob` (Flat priors): mean, covariance and $\log Z$ in
    closed form.

    Returns:
        `(post, mean [p], cov [p, p], log_z)`; `numpy=True` wraps a numpy `log_prob`.
    """
    rs = np.random.RandomState(seed)
    X = rs.randn(n, p)
    y = X @ rs.randn(p) + sigma * rs.randn(n)
    Xt, yt = torch.tensor(X), torch.tensor(y)
    norm = -math.log(sigma) - 0.5 * LOG_2PI

    def log_prob(t):
        lp = (-0.5 * (t / tau) ** 2 - math.log(tau) - 0.5 * LOG_2PI).sum(-1)
        r = (yt - t @ Xt.T) / sigma
        return lp + (-0.5 * r**2 + norm).sum(-1)

    def log_prob_np(t):
        lp = (-0.5 * (t / tau) ** 2 - math.log(tau) - 0.5 * LOG_2PI).sum(-1)
        r = (y - t @ X.T) / sigma
        return lp + (-0.5 * r**2 + norm).sum(-1)

    cov_y = sigma**2 * np.eye(n) + tau**2 * X @ X.T
    log_z = float(
        -0.5 * y @ np.linalg.solve(cov_y, y) - 0.5 * np.linalg.slogdet(cov_y)[1] - 0.5 * n * LOG_2PI
    )
    cov = np.linalg.inv(X.T @ X / sigma**2 + np.eye(p) / tau**2)
    mean = cov @ X.T @ y / sigma**2
    post = from_log_prob(log_prob_np if numpy else log_prob, p, numpy=numpy, log_z=log_z)
    return post, mean, cov, log_z


def _regression() -> StandardPosterior:
    post, mean, cov, log_z = regression()
    tau, p = 2.0, post.dim

    def transform(u):
        return tau * ndtri(u)

    def log_lik(theta):  # log_prob minus the N(0, tau^2) prior the transform draws from
        t = torch.as_tensor(np.asarray(theta, dtype=np.float64)[None])
        with torch.no_grad():
            full = float(post.log_likelihood(t)[0])
        return full + 0.5 * float(np.sum((theta / tau) ** 2)) + p * (math.log(tau) + 0.5 * LOG_2PI)

    return StandardPosterior(
        "regression", post, mean, np.sqrt(np.diag(cov)), log_z, transform, log_lik
    )


# --------------------------------------------------------------------- eight schools
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def _eight_schools() -> StandardPosterior:
    r"""Rubin (1981): $y_j \sim \mathcal N(\mu + \tau\eta_j, \sigma_j^2)$, $\mu \sim \mathcal N(0,
    5^2)$, $\tau \sim$ half-Cauchy(5), $\eta_j \sim \mathcal N(0, 1)$ (non-centred).

    Reference: $y_j \mid \mu, \tau \sim \mathcal N(\mu, \sigma_j^2 + \tau^2)$ gives
    $p(\mu, \tau \mid y)$ and $Z$ on a 2-d grid over $(\mu, \log\tau)$; given $(\mu, \tau)$,
    $\eta_j$ is normal with mean $v_j(y_j-\mu)/(\sigma_j^2\tau)$ and variance $v_j/\tau^2$,
    $v_j = (\sigma_j^{-2} + \tau^{-2})^{-1}$.
    """
    y, s = torch.tensor(SCHOOLS_Y), torch.tensor(SCHOOLS_SIGMA)
    priors = {
        "mu": Normal(0, 5),
        "tau": HalfCauchy(5),
        **{f"eta_{j}": Normal(0, 1) for j in range(8)},
    }

    def log_lik(t):
        theta = t[:, :1] + t[:, 1:2] * t[:, 2:]
        r = (y - theta) / s
        return (-0.5 * r**2 - torch.log(s) - 0.5 * LOG_2PI).sum(-1)

    post = from_log_prob(log_lik, priors)
    # quadrature: mu on [-60, 70], log tau on [-14, 8]
    mu = np.linspace(-60, 70, 1301)[:, None, None]
    lt = np.linspace(-14, 8, 1101)[None, :, None]
    tau = np.exp(lt)
    yv, sv = SCHOOLS_Y, SCHOOLS_SIGMA
    var = sv**2 + tau**2
    log_l = (-0.5 * (yv - mu) ** 2 / var - 0.5 * np.log(var) - 0.5 * LOG_2PI).sum(-1)
    log_prior = (
        -0.5 * (mu[..., 0] / 5) ** 2 - math.log(5) - 0.5 * LOG_2PI
        + math.log(2 / (math.pi * 5)) - np.log1p((tau[..., 0] / 5) ** 2) + lt[..., 0]
    )  # fmt: skip
    log_w = log_l + log_prior
    h = (mu[1, 0, 0] - mu[0, 0, 0]) * (lt[0, 1, 0] - lt[0, 0, 0])
    log_z = float(logsumexp(log_w) + math.log(h))
    w = np.exp(log_w - logsumexp(log_w))
    v = 1 / (1 / sv**2 + 1 / tau**2)
    m_eta = v * (yv - mu) / (sv**2 * tau)
    e1 = [(w * mu[..., 0]).sum(), (w * tau[..., 0]).sum()]
    e2 = [(w * mu[..., 0] ** 2).sum(), (w * tau[..., 0] ** 2).sum()]
    e1 += list(np.einsum("ab,abj->j", w, m_eta))
    e2 += list(np.einsum("ab,abj->j", w, m_eta**2 + v / tau**2))
    mean, second = np.array(e1), np.array(e2)
    sd = np.sqrt(second - mean**2)
    post.log_z = log_z
    return StandardPosterior("eight_schools", post, mean, sd, log_z, *_nested(post, priors))


# -------------------------------------------------------------------- GARCH(1,1), ARMA(1,1)
def _garch_data(n=500, omega=0.1, alpha=0.15, beta=0.7, seed=1) -> np.ndarray:
    rs = np.random.RandomState(seed)
    r, s2 = np.zeros(n), omega / (1 - alpha - beta)
    for t in range(n):
        r[t] = math.sqrt(s2) * rs.randn()
        s2 = omega + alpha * r[t] ** 2 + beta * s2
    return r


def _garch() -> StandardPosterior:
    r"""GARCH(1,1) (Bollerslev 1986): $r_t \sim \mathcal N(0, \sigma_t^2)$,
    $\sigma_t^2 = \omega + \alpha r_{t-1}^2 + \beta\sigma_{t-1}^2$, $\sigma_0^2$ the sample
    variance; $\omega \sim$ half-normal(1), $\alpha, \beta \sim U(0, 1)$, likelihood 0 unless
    $\alpha + \beta < 1$."""
    r = torch.tensor(_garch_data())
    priors = {"omega": HalfNormal(1.0), "alpha": Uniform(0, 1), "beta": Uniform(0, 1)}

    def log_lik(t):
        omega, alpha, beta = t[:, 0], t[:, 1], t[:, 2]
        s2, ll = r.var().expand_as(omega), torch.zeros_like(omega)
        for rt in r:
            ll = ll - 0.5 * (rt**2 / s2 + torch.log(s2) + LOG_2PI)
            s2 = omega + alpha * rt**2 + beta * s2
        return torch.where(alpha + beta < 1, ll, torch.full_like(ll, -math.inf))

    post = from_log_prob(log_lik, priors)
    return StandardPosterior("garch", post, None, None, None, *_nested(post, priors))


def _arma_data(n=200, mu=0.5, phi=0.6, theta=-0.3, sigma=1.0, seed=2) -> np.ndarray:
    rs = np.random.RandomState(seed)
    e = sigma * rs.randn(n + 100)
    y = np.zeros(n + 100)
    for t in range(1, n + 100):
        y[t] = mu + phi * (y[t - 1] - mu) + theta * e[t - 1] + e[t]
    return y[100:]


def _arma() -> StandardPosterior:
    r"""ARMA(1,1) with mean: $y_t = \mu + \phi(y_{t-1} - \mu) + \theta e_{t-1} + e_t$,
    $e_t \sim \mathcal N(0, \sigma^2)$, conditional on $y_0$ with $e_0 = 0$; $\mu \sim \mathcal
    N(0, 10^2)$, $\phi, \theta \sim U(-1, 1)$, $\sigma \sim$ half-normal(2)."""
    y = torch.tensor(_arma_data())
    priors = {"mu": Normal(0, 10), "phi": Uniform(-1, 1), "theta": Uniform(-1, 1),
              "sigma": HalfNormal(2.0)}  # fmt: skip

    def log_lik(t):
        mu, phi, th, sig = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
        e, sse = torch.zeros_like(mu), torch.zeros_like(mu)
        for k in range(1, y.shape[0]):
            e = y[k] - mu - phi * (y[k - 1] - mu) - th * e
            sse = sse + e**2
        n = y.shape[0] - 1
        return -0.5 * sse / sig**2 - n * torch.log(sig) - 0.5 * n * LOG_2PI

    post = from_log_prob(log_lik, priors)
    return StandardPosterior("arma", post, None, None, None, *_nested(post, priors))


# ---------------------------------------------------------------------------- mixture
MIX_W = np.array([0.3, 0.7])
MIX_M = np.array([[-3.0, -1.0], [2.5, 1.5]])
MIX_S = np.array([[[1.0, 0.5], [0.5, 0.8]], [[0.6, -0.3], [-0.3, 1.2]]])
MIX_PRIOR = 5.0


def _mvn_logpdf(x: np.ndarray, m: np.ndarray, s: np.ndarray) -> float:
    d = x - m
    return float(-0.5 * d @ np.linalg.solve(s, d) - 0.5 * np.linalg.slogdet(2 * math.pi * s)[1])


def _mixture() -> StandardPosterior:
    r"""A likelihood that is a mixture of two 2-d Gaussians (weights 0.3, 0.7, modes 5.6 apart)
    with $\mathcal N(0, 5^2)$ priors: the posterior is a Gaussian mixture, component $k$ with
    covariance $C_k = (S_k^{-1} + P^{-1})^{-1}$, mean $C_k S_k^{-1} m_k$ and weight
    $\propto w_k\,\mathcal N(m_k; 0, S_k + P)$; $Z = \sum_k w_k\,\mathcal N(m_k; 0, S_k + P)$."""
    m, s_inv = torch.tensor(MIX_M), torch.linalg.inv(torch.tensor(MIX_S))
    log_norm = torch.tensor(np.log(MIX_W) - 0.5 * np.linalg.slogdet(2 * math.pi * MIX_S)[1])
    priors = {"x": Normal(0, MIX_PRIOR), "y": Normal(0, MIX_PRIOR)}

    def log_lik(t):
        d = t[:, None, :] - m  # [batch, 2, 2]
        q = torch.einsum("bki,kij,bkj->bk", d, s_inv, d)
        return torch.logsumexp(log_norm - 0.5 * q, -1)

    p_cov = MIX_PRIOR**2 * np.eye(2)
    log_c = np.array(
        [math.log(w) + _mvn_logpdf(mk, np.zeros(2), sk + p_cov)
         for w, mk, sk in zip(MIX_W, MIX_M, MIX_S, strict=True)]
    )  # fmt: skip
    log_z = float(logsumexp(log_c))
    pw = np.exp(log_c - log_z)
    covs = [np.linalg.inv(np.linalg.inv(sk) + np.linalg.inv(p_cov)) for sk in MIX_S]
    means = [c @ np.linalg.solve(sk, mk) for c, sk, mk in zip(covs, MIX_S, MIX_M, strict=True)]
    mean = sum(w * mk for w, mk in zip(pw, means, strict=True))
    second = sum(w * (np.diag(c) + mk**2) for w, c, mk in zip(pw, covs, means, strict=True))
    post = from_log_prob(log_lik, priors)
    post.log_z = log_z
    sd = np.sqrt(second - mean**2)
    return StandardPosterior("mixture", post, mean, sd, log_z, *_nested(post, priors))


STANDARD_POSTERIORS: dict[str, Callable[[], StandardPosterior]] = {
    "eight_schools": _eight_schools,
    "garch": _garch,
    "arma": _arma,
    "regression": _regression,
    "mixture": _mixture,
}
"""The suite, by name (module docstring)."""


def standard_posterior(name: str) -> StandardPosterior:
    """Build the suite's model `name` (a key of `STANDARD_POSTERIORS`)."""
    if name not in STANDARD_POSTERIORS:
        raise KeyError(f"unknown posterior {name!r}: one of {', '.join(STANDARD_POSTERIORS)}")
    return STANDARD_POSTERIORS[name]()

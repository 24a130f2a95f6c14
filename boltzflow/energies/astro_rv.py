r"""Keplerian radial velocities of one planet from sparse, irregular data (aliased periods).

Model. With period $P$, eccentricity $e$, mean anomaly $M_0$ at the reference
epoch $t_0$, the mean anomaly is $M(t) = 2\pi (t - t_0)/P + M_0$; Kepler's equation
$E - e\sin E = M$ is solved by Newton iterations and the true anomaly is
$\nu = 2\,\mathrm{atan2}(\sqrt{1+e}\sin\tfrac E2, \sqrt{1-e}\cos\tfrac E2)$. The velocity

$$
v(t) = K[\cos(\nu+\omega) + e\cos\omega] + \gamma
     = A[\cos(\nu - M_0) + e\cos M_0] + B[\sin(\nu - M_0) - e\sin M_0] + \gamma,
\qquad A = K\cos\lambda,\ B = -K\sin\lambda,\ \lambda = \omega + M_0,
$$

is linear in $(A, B, \gamma)$ given $(P, e, M_0)$ (Price-Whelan et al. 2017,
"The Joker", ApJ 837, 20, marginalize the linear parameters the same way). The amplitudes are
those of the mean longitude $\lambda$ at the reference epoch, not of $\omega$: the
data fix the signal's phase at $t_0$, which is $\lambda$ (for $e = 0$,
$\nu - M_0 = 2\pi(t - t_0)/P$ does not involve $M_0$ at all), whereas
$(M_0, \omega)$ separately are degenerate along $M_0 + \omega = \lambda$ when the
orbit is nearly circular. The rotation $(A, B) \mapsto$ (the amplitudes of
$\omega$) by the angle $M_0$ has unit Jacobian and leaves the isotropic Gaussian
prior invariant, so the posterior over $(P, e, M_0, s)$ is the same in both. Observations have
errors $\sigma_i$ and an unknown jitter $s$:
$v_i \sim \mathcal N(v(t_i), \sigma_i^2 + s^2)$.

Priors (8 unconstrained coordinates): $P \sim \log U(P_{lo}, P_{hi})$,
$e \sim U(0, e_{max})$, $M_0 \sim U(0, 2\pi)$ on the circle (a
[`CircleLift`][boltzflow.energies.bijections.CircleLift]), $A, B \sim \mathcal N(0, \sigma_K^2)$
(so $K$ is Rayleigh and $\omega$ uniform), $\gamma \sim \mathcal N(0, \sigma_\gamma^2)$, $s \sim$
half-normal($\sigma_s$). Velocities in m/s, times in days.

With few observations on a seasonal cadence the period posterior has yearly aliases
$1/P' = 1/P \pm k/365.25$ (Dawson & Fabrycky 2010, ApJ 722, 937). Because $(A, B, \gamma)$ enter
linearly with Gaussian priors,
[`reference_period_marginal`][boltzflow.energies.astro_rv.reference_period_marginal] integrates them
exactly and the remaining $(\log P, e, M_0, s)$ by quadrature, giving reference mode weights
independent of any sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from boltzflow.energies.base import Observable, StateSets
from boltzflow.energies.posterior import Parameter, Posterior
from boltzflow.energies.priors import HalfNormal, LogUniform, Normal, Uniform

__all__ = [
    "kepler_solve",
    "linear_marginal_log_likelihood",
    "true_anomaly",
    "simulate_rv",
    "RVData",
    "RVPosterior",
    "reference_period_marginal",
]

_LOG_2PI = math.log(2 * math.pi)


def kepler_solve(mean_anomaly: torch.Tensor, e: torch.Tensor, n_iter: int = 12) -> torch.Tensor:
    r"""Eccentric anomaly $E$ with $E - e\sin E = M$ (Newton, `e < 1`).

    The iterations run without autograd; one final Newton step carries the exact implicit
    derivatives $\partial E/\partial M = 1/(1-e\cos E)$,
    $\partial E/\partial e = \sin E/(1-e\cos E)$.
    """
    m = torch.remainder(mean_anomaly, 2 * math.pi)
    with torch.no_grad():
        ed = e.detach().expand_as(m)
        big = m.detach() + 0.85 * ed * torch.sign(torch.sin(m.detach()))
        x = torch.where(ed > 0.8, big, m.detach())
        for _ in range(n_iter):
            x = x - (x - ed * torch.sin(x) - m.detach()) / (1 - ed * torch.cos(x))
    return x - (x - e * torch.sin(x) - m) / (1 - e * torch.cos(x))


def true_anomaly(ecc_anomaly: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """True anomaly ν from the eccentric anomaly."""
    half = 0.5 * ecc_anomaly
    return 2 * torch.atan2(torch.sqrt(1 + e) * torch.sin(half), torch.sqrt(1 - e) * torch.cos(half))


def _basis(t, t0, period, e, m0):
    """`(cos(ν - M0) + e cos M0, sin(ν - M0) - e sin M0)` at `t [n]`, parameters `[..., 1]`.

    The coefficients of `(A, B)` with `A = K cos λ`, `B = -K sin λ`, `λ = ω + M0`.
    """
    mean = 2 * math.pi * (t - t0) / period + m0
    nu = true_anomaly(kepler_solve(mean, e), e)
    return torch.cos(nu - m0) + e * torch.cos(m0), torch.sin(nu - m0) - e * torch.sin(m0)


class RVData:
    """Times `t` (days), velocities `v` and errors `sigma` (m/s), `injected` truth."""

    def __init__(self, t, v, sigma, injected):
        self.t, self.v, self.sigma, self.injected = t, v, sigma, injected

    @property
    def t0(self) -> float:
        """Reference epoch: the mean observing time."""
        return float(np.mean(self.t))


def simulate_rv(
    seed: int = 3,
    n_obs: int = 14,
    period: float = 11.7,
    k: float = 5.5,
    e: float = 0.25,
    omega: float = 1.2,
    m0: float = 2.0,
    gamma: float = 1.5,
    jitter: float = 0.5,
    sigma: float = 2.0,
) -> RVData:
    """Seasonal, irregular cadence over two years (nightly at the same sidereal time).

    Observations fall in two ~100-day seasons a year apart, on random nights, at random hours in
    a 3-hour window; deterministic in `seed` (`numpy.random.default_rng`).
    """
    rng = np.random.default_rng(seed)
    nights = np.concatenate(
        [
            rng.choice(100, n_obs // 2, replace=False),
            365 + rng.choice(100, n_obs - n_obs // 2, replace=False),
        ]
    )
    t = np.sort(nights + rng.uniform(0.0, 0.125, size=n_obs))
    errs = sigma * rng.uniform(0.8, 1.2, size=n_obs)
    data = RVData(t, None, errs, {})
    a, b = k * math.cos(omega + m0), -k * math.sin(omega + m0)  # lambda = omega + M0
    c, s = _basis(
        torch.as_tensor(t),
        data.t0,
        *(torch.tensor(x, dtype=torch.float64) for x in (period, e, m0)),
    )
    v = (
        a * c.numpy()
        + b * s.numpy()
        + gamma
        + rng.normal(size=n_obs) * np.sqrt(errs**2 + jitter**2)
    )
    data.v = v
    data.injected = {
        "P": period,
        "e": e,
        "M0": m0,
        "A": a,
        "B": b,
        "gamma": gamma,
        "s": jitter,
        "K": k,
        "omega": omega,
    }
    return data


class RVPosterior(Posterior):
    r"""Posterior of the one-planet Keplerian model, 8 unconstrained coordinates.

    Args:
        seed: data seed for [`simulate_rv`][boltzflow.energies.astro_rv.simulate_rv] (or give
            `data`).
        period_range: `(P_lo, P_hi)` in days for the log-uniform period prior.
        e_max, sigma_k, sigma_gamma, sigma_s: prior settings (see the module docstring).
        mode_edges: period boundaries (days) splitting the period posterior into modes; the
            indicator of each mode is an observable `mode_j` and free energies between
            adjacent modes are reported.
        simulate: keyword arguments for [`simulate_rv`][boltzflow.energies.astro_rv.simulate_rv]
            (number of observations, injected orbit, noise).
        marginalize_linear: integrate $(A, B, \gamma)$ out exactly
            ([`linear_marginal_log_likelihood`][boltzflow.energies.astro_rv.linear_marginal_log_likelihood])
            and sample only `P, e, M0, s` (5 unconstrained coordinates). The period, eccentricity,
            phase and jitter posterior and the evidence are unchanged; the samplers then face the
            aliased periods without the narrow, period-dependent ridges of the amplitudes.

    Parameters, in order: `P, e, M0, A, B, gamma, s` (`P, e, M0, s` if marginalized), with
    `A = K cos λ`, `B = -K sin λ` and `λ = ω + M0` the mean longitude at the reference
    epoch.
    """

    def __init__(
        self,
        seed: int = 3,
        data: RVData | None = None,
        period_range=(5.0, 30.0),
        e_max: float = 0.8,
        sigma_k: float = 10.0,
        sigma_gamma: float = 10.0,
        sigma_s: float = 3.0,
        mode_edges=(11.15, 11.52, 11.91, 12.33),
        simulate: dict | None = None,
        marginalize_linear: bool = False,
    ):
        self.data = data if data is not None else simulate_rv(seed, **(simulate or {}))
        self.period_range, self.e_max = tuple(float(p) for p in period_range), float(e_max)
        self.sigma_k, self.sigma_gamma, self.sigma_s = (
            float(sigma_k),
            float(sigma_gamma),
            float(sigma_s),
        )
        self.mode_edges = tuple(float(m) for m in mode_edges)
        self.marginalize_linear = bool(marginalize_linear)
        linear = [
            Parameter("A", Normal(0.0, self.sigma_k), unit="m/s"),
            Parameter("B", Normal(0.0, self.sigma_k), unit="m/s"),
            Parameter("gamma", Normal(0.0, self.sigma_gamma), unit="m/s"),
        ]
        params = [
            Parameter("P", LogUniform(*self.period_range), unit="d"),
            Parameter("e", Uniform(0.0, self.e_max)),
            Parameter("M0", Uniform(0.0, 2 * math.pi, periodic=True), unit="rad"),
            *([] if self.marginalize_linear else linear),
            Parameter("s", HalfNormal(self.sigma_s), unit="m/s"),
        ]
        if self.marginalize_linear:
            super().__init__(params, self._marginal_log_likelihood)
        else:
            super().__init__(params, self._rv_log_likelihood)
        self.injected = {n: self.data.injected[n] for n in self.names}
        self._t = torch.as_tensor(self.data.t)
        self._v = torch.as_tensor(self.data.v)
        self._var = torch.as_tensor(self.data.sigma**2)

    def _rv_log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        kw = {"dtype": theta.dtype, "device": theta.device}
        t, v, var = self._t.to(**kw), self._v.to(**kw), self._var.to(**kw)
        p, e, m0, a, b, g, s = (theta[:, i : i + 1] for i in range(7))
        c, sn = _basis(t, self.data.t0, p, e, m0)
        resid = v - (a * c + b * sn + g)
        tot = var + s * s
        return -0.5 * ((resid * resid) / tot + torch.log(tot) + _LOG_2PI).sum(-1)

    def _marginal_log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        p, e, m0, s = (theta[:, i : i + 1] for i in range(4))
        return linear_marginal_log_likelihood(self, p, e, m0, s).to(theta.dtype)

    @torch.no_grad()
    def sample_linear(self, theta: torch.Tensor, generator=None) -> torch.Tensor:
        r"""Complete marginal draws `theta [n, 4]` (`P, e, M0, s`) with `(A, B, gamma)`.

        Given the nonlinear parameters the linear ones are Gaussian with precision
        $\Lambda^{-1} + X^\top D^{-1} X$ and mean $\Sigma X^\top D^{-1} v$
        (notation of
        [`linear_marginal_log_likelihood`][boltzflow.energies.astro_rv.linear_marginal_log_likelihood]),
        so a posterior draw of `P, e, M0, s` followed by this exact conditional draw is a posterior
        draw of the full model. Returns `[n, 7]` in the full model's order
        `P, e, M0, A, B, gamma, s`; $K = \sqrt{A^2 + B^2}$ and
        $\omega = \mathrm{atan2}(-B, A) - M_0$.
        """
        theta = torch.as_tensor(theta, dtype=torch.float64)
        if theta.ndim != 2 or theta.shape[1] != 4:
            raise ValueError(f"expected theta [n, 4] (P, e, M0, s), got {tuple(theta.shape)}")
        _, _, chol, rhs = _linear_system(self, *(theta[:, i : i + 1] for i in range(4)))
        mean = torch.cholesky_solve(rhs, chol)
        eps = torch.randn(
            theta.shape[0], 3, 1, generator=generator, dtype=torch.float64, device=theta.device
        )
        draw = mean + torch.linalg.solve_triangular(chol.transpose(1, 2), eps, upper=True)
        return torch.cat([theta[:, :3], draw[..., 0], theta[:, 3:]], 1)

    def mode_index(self, period: torch.Tensor) -> torch.Tensor:
        """Mode label of each period: the number of `mode_edges` below it."""
        edges = torch.as_tensor(self.mode_edges, dtype=period.dtype, device=period.device)
        return torch.bucketize(period.contiguous(), edges)

    def observables(self) -> dict[str, Observable]:
        obs = super().observables()
        for j in range(len(self.mode_edges) + 1):
            obs[f"mode_{j}"] = Observable(
                lambda y, j=j: (self.mode_index(self.constrain(y).theta[:, 0]) == j).to(y.dtype),
                "1",
            )
        return obs

    def state_sets(self) -> dict[str, StateSets]:
        def in_mode(j):
            return lambda y: self.mode_index(self.constrain(y).theta[:, 0]) == j

        return {
            f"mode_{j + 1}-mode_{j}": StateSets(in_mode(j + 1), in_mode(j))
            for j in range(len(self.mode_edges))
        }


def _gauss_legendre(n: int, lo: float, hi: float):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def _linear_system(post: RVPosterior, period, e, m0, s) -> tuple:
    r"""The Gaussian linear model of $(A, B, \gamma)$ given `period, e, m0, s`.

    Returns `(dinv [..., n], lam [3], chol [..., 3, 3], rhs [..., 3, 1])`: the inverse
    variances $D^{-1}$, the prior variances $\Lambda$, the Cholesky factor of the
    posterior precision $\Lambda^{-1} + X^\top D^{-1} X$ and $X^\top D^{-1} v$
    (notation of
    [`linear_marginal_log_likelihood`][boltzflow.energies.astro_rv.linear_marginal_log_likelihood]),
    in float64.
    """
    dt = torch.float64
    t, v, var = post._t.to(dt), post._v.to(dt), post._var.to(dt)
    lam = torch.tensor([post.sigma_k**2, post.sigma_k**2, post.sigma_gamma**2], dtype=dt)
    c, sn = _basis(t, post.data.t0, period, e, m0)
    x = torch.stack(torch.broadcast_tensors(c, sn, torch.ones_like(c)), -1)  # [..., n, 3]
    dinv = (1.0 / (var + s**2)).expand(x.shape[:-1])
    xtd = x.transpose(-1, -2) * dinv[..., None, :]
    chol = torch.linalg.cholesky(torch.diag_embed(1 / lam) + xtd @ x)  # Λ^-1 + X^T D^-1 X
    return dinv, lam, chol, xtd @ v[:, None]


def linear_marginal_log_likelihood(post: RVPosterior, period, e, m0, s) -> torch.Tensor:
    r"""$\log\int L\,\pi(A)\pi(B)\pi(\gamma)\,dA\,dB\,d\gamma$ in closed form.

    With $X = [\cos(\nu - M_0) + e\cos M_0, \sin(\nu - M_0) - e\sin M_0, 1]$,
    $D = \mathrm{diag}(\sigma_i^2 + s^2)$ and
    $\Lambda = \mathrm{diag}(\sigma_K^2, \sigma_K^2, \sigma_\gamma^2)$, the data are
    $\mathcal N(0, D + X\Lambda X^\top)$, evaluated by Woodbury and the determinant lemma.
    `period, e, m0, s` are float64 tensors that broadcast against each other, each with a
    trailing singleton dimension (for the observations); the result drops it.
    """
    v = post._v.to(torch.float64)
    dinv, lam, chol, rhs = _linear_system(post, period, e, m0, s)
    quad = (dinv * v * v).sum(-1) - (rhs * torch.cholesky_solve(rhs, chol)).sum((-1, -2))
    logdet = (
        -torch.log(dinv).sum(-1)
        + torch.log(lam).sum()
        + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    )
    return -0.5 * (quad + logdet + v.shape[0] * _LOG_2PI)


@torch.no_grad()
def reference_period_marginal(
    post: RVPosterior,
    n_period: int = 4000,
    n_e: int = 16,
    n_m0: int = 32,
    n_s: int = 12,
    chunk: int = 64,
):
    r"""Quadrature reference for the period marginal and the evidence of
    [`RVPosterior`][boltzflow.energies.astro_rv.RVPosterior].

    $(A, B, \gamma)$ are integrated exactly (a Gaussian linear model:
    $v \sim \mathcal N(0, D + X\Lambda X^\top)$), $M_0$ by the trapezoid rule on the
    circle (spectrally accurate), $e$ and $s$ by Gauss–Legendre (`s` on
    $[0, 5\sigma_s]$), and $\ln P$ on a uniform grid of `n_period` points.

    Returns:
        `(periods [n_period], density [n_period], log_z)`: the normalized posterior density of
        $\ln P$ on the grid and the log evidence.
    """
    dt = torch.float64
    lo, hi = (math.log(x) for x in post.period_range)
    log_p = torch.linspace(lo, hi, n_period, dtype=dt)
    ev, ew = _gauss_legendre(n_e, 0.0, post.e_max)
    sv, sw = _gauss_legendre(n_s, 0.0, 5 * post.sigma_s)
    m0 = torch.arange(n_m0, dtype=dt) * (2 * math.pi / n_m0)
    e_g, m_g, s_g = torch.meshgrid(torch.as_tensor(ev), m0, torch.as_tensor(sv), indexing="ij")
    w = torch.as_tensor(ew)[:, None, None] / post.e_max / n_m0 * torch.as_tensor(sw)[None, None, :]
    log_prior_s = (
        math.log(2 / (post.sigma_s * math.sqrt(2 * math.pi))) - 0.5 * (s_g / post.sigma_s) ** 2
    )
    log_w = (torch.log(w) + log_prior_s).reshape(-1)
    e_f, m_f, s_f = e_g.reshape(-1, 1), m_g.reshape(-1, 1), s_g.reshape(-1, 1)
    out = torch.empty(n_period, dtype=dt)
    for i0 in range(0, n_period, chunk):
        per = torch.exp(log_p[i0 : i0 + chunk])[:, None, None]
        ll = linear_marginal_log_likelihood(post, per, e_f[None], m_f[None], s_f[None])
        out[i0 : i0 + chunk] = torch.logsumexp(ll + log_w, -1)
    # log p(data, ln P) with the prior density of ln P: 1 / (hi - lo)
    joint = out - math.log(hi - lo)
    step = (hi - lo) / (n_period - 1)
    trap = torch.full_like(joint, math.log(step))
    trap[0] = trap[-1] = math.log(step / 2)
    log_z = float(torch.logsumexp(joint + trap, 0))
    return torch.exp(log_p), torch.exp(joint - log_z), log_z

r"""A simulated pulsar timing array (PTA): per-pulsar red noise plus a Hellings–Downs background.

Model (the standard Gaussian-process PTA likelihood; van Haasteren & Vallisneri 2014,
"New advances in the Gaussian-process approach to pulsar-timing data analysis", PRD 90,
104012; Hellings & Downs 1983, ApJ 265, L39). Pulsar $a = 1..P$ has timing residuals
$r_a$ (μs) at irregular times $t_a$ (yr) with known white noise
$N_a = \sigma_a^2 I$. Red processes are expanded on the Fourier basis
$f_k = k/T$, $k = 1..K$ (sine and cosine columns in $F_a$), with coefficient
prior covariance, per frequency and quadrature,

$$
\Phi_{(ak),(bk)} = \Gamma_{ab}\,\varphi(f_k; A_{gw}, \gamma_{gw})
                   + \delta_{ab}\,\varphi(f_k; A_a, \gamma_a), \qquad
\varphi(f) = \frac{A^2}{12\pi^2}\, f_{yr}^{\gamma-3} f^{-\gamma} / T,
$$

and the Hellings–Downs correlation $\Gamma_{ab} = \tfrac32 x\ln x - \tfrac14 x + \tfrac12$,
$x = (1-\cos\zeta_{ab})/2$, $\Gamma_{aa} = 1$. The coefficients are marginalized
analytically: with $d = F^\top N^{-1} r$ and $\Sigma = \Phi^{-1} + F^\top N^{-1} F$
(Woodbury),

$$
\log L = -\tfrac12 r^\top N^{-1} r + \tfrac12 d^\top\Sigma^{-1}d - \tfrac12\log|\Phi|
         - \tfrac12\log|\Sigma| - \tfrac12\log|N| - \tfrac n2\log 2\pi,
$$

one Cholesky of size $2KP$ per evaluation (batched over chains). The 22 parameters are
$(\log_{10}A_a, \gamma_a)_{a=1..10}$ and $(\log_{10}A_{gw}, \gamma_{gw})$, with
priors $\log_{10}A \sim U(-18, -11)$, $\gamma \sim U(0, 7)$.

Data are simulated from the model itself with `numpy.random.default_rng(seed)`: sky
positions, irregular observing times, white-noise levels, Fourier coefficients drawn from
$\Phi$ at the injected parameters, and white noise. `injected` records the truth.
Units: time in years, residuals in μs, so $\varphi$ is in μs².
"""

from __future__ import annotations

import math

import numpy as np
import torch

from boltzflow.energies.posterior import Parameter, Posterior
from boltzflow.energies.priors import Uniform

__all__ = ["hellings_downs", "power_law_log_psd", "PTAData", "simulate_pta", "PTAPosterior"]

_YEAR_S = 365.25 * 86400.0
_LOG_PSD_CONST = math.log(_YEAR_S**2 * 1e12 / (12 * math.pi**2))
"""log of A² yr² (μs/s)² / (12π²): φ(f) in μs² for f in 1/yr and T in yr is
exp(_LOG_PSD_CONST + 2 ln10 log10A - γ ln f) / T"""


def hellings_downs(positions: np.ndarray) -> np.ndarray:
    r"""Hellings–Downs matrix $\Gamma_{ab}$ for unit vectors `positions [P, 3]`."""
    cos = np.clip(positions @ positions.T, -1.0, 1.0)
    x = (1.0 - cos) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        gamma = 1.5 * np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0) - 0.25 * x + 0.5
    np.fill_diagonal(gamma, 1.0)
    return gamma


def power_law_log_psd(log10_a, gamma, freqs, span):
    r"""`log φ(f)` in μs² for frequencies `freqs` (1/yr) and span `T` (yr); broadcasts."""
    return _LOG_PSD_CONST + 2 * math.log(10.0) * log10_a - gamma * torch.log(freqs) - math.log(span)


class PTAData:
    """Simulated PTA data: per-pulsar times `t` (yr), residuals `r` (μs), white noise
    `sigma` (μs), sky `positions [P, 3]`, span `T` (yr), `n_freq` and `injected`."""

    def __init__(self, times, residuals, sigma, positions, span, n_freq, injected):
        self.times, self.residuals, self.sigma = times, residuals, sigma
        self.positions, self.span, self.n_freq, self.injected = positions, span, n_freq, injected

    @property
    def n_pulsars(self) -> int:
        return len(self.times)

    def design(self, a: int) -> np.ndarray:
        """Fourier design matrix `F_a [n_a, 2K]`: columns `sin, cos` of `2π f_k t`."""
        f = np.arange(1, self.n_freq + 1) / self.span
        arg = 2 * np.pi * self.times[a][:, None] * f[None, :]
        out = np.empty((len(self.times[a]), 2 * self.n_freq))
        out[:, 0::2], out[:, 1::2] = np.sin(arg), np.cos(arg)
        return out


DEFAULT_RED_NOISE = (
    (-13.2, 2.5),
    (-13.6, 4.0),
    (-13.4, 3.0),
    (-14.2, 3.5),
    (-14.6, 4.5),
    (-14.0, 2.0),
    (-14.8, 5.0),
    (-16.5, 3.0),
    (-17.0, 4.0),
    (-16.0, 1.5),
)
"""Injected red-noise (log10 A, γ) of the 10 simulated pulsars: three loud, four moderate,
three below the white noise (their amplitudes only get upper limits)."""


def simulate_pta(
    seed: int = 0,
    n_pulsars: int = 10,
    n_toas: int = 130,
    span: float = 15.0,
    n_freq: int = 14,
    log10_a_gw: float = -14.3,
    gamma_gw: float = 13.0 / 3.0,
    red_noise=DEFAULT_RED_NOISE,
) -> PTAData:
    """Simulate residuals from the model at the injected parameters (deterministic in `seed`)."""
    rng = np.random.default_rng(seed)
    red = np.asarray(red_noise, dtype=np.float64)[:n_pulsars]
    if len(red) != n_pulsars:
        raise ValueError(f"need {n_pulsars} red-noise (log10A, gamma) pairs, got {len(red)}")
    pos = rng.normal(size=(n_pulsars, 3))
    pos /= np.linalg.norm(pos, axis=1, keepdims=True)
    times = [np.sort(rng.uniform(0.0, span, size=n_toas)) for _ in range(n_pulsars)]
    sigma = rng.uniform(0.1, 0.5, size=n_pulsars)
    freqs = torch.arange(1, n_freq + 1, dtype=torch.float64) / span
    phi_gw = torch.exp(power_law_log_psd(log10_a_gw, gamma_gw, freqs, span)).numpy()
    phi_rn = torch.exp(
        power_law_log_psd(torch.as_tensor(red[:, :1]), torch.as_tensor(red[:, 1:]), freqs, span)
    ).numpy()
    gamma = hellings_downs(pos)
    coeffs = np.empty((n_pulsars, 2 * n_freq))
    for k in range(n_freq):
        cov = phi_gw[k] * gamma + np.diag(phi_rn[:, k])
        chol = np.linalg.cholesky(cov)
        coeffs[:, 2 * k : 2 * k + 2] = chol @ rng.normal(size=(n_pulsars, 2))
    injected = {}
    for a in range(n_pulsars):
        injected[f"log10_A_{a}"], injected[f"gamma_{a}"] = float(red[a, 0]), float(red[a, 1])
    injected["log10_A_gw"], injected["gamma_gw"] = float(log10_a_gw), float(gamma_gw)
    data = PTAData(times, [], sigma, pos, float(span), int(n_freq), injected)
    data.residuals = [
        data.design(a) @ coeffs[a] + sigma[a] * rng.normal(size=n_toas) for a in range(n_pulsars)
    ]
    return data


class PTAPosterior(Posterior):
    r"""Posterior of the simulated PTA in the unconstrained (probit) coordinates, 22-D: each
    uniform prior is mapped by $\theta = a + (b - a)\,\Phi(y)$, so the prior of $y$ is standard
    normal.

    Args:
        seed, n_pulsars, n_toas, span, n_freq, log10_a_gw, gamma_gw: passed to
            [`simulate_pta`][boltzflow.energies.astro_pta.simulate_pta] (or give `data`).
        data: a [`PTAData`][boltzflow.energies.astro_pta.PTAData] to analyse instead of simulating.

    Parameters, in order: `log10_A_0, gamma_0, ..., log10_A_9, gamma_9, log10_A_gw,
    gamma_gw`. Tensors follow the dtype and device of the input.
    """

    def __init__(
        self,
        seed: int = 0,
        data: PTAData | None = None,
        n_pulsars: int = 10,
        n_toas: int = 130,
        span: float = 15.0,
        n_freq: int = 14,
        log10_a_gw: float = -14.3,
        gamma_gw: float = 13.0 / 3.0,
    ):
        if data is None:
            data = simulate_pta(seed, n_pulsars, n_toas, span, n_freq, log10_a_gw, gamma_gw)
        self.data = data
        d = self.data
        params = []
        for a in range(d.n_pulsars):
            params += [
                Parameter(f"log10_A_{a}", Uniform(-18.0, -11.0)),
                Parameter(f"gamma_{a}", Uniform(0.0, 7.0)),
            ]
        params += [
            Parameter("log10_A_gw", Uniform(-18.0, -11.0)),
            Parameter("gamma_gw", Uniform(0.0, 7.0)),
        ]
        super().__init__(params, self._pta_log_likelihood)
        self.injected = dict(d.injected)
        # sufficient statistics of the Woodbury form (float64, cast on use)
        fnf, dvec, rnr, logdet_n, n_tot = [], [], 0.0, 0.0, 0
        for a in range(d.n_pulsars):
            f, r, s2 = d.design(a), d.residuals[a], d.sigma[a] ** 2
            fnf.append(f.T @ f / s2)
            dvec.append(f.T @ r / s2)
            rnr += float(r @ r / s2)
            logdet_n += len(r) * math.log(s2)
            n_tot += len(r)
        m = 2 * d.n_freq
        big = np.zeros((d.n_pulsars * m, d.n_pulsars * m))
        for a in range(d.n_pulsars):
            big[a * m : (a + 1) * m, a * m : (a + 1) * m] = fnf[a]
        self._fnf = torch.as_tensor(big)
        self._d = torch.as_tensor(np.concatenate(dvec))
        self._const = -0.5 * rnr - 0.5 * logdet_n - 0.5 * n_tot * math.log(2 * math.pi)
        self._gamma = torch.as_tensor(hellings_downs(d.positions))
        self._freqs = torch.arange(1, d.n_freq + 1, dtype=torch.float64) / d.span
        # flat positions in Σ [(a, j), (b, j)] of the Φ^-1 entries, j = 2·frequency + quadrature,
        # ordered as phi_inv [K, P, P] repeated for both quadratures
        j, a = torch.arange(2 * d.n_freq), torch.arange(d.n_pulsars)
        rows = a[None, :, None] * m + j[:, None, None]
        cols = a[None, None, :] * m + j[:, None, None]
        self._phi_index = (rows * d.n_pulsars * m + cols).reshape(-1)

    chunk_size = 256
    """Likelihoods are evaluated this many at a time: one evaluation holds a few (2KP)² float64
    matrices (0.6 MB each for the default array), so an unchunked batch of 8192 would need
    about 15 GB."""

    def _pta_log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.shape[0] > self.chunk_size:
            parts = torch.split(theta, self.chunk_size)
            return torch.cat([self._pta_log_likelihood_chunk(t) for t in parts])
        return self._pta_log_likelihood_chunk(theta)

    def _pta_log_likelihood_chunk(self, theta: torch.Tensor) -> torch.Tensor:
        d, dt, dev = self.data, theta.dtype, theta.device
        p = d.n_pulsars
        freqs = self._freqs.to(device=dev, dtype=dt)
        log10_a, gam = theta[:, 0 : 2 * p : 2], theta[:, 1 : 2 * p : 2]
        log_rn = power_law_log_psd(log10_a[..., None], gam[..., None], freqs, d.span)  # [B, P, K]
        log_gw = power_law_log_psd(theta[:, -2:-1], theta[:, -1:], freqs, d.span)  # [B, K]
        phi = torch.exp(log_gw)[..., None, None] * self._gamma.to(
            device=dev, dtype=dt
        ) + torch.diag_embed(torch.exp(log_rn).transpose(1, 2))
        chol_phi, info_phi = torch.linalg.cholesky_ex(phi)  # [B, K, P, P]
        logdet_phi = 2 * 2 * torch.log(torch.diagonal(chol_phi, dim1=-2, dim2=-1)).sum((-1, -2))
        phi_inv = torch.cholesky_inverse(chol_phi)
        # Σ = F^T N^-1 F + Φ^-1, coefficients ordered (pulsar, frequency, sin/cos): the Φ^-1
        # entries are added in place at their flat positions (no dense [B, 2KP, 2KP] scatter)
        batch = theta.shape[0]
        sigma = self._fnf.to(device=dev, dtype=dt).repeat(batch, 1, 1)
        vals = phi_inv.repeat_interleave(2, dim=1).reshape(batch, -1)
        sigma.view(batch, -1).index_add_(1, self._phi_index.to(dev), vals)
        chol, info = torch.linalg.cholesky_ex(sigma)
        dv = self._d.to(device=dev, dtype=dt).expand(batch, -1)[..., None]
        y = torch.linalg.solve_triangular(chol, dv, upper=False)  # d^T Σ^-1 d = |L^-1 d|²
        logdet_sigma = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        ll = self._const + 0.5 * (y * y).sum((-1, -2)) - 0.5 * logdet_phi - 0.5 * logdet_sigma
        failed = (info != 0) | (info_phi != 0).any(-1)
        return torch.where(failed, torch.full_like(ll, math.nan), ll)

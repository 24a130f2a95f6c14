r"""Heavy-tailed targets with exact answers, for tail-adaptive flows.

* [`ProductStudentT`][boltzflow.energies.heavy_tails.ProductStudentT]: independent Student-t
  marginals on chosen dimensions, standard normal on the rest: $\log Z = 0$ and every
  marginal quantile exact (the heavy-tailed VI targets of Laszkiewicz et al. 2022 and
  Hickling & Prangle 2025 are of this kind).
* [`StudentTRegression`][boltzflow.energies.heavy_tails.StudentTRegression]: a linear
  regression with Student-t errors and a few outliers, three parameters, with $\log Z$ and
  the marginal quantiles computed by quadrature on a tangent-mapped grid.

Energies are reduced (kT), batched (`Tensor[batch]`) and follow the dtype and device of `x`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import numpy as np
import torch
from scipy import stats

from boltzflow.energies.base import Energy, Observable

__all__ = ["ProductStudentT", "StudentTRegression", "student_t_log_prob"]

_LOG_2PI = math.log(2 * math.pi)


def student_t_log_prob(z: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    r"""Elementwise log density of the standard Student-t with $\nu$ = `df` degrees of freedom.

    $$\log t_\nu(z) = \log\Gamma\big(\tfrac{\nu+1}2\big) - \log\Gamma\big(\tfrac\nu2\big)
    - \tfrac12\log(\nu\pi) - \tfrac{\nu+1}2\log\big(1 + z^2/\nu\big).$$

    Args:
        z: values, any shape.
        df: degrees of freedom, broadcastable to `z` (differentiable: flows learn it).

    Returns:
        Tensor of the broadcast shape.
    """
    return (
        torch.lgamma(0.5 * (df + 1))
        - torch.lgamma(0.5 * df)
        - 0.5 * torch.log(df * math.pi)
        - 0.5 * (df + 1) * torch.log1p(z * z / df)
    )


class ProductStudentT(Energy):
    r"""Product of Student-t marginals on the first `n_heavy` dimensions, Gaussian elsewhere.

    $$u(x) = -\sum_{j < h} \log t_{\nu_j}(x_j/s)/s
           + \sum_{i \ge h} \Big(\frac{x_i^2}{2 s^2} + \tfrac12\log(2\pi s^2)\Big) \quad [kT],$$

    normalized: $\log Z = 0$. The degrees of freedom cycle through `df` over the heavy
    dimensions (`df = [0.5, 1, 2]` gives $\nu = 0.5, 1, 2, 0.5, \dots$). For $\nu \le 1$ the
    mean does not exist and for $\nu \le 2$ the variance is infinite: observables are the
    exceedance indicators $1\{x_j > q_j(p)\}$ at the exact 99% and 99.9% quantiles (exact
    means 0.01 and 0.001), for the first dimension of each distinct $\nu$ and the first
    Gaussian one.

    Args:
        dim: dimension $d$.
        df: degrees of freedom (scalar or list, cycled over the heavy dimensions).
        n_heavy: number of heavy dimensions $h$ (default: all of them).
        scale: common scale $s$.
    """

    def __init__(self, dim: int = 10, df=1.0, n_heavy: int | None = None, scale: float = 1.0):
        super().__init__(int(dim))
        n_heavy = self.dim if n_heavy is None else int(n_heavy)
        if not 0 <= n_heavy <= self.dim:
            raise ValueError(f"n_heavy must lie in [0, {self.dim}], got {n_heavy}")
        cycle = np.atleast_1d(np.asarray(df, dtype=np.float64))
        if not (cycle > 0).all():
            raise ValueError(f"degrees of freedom must be positive, got {df}")
        self.df = np.full(self.dim, np.inf)
        """Degrees of freedom per dimension, `inf` on Gaussian ones (numpy `[dim]`)."""
        self.df[:n_heavy] = np.resize(cycle, n_heavy)
        self.n_heavy, self.scale = n_heavy, float(scale)
        self.log_z = 0.0

    @property
    def heavy(self) -> np.ndarray:
        """Bool mask of the Student-t dimensions."""
        return np.isfinite(self.df)

    def at_temperature(self, temperature_scale: float) -> ProductStudentT:
        """Copy at `T = temperature_scale · T_ref` (log Z exact only at `T_ref`)."""
        return super().at_temperature(temperature_scale)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        h, s = self.n_heavy, self.scale
        z = x / s
        light = z[:, h:]
        u = 0.5 * (light * light).sum(-1) + (self.dim - h) * 0.5 * _LOG_2PI + self.dim * math.log(s)
        if h:
            df = torch.as_tensor(self.df[:h], dtype=x.dtype, device=x.device)
            u = u - student_t_log_prob(z[:, :h], df).sum(-1)
        return u

    def quantile(self, p) -> np.ndarray:
        """Exact marginal quantiles `[dim]` (or `[len(p), dim]`) at probability `p`."""
        p = np.asarray(p, dtype=np.float64)
        q = np.where(
            self.heavy,
            stats.t.ppf(p[..., None], np.where(self.heavy, self.df, 1.0)),
            stats.norm.ppf(p[..., None]),
        )
        return self.scale * q

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64
    ) -> torch.Tensor:
        """Exact samples `Tensor[n, d]` by inversion of uniforms from `generator`."""
        dev = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        u = u.clamp(1e-300, 1 - 1e-16).cpu().numpy()
        x = np.where(
            self.heavy, stats.t.ppf(u, np.where(self.heavy, self.df, 1.0)), stats.norm.ppf(u)
        )
        return torch.as_tensor(self.scale * x, dtype=dtype, device=dev)

    def _watched(self) -> list[int]:
        dims, seen = [], set()
        for j, nu in enumerate(self.df):
            if nu not in seen:
                seen.add(nu)
                dims.append(j)
        return dims

    def observables(self) -> Mapping[str, Observable]:
        out = {}
        for j in self._watched():
            for p, tag in ((0.99, "99"), (0.999, "999")):
                q = float(self.quantile(p)[j])
                out[f"exceed{tag}_x{j + 1}"] = Observable(
                    lambda x, j=j, q=q: (x[:, j] > q).to(x), "1"
                )
        return out

    def exact_observable(self, name: str) -> float:
        """Exact expectation of an observable (an exceedance probability)."""
        if name not in self.observables():
            raise KeyError(f"unknown name '{name}' (known: {', '.join(self.observables())})")
        return 0.01 if name.startswith("exceed99_") else 0.001


class StudentTRegression(Energy):
    r"""Posterior of a straight-line fit with Student-t errors to data with outliers.

    Data: $n$ points $x_i \sim U(-2, 2)$, $y_i = 1 + 2x_i + 0.5\,\varepsilon_i$ with
    Gaussian $\varepsilon_i$, and the last `n_outliers` responses shifted by $+8$, all drawn
    from `seed`. Parameters $\theta = (\beta_0, \beta_1, \log\sigma)$, priors
    $\beta_k \sim \mathrm{Cauchy}(0, 5)$, $\sigma \sim \mathrm{HalfCauchy}(0, 2.5)$ (Gelman
    et al. 2008), likelihood $y_i \sim \beta_0 + \beta_1 x_i + \sigma\, t_\nu$:

    $$u(\theta) = -\sum_k \log \mathrm{Cauchy}(\beta_k) - \log \mathrm{HalfCauchy}(\sigma)
      - \log\sigma - \sum_i \big[\log t_\nu(r_i/\sigma) - \log\sigma\big],\quad
      r_i = y_i - \beta_0 - \beta_1 x_i \quad [kT].$$

    The Cauchy priors give the posterior polynomial tails. Reference values (`log_z`,
    [`quantile`][boltzflow.energies.heavy_tails.StudentTRegression.quantile], posterior means)
    come from the midpoint rule on $\theta_k = m_k + c_k\tan\phi_k$,
    $\phi_k \in (-\pi/2, \pi/2)$, which covers the whole space; the centre and width come
    from a coarse first pass. Computed on first use (about a second), then cached.

    Args:
        n: number of data points.
        n_outliers: how many of them are outliers.
        nu: degrees of freedom of the error distribution.
        seed: seed of the simulated data.
        grid: midpoints per axis of the reference quadrature.
    """

    parameter_names = ("beta0", "beta1", "log_sigma")

    def __init__(self, n: int = 12, n_outliers: int = 2, nu: float = 2.0, seed: int = 0, grid=160):
        super().__init__(3)
        g = torch.Generator().manual_seed(int(seed))  # seeding the data set, not a draw
        x = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
        y = 1 + 2 * x + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
        if n_outliers:
            y[-int(n_outliers) :] += 8.0
        self.x_data, self.y_data, self.nu, self.grid = x, y, float(nu), int(grid)

    def _energy(self, theta: torch.Tensor) -> torch.Tensor:
        b0, b1, s = theta[:, :1], theta[:, 1:2], theta[:, 2]
        x, y = self.x_data.to(theta), self.y_data.to(theta)
        sigma = torch.exp(s)
        r = (y - b0 - b1 * x) / sigma[:, None]
        nu = torch.as_tensor(self.nu, dtype=theta.dtype, device=theta.device)
        log_lik = (student_t_log_prob(r, nu)).sum(-1) - y.numel() * s
        cauchy = -torch.log(math.pi * 5.0 * (1 + (theta[:, :2] / 5.0) ** 2)).sum(-1)
        half_cauchy = math.log(2 / (math.pi * 2.5)) - torch.log1p((sigma / 2.5) ** 2)
        return -(log_lik + cauchy + half_cauchy + s)

    def _grid(self, centre: np.ndarray, width: np.ndarray, m: int):
        phi = (np.arange(m) + 0.5) / m * np.pi - np.pi / 2
        axes = centre[:, None] + width[:, None] * np.tan(phi)[None]
        log_jac = np.log(width[:, None] * np.pi / m) - 2 * np.log(np.cos(phi))[None]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        lj = sum(np.meshgrid(*log_jac, indexing="ij")).reshape(-1)
        u = torch.cat([self._energy(torch.from_numpy(c)) for c in np.array_split(mesh, 64)])
        lw = -u.numpy() + lj
        return axes, lw.reshape(m, m, m)

    @functools.cached_property
    def reference(self) -> dict:
        """`{"log_z", "mean" [3], "axes" [3, m], "cdf" [3, m]}` from the quadrature."""
        centre, width = np.zeros(3), np.array([5.0, 5.0, 2.0])
        for m in (48, self.grid):
            axes, lw = self._grid(centre, width, m)
            w = np.exp(lw - lw.max())
            w /= w.sum()
            mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
            mean = (w[..., None] * mesh).sum((0, 1, 2))
            # median and the inter-decile range are robust for polynomial tails
            marg = [w.sum(tuple(a for a in range(3) if a != k)) for k in range(3)]
            cdfs = [np.cumsum(mk) - 0.5 * mk for mk in marg]  # CDF at the nodes
            centre = np.array([np.interp(0.5, cdfs[k], axes[k]) for k in range(3)])
            width = np.array(
                [
                    np.interp(0.9, cdfs[k], axes[k]) - np.interp(0.1, cdfs[k], axes[k])
                    for k in range(3)
                ]
            )
        log_z = float(np.log(np.exp(lw - lw.max()).sum()) + lw.max())
        return {"log_z": log_z, "mean": mean, "axes": axes, "cdf": np.stack(cdfs)}

    @property
    def log_z(self) -> float:  # type: ignore[override]
        """Reference $\\log Z$ (quadrature)."""
        return self.reference["log_z"]

    def quantile(self, p) -> np.ndarray:
        """Reference marginal quantiles `[3]` of $(\\beta_0, \\beta_1, \\log\\sigma)$ at `p`."""
        ref = self.reference
        return np.array([np.interp(p, ref["cdf"][k], ref["axes"][k]) for k in range(3)])

    def observables(self) -> Mapping[str, Observable]:
        """`<name>_mean` (reference: the quadrature mean) and `<name>_above_q99` (exceeding
        the reference 99% quantile; exact mean 0.01) for each parameter."""
        out = {}
        q99 = self.quantile(0.99)
        for k, n in enumerate(self.parameter_names):
            out[f"{n}_mean"] = Observable(lambda t, k=k: t[:, k], "1")
            q = float(q99[k])
            out[f"{n}_above_q99"] = Observable(lambda t, k=k, q=q: (t[:, k] > q).to(t), "1")
        return out

    def exact_observable(self, name: str) -> float:
        """Reference value of an observable from the quadrature."""
        if name not in self.observables():
            raise KeyError(f"unknown name '{name}' (known: {', '.join(self.observables())})")
        if name.endswith("_mean"):
            k = list(self.parameter_names).index(name[: -len("_mean")])
            return float(self.reference["mean"][k])
        return 0.01

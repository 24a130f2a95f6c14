r"""Gaussian-based benchmark targets with exact normalizers, samplers and expectations.

* [`GaussianMixture`][boltzflow.energies.gaussians.GaussianMixture] and
  [`gmm40`][boltzflow.energies.gaussians.gmm40] -- the 40-mode 2-D mixture of FAB (Midgley et al.,
  "Flow Annealed Importance Sampling Bootstrap", ICLR 2023);
* [`Funnel`][boltzflow.energies.gaussians.Funnel] -- Neal's funnel (Neal, "Slice sampling", Ann.
  Statist. 2003);
* [`CorrelatedGaussian`][boltzflow.energies.gaussians.CorrelatedGaussian] -- an ill-conditioned
  Gaussian.

All energies are reduced (kT), batched (`Tensor[batch]`) and follow the dtype and device of
`x`. Samplers return float64 (or `dtype`) on the device of the `torch.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from boltzflow.energies.base import Energy, Observable, StateSets

__all__ = ["GaussianMixture", "gmm40", "Funnel", "CorrelatedGaussian"]

_LOG_2PI = math.log(2 * math.pi)


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _known(name: str, table: Mapping) -> str:
    if name not in table:
        raise KeyError(f"unknown name '{name}' (known: {', '.join(sorted(table))})")
    return name


def _coordinate_observables(dim: int) -> dict[str, Observable]:
    """Observables `"x1"`, `"x2"` (the first two coordinates; their means are reported)."""
    return {f"x{i + 1}": Observable(lambda x, i=i: x[:, i], "1") for i in range(min(dim, 2))}


class GaussianMixture(Energy):
    r"""Normalized mixture of axis-aligned Gaussians, $\log Z = 0$ exactly.

    $$
    u(x) = -\log \sum_k w_k \prod_j \mathcal N(x_j;\ \mu_{kj}, s_{kj}^2)\quad [kT].
    $$

    Args:
        means: `[K, d]` component means.
        scales: standard deviations, broadcastable to `[K, d]` (scalar, `[K]` or `[K, d]`).
        weights: `[K]` non-negative weights (normalized internally); default equal.
        temperature_scale: $T/T_{ref}$. A tempered mixture is no longer a mixture, so
            away from $T_{ref}$ `log_z` is `None` and the exact methods raise.

    Exact: [`sample`][boltzflow.energies.gaussians.GaussianMixture.sample],
    [`exact_mean`][boltzflow.energies.gaussians.GaussianMixture.exact_mean],
    [`exact_observable`][boltzflow.energies.gaussians.GaussianMixture.exact_observable] (`"x1"`,
    `"x2"`). [`mode_assignment`][boltzflow.energies.gaussians.GaussianMixture.mode_assignment]
    labels configurations by their nearest mean, for mode coverage.
    """

    def __init__(self, means, scales=1.0, weights=None, temperature_scale: float = 1.0):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape [K, d], got {tuple(means.shape)}")
        k, d = means.shape
        scales = torch.as_tensor(scales, dtype=torch.float64)
        if scales.dim() == 1 and scales.shape[0] == k:
            scales = scales[:, None]
        scales = torch.broadcast_to(scales, (k, d)).clone()
        weights = torch.ones(k, dtype=torch.float64) if weights is None else weights
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"weights must be [K={k}] non-negative with positive sum")
        if not (scales > 0).all():
            raise ValueError("scales must be positive")
        super().__init__(d, temperature_scale)
        self.means, self.scales = means, scales
        self.weights = weights / weights.sum()
        self.log_z = 0.0 if self.temperature_scale == 1.0 else None

    @property
    def n_modes(self) -> int:
        return int(self.means.shape[0])

    def at_temperature(self, temperature_scale: float) -> GaussianMixture:
        """Copy at `T = temperature_scale · T_ref`; `log_z` is 0 at `T_ref`, else `None`."""
        new = super().at_temperature(temperature_scale)
        new.log_z = 0.0 if new.temperature_scale == 1.0 else None
        return new

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        mu, s = self.means.to(x), self.scales.to(x)
        z = (x[:, None, :] - mu) / s  # [batch, K, d]
        log_comp = -0.5 * (z * z).sum(-1) - torch.log(s).sum(-1) - 0.5 * self.dim * _LOG_2PI
        return -torch.logsumexp(log_comp + torch.log(self.weights.to(x)), dim=-1)

    def _require_reference_temperature(self, what: str) -> None:
        if self.temperature_scale != 1.0:
            raise NotImplementedError(
                f"{what} is exact only at T_ref (a tempered mixture is not a mixture)"
            )

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64
    ) -> torch.Tensor:
        """Exact samples `Tensor[n, d]`: a component by its weight, then a Gaussian draw."""
        self._require_reference_temperature("sample")
        dev = _device(generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=dev)
        cdf = torch.cumsum(self.weights.to(dev), 0)
        k = torch.searchsorted(cdf, u * cdf[-1]).clamp_(max=self.n_modes - 1)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        return (self.means.to(dev)[k] + self.scales.to(dev)[k] * eps).to(dtype)

    def mode_assignment(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest mean (Euclidean), `LongTensor[batch]`."""
        self._check_shape(x)
        return torch.cdist(x, self.means.to(x)).argmin(-1)

    def exact_mean(self) -> torch.Tensor:
        r"""$E[x] = \sum_k w_k \mu_k$, `Tensor[d]` float64."""
        self._require_reference_temperature("exact_mean")
        return self.weights @ self.means

    def observables(self) -> Mapping[str, Observable]:
        return _coordinate_observables(self.dim)

    def exact_observable(self, name: str) -> float:
        """Exact expectation of an observable from `observables`."""
        i = int(_known(name, self.observables())[1:]) - 1
        return float(self.exact_mean()[i])


def gmm40(
    seed: int = 0,
    loc_scaling: float = 40.0,
    scale: float = 1.0,
    dim: int = 2,
    n_modes: int = 40,
    temperature_scale: float = 1.0,
) -> GaussianMixture:
    r"""FAB's 40-mode mixture: equal weights, means uniform in $[-L, L]^d$, std `scale`.

    The means are, exactly:

        g = torch.Generator().manual_seed(seed)                  # CPU generator
        r = torch.rand((n_modes, dim), generator=g)              # float32 draws
        means = ((r - 0.5) * 2 * loc_scaling).to(torch.float64)  # computed in float32

    which reproduces the means of FAB's GMM target after `torch.manual_seed(seed)` (the same
    CPU stream, the same float32 arithmetic). FAB sets the component standard deviation to
    $\mathrm{softplus}(\text{log\_var\_scaling})$; here it is `scale` (default 1).
    The mixture is normalized: $\log Z = 0$.
    """
    g = torch.Generator().manual_seed(int(seed))  # deliberate CPU generator: FAB's means
    r = torch.rand((int(n_modes), int(dim)), generator=g)
    means = ((r - 0.5) * 2 * float(loc_scaling)).to(torch.float64)
    return GaussianMixture(means, float(scale), None, temperature_scale)


class Funnel(Energy):
    r"""Neal's funnel, normalized ($\log Z = 0$ at $T_{ref}$).

    $x = (v, x_1, \dots, x_{d-1})$ with $v \sim \mathcal N(0, \sigma^2)$ and
    $x_i \mid v \sim \mathcal N(0, e^{v})$:

    $$
    u(x) = \frac{v^2}{2\sigma^2} + \tfrac12\log(2\pi\sigma^2)
         + \tfrac12 e^{-v}\sum_{i\ge1} x_i^2 + \frac{d-1}{2}(v + \log 2\pi) \quad [kT].
    $$

    Exact marginals: $v \sim \mathcal N(0, \sigma^2)$; each $x_i$ is a Gaussian
    scale mixture with mean 0 and variance $E[e^v] = e^{\sigma^2/2}$ (heavy-tailed).
    At $T = \tau T_{ref}$ everything stays exact: with $n = d-1$,
    $s^2 = \tau\sigma^2$ and $m = \tfrac n2 (1 - 1/\tau) s^2$,
    $v \sim \mathcal N(m, s^2)$, $x_i \mid v \sim \mathcal N(0, \tau e^v)$ and

    $$
    \log Z_\tau = \tfrac12\log(2\pi s^2) + \frac{m^2}{2 s^2}
        - \frac{\log(2\pi\sigma^2) + n\log 2\pi}{2\tau} + \frac n2 \log(2\pi\tau).
    $$

    Observables `"v"` and `"x1"` (exact means $m$ and 0); state sets
    `"neck_vs_mouth"` ($v<0$ vs $v\ge0$), exact
    $\Delta F = \ln\Phi(m/s) - \ln\Phi(-m/s)$ (0 at $T_{ref}$).

    Args:
        dim: total dimension $d \ge 2$.
        sigma: standard deviation $\sigma$ of $v$ (Neal: 3).
    """

    def __init__(self, dim: int = 10, sigma: float = 3.0, temperature_scale: float = 1.0):
        if int(dim) != dim or dim < 2:
            raise ValueError(f"Funnel needs dim >= 2, got {dim}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        super().__init__(int(dim), temperature_scale)
        self.sigma = float(sigma)
        self._setup()

    def _setup(self) -> None:
        tau, n, sig2 = self.temperature_scale, self.dim - 1, self.sigma**2
        self.v_var = tau * sig2
        self.v_mean = 0.5 * n * (1.0 - 1.0 / tau) * self.v_var
        self.log_z = (
            0.5 * math.log(2 * math.pi * self.v_var)
            + 0.5 * self.v_mean**2 / self.v_var
            - 0.5 * (math.log(2 * math.pi * sig2) + n * _LOG_2PI) / tau
            + 0.5 * n * math.log(2 * math.pi * tau)
        )

    def at_temperature(self, temperature_scale: float) -> Funnel:
        """Copy at `T = temperature_scale · T_ref` with exact `log_z` and sampler."""
        new = super().at_temperature(temperature_scale)
        new._setup()
        return new

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        v, rest = x[:, 0], x[:, 1:]
        n = self.dim - 1
        return (
            0.5 * v**2 / self.sigma**2
            + 0.5 * math.log(2 * math.pi * self.sigma**2)
            + 0.5 * torch.exp(-v) * (rest * rest).sum(-1)
            + 0.5 * n * (v + _LOG_2PI)
        )

    def v_marginal(self) -> torch.distributions.Normal:
        """Exact marginal of $v$ (float64) at the current temperature."""
        loc = torch.tensor(self.v_mean, dtype=torch.float64)
        return torch.distributions.Normal(loc, torch.tensor(math.sqrt(self.v_var)).double())

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64
    ) -> torch.Tensor:
        """Exact samples `Tensor[n, d]` (ancestral: $v$, then $x \\mid v$)."""
        dev = _device(generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        v = self.v_mean + math.sqrt(self.v_var) * eps[:, :1]
        rest = torch.exp(0.5 * v) * math.sqrt(self.temperature_scale) * eps[:, 1:]
        return torch.cat([v, rest], -1).to(dtype)

    def observables(self) -> Mapping[str, Observable]:
        return {"v": Observable(lambda x: x[:, 0], "1"), "x1": Observable(lambda x: x[:, 1], "1")}

    def state_sets(self) -> Mapping[str, StateSets]:
        return {"neck_vs_mouth": StateSets(lambda x: x[:, 0] < 0, lambda x: x[:, 0] >= 0)}

    def exact_observable(self, name: str) -> float:
        """Exact expectation of an observable from `observables`."""
        return {"v": self.v_mean, "x1": 0.0}[_known(name, self.observables())]

    def exact_free_energy(self, name: str) -> float:
        r"""Exact $\Delta F = -\ln(Z_A/Z_B)$ in kT of a state set from
        [`state_sets`][boltzflow.energies.base.Energy.state_sets]."""
        _known(name, self.state_sets())
        t = self.v_mean / math.sqrt(self.v_var)
        t = torch.tensor(t, dtype=torch.float64)
        return float(torch.special.log_ndtr(t) - torch.special.log_ndtr(-t))


class CorrelatedGaussian(Energy):
    r"""Gaussian $u(x) = \tfrac12 (x-\mu)^\top\Sigma^{-1}(x-\mu)$ [kT] (unnormalized).

    $\log Z = \tfrac12\log\det(2\pi\Sigma)$; at $T = \tau T_{ref}$ the target is
    $\mathcal N(\mu, \tau\Sigma)$ and $\log Z = \tfrac12\log\det(2\pi\tau\Sigma)$.

    Either pass `mean` and/or `cov` explicitly, or let `cov` be drawn from `seed`:
    $\Sigma = Q\,\mathrm{diag}(\lambda)\,Q^\top$ with $Q$ Haar-random (QR of a
    float64 standard-normal matrix from `torch.Generator().manual_seed(seed)`, signs fixed by
    $\mathrm{diag}(R) > 0$) and $\lambda_i = \kappa^{i/(d-1) - 1/2}$, so the condition
    number is $\kappa$ and $\det\Sigma = 1$. `mean` defaults to zero.

    Attributes:
        mean (`Tensor[d]`), cov (`Tensor[d, d]`): the reference-temperature parameters.

    Args:
        mean, cov: explicit parameters (sequences or tensors).
        dim, condition_number, seed: used when `cov` is not given.
    """

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor | None = None,
        cov: Sequence[Sequence[float]] | torch.Tensor | None = None,
        *,
        dim: int = 2,
        condition_number: float = 100.0,
        seed: int = 0,
        temperature_scale: float = 1.0,
    ):
        if mean is not None:
            mean = torch.as_tensor(mean, dtype=torch.float64)
            dim = mean.shape[-1]
        if cov is None:
            cov = self._random_cov(int(dim), float(condition_number), int(seed))
        cov = torch.as_tensor(cov, dtype=torch.float64)
        d = cov.shape[-1]
        if cov.shape != (d, d) or (mean is not None and mean.shape != (d,)):
            raise ValueError(f"need mean [d] and cov [d, d], got {mean=} and cov {cov.shape}")
        if not torch.allclose(cov, cov.T, rtol=1e-12, atol=0.0):
            raise ValueError("cov must be symmetric")
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0:
            raise ValueError("cov must be positive definite")
        super().__init__(d, temperature_scale)
        self.mean = torch.zeros(d, dtype=torch.float64) if mean is None else mean
        self.cov, self._chol = cov, chol
        self._setup()

    @staticmethod
    def _random_cov(dim: int, condition_number: float, seed: int) -> torch.Tensor:
        if dim < 1 or not condition_number >= 1:
            raise ValueError(
                f"need dim >= 1 and condition_number >= 1, got {dim}, {condition_number}"
            )
        g = torch.Generator().manual_seed(seed)  # deliberate CPU generator: seeding the target
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))
        expo = (
            torch.linspace(-0.5, 0.5, dim, dtype=torch.float64)
            if dim > 1
            else torch.zeros(1, dtype=torch.float64)
        )
        cov = (q * condition_number**expo) @ q.T
        return 0.5 * (cov + cov.T)

    def _setup(self) -> None:
        log_det = 2.0 * torch.log(torch.diagonal(self._chol)).sum().item()
        self.log_z = 0.5 * (self.dim * math.log(2 * math.pi * self.temperature_scale) + log_det)

    def at_temperature(self, temperature_scale: float) -> CorrelatedGaussian:
        """Copy at `T = temperature_scale · T_ref` with exact `log_z` and sampler."""
        new = super().at_temperature(temperature_scale)
        new._setup()
        return new

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        r = (x - self.mean.to(x)).T  # [d, batch]
        y = torch.linalg.solve_triangular(self._chol.to(x), r, upper=False)
        return 0.5 * (y * y).sum(0)

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64
    ) -> torch.Tensor:
        r"""Exact samples `Tensor[n, d]`: $\mu + \sqrt\tau L\varepsilon$."""
        dev = _device(generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        x = self.mean.to(dev) + math.sqrt(self.temperature_scale) * eps @ self._chol.to(dev).T
        return x.to(dtype)

    def observables(self) -> Mapping[str, Observable]:
        return _coordinate_observables(self.dim)

    def exact_observable(self, name: str) -> float:
        """Exact expectation of an observable from `observables`."""
        return float(self.mean[int(_known(name, self.observables())[1:]) - 1])

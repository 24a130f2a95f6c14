r"""Prior densities for Bayesian posteriors, with their default constraining bijection.

Each prior acts on a block of `size` constrained coordinates:
`log_prob(theta: [batch, size]) -> [batch]` is the normalized log density
($-\infty$ outside the support, never NaN), `sample(n, generator, dtype) -> [n, size]`
draws from it, and `bijection()` returns the map from unconstrained space used by
[`boltzflow.energies.posterior.Posterior`][boltzflow.energies.posterior.Posterior].

* `Uniform(a, b)`: $-\log(b-a)$; probit [`Interval`][boltzflow.energies.bijections.Interval] (the
  prior becomes N(0, 1)); with `periodic=True` an angle on the circle,
  [`CircleLift`][boltzflow.energies.bijections.CircleLift];
* `Normal(μ, σ)`: $-\tfrac12((\theta-μ)/σ)^2 - \log σ\sqrt{2π}$;
  [`Identity`][boltzflow.energies.bijections.Identity];
* `LogUniform(a, b)`: $-\log\theta - \log\log(b/a)$; probit
  [`Interval`][boltzflow.energies.bijections.Interval] on $\log\theta$;
* `HalfNormal(σ)`: $\log 2 - \tfrac12(\theta/σ)^2 - \log σ\sqrt{2π}$;
  [`Positive`][boltzflow.energies.bijections.Positive];
* `HalfCauchy(σ)`: $\log(2/πσ) - \log(1 + (\theta/σ)^2)$ (Gelman 2006);
  [`Positive`][boltzflow.energies.bijections.Positive];
* `UniformDisk()`: $-\log π$ on $|h|<1$; [`UnitDisk`][boltzflow.energies.bijections.UnitDisk];
* `Flat(a, b)`: 0 on the support (improper; the likelihood carries the prior); by support.
"""

from __future__ import annotations

import math

import torch

from boltzflow.energies.bijections import (
    Bijection,
    CircleLift,
    Identity,
    Interval,
    Positive,
    UnitDisk,
)

__all__ = [
    "Prior",
    "Uniform",
    "Normal",
    "LogUniform",
    "HalfNormal",
    "HalfCauchy",
    "UniformDisk",
    "Flat",
]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _inside(theta: torch.Tensor, ok: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """`lp` where `ok` (all coordinates of the block) else `-inf`; NaN input -> `-inf`."""
    ok = ok.all(-1) & ~torch.isnan(theta).any(-1)
    return torch.where(ok, lp, torch.full_like(lp, -math.inf))


class Prior:
    """Base class for a prior on a block of `size` coordinates."""

    size: int = 1

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample(self, n: int, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled")

    def bijection(self) -> Bijection:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Uniform(Prior):
    """Uniform on `[low, high]`; `periodic=True` makes it an angle on the circle."""

    def __init__(self, low: float, high: float, periodic: bool = False):
        if not high > low:
            raise ValueError(f"Uniform needs low < high, got ({low}, {high})")
        self.low, self.high, self.periodic = float(low), float(high), bool(periodic)

    def log_prob(self, theta):
        lp = theta.new_full(theta.shape[:1], -math.log(self.high - self.low))
        if self.periodic:
            return _inside(theta, torch.isfinite(theta), lp)
        return _inside(theta, (theta >= self.low) & (theta <= self.high), lp)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        u = torch.rand(n, 1, generator=generator, dtype=dtype, device=device)
        return self.low + (self.high - self.low) * u

    def bijection(self):
        if self.periodic:
            return CircleLift(self.low, self.high)
        return Interval(self.low, self.high, link="probit")


class Normal(Prior):
    """Normal $\\mathcal N(\\mu, \\sigma^2)$ on the real line."""

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"Normal needs scale > 0, got {scale}")
        self.loc, self.scale = float(loc), float(scale)

    def log_prob(self, theta):
        z = (theta[:, 0] - self.loc) / self.scale
        lp = -0.5 * z * z - math.log(self.scale) - _LOG_SQRT_2PI
        return _inside(theta, torch.isfinite(theta), lp)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        z = torch.randn(n, 1, generator=generator, dtype=dtype, device=device)
        return self.loc + self.scale * z

    def bijection(self):
        return Identity()


class LogUniform(Prior):
    """Log-uniform (Jeffreys) on `[low, high]`, `0 < low`: uniform in $\\log\\theta$."""

    def __init__(self, low: float, high: float):
        if not (0 < low < high):
            raise ValueError(f"LogUniform needs 0 < low < high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def log_prob(self, theta):
        safe = torch.clamp(theta[:, 0], min=self.low)
        lp = -torch.log(safe) - math.log(math.log(self.high / self.low))
        return _inside(theta, (theta >= self.low) & (theta <= self.high), lp)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        u = torch.rand(n, 1, generator=generator, dtype=dtype, device=device)
        return self.low * (self.high / self.low) ** u

    def bijection(self):
        return Interval(self.low, self.high, log_scale=True, link="probit")


class HalfNormal(Prior):
    """Half-normal on $[0, \\infty)$ with scale $\\sigma$."""

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"HalfNormal needs scale > 0, got {scale}")
        self.scale = float(scale)

    def log_prob(self, theta):
        z = theta[:, 0] / self.scale
        lp = math.log(2.0) - 0.5 * z * z - math.log(self.scale) - _LOG_SQRT_2PI
        return _inside(theta, (theta >= 0) & torch.isfinite(theta), lp)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        z = torch.randn(n, 1, generator=generator, dtype=dtype, device=device)
        return self.scale * z.abs()

    def bijection(self):
        return Positive()


class HalfCauchy(Prior):
    """Half-Cauchy on $[0, \\infty)$ with scale $\\sigma$ (Gelman 2006)."""

    def __init__(self, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"HalfCauchy needs scale > 0, got {scale}")
        self.scale = float(scale)

    def log_prob(self, theta):
        z = theta[:, 0] / self.scale
        lp = math.log(2.0 / (math.pi * self.scale)) - torch.log1p(z * z)
        return _inside(theta, (theta >= 0) & torch.isfinite(theta), lp)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        u = torch.rand(n, 1, generator=generator, dtype=dtype, device=device)
        return self.scale * torch.tan(0.5 * math.pi * u)

    def bijection(self):
        return Positive()


class UniformDisk(Prior):
    """Uniform on the open unit disk in $\\mathbb R^2$ (density $1/\\pi$).

    For $h = \\sqrt e(\\cos\\omega, \\sin\\omega)$ this is $e \\sim U(0,1)$,
    $\\omega \\sim U(0, 2\\pi)$ (Eastman et al. 2013, PASP 125, 83).
    """

    size = 2

    def log_prob(self, theta):
        lp = theta.new_full(theta.shape[:1], -math.log(math.pi))
        inside = ((theta * theta).sum(-1, keepdim=True) < 1).expand_as(theta)
        return _inside(theta, inside, lp)

    def sample(self, n, generator=None, dtype=torch.float64, device=None):
        u = torch.rand(n, 2, generator=generator, dtype=dtype, device=device)
        r, phi = torch.sqrt(u[:, 0]), 2 * math.pi * u[:, 1]
        return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], -1)

    def bijection(self):
        return UnitDisk()


class Flat(Prior):
    """Improper flat density on `[low, high]` (for `from_log_prob`, whose log-density
    already contains the prior). `periodic=True` puts the coordinate on the circle."""

    def __init__(self, low: float = -math.inf, high: float = math.inf, periodic: bool = False):
        if not high > low:
            raise ValueError(f"Flat needs low < high, got ({low}, {high})")
        if periodic and not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError("a periodic coordinate needs finite bounds")
        self.low, self.high, self.periodic = float(low), float(high), bool(periodic)

    def log_prob(self, theta):
        lp = theta.new_zeros(theta.shape[:1])
        if self.periodic:
            return _inside(theta, torch.isfinite(theta), lp)
        return _inside(theta, (theta >= self.low) & (theta <= self.high), lp)

    def bijection(self):
        lo, hi = math.isfinite(self.low), math.isfinite(self.high)
        if self.periodic:
            return CircleLift(self.low, self.high)
        if lo and hi:
            return Interval(self.low, self.high)
        if lo:
            return Positive(self.low)
        if hi:
            raise ValueError("Flat with only an upper bound: reparametrize as -theta")
        return Identity()

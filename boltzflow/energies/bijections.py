r"""Constraining maps from an unconstrained space to a parameter's support.

A Bayesian posterior is sampled in unconstrained coordinates $y \in \mathbb R^{d_y}$
and each parameter block is recovered as $\theta = g(y)$. The density on `y`,

$$
p_y(y) = p_\theta(g(y))\, J(y), \qquad \log J = \texttt{ladj},
$$

integrates to the same normalizer $Z = \int p_\theta\, d\theta$ (the evidence), so
importance weights and log Z carry over unchanged. `forward(y) -> (theta, ladj)` with
`y: [batch, in_dim]`, `theta: [batch, out_dim]`, `ladj: [batch]`;
`inverse(theta) -> y` is a right inverse (`forward(inverse(θ)) = θ`).

* [`Identity`][boltzflow.energies.bijections.Identity] -- $\mathbb R$.
* [`Interval`][boltzflow.energies.bijections.Interval] -- $(a, b)$ by the logistic map
  $\theta = a + (b-a)\sigma(y)$, $\log J = \log(b-a) + \log\sigma(y) + \log\sigma(-y)$, or the
  probit map $\theta = a + (b-a)\Phi(y)$ (uniform priors become standard normal); with
  `log_scale=True` the map acts on $\log\theta$.
* [`Positive`][boltzflow.energies.bijections.Positive] -- $(a, \infty)$ by $\theta = a + e^y$,
  $\log J = y$.
* [`CircleLift`][boltzflow.energies.bijections.CircleLift] -- a periodic angle $\theta \in [a, a+L)$
  is handled on the
  circle, without a cut: $y \in \mathbb R^2$,
  $\theta = a + \tfrac{L}{2\pi} (\operatorname{atan2}(y_2, y_1) \bmod 2\pi)$, and
  $\log J = \log\tfrac{L}{2\pi} - \tfrac12|y|^2$. In polar coordinates $dy = r\,dr\,d\varphi$ and
  $\int_0^\infty e^{-r^2/2} r\,dr = 1$, so $\int p_y\,dy = \int p_\theta\,d\theta$ exactly. The
  density on `y` is continuous across $\theta = a \equiv a+L$, and a uniform angle becomes a
  standard bivariate normal in `y`. This is the unit-vector parametrisation of Stan (Stan
  Development Team, *Stan Reference Manual*, "Unit vector").
* [`UnitDisk`][boltzflow.energies.bijections.UnitDisk] -- the open unit disk (e.g.
  $(\sqrt e\cos\omega, \sqrt e\sin\omega)$) by the radial map $h = y\,\tanh(r)/r$, $r = |y|$, with
  $\log J = \log(1-\tanh^2 r) + \log(\tanh(r)/r)$.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.nn import functional as F

__all__ = ["Constrained", "Bijection", "Identity", "Interval", "Positive", "CircleLift", "UnitDisk"]


class Constrained(NamedTuple):
    """Constrained values `theta [batch, out_dim]` and log-Jacobian `ladj [batch]`."""

    theta: torch.Tensor
    ladj: torch.Tensor


class Bijection:
    """Base class: a map from `in_dim` unconstrained to `out_dim` constrained coordinates."""

    in_dim: int = 1
    out_dim: int = 1
    suffixes: tuple[str, ...] = ("",)
    """Suffixes naming the unconstrained coordinates (``name + suffix``)."""

    def forward(self, y: torch.Tensor) -> Constrained:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, theta: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Identity(Bijection):
    r"""The real line: $\theta = y$, $\log J = 0$."""

    def forward(self, y):
        return Constrained(y, y.new_zeros(y.shape[0]))

    def inverse(self, theta):
        return theta


class Interval(Bijection):
    r"""Open interval $(a, b)$ by a sigmoid link (on $\log\theta$ if `log_scale`).

    `link="probit"` uses the normal CDF, $\theta = a + (b-a)\Phi(y)$,
    $\log J = \log(b-a) + \log\varphi(y)$: a uniform prior becomes exactly
    $\mathcal N(0, 1)$ in `y`, so prior-dominated directions have the Gaussian tails of a
    flow's base distribution (the prior-whitening map of nested samplers). `link="logit"`
    uses the logistic function, whose exponential tails a Gaussian-base flow under-covers.

    Args:
        low, high: the bounds `a < b` (both `> 0` when `log_scale`).
        log_scale: map `y` to $\log\theta \in (\log a, \log b)$; suited to
            log-uniform priors spanning decades.
        link: `"probit"` or `"logit"`.
    """

    def __init__(self, low: float, high: float, log_scale: bool = False, link: str = "logit"):
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"Interval needs finite low < high, got ({low}, {high})")
        if log_scale and low <= 0:
            raise ValueError(f"log-scale Interval needs low > 0, got {low}")
        if link not in ("logit", "probit"):
            raise ValueError(f"link must be 'logit' or 'probit', got {link!r}")
        self.low, self.high, self.log_scale = float(low), float(high), bool(log_scale)
        self.link = link
        self._a = math.log(low) if log_scale else float(low)
        self._b = math.log(high) if log_scale else float(high)

    def forward(self, y):
        width = self._b - self._a
        if self.link == "probit":
            s = self._a + width * torch.special.ndtr(y)
            ladj = math.log(width) - 0.5 * y * y - 0.5 * math.log(2 * math.pi)
        else:
            s = self._a + width * torch.sigmoid(y)
            ladj = math.log(width) + F.logsigmoid(y) + F.logsigmoid(-y)
        if self.log_scale:
            ladj = ladj + s
            s = torch.exp(s)
        return Constrained(s, ladj.sum(-1))

    def inverse(self, theta):
        s = torch.log(theta) if self.log_scale else theta
        p = (s - self._a) / (self._b - self._a)
        if self.link == "probit":
            return torch.special.ndtri(p)
        return torch.log(p) - torch.log1p(-p)


class Positive(Bijection):
    r"""Half line $(a, \infty)$: $\theta = a + e^y$, $\log J = y$."""

    def __init__(self, low: float = 0.0):
        self.low = float(low)

    def forward(self, y):
        return Constrained(self.low + torch.exp(y), y.sum(-1))

    def inverse(self, theta):
        return torch.log(theta - self.low)


class CircleLift(Bijection):
    r"""A periodic angle on $[a, a+L)$ lifted to $\mathbb R^2$ without a cut.

    See the module docstring: $\log J = \log(L/2\pi) - |y|^2/2$. `inverse` returns
    the point at radius 1 (any radius is a valid preimage).
    """

    in_dim = 2
    suffixes = ("_cos", "_sin")

    def __init__(self, low: float = -math.pi, high: float = math.pi):
        if not high > low:
            raise ValueError(f"CircleLift needs low < high, got ({low}, {high})")
        self.low, self.high = float(low), float(high)

    def forward(self, y):
        period = self.high - self.low
        angle = torch.atan2(y[:, 1], y[:, 0]) * (period / (2 * math.pi))
        theta = self.low + torch.remainder(angle - self.low, period)
        ladj = math.log(period / (2 * math.pi)) - 0.5 * (y * y).sum(-1)
        return Constrained(theta[:, None], ladj)

    def inverse(self, theta):
        phi = theta[:, 0] * (2 * math.pi / (self.high - self.low))
        return torch.stack([torch.cos(phi), torch.sin(phi)], -1)


def _tanh_over_r(r: torch.Tensor) -> torch.Tensor:
    """`tanh(r)/r` with its series near 0 (smooth, no 0/0)."""
    small = r < 1e-4
    safe = torch.where(small, torch.ones_like(r), r)
    return torch.where(small, 1 - r * r / 3, torch.tanh(safe) / safe)


class UnitDisk(Bijection):
    r"""The open unit disk by the radial map $h = y\tanh(|y|)/|y|$ (smooth at 0)."""

    in_dim = 2
    out_dim = 2
    suffixes = ("_u1", "_u2")

    def forward(self, y):
        r = torch.linalg.vector_norm(y, dim=-1)
        t = _tanh_over_r(r)
        ladj = torch.log(t) + torch.log1p(-((t * r) ** 2))
        return Constrained(y * t[:, None], ladj)

    def inverse(self, theta):
        rho = torch.linalg.vector_norm(theta, dim=-1)
        small = rho < 1e-8
        safe = torch.where(small, torch.ones_like(rho), rho)
        scale = torch.where(small, torch.ones_like(rho), torch.atanh(safe) / safe)
        return theta * scale[:, None]

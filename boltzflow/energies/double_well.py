r"""Double-well benchmark targets with exact normalizers and exact samplers.

The 2-D double well of stochastic normalizing flows (Wu, Köhler & Noé, NeurIPS 2020) is

$$
u(x_1, x_2) = a\,x_1 + b\,x_1^2 + c\,x_1^4 + \tfrac12 x_2^2 \quad [kT],
$$

with the defaults $a=-0.5, b=-6, c=1$: two wells near $x_1=\pm\sqrt3$, the right one
lower by about $2|a|\sqrt3 \approx 1.7$ kT, separated by a barrier of about 9 kT.
The many-well target of FAB (Midgley et al., ICLR 2023) stacks $k$ independent copies
($2^k$ modes; 65,536 for dimension 32).

Everything "exact" reduces to the 1-D integral
$Z_1(\beta) = \int e^{-\beta(a x + b x^2 + c x^4)}\,dx$, computed once by adaptive
quadrature (`scipy.integrate.quad`, relative tolerance 1e-12, split at the critical points and
at 0), and to the Gaussian factor $\sqrt{2\pi/\beta}$. Here $\beta = T_{ref}/T$, so
the exact quantities stay exact after
[`at_temperature`][boltzflow.energies.base.Energy.at_temperature].

The exact sampler draws $x_1$ by rejection from a piecewise-constant envelope: on each of
2048 cells of $[\ell, h]$ the envelope is the exact maximum of $e^{-\beta u_1}$ (at an
end point or at a critical point of the quartic), so accepted draws follow the density exactly on
$[\ell, h]$. The interval is chosen so that $\beta(u_1 - \min u_1) > 80$ outside it;
the truncated mass is below $e^{-80} \approx 10^{-35}$, far under double precision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from boltzflow.energies.base import Energy, Observable, StateSets

__all__ = ["DoubleWell2D", "ManyWell", "QuarticMarginal"]

_TAIL_CUT = 80.0  # reduced-energy rise above the minimum where the sampler's support ends
_N_CELLS = 2048


class QuarticMarginal:
    r"""The 1-D density $p(x) \propto e^{-\beta(a x + b x^2 + c x^4)}$, $c > 0$.

    Attributes (all for the given `beta`):
        log_z, log_z_left, log_z_right: $\log\int e^{-\beta u_1}$ over
            $\mathbb R$, $x<0$ and $x\ge0$.
        mean: $E[x]$; `p_right`: $P(x \ge 0)$.
    """

    def __init__(self, a: float, b: float, c: float, beta: float = 1.0):
        if not c > 0:
            raise ValueError(f"the quartic coefficient c must be > 0 (normalizable), got {c}")
        self.a, self.b, self.c, self.beta = float(a), float(b), float(c), float(beta)
        roots = np.roots([4 * self.c, 0.0, 2 * self.b, self.a])
        self.critical = np.sort(roots[np.abs(roots.imag) < 1e-12].real)
        self.u_min = float(min(self._u(x) for x in self.critical))
        self.lo = self._edge(self.critical[0], -1.0)
        self.hi = self._edge(self.critical[-1], +1.0)
        self._quadrature()
        self._envelope()

    def _u(self, x):
        return self.a * x + self.b * x**2 + self.c * x**4

    def _shifted(self, x):
        """β(u₁(x) - min u₁) ≥ 0."""
        return self.beta * (self._u(x) - self.u_min)

    def _edge(self, start: float, direction: float) -> float:
        """Point beyond the outermost critical point where β(u₁ - min) reaches the cut."""
        from scipy import optimize

        step = 1.0
        while self._shifted(start + direction * step) < _TAIL_CUT:
            step *= 2.0
        return optimize.brentq(
            lambda x: self._shifted(x) - _TAIL_CUT, start, start + direction * step, xtol=1e-14
        )

    def _quadrature(self) -> None:
        from scipy import integrate

        points = sorted({self.lo, self.hi, 0.0, *map(float, self.critical)})
        edges = [-math.inf, *points, math.inf]
        z = {"left": 0.0, "right": 0.0}
        m1 = 0.0
        opts = dict(epsabs=1e-15, epsrel=1e-12, limit=200)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            side = "left" if hi <= 0.0 else "right"
            z[side] += integrate.quad(lambda x: math.exp(-self._shifted(x)), lo, hi, **opts)[0]
            m1 += integrate.quad(lambda x: x * math.exp(-self._shifted(x)), lo, hi, **opts)[0]
        total = z["left"] + z["right"]
        shift = -self.beta * self.u_min
        self.log_z = shift + math.log(total)
        self.log_z_left = shift + math.log(z["left"])
        self.log_z_right = shift + math.log(z["right"])
        self.mean = m1 / total
        self.p_right = z["right"] / total

    def _envelope(self) -> None:
        edges = np.linspace(self.lo, self.hi, _N_CELLS + 1)
        lowest = np.minimum(self._shifted(edges[:-1]), self._shifted(edges[1:]))
        cell = np.clip(np.searchsorted(edges, self.critical) - 1, 0, _N_CELLS - 1)
        for k, xc in zip(cell, self.critical, strict=True):
            lowest[k] = min(lowest[k], self._shifted(xc))
        self._edges = torch.from_numpy(edges)
        self._height = torch.from_numpy(np.exp(-lowest))  # envelope on each cell, max ≤ 1
        mass = self._height.sum()
        self._cdf = torch.cumsum(self._height, 0) / mass
        self.acceptance = math.exp(self.log_z + self.beta * self.u_min) / float(
            mass * (edges[1] - edges[0])
        )
        """Expected acceptance probability of the rejection sampler."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact draws, `Tensor[n]` float64 on the generator's device."""
        device = generator.device if generator is not None else torch.device("cpu")
        edges, height = self._edges.to(device), self._height.to(device)
        cdf, width = self._cdf.to(device), float(edges[1] - edges[0])
        out, have = [torch.empty(0, dtype=torch.float64, device=device)], 0
        while have < n:
            m = int(1.05 * (n - have) / self.acceptance) + 16
            r = torch.rand(3, m, generator=generator, dtype=torch.float64, device=device)
            k = torch.searchsorted(cdf, r[0]).clamp_(max=_N_CELLS - 1)
            x = edges[k] + width * r[1]
            target = torch.exp(-self.beta * (self._u(x) - self.u_min))
            keep = x[r[2] * height[k] < target]
            out.append(keep)
            have += keep.numel()
        return torch.cat(out)[:n]


class DoubleWell2D(Energy):
    r"""Wu–Köhler–Noé double well $u = a x_1 + b x_1^2 + c x_1^4 + \tfrac12 x_2^2$ [kT].

    Exact: `log_z` (quadrature, see the module docstring),
    [`sample`][boltzflow.energies.double_well.DoubleWell2D.sample], the free energy of the state
    sets `"left_vs_right"` ($A: x_1<0$, $B: x_1\ge0$, $\Delta F = -\ln(Z_A/Z_B)$, about +1.7 kT for
    the defaults) and the observable `"x1"` (its mean, about 1.19 for the defaults).

    Args:
        a, b, c: coefficients of the quartic in $x_1$ (`c > 0`).
        temperature_scale: $T/T_{ref}$; all exact quantities follow it.

    Examples:
        >>> import torch
        >>> e = DoubleWell2D()
        >>> e.energy(torch.zeros(3, 2, dtype=torch.float64))
        tensor([0., 0., 0.], dtype=torch.float64)
    """

    def __init__(
        self, a: float = -0.5, b: float = -6.0, c: float = 1.0, temperature_scale: float = 1.0
    ):
        super().__init__(2, temperature_scale)
        self.a, self.b, self.c = float(a), float(b), float(c)
        self._setup()

    def _setup(self) -> None:
        beta = 1.0 / self.temperature_scale
        self.marginal = QuarticMarginal(self.a, self.b, self.c, beta)
        self.log_z = self.marginal.log_z + 0.5 * math.log(2 * math.pi / beta)

    def at_temperature(self, temperature_scale: float) -> DoubleWell2D:
        """Copy at `T = temperature_scale · T_ref` with exact `log_z` and sampler."""
        new = super().at_temperature(temperature_scale)
        new._setup()
        return new

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, 0], x[:, 1]
        return self.a * x1 + self.b * x1**2 + self.c * x1**4 + 0.5 * x2**2

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64
    ) -> torch.Tensor:
        """Exact samples `Tensor[n, 2]` on the generator's device."""
        x1 = self.marginal.sample(n, generator)
        x2 = torch.randn(n, generator=generator, dtype=torch.float64, device=x1.device)
        return torch.stack([x1, x2 * math.sqrt(self.temperature_scale)], -1).to(dtype)

    def observables(self) -> Mapping[str, Observable]:
        return {"x1": Observable(lambda x: x[:, 0], "1")}

    def state_sets(self) -> Mapping[str, StateSets]:
        return {"left_vs_right": StateSets(lambda x: x[:, 0] < 0, lambda x: x[:, 0] >= 0)}

    def exact_observable(self, name: str) -> float:
        """Exact expectation of an observable from `observables`."""
        return {"x1": self.marginal.mean}[_known(name, self.observables())]

    def exact_free_energy(self, name: str) -> float:
        r"""Exact $\Delta F = -\ln(Z_A/Z_B)$ in kT of a state set from `state_sets`."""
        _known(name, self.state_sets())
        return self.marginal.log_z_right - self.marginal.log_z_left

    def __repr__(self) -> str:
        t = "" if self.temperature_scale == 1.0 else f", T/T_ref={self.temperature_scale:g}"
        return f"DoubleWell2D(a={self.a:g}, b={self.b:g}, c={self.c:g}{t})"


class ManyWell(Energy):
    r"""FAB many-well: $k = d/2$ independent copies of
    [`DoubleWell2D`][boltzflow.energies.double_well.DoubleWell2D].

    Coordinates are paired as $(x_{2i}, x_{2i+1})$, $i = 0..k-1$, the first of each
    pair being the double-well coordinate. $\log Z = k \log Z_{2D}$; $2^k$ modes.

    Observables (exact expectations from
        [`exact_observable`][boltzflow.energies.double_well.ManyWell.exact_observable]): `"x1"`: the
        first coordinate; `"frac_x1_positive"`: the fraction of the $k$ double-well coordinates that
        are $\ge 0$ (exact: $P(x_1\ge0)$).
    State sets: `"first_pair_left_vs_right"` ($x_0<0$ vs $x_0\ge0$), exact
    $\Delta F$ equal to that of the 2-D well.

    Args:
        dim: even dimension $d = 2k$.
        a, b, c, temperature_scale: as in
            [`DoubleWell2D`][boltzflow.energies.double_well.DoubleWell2D].
    """

    def __init__(
        self,
        dim: int = 32,
        a: float = -0.5,
        b: float = -6.0,
        c: float = 1.0,
        temperature_scale: float = 1.0,
    ):
        if int(dim) != dim or dim < 2 or dim % 2:
            raise ValueError(f"ManyWell needs an even dimension >= 2, got {dim}")
        super().__init__(int(dim), temperature_scale)
        self.n_wells = int(dim) // 2
        self.well = DoubleWell2D(a, b, c, temperature_scale)
        self.log_z = self.n_wells * self.well.log_z

    @property
    def n_modes(self) -> int:
        """Number of modes, $2^k$."""
        return 2**self.n_wells

    def at_temperature(self, temperature_scale: float) -> ManyWell:
        """Copy at `T = temperature_scale · T_ref` with exact `log_z` and sampler."""
        new = super().at_temperature(temperature_scale)
        new.well = self.well.at_temperature(temperature_scale)
        new.log_z = new.n_wells * new.well.log_z
        return new

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        pairs = x.reshape(x.shape[0], self.n_wells, 2)
        x1, x2 = pairs[..., 0], pairs[..., 1]
        w = self.well
        return (w.a * x1 + w.b * x1**2 + w.c * x1**4 + 0.5 * x2**2).sum(-1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float64
    ) -> torch.Tensor:
        """Exact samples `Tensor[n, dim]` on the generator's device."""
        x = self.well.sample(n * self.n_wells, generator)
        return x.reshape(n, self.dim).to(dtype)

    def observables(self) -> Mapping[str, Observable]:
        return {
            "x1": Observable(lambda x: x[:, 0], "1"),
            "frac_x1_positive": Observable(lambda x: (x[:, 0::2] >= 0).to(x.dtype).mean(-1), "1"),
        }

    def state_sets(self) -> Mapping[str, StateSets]:
        return {
            "first_pair_left_vs_right": StateSets(lambda x: x[:, 0] < 0, lambda x: x[:, 0] >= 0)
        }

    def exact_observable(self, name: str) -> float:
        """Exact expectation of an observable from `observables`."""
        m = self.well.marginal
        return {"x1": m.mean, "frac_x1_positive": m.p_right}[_known(name, self.observables())]

    def exact_free_energy(self, name: str) -> float:
        r"""Exact $\Delta F = -\ln(Z_A/Z_B)$ in kT of a state set from `state_sets`."""
        _known(name, self.state_sets())
        return self.well.exact_free_energy("left_vs_right")


def _known(name: str, table: Mapping) -> str:
    if name not in table:
        raise KeyError(f"unknown name '{name}' (known: {', '.join(sorted(table))})")
    return name

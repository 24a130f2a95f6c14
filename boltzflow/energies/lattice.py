r"""Lattice field theories on a periodic L×L lattice: scalar φ⁴ and U(1) gauge theory.

**φ⁴ convention (used throughout boltzflow): "no-½"** (Albergo, Kanwar & Shanahan 2019,
Phys. Rev. D 100, 034515; and the lattice-flow tutorial of Albergo et al. 2021,
arXiv:2101.08176)

$$
S(\phi) = \sum_x \Big[\sum_{\mu=1}^{d} (\phi_{x+\hat\mu}-\phi_x)^2 + m^2\phi_x^2
+ \lambda\phi_x^4\Big].
$$

The two other conventions in use are related to it by a field rescaling
$\phi_\text{other} = a\,\phi$, which shifts $\log Z_\text{other} = \log Z + V\log a$:

* ½-normalised with λ/4!
  ([`from_half_normalized`][boltzflow.energies.lattice.from_half_normalized]):
  $S = \sum_x[\tfrac12\sum_\mu(\nabla_\mu\phi)^2 + \tfrac12 m^2\phi^2 + \tfrac{g}{4!}\phi^4]$ gives
  $a = \sqrt2$, $m^2 = m^2$, $\lambda = g/6$;
* hopping form ([`from_hopping`][boltzflow.energies.lattice.from_hopping]):
  $S = \sum_x[-2\kappa\sum_\mu\phi_x\phi_{x+\hat\mu} + (1-2\lambda_h)\phi^2 + \lambda_h\phi^4]$
  gives $a = 1/\sqrt\kappa$, $m^2 = (1-2\lambda_h)/\kappa - 2d$,
  $\lambda = \lambda_h/\kappa^2$.

**U(1)** (Wilson 1974; Kanwar et al. 2020, Phys. Rev. Lett. 125, 121601): link angles
`θ[μ, x0, x1]` (event shape `[2, L, L]`, μ = 0, 1 along lattice axes 0, 1), plaquette
$\theta_P(x) = \theta_0(x) + \theta_1(x+\hat0) - \theta_0(x+\hat1) - \theta_1(x)$,
action $S = -\beta\sum_P\cos\theta_P$, measure flat $d\theta$ on
$[-\pi,\pi)^{2V}$ (so `log_z` is the Haar value plus $2V\log 2\pi$). Gauge
transformations $\theta_\mu(x) \to \alpha(x) + \theta_\mu(x) - \alpha(x+\hat\mu)$ leave
$S$ invariant. All energies are dimensionless (the action is the reduced energy).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from boltzflow.energies import lattice_exact
from boltzflow.energies.base import Energy, FigureRequest, Observable

__all__ = [
    "Phi4",
    "Phi4Conversion",
    "from_half_normalized",
    "from_hopping",
    "to_half_normalized",
    "to_hopping",
    "phi4_action",
    "binder_cumulant",
    "U1Wilson",
    "wrap_angle",
    "plaquettes",
    "topological_charge",
    "gauge_transform",
]

_NDIM = 2


# =============================================================================== φ⁴
class Phi4Conversion(NamedTuple):
    """Parameters in the other convention and the field scale `φ_other = field_scale · φ`.

    `log Z_other = log Z_no½ + V · log(field_scale)`.
    """

    m2: float
    lam: float
    field_scale: float


def from_half_normalized(m2: float, g: float) -> Phi4Conversion:
    """(m², g) of the ½-normalised action with g/4! → no-½ `(m2, lam)`; scale is √2."""
    return Phi4Conversion(float(m2), float(g) / 6.0, math.sqrt(2.0))


def to_half_normalized(m2: float, lam: float) -> Phi4Conversion:
    """No-½ `(m2, lam)` → ½-normalised `(m2, g)`; `φ_half = √2 φ`."""
    return Phi4Conversion(float(m2), 6.0 * float(lam), math.sqrt(2.0))


def from_hopping(kappa: float, lam: float, ndim: int = _NDIM) -> Phi4Conversion:
    """Hopping `(κ, λ_h)` → no-½ `(m2, lam)`; `φ_hop = φ / √κ`."""
    if not kappa > 0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    return Phi4Conversion(
        (1.0 - 2.0 * lam) / kappa - 2.0 * ndim, lam / kappa**2, 1.0 / math.sqrt(kappa)
    )


def to_hopping(m2: float, lam: float, ndim: int = _NDIM) -> Phi4Conversion:
    r"""No-½ `(m2, lam)` → hopping `(κ, λ_h)` (returned as `m2=κ, lam=λ_h`).

    κ is the positive root of $2\lambda\kappa^2 + (m^2+2d)\kappa - 1 = 0$.
    """
    b = m2 + 2.0 * ndim
    if lam > 0:
        kappa = (-b + math.sqrt(b * b + 8.0 * lam)) / (4.0 * lam)
    elif b > 0:
        kappa = 1.0 / b
    else:
        raise ValueError("no hopping form for lam = 0 and m2 <= -2d")
    return Phi4Conversion(kappa, lam * kappa**2, 1.0 / math.sqrt(kappa))


def phi4_action(phi: torch.Tensor, m2: float, lam: float, convention: str = "no-half"):
    """φ⁴ action of `phi [batch, L, L]` in `convention`: `"no-half"`, `"half"` (then
    `lam` is g of g/4!) or `"hopping"` (then `m2` is κ and `lam` is λ_h)."""
    dims = tuple(range(1, phi.dim()))
    hop = sum(phi * torch.roll(phi, -1, d) for d in dims)  # Σ_μ φ_x φ_{x+μ}
    p2 = phi * phi
    if convention == "no-half":
        dens = 2 * len(dims) * p2 - 2 * hop + m2 * p2 + lam * p2 * p2
    elif convention == "half":
        dens = len(dims) * p2 - hop + 0.5 * m2 * p2 + lam / 24.0 * p2 * p2
    elif convention == "hopping":
        dens = -2.0 * m2 * hop + (1.0 - 2.0 * lam) * p2 + lam * p2 * p2
    else:
        raise ValueError(f"unknown convention {convention!r}")
    return dens.sum(dims)


class Phi4(Energy):
    r"""Scalar φ⁴ on a periodic L×L lattice, no-½ convention (module docstring).

    Args:
        L: lattice extent; event shape `[L, L]`.
        m2, lam: bare mass squared and quartic coupling (no-½ convention).

    For `lam == 0` and `m2 > 0` the field is Gaussian: `log_z` is exact
    ([`free_field_log_z`][boltzflow.energies.lattice_exact.free_field_log_z]) and
    [`sample`][boltzflow.energies.lattice.Phi4.sample] draws exact configurations through the FFT.
    """

    def __init__(self, L: int = 8, m2: float = -4.0, lam: float = 8.0, temperature_scale=1.0):
        super().__init__((L, L), temperature_scale)
        if lam < 0 or (lam == 0 and m2 <= 0):
            raise ValueError(f"action unbounded below for m2={m2}, lam={lam}")
        self.L, self.m2, self.lam = int(L), float(m2), float(lam)
        self.volume = self.L**_NDIM
        if self.lam == 0:
            self.log_z = lattice_exact.free_field_log_z(self.L, self.m2)

    def _energy(self, x):
        return phi4_action(x, self.m2, self.lam)

    def sample(self, n, generator=None):
        """Exact free-field samples $\\phi = C^{1/2}\\xi$ (circulant square root)."""
        if self.lam != 0:
            raise NotImplementedError("exact samples exist only for the free field (lam = 0)")
        dev = generator.device if generator is not None else None  # the generator's device
        k2 = torch.as_tensor(
            lattice_exact.lattice_momenta_sq(self.L), dtype=torch.float64, device=dev
        )
        xi = torch.randn((n, self.L, self.L), generator=generator, dtype=torch.float64, device=dev)
        filt = (2.0 * (self.m2 + k2)) ** -0.5
        return torch.fft.ifft2(torch.fft.fft2(xi) * filt).real.to(torch.get_default_dtype())

    def observables(self):
        V = self.volume
        mag = lambda x: x.mean(dim=(1, 2))  # noqa: E731
        return {
            "magnetization": Observable(mag),
            "abs_magnetization": Observable(lambda x: mag(x).abs()),
            # χ₂ = Σ_x G_c(x) = V(⟨m²⟩ − ⟨m⟩²) with ⟨m⟩ = 0 by the Z₂ symmetry φ → −φ
            "susceptibility": Observable(lambda x: V * mag(x) ** 2),
            "magnetization_4": Observable(lambda x: mag(x) ** 4),
            "action_density": Observable(lambda x: phi4_action(x, self.m2, self.lam) / V),
        }

    def exact_observable(self, name: str) -> float:
        """Exact expectations: `magnetization` (0 by symmetry) and, for the free field (where
        the magnetization m is Gaussian with variance χ₂/V), `susceptibility` χ₂ = 1/(2m²),
        `abs_magnetization` √(2χ₂/πV), `magnetization_4` 3(χ₂/V)² and `action_density`
        1/2 (KeyError otherwise)."""
        if name == "magnetization":
            return 0.0
        if self.lam != 0:
            raise KeyError(name)
        chi = lattice_exact.free_field_susceptibility(self.m2)
        var = chi / self.volume
        free = {
            "susceptibility": chi,
            "abs_magnetization": math.sqrt(2.0 * var / math.pi),
            "magnetization_4": 3.0 * var * var,
            "action_density": 0.5,
        }
        return free[name]

    def report_figures(self, x, log_weight) -> tuple[FigureRequest, ...]:
        """Report figure: histogram of the magnetization, flow vs reweighted."""
        return (
            _histogram(
                "magnetization.png",
                "Magnetization: flow and reweighted",
                "magnetization m",
                x.mean(dim=(1, 2)),
                log_weight,
            ),
        )

    def __repr__(self):
        return f"Phi4(L={self.L}, m2={self.m2:g}, lam={self.lam:g})"


def binder_cumulant(x: torch.Tensor, log_weight: torch.Tensor | None = None) -> float:
    r"""Binder cumulant $U_4 = 1 - \langle M^4\rangle / (3\langle M^2\rangle^2)$ of
    `x [n, L, L]` (self-normalised importance weights if `log_weight` is given)."""
    m = x.reshape(x.shape[0], -1).mean(-1).double()
    if log_weight is None:
        w = torch.full_like(m, 1.0 / m.numel())
    else:
        w = torch.softmax(log_weight.double(), 0)
    m2, m4 = (w * m**2).sum(), (w * m**4).sum()
    return float(1.0 - m4 / (3.0 * m2 * m2))


def _histogram(filename, title, label, values, log_weight, discrete=False) -> FigureRequest:
    """Request for a histogram of a scalar observable, flow (unweighted) and reweighted."""
    data = dict(filename=filename, title=title, label=label, values=values, discrete=discrete)
    return FigureRequest("histogram", {**data, "log_weight": log_weight})


# ============================================================================== U(1)
def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Map angles to `[-π, π)`."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def plaquettes(links: torch.Tensor) -> torch.Tensor:
    r"""Plaquette angles $\theta_P(x)$, not wrapped: `[batch, 2, L, L] -> [batch, L, L]`."""
    t0, t1 = links[:, 0], links[:, 1]
    return t0 + torch.roll(t1, -1, 1) - torch.roll(t0, -1, 2) - t1


def topological_charge(links: torch.Tensor) -> torch.Tensor:
    r"""Geometric charge $Q = (2\pi)^{-1}\sum_P \arg e^{i\theta_P}$, rounded to the
    integer it equals on a torus, `[batch]`."""
    q = wrap_angle(plaquettes(links)).sum(dim=(1, 2)) / (2 * math.pi)
    return torch.round(q)


def gauge_transform(links: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    r"""$\theta_\mu(x) \to \alpha(x) + \theta_\mu(x) - \alpha(x+\hat\mu)$, wrapped.

    `alpha` is `[batch, L, L]` (or `[L, L]`)."""
    alpha = alpha.expand(links.shape[0], *links.shape[2:])
    shifted = torch.stack([torch.roll(alpha, -1, 1), torch.roll(alpha, -1, 2)], dim=1)
    return wrap_angle(links + alpha.unsqueeze(1) - shifted)


class U1Wilson(Energy):
    r"""2-D U(1) lattice gauge theory with the Wilson action $-\beta\sum_P\cos\theta_P$.

    Args:
        L: lattice extent (V = L² plaquettes); event shape `[2, L, L]`.
        beta: inverse coupling β.

    `log_z` is exact for the flat measure on $[-\pi,\pi)^{2V}$; `exact` holds the
    Haar log Z, ⟨cos P⟩, ⟨Q²⟩ and χ_t ([`u1_exact`][boltzflow.energies.lattice_exact.u1_exact]).
    `period = 2π` marks the configuration space as a torus (samplers wrap positions).
    """

    period = 2 * math.pi

    def __init__(self, L: int = 8, beta: float = 2.0, temperature_scale: float = 1.0):
        super().__init__((2, L, L), temperature_scale)
        self.L, self.beta = int(L), float(beta)
        self.volume = self.L * self.L
        self.exact = lattice_exact.u1_exact(self.L, self.beta)
        self.log_z = self.exact.log_z_flat

    def _energy(self, x):
        return -self.beta * torch.cos(plaquettes(x)).sum(dim=(1, 2))

    def sample(self, n, generator=None):
        raise NotImplementedError("no exact sampler for U(1); use a flow or HMC")

    def observables(self):
        V = self.volume
        return {
            "plaquette": Observable(lambda x: torch.cos(plaquettes(x)).mean(dim=(1, 2))),
            "topological_charge": Observable(topological_charge),
            "topological_charge_sq": Observable(lambda x: topological_charge(x) ** 2),
            "topological_susceptibility": Observable(lambda x: topological_charge(x) ** 2 / V),
            "action_density": Observable(lambda x: self._energy(x) / V),
        }

    def exact_observable(self, name: str) -> float:
        """Exact expectation of the observable `name` (KeyError if there is none)."""
        e = self.exact
        return {
            "plaquette": e.mean_plaquette,
            "topological_charge": 0.0,
            "topological_charge_sq": e.q2,
            "topological_susceptibility": e.chi_t,
            "action_density": -self.beta * e.mean_plaquette,
        }[name]

    def report_figures(self, x, log_weight) -> tuple[FigureRequest, ...]:
        """Report figure: histogram of the topological charge, flow vs reweighted."""
        q = topological_charge(x)
        title, label = "Topological charge: flow and reweighted", "topological charge Q"
        return (_histogram("charge.png", title, label, q, log_weight, discrete=True),)

    def __repr__(self):
        return f"U1Wilson(L={self.L}, beta={self.beta:g})"

r"""Exact finite-volume results for the free scalar field and 2-D U(1) gauge theory.

**Free field** (φ⁴ with λ = 0, m² > 0) in the no-½ convention of
[`boltzflow.energies.lattice`][boltzflow.energies.lattice],
$S = \sum_x [\sum_\mu (\phi_{x+\mu}-\phi_x)^2 + m^2\phi_x^2] = \phi^\top (K + m^2)\phi$,
with $K$ the periodic lattice Laplacian whose eigenvalues are
$\hat k^2 = \sum_\mu 4\sin^2(\pi k_\mu/L)$. The field is Gaussian with covariance
$C = [2(K+m^2)]^{-1}$, so

$$
\log Z = \tfrac V2 \log\pi - \tfrac12\sum_k \log(m^2+\hat k^2), \quad
\langle\phi^2\rangle = \frac1V\sum_k \frac{1}{2(m^2+\hat k^2)}, \quad
V\langle \bar\phi^2\rangle = \frac{1}{2m^2}, \quad \langle S\rangle = \frac V2 .
$$

(In the ½-normalised convention add $\tfrac V2\log 2$ to log Z; see
[`boltzflow.energies.lattice.from_half_normalized`][boltzflow.energies.lattice.from_half_normalized].)

**2-D U(1)** with Wilson action $S = -\beta\sum_P \cos\theta_P$ on a periodic L×L lattice
(V = L² plaquettes). After gauge fixing the plaquettes are independent up to one global
constraint, which gives the θ-vacuum partition function (Haar measure, Gross & Witten 1980;
Bonati & Rossi 2019, Phys. Rev. D 99, 054503)

$$
Z(\theta) = \sum_{n\in\mathbb Z} g_{n+\theta/2\pi}(\beta)^V, \qquad
g_\nu(\beta) = \frac1{2\pi}\int_{-\pi}^{\pi} e^{\beta\cos\phi}\cos(\nu\phi)\,d\phi,
\quad g_n = I_n(\beta),
$$

so $\log Z = V\log I_0 + \log(1 + 2\sum_{n\ge1}(I_n/I_0)^V)$,
$\langle\cos P\rangle = V^{-1}\partial_\beta \log Z$ and, for the geometric charge
$Q = (2\pi)^{-1}\sum_P \arg e^{i\theta_P}$, $\langle Q^2\rangle = -Z''(0)/Z(0)$.
With $\nu = n + \theta/2\pi$,

$$
Z''(0) = \frac{1}{4\pi^2}\sum_n \left[V(V-1) g_n^{V-2} (\partial_\nu g_n)^2
         + V g_n^{V-1}\partial_\nu^2 g_n\right],
$$

where the ν-derivatives are computed by quadrature. The flat measure $d\theta$ on
$[-\pi,\pi)^{2V}$ (which is what [`U1Wilson`][boltzflow.energies.lattice.U1Wilson] and a
uniform flow base use) adds $2V\log 2\pi$ to log Z.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special

__all__ = [
    "lattice_momenta_sq",
    "free_field_log_z",
    "free_field_phi2",
    "free_field_susceptibility",
    "U1Exact",
    "u1_exact",
    "u1_log_z",
    "u1_mean_plaquette",
    "u1_topological_q2",
]


# ------------------------------------------------------------------------ free field
def lattice_momenta_sq(L: int, ndim: int = 2) -> np.ndarray:
    r"""All $\hat k^2 = \sum_\mu 4\sin^2(\pi k_\mu/L)$, shape `[L]*ndim`."""
    s = 4.0 * np.sin(np.pi * np.arange(L) / L) ** 2
    grids = np.meshgrid(*([s] * ndim), indexing="ij")
    return np.sum(grids, axis=0)


def _check_free(m2: float) -> None:
    if not m2 > 0:
        raise ValueError(f"the free field needs m2 > 0, got {m2}")


def free_field_log_z(L: int, m2: float, ndim: int = 2) -> float:
    r"""Exact $\log Z$ of the free field in the no-½ convention (see module docstring)."""
    _check_free(m2)
    k2 = lattice_momenta_sq(L, ndim)
    return float(0.5 * k2.size * math.log(math.pi) - 0.5 * np.sum(np.log(m2 + k2)))


def free_field_phi2(L: int, m2: float, ndim: int = 2) -> float:
    r"""Exact $\langle\phi_x^2\rangle = V^{-1}\sum_k [2(m^2+\hat k^2)]^{-1}$ (no-½)."""
    _check_free(m2)
    k2 = lattice_momenta_sq(L, ndim)
    return float(np.mean(0.5 / (m2 + k2)))


def free_field_susceptibility(m2: float) -> float:
    r"""Exact two-point susceptibility $\chi_2 = V\langle\bar\phi^2\rangle = 1/(2m^2)$."""
    _check_free(m2)
    return 0.5 / m2


# ------------------------------------------------------------------------------- U(1)
class U1Exact(NamedTuple):
    """Exact finite-volume U(1) results (`log_z_flat = log_z_haar + 2V log 2π`)."""

    log_z_haar: float
    log_z_flat: float
    mean_plaquette: float
    q2: float
    chi_t: float


def _n_terms(L: int, beta: float, rel: float = 1e-20) -> int:
    """Largest |n| with (I_n/I_0)^V above `rel` (the rest is below double precision)."""
    V = L * L
    i0 = special.ive(0, beta)
    n = 1
    while n < 200 and V * math.log(max(special.ive(n, beta) / i0, 1e-300)) > math.log(rel):
        n += 1
    return n


def _check_u1(L: int, beta: float) -> None:
    if L < 2 or not beta > 0:  # at L = 1 every plaquette is identically zero
        raise ValueError(f"need L >= 2 and beta > 0, got L={L}, beta={beta}")


def u1_log_z(L: int, beta: float, measure: str = "haar") -> float:
    r"""Exact $\log Z$ (`measure` `"haar"`: dθ/2π per link, or `"flat"`: dθ)."""
    _check_u1(L, beta)
    V = L * L
    n = np.arange(1, _n_terms(L, beta) + 1)
    i0 = special.ive(0, beta)
    ratios = special.ive(n, beta) / i0
    log_z = V * (math.log(i0) + beta) + math.log1p(2.0 * np.sum(ratios**V))
    if measure == "flat":
        return log_z + 2 * V * math.log(2 * math.pi)
    if measure != "haar":
        raise ValueError(f"measure must be 'haar' or 'flat', got {measure!r}")
    return log_z


def _weights(L: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Integers n (symmetric range) and normalised weights I_n^V / Σ_m I_m^V."""
    V = L * L
    N = _n_terms(L, beta)
    n = np.arange(-N, N + 1)
    logs = V * np.log(special.ive(np.abs(n), beta) / special.ive(0, beta))
    w = np.exp(logs - logs.max())
    return n, w / w.sum()


def u1_mean_plaquette(L: int, beta: float) -> float:
    r"""Exact
    $\langle\cos\theta_P\rangle = V^{-1}\partial_\beta\log Z = \sum_n w_n I_n'(\beta)/I_n(\beta)$,
    with $w_n \propto I_n^V$."""
    _check_u1(L, beta)
    n, w = _weights(L, beta)
    m = np.abs(n)
    d_log_i = 0.5 * (special.ive(m - 1, beta) + special.ive(m + 1, beta)) / special.ive(m, beta)
    return float(np.sum(w * d_log_i))


def _g_derivatives(n: np.ndarray, beta: float, nodes: int = 1024) -> tuple[np.ndarray, ...]:
    r"""Scaled $e^{-\beta}(g_n, \partial_\nu g_n, \partial^2_\nu g_n)$ for integers
    `n >= 0`, by Gauss–Legendre quadrature on $[0,\pi]$ (the integrands are even in φ
    and analytic there, so `nodes` = 1024 reaches double precision for |n| ≲ 200)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    phi = 0.5 * math.pi * (x + 1.0)
    w = 0.5 * w  # (1/π)∫_0^π f dφ = (1/2)Σ w f(φ) with the [0,π] rescaling
    e = np.exp(beta * (np.cos(phi) - 1.0))
    arg = np.outer(np.asarray(n, dtype=float), phi)
    g = (w * e * np.cos(arg)).sum(-1)
    dg = -(w * e * phi * np.sin(arg)).sum(-1)
    d2g = -(w * e * phi * phi * np.cos(arg)).sum(-1)
    return g, dg, d2g


def u1_topological_q2(L: int, beta: float) -> float:
    r"""Exact $\langle Q^2\rangle = -Z''(0)/Z(0)$ for the geometric charge."""
    _check_u1(L, beta)
    V = L * L
    n = np.arange(-_n_terms(L, beta), _n_terms(L, beta) + 1)
    _, dg, d2g = _g_derivatives(np.abs(n), beta)
    dg = np.sign(n) * dg  # ∂_ν g_ν is odd under n -> -n
    g0 = special.ive(0, beta)
    g = special.ive(np.abs(n), beta)  # accurate values (equal to the quadrature of g)
    r = g / g0
    den = np.sum(r**V)
    if V >= 2:
        num = np.sum(r ** (V - 2) * (V * (V - 1) * dg * dg + V * g * d2g)) / g0**2
    else:
        num = np.sum(V * d2g / g0)
    return float(-num / den / (4 * math.pi**2))


def u1_exact(L: int, beta: float) -> U1Exact:
    """All exact U(1) results at once (see the module docstring for the formulas)."""
    log_z = u1_log_z(L, beta)
    q2 = u1_topological_q2(L, beta)
    return U1Exact(
        log_z_haar=log_z,
        log_z_flat=log_z + 2 * L * L * math.log(2 * math.pi),
        mean_plaquette=u1_mean_plaquette(L, beta),
        q2=q2,
        chi_t=q2 / (L * L),
    )

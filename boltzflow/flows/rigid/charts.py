r"""Charts of the rigid-body state $(\mathbb{R}^3 \times S^3)^N$ used by the rigid-body layers.

**State layout.** A rigid state is `x` `(batch, 7 N)`; molecule $i$ holds its position
$r_i$ (nm) in `x[:, 7i:7i+3]` and its unit quaternion $q_i = (w, x, y, z)$ in
`x[:, 7i+3:7i+7]` ($q$ and $-q$ are the same rotation). Log-densities are with respect to
Lebesgue measure on positions times the surface measure of $S^3$ per molecule.

**Rodrigues (gnomonic) chart of an orientation.** Relative to a reference rotation $q_0$, let
$p = \bar q_0\, q = (w, v)$ and $\rho = v / w \in \mathbb{R}^3$ ($= \tan(\phi/2)\,n$ for a
rotation by $\phi$ about $n$). $\rho$ is the same for $p$ and $-p$: the chart covers each open
hemisphere of $S^3$ once, i.e. $SO(3)$ minus the half-turns (a null set). The way back keeps
the hemisphere of the input, $p' = \operatorname{sign}(w)\,(1, \rho')/\sqrt{1 + |\rho'|^2}$,
so a layer $\rho \mapsto \rho'$ acting in the chart is an **odd** map of $S^3$,
$f(-q) = -f(q)$. The surface measure in the chart is

$$
dA = (1 + |\rho|^2)^{-2}\, d^3\rho ,
$$

so a chart map $g$ has the $S^3$ log-Jacobian
$\log|\det \partial g/\partial\rho| + 2 \log(1+|\rho|^2) - 2\log(1+|g(\rho)|^2)$
(`rodrigues_log_volume`). Because each layer is odd and its log-Jacobian is even in $q$
(the conditioners see orientations only through even features: rotation matrices and $\rho$),
a density that is even, $p(q) = p(-q)$ (the Haar base), stays even through every layer.

**A crystal that drifts.** The energy is invariant under translations and MD without a
centre-of-mass remover lets the whole crystal wander, so layers tied to lattice sites work with
displacements relative to the crystal's centre: with $\delta_i = \operatorname{mi}(r_i - c_i)$
(site $c_i$), `cluster_centre` is $\bar c = c^* + \frac1N \sum_i \operatorname{mi}(\delta_i -
c^*)$ with $c^*$ the circular mean of the $\delta_i$, and $\operatorname{mi}(\delta_i - \bar c)$
sums to zero. For a compact cluster (every $|\delta_i - \bar c| < L/2$: a crystal, not a
liquid) $\bar c$ moves with any translation and is unchanged by maps that keep the
zero-sum displacements zero-sum.

**Periodic positions.** `minimum_image(d, box)` $= d - L \operatorname{round}(d / L)$ per box
edge; `periodic_features(d, box)` $= (\cos, \sin)(2\pi d / L)$ is the continuous embedding of a
minimum-image displacement that the conditioners see.

Reference: Köhler et al. 2023, "Rigid body flows for sampling molecular crystal structures".
"""

from __future__ import annotations

import math

import torch

from boltzflow.coordinates.quaternion import (
    quaternion_conjugate,
    quaternion_multiply,
    quaternion_to_matrix,
)

__all__ = [
    "split_state",
    "join_state",
    "to_rodrigues",
    "from_rodrigues",
    "rodrigues_log_volume",
    "minimum_image",
    "periodic_features",
    "orientation_features",
    "cluster_centre",
    "mean_structure",
]


def split_state(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions `(batch, N, 3)` and quaternions `(batch, N, 4)` of a rigid state `(batch, 7N)`."""
    m = x.reshape(x.shape[0], -1, 7)
    return m[..., :3], m[..., 3:]


def join_state(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The rigid state `(batch, 7N)` from positions `(batch, N, 3)`, quaternions `(batch, N, 4)`."""
    return torch.cat((r, q), dim=-1).reshape(r.shape[0], -1)


def to_rodrigues(q: torch.Tensor, q0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Rodrigues vector $\rho = v/w$ of $p = \bar q_0 q$ and the hemisphere sign of $w$.

    Args:
        q: unit quaternions `(..., 4)`.
        q0: reference rotations, broadcasting with `q`.

    Returns:
        `(rho, sign)`: `(..., 3)` and `(..., 1)` with `sign` $= \pm 1$ ($+1$ for $w = 0$).
    """
    p = quaternion_multiply(quaternion_conjugate(q0), q)
    w = p[..., :1]
    sign = torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))
    return p[..., 1:] / (sign * w.abs().clamp_min(torch.finfo(q.dtype).tiny)), sign


def from_rodrigues(rho: torch.Tensor, sign: torch.Tensor, q0: torch.Tensor) -> torch.Tensor:
    r"""Quaternions $q = q_0\,\operatorname{sign}\,(1, \rho)/\sqrt{1 + |\rho|^2}$ `(..., 4)`."""
    p = torch.cat((torch.ones_like(rho[..., :1]), rho), dim=-1)
    p = sign * p * torch.rsqrt(1.0 + (rho * rho).sum(-1, keepdim=True))
    return quaternion_multiply(q0, p)


def rodrigues_log_volume(rho: torch.Tensor) -> torch.Tensor:
    r"""$\log$ of the $S^3$ surface density in the chart, $-2\log(1 + |\rho|^2)$, `(...)`."""
    return -2.0 * torch.log1p((rho * rho).sum(-1))


def minimum_image(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    r"""$d - L\,\operatorname{round}(d/L)$ per box edge (`box` broadcasts over the last axis)."""
    return d - box * torch.round(d / box)


def periodic_features(d: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    r"""$(\cos, \sin)(2\pi d/L)$ of displacements `(..., k)`: `(..., 2k)`, periodic and smooth."""
    angle = (2.0 * math.pi) * d / box
    return torch.cat((torch.cos(angle), torch.sin(angle)), dim=-1)


def orientation_features(q: torch.Tensor, q0: torch.Tensor) -> torch.Tensor:
    r"""The rotation matrix of $\bar q_0 q$, flattened `(..., 9)`: even in $q$, bounded, smooth."""
    p = quaternion_multiply(quaternion_conjugate(q0), q)
    return quaternion_to_matrix(p).flatten(-2)


def cluster_centre(delta: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    r"""Centre `(batch, 1, 3)` of a compact periodic cluster of displacements `(batch, N, 3)`.

    $\bar c = c^* + \operatorname{mean}_i \operatorname{mi}(\delta_i - c^*)$ with the circular
    mean $c^* = \frac{L}{2\pi}\operatorname{atan2}(\sum_i \sin(2\pi\delta_i/L),
    \sum_i \cos(2\pi\delta_i/L))$ per box axis.
    """
    angle = (2.0 * math.pi) * delta / box
    circ = torch.atan2(torch.sin(angle).sum(1, keepdim=True), torch.cos(angle).sum(1, keepdim=True))
    circ = circ * box / (2.0 * math.pi)
    return circ + minimum_image(delta - circ, box).mean(1, keepdim=True)


def mean_structure(states: torch.Tensor, box, sites: torch.Tensor | None = None) -> torch.Tensor:
    r"""The mean rigid state `(7 N,)` of samples `(n, 7 N)` of a crystal (e.g. MD frames).

    Positions: each frame's displacements from `sites` (default: the first frame's positions)
    are taken relative to its `cluster_centre` and averaged, so a drifting crystal gives its
    shape, not a blur. Orientations: per molecule the unit eigenvector of largest eigenvalue of
    $\sum q q^\top$ (the mean rotation, insensitive to the sign of each $q$).
    """
    box = torch.as_tensor(box, dtype=states.dtype)
    r, q = split_state(states)
    sites = r[0] if sites is None else torch.as_tensor(sites, dtype=states.dtype).reshape(-1, 3)
    delta = minimum_image(r - sites, box)
    rel = minimum_image(delta - cluster_centre(delta, box), box)
    mean_r = sites + rel.mean(0)
    _, vectors = torch.linalg.eigh(torch.einsum("bni,bnj->nij", q, q))
    return join_state(mean_r[None], vectors[..., -1][None])[0]
